"""Versions from the change stream, written with the data in the same target transaction.

Why before netting: a batch (stream/batch.py) keeps only the last change per key, history
needs every one. ``record`` sees each change as the stream routes it (ordinary transactions;
with history on, the sidecar decodes with protocol 1, so a big transaction arrives at its
commit like any other); ``write`` runs in ``TargetWriter.commit`` just before the progress
row, so data, versions and position commit together or not at all (a rollback ``clear``s).

Rows go in by one COPY BINARY per table: pgoutput's binary values are COPY's field format,
and the metadata is encoded here (timestamptz: int8 microseconds since 2000-01-01; pg_lsn:
int8; int4; "char": one byte; text[]: the array binary format). Unchanged-TOAST values ('u')
are stored NULL with their column names in ``_pgml_unchanged``; readers fill them from the
previous version of the key (reading the target's value here would cost a round trip).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from replica import metrics
from replica.errors import ApplyError, TransientError
from replica.history import store

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NULL = b"\xff\xff\xff\xff"
_LEN = struct.Struct(">i").pack
_HDR = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" * 2
_META = struct.Struct(">iqiqiiib").pack  # len 8 time, len 8 lsn, len 4 seq, len 1 op
_TEXT_OID = 25
_OPS = {"I": b"I", "U": b"U", "D": b"D", "T": b"T"}


def micros(t: datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _text_array(names: list[str]) -> bytes:
    body = struct.pack(">iiiii", 1, 0, _TEXT_OID, len(names), 1) + b"".join(
        _LEN(len(b)) + b for b in (n.encode() for n in names))
    return _LEN(len(body)) + body


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


class Recorder:
    """The open target transaction's versions, per history table, until commit."""

    def __init__(self, tables: frozenset[str], retention: timedelta | None) -> None:
        self.tables, self.retention = tables, retention
        self._rows: dict[str, tuple[object, list[bytes]]] = {}  # qualname -> (table, rows)
        self._ready: dict[str, tuple] = {}  # qualname -> columns its history table has
        self._meta = b""
        self._lsn = 0
        self._seq = 0
        self.versions = 0  # written since start
        self._pending: dict[str, list[int]] = {}  # qualname -> [versions, bytes] uncommitted

    def wants(self, qualname: str) -> bool:
        return "*" in self.tables or qualname in self.tables

    def begin(self, final_lsn: int, commit_time: datetime) -> None:
        self._lsn, self._time = final_lsn, micros(commit_time)
        self._seq = 0

    def record(self, tw, op: str, raw: tuple, kinds: str) -> None:
        """One version of a row of ``tw`` (a MirroredTable): its values as pgoutput sent
        them, in the table's column order."""
        entry = self._rows.get(tw.qualname)
        if entry is None:
            entry = self._rows[tw.qualname] = (tw, [])
        cols = tw.layout.columns
        unchanged = [cols[i] for i, k in enumerate(kinds) if k == "u"] if "u" in kinds else []
        meta = _META(8, self._time, 8, self._lsn, 4, self._seq, 1, _OPS[op][0])
        self._seq += 1
        entry[1].append(struct.pack(">h", len(raw) + 5) + b"".join(
            [_NULL if v is None else _LEN(len(v)) + v for v in raw]) + meta
            + (_text_array(unchanged) if unchanged else _NULL))

    def truncate(self, tw) -> None:
        self.record(tw, "T", (None,) * len(tw.layout.columns), "n" * len(tw.layout.columns))

    def write(self, conn: psycopg.Connection) -> int:
        """COPY every buffered version into the open transaction; return how many."""
        n = 0
        for qualname, (tw, rows) in self._rows.items():
            if not rows:
                continue
            cols = tw.layout.columns
            if self._ready.get(qualname) != cols:
                key = [cols[i] for i in tw.layout.key_pos]
                store.ensure(conn, tw.schema, tw.name, key, self.retention)
                self._ready[qualname] = cols
            target = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                sql.Identifier(store.SCHEMA, store.history_name(tw.schema, tw.name)),
                sql.SQL(", ").join(map(sql.Identifier, (*cols, *store.META))))
            data = _HDR + b"".join(rows) + b"\xff\xff"
            with conn.cursor().copy(target) as cp:
                cp.write(data)
            n += len(rows)
            pending = self._pending.setdefault(qualname, [0, 0])
            pending[0] += len(rows)
            pending[1] += len(data)
        self.versions += n
        self.clear()
        return n

    def take(self):
        """The versions buffered so far, handed to the target writer's thread: a call that
        COPYs them into the open transaction (while the stream decodes on)."""
        taken = Recorder(self.tables, self.retention)
        taken._rows, self._rows = self._rows, {}
        taken._ready = self._ready  # shared: only ever used by one thread at a time
        taken._pending = self._pending

        def write(conn: psycopg.Connection) -> None:
            try:
                self.versions += taken.write(conn)
            except psycopg.OperationalError as exc:
                raise TransientError(f"target connection lost writing history: {exc}",
                                     "target") from exc
            except psycopg.Error as exc:
                raise ApplyError(f"the target rejected history rows: "
                                 f"{exc.diag.message_primary or exc}") from exc
        return write

    def clear(self) -> None:
        self._rows.clear()

    def committed(self) -> None:
        """The open transaction committed: its versions count (metrics)."""
        for qualname, (n, size) in self._pending.items():
            metrics.HISTORY_VERSIONS.labels(qualname).inc(n)
            metrics.HISTORY_BYTES.labels(qualname).inc(size)
        self._pending.clear()

    def forget(self) -> None:
        """A rollback may have undone a history table's DDL: check again at the next write."""
        self._ready.clear()
        self._rows.clear()
        self._pending.clear()


def recorder_for(settings) -> Recorder | None:
    """The stream's recorder, or None when ``--history`` is not given."""
    tables = parse_tables(settings.history)
    if tables is None:
        return None
    return Recorder(tables, parse_retention(settings.history_retention))


def record_change(rec: Recorder, tw, msg) -> None:
    """An Insert, Update or Delete as versions: a key change ends the old key's version
    (a D) before the new key's (the new image's unchanged TOAST values, if any, are then
    filled from the new key's previous version: a known limit, docs/history.md)."""
    name = type(msg).__name__
    if name == "Insert":
        rec.record(tw, "I", msg.new_tuple.raw, msg.new_tuple.kinds)
    elif name == "Update":
        old = msg.key_tuple or msg.old_tuple
        if old is not None and tw.layout.keyed and any(
                old.raw[i] != msg.new_tuple.raw[i] for i in tw.layout.key_pos):
            rec.record(tw, "D", old.raw, "n" * len(old.raw))
        rec.record(tw, "U", msg.new_tuple.raw, msg.new_tuple.kinds)
    else:
        old = msg.old_tuple or msg.key_tuple
        rec.record(tw, "D", old.raw, "n" * len(old.raw))
