"""Writing batches into the target: one open transaction, a writer thread, the COMMIT.

Why set-based: a row-at-a-time UPDATE costs a round trip and an executor start per row; a
run of a table written as a few set-based statements (replica/stream/runs.py: COPY BINARY
for new rows, ``= ANY($1)`` deletes, a stage table for the rest) does a whole run at once
(PERF-NOTES: batching is the lever where apply is the bound). This module is the part
around it: ``apply_change`` (how a change joins a run), the thread that writes runs while
the stream decodes, error translation, metrics and the COMMIT.

Everything one ``TargetWriter`` writes stays in one open target transaction until
``commit``, which records the source position in the progress row in that same transaction
(DESIGN.md invariant 1). A rollback forgets it all; the source re-sends it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg
from psycopg import sql

from decoder import Message, accel
from replica import metrics
from replica.errors import ApplyError, NullRejected, TransientError
from replica.stream import pipelined
from replica.stream.batch import TableBatch, encode
from replica.stream.runs import RunWriter
from replica.stream.tables import MOVE_FROM, MOVE_TO, MirroredTable
from replica.target import progress

_OPS = ("insert", "update", "delete", "truncate")
SLOW_WRITE_S = 30.0  # a run's write longer than this is logged (never silently slow)
log = logging.getLogger("pgml_replica")
_COMMIT = object()  # a queue item's tag: the handed COMMIT (TargetWriter.commit_async)


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
        self.runs = RunWriter(conn, skip_locked)  # what writes a run, on this connection
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # back-pressure on the decoder
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._committing: threading.Event | None = None  # set when the handed COMMIT ended
        self._committed = False  # ... and whether it committed
        self.busy_seconds = 0.0  # time spent writing in the open transaction
        # written, not yet committed: relation id -> (table, [insert, update, delete, truncate])
        self._ops: dict[int, tuple[MirroredTable, list[int]]] = {}
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
                     done: threading.Event, versions=None, piped=None) -> None:
        """The handed COMMIT (its last versions first), in the writer's thread; skipped after
        an error (the batch is then rolled back by the stream). ``done`` is set either way,
        last."""
        try:
            if self._error is None:
                if versions is not None:
                    versions(self.conn)
                if piped:  # a small batch's runs and COMMIT in one round trip
                    pipelined.commit(self, piped, end_lsn, commit_time)
                else:
                    self._commit_sql(end_lsn, commit_time)
                self._committed = True
                self._after_commit()
        finally:
            done.set()

    def forget_stage(self, tw: MirroredTable) -> None:
        """The table's columns changed: its stage must be built again."""
        self.sync()
        self.runs.forget(tw)

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
        with self.target_errors([tw]):
            sent = self.runs.write(tw, b)
        self._count(tw, b.ops)
        b.ops = [0, 0, 0, 0]
        b.clear()
        took = time.perf_counter() - t0
        if took > SLOW_WRITE_S:
            log.warning("writing a run of %d rows into %s took %.0f s", sent, tw.qualname, took)
        self.busy_seconds += took
        return sent

    @contextmanager
    def target_errors(self, tables: list[MirroredTable], during: str = "") -> Iterator[None]:
        """psycopg's errors from writing ``tables`` as the stream's errors: a lock wait or a
        lost connection is transient (rolled back, replayed), a NULL the target rejects is
        NullRejected (the runner relaxes that column), anything else an ApplyError. The
        table named is the one the server names, else the only one."""
        try:
            yield
        except psycopg.Error as exc:
            d = exc.diag
            tw = next((t for t in tables if t.name == d.table_name),
                      tables[0] if len(tables) == 1 else None)
            what = tw.qualname if tw is not None else "the batch's tables"
            if isinstance(exc, psycopg.errors.LockNotAvailable):
                raise TransientError(f"a write to {what} waited past lock_timeout for a lock "
                                     "on the target; rolled back, replaying", "target") from exc
            if isinstance(exc, psycopg.OperationalError):
                raise TransientError(f"target connection lost{during}: {exc}",
                                     "target") from exc
            if isinstance(exc, psycopg.errors.NotNullViolation):
                raise NullRejected(d.schema_name or (tw.schema if tw else ""),
                                   d.table_name or (tw.name if tw else ""), d.column_name or "",
                                   f"the target rejected a NULL in {what}: "
                                   f"{d.message_primary}") from exc
            raise ApplyError(f"the target rejected changes to {what}: "
                             f"{d.message_primary or exc}") from exc

    def _count(self, tw: MirroredTable, ops: list[int]) -> None:
        mine = self._ops.setdefault(tw.relation_id, (tw, [0, 0, 0, 0]))[1]
        for i, n in enumerate(ops):
            mine[i] += n

    def move(self, tw: MirroredTable, b: TableBatch, old_raw: tuple, new_raw: tuple,
             kinds: str) -> None:
        """A key change whose new image keeps unchanged-TOAST values only the target has:
        write the run ``b`` so far, then move the row on the target."""
        self.flush(tw, b)
        t0 = time.perf_counter()
        try:
            self.runs.stage(tw, encode([(MOVE_FROM, 0, old_raw), (MOVE_TO, 0, new_raw)],
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

    def commit_async(self, end_lsn: int, commit_time: datetime | None,
                     piped: list | None = None) -> None:
        """Hand the COMMIT to the writer's thread, behind what was submitted before (the
        versions not handed over yet go first, taken here: the stream's thread records the
        next batch's meanwhile). The caller takes the outcome with ``commit_result`` before
        it hands over the next one. ``piped``: a small batch's last runs (table, run),
        written with the COMMIT in one pipeline (stream/pipelined.py)."""
        if self._committing is not None:
            raise RuntimeError("a COMMIT handed over while the last one is in flight")
        if self._error is not None:
            self.sync()  # raises it: nothing is committed after a failed write
        # a plain Recorder's versions (a streamed writer's commits wait), in the COMMIT's
        # own queue item: one item less in a short queue the stream would block on
        versions = self.history.take() if self.history is not None else None
        self._committed, self._committing = False, threading.Event()
        self._start()
        self._queue.put((_COMMIT, (end_lsn, commit_time, self._committing, versions, piped)))

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
        self.runs.committed()
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
        self.runs.rolled_back_to_savepoint()

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
        self.runs.reset()
        self._ops.clear()
        self.busy_seconds = 0.0
