"""Versions from the change stream, written with the data in the same target transaction.

Why before netting: a batch (stream/batch.py) keeps only the last change per key, history
needs every one. ``change`` sees each change as the stream routes it; ``write`` runs in
``TargetWriter.commit`` just before the progress row, so data, versions and position commit
together or not at all (a rollback ``forget``s). Every ``SPILL`` versions the rows go to the
target writer's thread (``attach``), so the server stores them while the stream decodes on
instead of all at once while the commit waits - but only when the writer has finished the
last hand-over: a spill never waits for the writer (its queue is short, and a stream blocked
behind a big mirror run stops decoding), the rows wait for the next chance instead.

Rows go in by one COPY BINARY per table and write: pgoutput's binary values are COPY's
field format, and the metadata is encoded here (timestamptz: int8 microseconds since
2000-01-01; pg_lsn: int8; int4; "char": one byte; text[]: the array binary format). The hot
path appends one tuple per version - pgoutput's raw values plus the five metadata values,
the commit time and LSN packed once per transaction, the sequence number from a table of
packed ints - and the COPY stream is laid out later, in the writer's thread, by the
decoder's compiled COPY-row builder (``accel.copy_rows``, the one the mirror uses; measured
in docs/benchmarks.md "History"). Unchanged-TOAST values ('u') are stored NULL with their
column names in ``_pgml_unchanged``; readers fill them from the previous version of the key
(reading the target's value here would cost a round trip).

Streamed transactions (protocol 2) do not know their commit time and LSN until Stream Commit:
their recorder (``streamed()``, replica/history/staged.py) puts the same rows into a
temporary table of the transaction and moves them into the history table at commit, stamped
with the commit's time and LSN; a rolled-back subtransaction or transaction takes its rows
with it.
"""

from __future__ import annotations

import logging
import struct
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from decoder import Insert, Update, accel
from replica import metrics
from replica.errors import ApplyError, TransientError
from replica.history import report, store

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_LEN = struct.Struct(">i").pack
_INT8 = struct.Struct(">q").pack
_ZERO8 = _INT8(0)
_TEXT_OID = 25
_SEQS = tuple(map(_LEN, range(4096)))  # _pgml_seq values packed once: most transactions
log = logging.getLogger("pgml_replica")
SPILL = 2_000  # versions buffered before they go to the writer's thread (when it is free)
OP_I, OP_U, OP_D, OP_T = b"I", b"U", b"D", b"T"


