"""Writing batches into the target: COPY BINARY for new rows, set operations for the rest.

Why set-based: a row-at-a-time UPDATE costs a round trip and an executor start per row; one
COPY into a temporary stage table and one UPDATE/DELETE joined on the primary key does a
whole run in a few statements (PERF-NOTES: batching is the lever where apply is the bound).
Rows first seen as an Insert go straight into the table by COPY, which is how a bulk load
wants them.

Everything one ``TargetWriter`` writes stays in one open target transaction until
``commit``, which records the source position in the progress row in that same transaction
(DESIGN.md invariant 1). A rollback forgets it all; the source re-sends it.

Stage tables (``pg_temp.pgml_replica_stage_<relation id>``) live as long as the connection,
``ON COMMIT DELETE ROWS``; within one transaction a reused stage is truncated first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from decoder import Message, accel
from replica import metrics
from replica.errors import ApplyError, NullRejected, TransientError
from replica.stream.batch import DELETE, FRESH, UPDATE, TableBatch, encode
from replica.stream.statistics import analyze_if_stale
from replica.stream.tables import MOVE_FROM, MOVE_TO, MirroredTable
from replica.target import progress

# Up to this many row images, new rows also go through the stage (one COPY and one round
# trip in all); bigger runs COPY new rows straight into the table (no double write).
SMALL_RUN = 1000
_OPS = ("insert", "update", "delete", "truncate")
SLOW_WRITE_S = 30.0  # a run's write longer than this is logged (never silently slow)
log = logging.getLogger("pgml_replica")
_COMMIT = object()  # a queue item's tag: the handed COMMIT (TargetWriter.commit_async)


# The target's element and array type per column; arrays of arrays (typarray 0) cannot.
_ARRAY_TYPES_SQL = (
    "SELECT a.attname, t.oid, t.typarray FROM pg_attribute a JOIN pg_type t ON t.oid ="
    " a.atttypid WHERE a.attrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON"
    " n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s) AND a.attnum > 0"
    " AND NOT a.attisdropped")
_ARRAY_CLASSES: dict[int, tuple[type, type]] = {}


def _array_class(array_oid: int) -> tuple[type, type]:
    """A bytes subclass whose values psycopg sends as-is, binary, typed ``array_oid``."""
    found = _ARRAY_CLASSES.get(array_oid)
    if found is None:
        cls = type(f"BinaryArray{array_oid}", (bytes,), {})
        dumper = type(f"BinaryArray{array_oid}Dumper", (Dumper,), {
            "oid": array_oid, "format": Format.BINARY, "dump": lambda self, obj: obj})
        found = _ARRAY_CLASSES[array_oid] = (cls, dumper)
    return found


def apply_change(msg: Message, table: MirroredTable, batch: TableBatch,
                 writer: TargetWriter) -> None:
    """How one change joins a table's run - the one rule for ordinary transactions and for
    streamed ones replayed at their commit. An update that moves a row's key to a key the
    run cannot net (batch.py) is written to the target at once, in order (the netting itself:
    ``TableBatch.absorb``, inlined here - one Python call less per change)."""
    fast = accel.fast
    if (fast is not None and fast.net(batch, msg)) or batch.absorb_pure(msg):
        return
    old = msg.old_tuple or msg.key_tuple  # (an Update: only it can return False)
    writer.move(table, batch, old.raw, msg.new_tuple.raw, msg.new_tuple.kinds)


class TargetWriter:
    """One target connection holding one open transaction of applied changes.

    ``submit`` hands a run to a background thread that writes it while the stream decodes
    the next one: the target executes while we decode, instead of each waiting for the
    other (the thread mostly waits on the socket, so the GIL is free meanwhile). Every
    other method first waits for that thread (``sync``), so the connection is only ever
    used by one thread at a time, and errors surface in the stream's thread.

    ``commit_async`` hands the COMMIT itself to that thread, behind the batch's runs and
    versions in the same queue (order kept): the stream decodes the next batch meanwhile and
    takes the outcome with ``commit_result`` - only then is the batch applied (flush LSN,
    metrics). One COMMIT in flight at a time. A failure skips everything queued after it
    (the next batch's runs go with the rollback) and is raised at the next interaction.
    """

    def __init__(self, conn: psycopg.Connection, slot: str, skip_locked: bool = False) -> None:
        self.conn = conn
        self.slot = slot
        self.skip_locked = skip_locked  # the main connection: see _multiset_delete
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # back-pressure on the decoder
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._committing: threading.Event | None = None  # set when the handed COMMIT ended
        self._committed = False  # ... and whether it committed
        self.busy_seconds = 0.0  # time spent writing in the open transaction
        self._stages_ready: set[int] = set()  # relation ids with a committed stage table
        self._stages_new: set[int] = set()  # created in the open transaction
        self._dirty: set[int] = set()  # stages holding rows in the open transaction
        # written, not yet committed: relation id -> (table, [insert, update, delete, truncate])
        self._ops: dict[int, tuple[MirroredTable, list[int]]] = {}
        self._array_oids: set[int] = set()  # array dumpers registered on this connection
        self.history = None  # replica.history.recorder.Recorder: versions written at commit

    # -- background writing -------------------------------------------------------------

    def submit(self, tw: MirroredTable, b: TableBatch) -> None:
        """Write ``b`` in the background; the caller must not touch ``b`` again."""
        if self._error is not None:
            self.sync()
        self._start()
        self._queue.put((tw, b))

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="target-writer",
                                             daemon=True)
            self._thread.start()

    def sync(self) -> None:
        """Wait until everything submitted is written; raise what went wrong."""
        if self._thread is not None:
            self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if item[0] is _COMMIT:
                    self._commit_step(*item[1])
                elif self._error is None:
                    if item[0] is None:  # a call of its own (history.Recorder.take)
                        item[1](self.conn)
                    else:
                        self._flush(*item)
            except BaseException as exc:
                self._error = exc
            finally:
                self._queue.task_done()

    def _commit_step(self, end_lsn: int, commit_time: datetime | None,
                     done: threading.Event, versions=None) -> None:
        """The handed COMMIT (its last versions first), in the writer's thread; skipped after
        an error (the batch is then rolled back by the stream). ``done`` is set either way,
        last."""
        try:
            if self._error is None:
                if versions is not None:
                    versions(self.conn)
                self._commit_sql(end_lsn, commit_time)
                self._committed = True
                self._after_commit()
        finally:
            done.set()

    def forget_stage(self, tw: MirroredTable) -> None:
        """The table's columns changed: its stage must be built again."""
        self.sync()
        if tw.relation_id in self._stages_ready or tw.relation_id in self._stages_new:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tw.stage))
        self._stages_ready.discard(tw.relation_id)
        self._stages_new.discard(tw.relation_id)
        self._dirty.discard(tw.relation_id)
        tw._stmts.clear()
        tw.array_types = None

    def flush(self, tw: MirroredTable, b: TableBatch | None = None) -> int:
        """Write a run of the table (its own by default) into the open transaction, in this
        thread, after what was submitted; return the row images sent."""
        self.sync()
        return self._flush(tw, tw.batch if b is None else b)

    def _flush(self, tw: MirroredTable, b: TableBatch) -> int:
        if b.empty:
            self._count(tw, b.ops)
            b.ops = [0, 0, 0, 0]
            return 0
        t0 = time.perf_counter()
        try:
            sent = self._write(tw, b)
        except psycopg.errors.LockNotAvailable as exc:
            raise TransientError(f"a write to {tw.qualname} waited past lock_timeout for a "
                                 "lock on the target; rolled back, replaying", "target") from exc
        except psycopg.OperationalError as exc:
            raise TransientError(f"target connection lost: {exc}", "target") from exc
        except psycopg.errors.NotNullViolation as exc:
            d = exc.diag
            raise NullRejected(d.schema_name or tw.schema, d.table_name or tw.name,
                               d.column_name or "", f"the target rejected a NULL in "
                               f"{tw.qualname}: {d.message_primary}") from exc
        except psycopg.Error as exc:
            raise ApplyError(f"the target rejected changes to {tw.qualname}: "
                             f"{exc.diag.message_primary or exc}") from exc
        self._count(tw, b.ops)
        b.ops = [0, 0, 0, 0]
        b.clear()
        took = time.perf_counter() - t0
        if took > SLOW_WRITE_S:
            log.warning("writing a run of %d rows into %s took %.0f s", sent, tw.qualname, took)
        self.busy_seconds += took
        return sent

    def _count(self, tw: MirroredTable, ops: list[int]) -> None:
        mine = self._ops.setdefault(tw.relation_id, (tw, [0, 0, 0, 0]))[1]
        for i, n in enumerate(ops):
            mine[i] += n

    def _write(self, tw: MirroredTable, b: TableBatch) -> int:
        """COPY into the stage (and, for a big run, new rows straight into the table), then
        every set operation in one round trip (a multi-statement without parameters)."""
        conn = self.conn
        if tw.layout.keyed:  # one pass over the run (compiled where it can be)
            fresh, deletes, updates, staged, patterns = b.split()
            if (deletes or updates) and not b.truncated:
                deletes, updates, replaced = self._write_arrays(tw, deletes, updates)
                fresh += replaced  # (split's own list) updated rows go in as new ones
            if deletes or updates:
                staged = [(DELETE, 0, r) for r in deletes] + [(UPDATE, 0, r) for r in updates] \
                    + staged
        else:
            staged, patterns = b.staged()
            fresh = b.fresh_rows()
        via_stage = bool(fresh) and len(fresh) + len(staged) <= SMALL_RUN
        rows = staged + [(FRESH, 0, r) for r in fresh] if via_stage else staged
        if rows:
            self._stage(tw, encode(rows, extra=True))
        stmts = [sql.SQL("TRUNCATE {}").format(tw.ident)] if b.truncated else []
        if staged and tw.layout.keyed:
            stmts.append(tw.stmt("delete"))
            stmts.append(tw.stmt("update"))
            stmts += [tw.stmt("patch", kinds, code) for kinds, code in patterns.items()]
        if via_stage:
            stmts.append(tw.stmt("insert_staged"))
        stmts = [st for st in stmts if st is not None]
        if stmts:
            conn.execute(sql.SQL("; ").join(stmts))
        if fresh and not via_stage:
            with conn.cursor().copy(tw.stmt("copy_table")) as cp:
                cp.write(encode(fresh))
        if staged and not tw.layout.keyed:  # after the inserts: a delete may match one
            self._multiset_delete(tw, staged)
        return len(staged) + len(fresh)

    def _write_arrays(self, tw: MirroredTable, deletes: list, updates: list
                      ) -> tuple[list, list, list]:
        """Deletes and full-row updates as one ``DELETE ... WHERE key = ANY($1)`` with binary
        array parameters instead of the stage. A full-row update replaces the row whole, so
        its key is deleted here with the deletes' and its new image COPYed in with the run's
        new rows (returned third): 1.3-1.6x the rows/s of ``UPDATE ... FROM unnest`` and a
        third less target CPU per row (benchmarks/update_forms.py; why that is the same for a
        mirror: docs/sidecar.md, Apply). An update whose key the target does not hold is
        dropped, as the UPDATE matched nothing. Returns the deletes and updates still for
        the stage (a key column's type cannot travel as an array) and the images to COPY."""
        types = tw.array_types
        if types is None:
            found = {name: (elem, arr) for name, elem, arr in self.conn.execute(
                _ARRAY_TYPES_SQL, (tw.schema, tw.name))}
            types = tw.array_types = tuple(
                found.get(c, (0, 0)) if found.get(c, (0, 0))[1] else (0, 0)
                for c in tw.layout.columns)
        key_pos = tw.layout.key_pos
        if not all(types[i][1] for i in key_pos):
            return deletes, updates, []
        images = deletes + updates if deletes and updates else deletes or updates
        if updates or len(key_pos) > 1:  # (an unnest join, or rows that were UPDATEd before)
            analyze_if_stale(self.conn, tw, len(images))
        arrays = accel.column_arrays(images, key_pos, [types[i][0] for i in key_pos])
        params = [self._array(types[i], a) for i, a in zip(key_pos, arrays, strict=True)]
        if not updates:
            self.conn.execute(tw.stmt("delete_any"), params)
            return [], [], []
        cur = self.conn.cursor(binary=True)  # the keys found: read only when some were not
        if cur.execute(tw.stmt("replace_any"), params).rowcount != len(images):
            res = cur.pgresult
            found = {tuple(res.get_value(r, c) for c in range(len(key_pos)))
                     for r in range(res.ntuples)}
            updates = [raw for raw in updates if tuple(raw[i] for i in key_pos) in found]
        return [], [], updates

    def _array(self, types: tuple[int, int], data: bytes) -> bytes:
        """``data`` (a binary array of element type ``types[0]``) as a parameter psycopg
        sends as-is, typed ``types[1]``."""
        cls, dumper = _array_class(types[1])
        if types[1] not in self._array_oids:
            self.conn.adapters.register_dumper(cls, dumper)
            self._array_oids.add(types[1])
        return cls(data)

    def _multiset_delete(self, tw: MirroredTable, staged: list) -> None:
        """Delete n of each set of equal rows; fewer found means the target differs - or, with
        skip_locked, that a streamed transaction holds them: either way never go on wrong."""
        what = "multiset_delete_skip_locked" if self.skip_locked else "multiset_delete"
        deleted = self.conn.execute(tw.stmt(what)).rowcount
        wanted = sum(n for _, n, _ in staged)
        if deleted != wanted and self.skip_locked:
            raise TransientError(f"{tw.qualname}: {deleted} of {wanted} equal rows to delete "
                                 "were free (others are held by a streamed transaction); "
                                 "rolled back, replaying", "target")
        if deleted != wanted:
            raise ApplyError(f"{tw.qualname}: the target holds {deleted} of the {wanted} rows "
                             "the source deleted - it differs from the source; run with "
                             "--resnapshot")

    def _stage(self, tw: MirroredTable, data: bytes) -> None:
        rid = tw.relation_id
        if rid not in self._stages_ready and rid not in self._stages_new:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tw.stage))
            self.conn.execute(tw.stmt("create_stage"))
            self._stages_new.add(rid)
        elif rid in self._dirty:
            self.conn.execute(sql.SQL("TRUNCATE {}").format(tw.stage))
        with self.conn.cursor().copy(tw.stmt("copy_stage")) as cp:
            cp.write(data)
        self._dirty.add(rid)

    def move(self, tw: MirroredTable, b: TableBatch, old_raw: tuple, new_raw: tuple,
             kinds: str) -> None:
        """A key change whose new image keeps unchanged-TOAST values only the target has:
        write the run ``b`` so far, then move the row on the target."""
        self.flush(tw, b)
        t0 = time.perf_counter()
        try:
            self._stage(tw, encode([(MOVE_FROM, 0, old_raw), (MOVE_TO, 0, new_raw)],
                                   extra=True))
            self.conn.execute(tw.stmt("move", kinds))
        except psycopg.OperationalError as exc:
            raise TransientError(f"target connection lost: {exc}", "target") from exc
        except psycopg.Error as exc:
            raise ApplyError(f"the target rejected a key change in {tw.qualname}: "
                             f"{exc.diag.message_primary or exc}") from exc
        self.busy_seconds += time.perf_counter() - t0

    def ping(self) -> None:
        """Between transactions: is the target still there?"""
        self.sync()
        try:
            self.conn.execute("SELECT 1")
            self.conn.rollback()
        except psycopg.OperationalError as exc:
            raise TransientError(f"target connection lost: {exc}", "target") from exc

    def commit(self, end_lsn: int, commit_time: datetime | None) -> None:
        """Commit everything written, with the source position it reaches, and wait."""
        if self._committing is not None:
            self.commit_result(wait=True)
        self.sync()
        if self.history is not None:
            self._write_history()
        self._commit_sql(end_lsn, commit_time)
        self._after_commit()

    def commit_async(self, end_lsn: int, commit_time: datetime | None) -> None:
        """Hand the COMMIT to the writer's thread, behind what was submitted before (the
        versions not handed over yet go first, taken here: the stream's thread records the
        next batch's meanwhile). The caller takes the outcome with ``commit_result`` before
        it hands over the next one."""
        if self._committing is not None:
            raise RuntimeError("a COMMIT handed over while the last one is in flight")
        if self._error is not None:
            self.sync()  # raises it: nothing is committed after a failed write
        # a plain Recorder's versions (a streamed writer's commits wait), in the COMMIT's
        # own queue item: one item less in a short queue the stream would block on
        versions = self.history.take() if self.history is not None else None
        self._committed, self._committing = False, threading.Event()
        self._start()
        self._queue.put((_COMMIT, (end_lsn, commit_time, self._committing, versions)))

    @property
    def committing(self) -> bool:
        return self._committing is not None

    def commit_result(self, wait: bool) -> bool | None:
        """The handed COMMIT's outcome: None while it runs (``wait`` False), True once it
        committed; a failure is raised (the writer's error). False: none in flight."""
        done = self._committing
        if done is None:
            return False
        if not done.is_set():
            if not wait:
                return None
            while not done.wait(1.0):
                if self._thread is None or not self._thread.is_alive():
                    break  # (never: the thread sets it last) - do not hang on a dead one
        self._committing = None
        if self._committed:
            return True
        self.sync()  # raises the writer's error
        raise TransientError("the target COMMIT handed to the writer's thread did not "
                             "complete; rolled back, replaying", "target")

    def _commit_sql(self, end_lsn: int, commit_time: datetime | None) -> None:
        t0 = time.perf_counter()
        try:  # one round trip: the progress row and the COMMIT
            self.conn.execute(progress.advance_sql(self.slot, end_lsn, commit_time)
                              + sql.SQL("; COMMIT"))
        except psycopg.OperationalError as exc:
            self._reset()
            raise TransientError(f"target connection lost at commit: {exc}", "target") from exc
        self.busy_seconds += time.perf_counter() - t0

    def _after_commit(self) -> None:
        if self.history is not None:
            try:
                self.history.committed()
            except Exception as exc:  # counters only: the COMMIT stands
                log.warning("history counters after a commit: %s", exc)
        metrics.APPLY_SECONDS.observe(self.busy_seconds)
        for tw, ops in self._ops.values():
            for op, n in zip(_OPS, ops, strict=True):
                if n:
                    metrics.ROWS_APPLIED.labels(tw.qualname, op).inc(n)
        self._stages_ready |= self._stages_new
        self._reset()

    def _write_history(self) -> None:
        """The versions of the changes applied, in this transaction (replica/history)."""
        try:
            self.history.write(self.conn)
        except psycopg.OperationalError as exc:
            self._reset()
            raise TransientError(f"target connection lost writing history: {exc}",
                                 "target") from exc
        except psycopg.Error as exc:
            raise ApplyError(f"the target rejected history rows: "
                             f"{exc.diag.message_primary or exc}") from exc

    def rollback(self) -> None:
        """Throw the open transaction away. A COMMIT still in flight ends first (its
        outcome stays for ``commit_result``): its counters must not race the forget."""
        done = self._committing
        if done is not None:
            done.wait(30)
        if self.history is not None:
            self.history.forget()
        try:
            self.sync()
        except BaseException:
            pass  # whatever failed, the transaction is being thrown away
        try:
            self.conn.rollback()
        except psycopg.Error:
            pass  # the connection is gone; the transaction with it
        self._reset()

    def savepoint(self, name: str) -> None:
        self.sync()
        self.conn.execute(sql.SQL("SAVEPOINT {}").format(sql.Identifier(name)))

    def rollback_to(self, name: str) -> None:
        """Undo a subtransaction's writes (stage tables may hold rows of it: truncate first)."""
        self.sync()
        self.conn.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(name)))
        self._stages_new.clear()  # may be undone with it: _stage rebuilds (DROP IF EXISTS)
        self._dirty = set(self._stages_ready)

    def shutdown(self) -> None:
        """End the background thread (the connection stays the caller's)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)
            self._thread = None

    def close(self) -> None:
        self.rollback()
        self.shutdown()
        self.conn.close()

    def _reset(self) -> None:
        self._stages_new.clear()
        self._dirty.clear()
        self._ops.clear()
        self.busy_seconds = 0.0