def micros(t: datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _seq(seq: int) -> bytes:
    return _SEQS[seq] if seq < 4096 else _LEN(seq)


def _text_array(names: list[str]) -> bytes:
    """A text[] value in binary format (without its field length)."""
    return struct.pack(">iiiii", 1, 0, _TEXT_OID, len(names), 1) + b"".join(
        _LEN(len(b)) + b for b in (n.encode() for n in names))


def parse_tables(spec: str | None) -> frozenset[str] | None:
    """``--history``: None (off), or the qualified names; ``all`` is the empty set's opposite,
    returned as ``frozenset({"*"})``. Unqualified names are in public."""
    if not spec or not spec.strip():
        return None
    names = {n.strip() for n in spec.split(",") if n.strip()}
    if "all" in names:
        return frozenset({"*"})
    return frozenset(n if "." in n else f"public.{n}" for n in names)


def parse_retention(spec: str | None) -> timedelta | None:
    """``90d``, ``12h``, ``30m``, ``2w``; None or empty: kept for ever."""
    if not spec:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    spec = spec.strip().lower()
    if spec[-1:] not in units or not spec[:-1].isdigit():
        raise ValueError(f"history retention {spec!r}: expected a number and s, m, h, d or w")
    return timedelta(seconds=int(spec[:-1]) * units[spec[-1]])


class _Table:
    """What the hot path needs of one table shape: its buffered versions (``images`` None:
    no history), each a tuple of the row's raw values and the five metadata values - the
    form ``accel.copy_rows`` lays out as COPY BINARY rows."""

    __slots__ = ("tw", "images", "keyed", "key_pos", "columns")

    def __init__(self, tw, wanted: bool) -> None:
        self.tw = tw
        self.images: list[tuple] | None = [] if wanted else None
        self.columns = tw.layout.columns
        self.keyed = tw.layout.keyed
        self.key_pos = tw.layout.key_pos

    def take(self) -> list[tuple]:
        """The buffered versions, and an empty buffer."""
        taken = self.images
        if not taken:
            return []
        self.images = []
        return taken

    @property
    def buffered(self) -> int:
        return len(self.images or ())


def encode(images: list[tuple]) -> bytes:
    """A complete COPY BINARY stream of one table's taken versions (compiled when built)."""
    return accel.copy_rows(images, False)


class Recorder:
    """The open target transaction's versions, per history table, until commit."""

    def __init__(self, tables: frozenset[str], retention: timedelta | None) -> None:
        self.tables, self.retention = tables, retention
        self._by_rel: dict[int, _Table] = {}  # relation id -> the shape in use
        self._retired: list[_Table] = []  # earlier shapes with rows not written yet
        self._ready: dict[str, tuple] = {}  # qualname -> columns its history table has
        self._time = self._lsn = _ZERO8  # this transaction's commit time and LSN, packed
        self._seq = 0
        self._free = [True]  # whether the writer has run the last hand-over (``take``)
        self._buffered = 0
        self._gen = 0  # bumped by forget(): a write taken before it counts for nothing
        self.versions = 0  # written since start
        self._pending: dict[str, list[int]] = {}  # qualname -> [versions, bytes] uncommitted
        self.writer = None  # stream.apply.TargetWriter whose thread takes spilled rows
        self._next_report = 0.0  # when to read what the history holds (history/report.py)
        self.reports = True
        self.counts_copies = True

    def attach(self, writer) -> Recorder:
        """Record for ``writer``: it writes the versions at its commit."""
        self.writer = writer
        writer.history = self
        return self

    def streamed(self) -> Recorder:
        """A recorder for one streamed transaction (replica/history/staged.py)."""
        from replica.history.staged import StagedRecorder
        return StagedRecorder(self.tables, self.retention)

    def wants(self, qualname: str) -> bool:
        return "*" in self.tables or qualname in self.tables

    def begin(self, final_lsn: int, commit_time: datetime) -> None:
        self._time, self._lsn = _INT8(micros(commit_time)), _INT8(final_lsn)
        self._seq = 0

    # -- the hot path ---------------------------------------------------------------------

    def _table(self, tw) -> _Table:
        t = self._by_rel.get(tw.relation_id)
        if t is None or t.tw is not tw:  # first change, or the table was re-shaped
            if t is not None and t.buffered:  # versions of the old shape: written apart
                self._retired.append(t)
            t = self._by_rel[tw.relation_id] = _Table(tw, self.wants(tw.qualname))
        return t

    def change(self, tw, msg) -> None:
        """An Insert, Update or Delete as versions: a key change ends the old key's version
        (a D) before the new key's (the new image's unchanged TOAST values, if any, are then
        filled from the new key's previous version: a known limit, docs/history.md)."""
        t = self._by_rel.get(tw.relation_id)
        if t is None or t.tw is not tw:
            t = self._table(tw)
        images = t.images
        if images is None:
            return
        kind = type(msg)
        seq = self._seq
        unchanged = None
        if kind is Insert or kind is Update:
            new = msg.new_tuple
            raw = new.raw
            op = OP_I
            if kind is Update:
                op = OP_U
                old = msg.key_tuple or msg.old_tuple
                if old is not None and t.keyed:
                    o = old.raw
                    if any(o[i] != raw[i] for i in t.key_pos):
                        images.append(o + (self._time, self._lsn, _seq(seq), OP_D, None))
                        seq += 1
            kinds = new.kinds
            if "u" in kinds:
                cols = t.columns
                unchanged = _text_array([cols[i] for i, k in enumerate(kinds) if k == "u"])
        else:  # Delete
            raw = (msg.old_tuple or msg.key_tuple).raw
            op = OP_D
        images.append(raw + (self._time, self._lsn,
                             _SEQS[seq] if seq < 4096 else _LEN(seq), op, unchanged))
        self._seq = seq + 1
        self._buffered += 1
        if self._buffered >= SPILL and self._free[0] and self.writer is not None:
            self.spill()

    def truncate(self, tw) -> None:
        """TRUNCATE: one marker that ends every version before it (all columns NULL)."""
        t = self._table(tw)
        if t.images is None:
            return
        t.images.append((None,) * len(t.columns)
                        + (self._time, self._lsn, _seq(self._seq), OP_T, None))
        self._seq += 1
        self._buffered += 1

    # -- writing --------------------------------------------------------------------------

    def spill(self) -> None:
        """Hand the rows so far to the writer's thread (after what it was given before)."""
        if self._buffered:
            self.writer.submit(None, self.take())

    def _taken(self) -> list[tuple[_Table, list[tuple]]]:
        out = [(t, t.take()) for t in self._retired]
        self._retired = []
        for t in self._by_rel.values():
            if t.buffered:
                out.append((t, t.take()))
        self._buffered = 0
        return out

    def _ensure(self, conn: psycopg.Connection, tw) -> None:
        cols = tw.layout.columns
        if self._ready.get(tw.qualname) != cols:
            key = [cols[i] for i in tw.layout.key_pos]
            store.ensure(conn, tw.schema, tw.name, key, self.retention)
            self._ready[tw.qualname] = cols

    def _copy(self, conn: psycopg.Connection, tw, data: bytes) -> int:
        self._ensure(conn, tw)
        target = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            sql.Identifier(store.SCHEMA, store.history_name(tw.schema, tw.name)),
            sql.SQL(", ").join(map(sql.Identifier, (*tw.layout.columns, *store.META))))
        return self._write_rows(conn, target, data)

    @staticmethod
    def _write_rows(conn: psycopg.Connection, target: sql.Composable, data: bytes) -> int:
        with conn.cursor().copy(target) as cp:
            cp.write(data)
        return len(data)

    def _write(self, conn: psycopg.Connection, taken, gen: int) -> int:
        """COPY ``taken`` unless a rollback came since it was taken (``gen``); the versions
        count as pending until the commit (not a streamed transaction's stage rows)."""
        n = 0
        for t, images in taken:
            if gen != self._gen:
                break
            if not images:
                continue
            k = len(images)
            size = self._copy(conn, t.tw, encode(images))
            if self.counts_copies and gen == self._gen:
                pending = self._pending.setdefault(t.tw.qualname, [0, 0])
                pending[0] += k
                pending[1] += size
            n += k
        return n if self.counts_copies else 0

    def write(self, conn: psycopg.Connection) -> int:
        """COPY every buffered version into the open transaction; return how many."""
        n = self._write(conn, self._taken(), self._gen)
        self.versions += n
        return n

    def take(self):
        """The versions buffered so far, handed to the target writer's thread: a call that
        COPYs them into the open transaction (while the stream decodes on)."""
        taken, gen = self._taken(), self._gen
        done = self._free = [False]

        def write(conn: psycopg.Connection) -> None:
            try:
                self.versions += self._write(conn, taken, gen)
            except psycopg.OperationalError as exc:
                raise TransientError(f"target connection lost writing history: {exc}",
                                     "target") from exc
            except psycopg.Error as exc:
                raise ApplyError(f"the target rejected history rows: "
                                 f"{exc.diag.message_primary or exc}") from exc
            finally:
                done[0] = True
        return write

    def clear(self) -> None:
        """Forget the rows not written yet (a rolled-back subtransaction's)."""
        self._taken()

    def committed(self) -> None:
        """The open transaction committed: its versions count (metrics)."""
        for qualname, (n, size) in self._pending.items():
            metrics.HISTORY_VERSIONS.labels(qualname).inc(n)
            metrics.HISTORY_BYTES.labels(qualname).inc(size)
        self._pending.clear()
        if self.reports and self.writer is not None and time.monotonic() >= self._next_report:
            self._next_report = time.monotonic() + report.INTERVAL
            try:
                report.refresh(self.writer.conn)
            except psycopg.Error as exc:  # the gauges can wait; the next write will tell
                log.debug("reading the history's size: %s", exc)

    def forget(self) -> None:
        """A rollback may have undone a history table's DDL: check again at the next write."""
        self._gen += 1
        self._ready.clear()
        self._taken()
        self._free = [True]  # a hand-over the writer skipped (after an error) never runs
        self._pending.clear()


def recorder_for(settings) -> Recorder | None:
    """The stream's recorder, or None when ``--history`` is not given."""
    tables = parse_tables(settings.history)
    if tables is None:
        return None
    from replica.history.compiled import recorder_class  # compiled.py subclasses Recorder
    return recorder_class()(tables, parse_retention(settings.history_retention))


def record_change(rec: Recorder, tw, msg) -> None:
    """An Insert, Update or Delete of ``tw`` as versions (``Recorder.change``)."""
    rec.change(tw, msg)
