"""The streaming loop: pgoutput messages in, batched target transactions out.

Why it is thin: what to acknowledge and when to commit is decided by ``flow.FlowControl``;
how a run of changes becomes SQL is ``batch`` + ``apply``; which run a change joins, or
whether it is dropped, is ``changes.ChangeSteps``. This module reads the socket, routes
each message, and keeps the transaction rules:

- A transaction whose commit starts below the target's progress LSN is already applied
  (invariant 1): it is skipped, and its changes dropped (changes.py).
- A Relation message re-shapes the target table before the next row of it is applied
  (invariant 4), inside the open target transaction (relations.py).
- Protocol 2: a transaction streamed before its commit goes to its own target transaction
  (inflight.py) and commits at Stream Commit, after the batch of what committed before it
  (protocol2.py).
- Anything the apply path cannot handle raises before the transaction holding it commits;
  the open target transaction is rolled back and nothing about it is acknowledged
  (invariant 6).
- A batch's COMMIT runs in the target writer's thread (``_commit_batch`` hands it over)
  while this loop decodes the next batch; it counts as applied only when its outcome is
  taken (``_reap``), and at most one is in flight. Whatever needs the target with no
  transaction of ours committing (schema changes, table copies, streamed transactions,
  shutdown) takes the outcome first (docs/ARCHITECTURE.md, "Exactly once").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from decoder import (
    Begin,
    Commit,
    DecodeError,
    Decoder,
    Delete,
    Insert,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
    accel,
    format_lsn,
    split_frame,
    standby_status_update,
)
from replica import metrics
from replica.config import Settings
from replica.connect import Watchdog, bounded, connect
from replica.errors import ProtocolError, TransientError
from replica.history.recorder import recorder_for
from replica.source.catalog import TableKey
from replica.source.replconn import ReplicationConnection
from replica.state import Phase, SidecarState
from replica.stream import pipelined
from replica.stream.apply import TargetWriter
from replica.stream.batch import TableBatch
from replica.stream.changes import ChangeSteps
from replica.stream.flow import DEAD, PING, FlowControl, ReadPacing, on_silence
from replica.stream.inflight import StreamedApply
from replica.stream.negotiate import negotiate
from replica.stream.protocol2 import StreamedSteps
from replica.stream.relations import Relations
from replica.stream.tables import MirroredTable

log = logging.getLogger("pgml_replica")


class Stream(ChangeSteps, StreamedSteps):
    """One replication session: START_REPLICATION until stopped or disconnected."""

    def __init__(self, *, repl: ReplicationConnection, source: psycopg.Connection,
                 target: psycopg.Connection, settings: Settings, state: SidecarState,
                 start_lsn: int, synced: dict[TableKey, int], stop: threading.Event,
                 sync_tables: Callable[[set[TableKey], Callable[[], None]], dict[TableKey, int]],
                 poll: Callable[[], set[TableKey]]) -> None:
        self.repl, self.source, self.settings, self.state = repl, source, settings, state
        self.start_lsn = start_lsn
        self.stop = stop
        self.sync_tables, self.poll = sync_tables, poll
        target.execute(self._lock_timeout())  # every target write waits a bounded time
        target.commit()
        self.writer = TargetWriter(target, settings.slot, skip_locked=True)
        Watchdog(target, settings.target, "target", settings.receive_timeout)
        self.history = recorder_for(settings)  # None unless --history
        if self.history is not None:
            self.history.attach(self.writer)
        self.flow = FlowControl(applied_lsn=start_lsn, status_interval=settings.status_interval,
                                batch_max_rows=settings.batch_max_rows,
                                batch_max_seconds=settings.batch_max_seconds)
        self.negotiated = negotiate(source.info.server_version, settings.protocol,
                                    settings.origin)
        self.decoder = Decoder(protocol_version=self.negotiated.protocol)
        self.streamed = StreamedApply(self._new_writer, settings.segment_rows, self.history)
        self.last_commit_lsn = start_lsn  # transactions committing from now on are past it
        self.relations = Relations(source, synced, applied_lsn=start_lsn)
        self.tables = self.relations.tables  # relation id -> MirroredTable
        self.dirty: dict[int, MirroredTable] = {}  # tables with absorbed, unwritten changes
        self.final_lsn = 0
        self.xid = 0
        self.skip_txn = False
        self.txn_rows = 0
        self.unwritten = 0
        self.next_poll = time.monotonic() + settings.publication_poll_seconds
        self.pacing = ReadPacing()
        self.last_heard = time.monotonic()  # when the source last sent anything
        self.pinged = False
        self._handlers = {Begin: self._begin, Commit: self._commit, Relation: self._relation,
                          Insert: self._change, Update: self._change, Delete: self._change,
                          Truncate: self._truncate, StreamStart: self._stream_start,
                          StreamStop: self._stream_stop, StreamCommit: self._stream_commit,
                          StreamAbort: self._stream_abort}

    def _new_writer(self) -> TargetWriter:
        conn = connect(self.settings.target, "target", "stream", autocommit=False)
        conn.execute(self._lock_timeout())
        Watchdog(conn, self.settings.target, "target", self.settings.receive_timeout)
        return TargetWriter(conn, self.settings.slot)

    def _lock_timeout(self) -> str:
        """A lock wait on the target ends in an error, a rollback and a replay: the stream's
        target transactions can wait on each other in a way PostgreSQL cannot see (the
        holder commits only when this loop reads its Stream Commit)."""
        return f"SET lock_timeout = {int(self.settings.lock_timeout * 1000)}"

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        s, n = self.settings, self.negotiated
        self.repl.start(s.slot, self.start_lsn, {"proto_version": str(n.protocol),
                                                 "publication_names": s.publication,
                                                 **n.options})
        log.info("streaming slot %s from %s (%s; hot path %s)", s.slot,
                 format_lsn(self.start_lsn), n.describe(), accel.describe())
        self.state.protocol, self.state.stream_options = n.protocol, dict(n.options)
        self.state.phase = Phase.STREAMING
        self.state.source_connected = self.state.target_connected = True
        metrics.CONNECTED.labels("source").set(1)
        metrics.CONNECTED.labels("target").set(1)
        read, handlers, flow = self.repl.read_buffer, self._handlers, self.flow
        decoder = self.decoder
        decode = decoder.decode
        # compiled: a change straight out of libpq's buffer (no copy of the frame), None for
        # anything else, which takes the pure path below (decoder/accel.py)
        frame_change = accel.fast.frame_change if accel.fast is not None else None
        stop_deadline = None
        try:
            while True:
                if self.stop.is_set():
                    if not flow.in_txn:
                        break
                    stop_deadline = stop_deadline or time.monotonic() + 10
                    if time.monotonic() > stop_deadline:  # give up the transaction in hand
                        break
                data = read(0)
                if data is None:
                    data = self._next()
                    if data is None:
                        continue
                msg = frame_change(data, decoder.stream_xid) if frame_change else None
                if msg is None:
                    try:
                        frame = split_frame(bytes(data))  # XLogData's payload, or a keepalive
                        msg = decode(frame) if type(frame) is bytes else None
                    except DecodeError as exc:
                        raise ProtocolError(f"undecodable replication message: {exc}") from exc
                if msg is not None:
                    handler = handlers.get(type(msg))
                    if handler is not None:
                        handler(msg)
                else:
                    flow.keepalive(frame.wal_end, frame.reply_requested)
                    self.state.received_lsn = flow.received_lsn
                    self.state.last_message_at = time.monotonic()
                    if frame.reply_requested:
                        self._feedback(time.monotonic())
        except BaseException:
            self._rollback()
            self.streamed.close()
            self.writer.shutdown()
            raise
        try:
            if flow.in_txn:
                self._rollback()
            else:
                if flow.pending_txns:
                    self._commit_batch()
                self._reap(wait=True)  # the final feedback names only what committed
        except BaseException:
            self._rollback()
            raise
        finally:
            self.streamed.close()  # in-progress transactions come again after a restart
            self.writer.shutdown()
        self._feedback(time.monotonic(), force=True)

    def _next(self) -> bytes | memoryview | None:
        """The socket had nothing at once: let a burst collect (pacing), else do the idle
        work and wait until something is due. The only place the loop waits."""
        repl, pacing = self.repl, self.pacing
        wait = 0.01  # the socket has data: read() returns at once
        if not repl.readable(0):
            if pacing.hot:  # let the walsender fill it, then take a burst at once
                self.last_heard = time.monotonic()
                time.sleep(pacing.pause)
            if not pacing.hot or not repl.readable(0):
                pacing.hot = False  # nothing for a while: commit, reply, look around
                self._idle()
                wait = max(self.flow.wait_seconds(time.monotonic()), 0.001)
        data = repl.read_buffer(wait)
        if data is not None:
            pacing.hot, self.pinged = True, False
            self.last_heard = time.monotonic()
        return data

    def _idle(self) -> None:
        """Nothing to read: commit what is in hand, copy waiting tables, send feedback, and
        notice a source that fell silent."""
        now = time.monotonic()
        self._silence(now)
        if self.flow.committing:
            self._reap(wait=False)
        if self.flow.batch_due(now, idle=True):
            self._commit_batch()
        self._boundary(now)
        if self.flow.feedback_due(now):
            self._feedback(now)

    def _silence(self, now: float) -> None:
        silent = now - self.last_heard
        action = on_silence(silent, self.settings.receive_timeout, self.pinged)
        if action == PING:
            written, flushed, applied = self.flow.feedback(now)
            self.repl.send(standby_status_update(written, flushed, applied,
                                                 reply_requested=True))
            self.pinged = True
        elif action == DEAD:
            raise TransientError(
                f"no message from the source for {silent:.0f} s (receive timeout "
                f"{self.settings.receive_timeout:g} s, a reply was asked for at half of it): "
                "the connection or the network path to the source is dead; reconnecting",
                "source")

    def _boundary(self, now: float) -> None:
        """Between target transactions: look at the source, copy tables that wait (not while
        a streamed transaction holds locks a copy would wait for)."""
        if self.flow.in_txn or self.flow.pending_txns or self.streamed.in_flight:
            return
        if now < self.next_poll and not self.relations.pending_sync:
            return
        self._reap(wait=True)  # a COMMIT in flight ends before the target is used here
        if now >= self.next_poll:
            self.next_poll = now + self.settings.publication_poll_seconds
            with bounded(self.source, max(self.settings.receive_timeout, 5)):
                keys = self.poll()  # a source that stopped answering is a lost one
            self.relations.published(keys)
            self.writer.ping()  # an idle target that restarted is noticed here
        if self.relations.pending_sync:
            self._sync_pending()

    def _feedback(self, now: float, force: bool = False) -> None:
        if self.flow.committing:  # its outcome may move the flush position
            self._reap(wait=False)
        if not force and not self.flow.feedback_due(now):
            return
        written, flushed, applied = self.flow.feedback(now)
        self.repl.send(standby_status_update(written, flushed, applied))
        self.state.flushed_lsn = flushed
        # WAL up to the flush position holds nothing more for the target: for lag, that
        # is applied (an idle slot is caught up, not lagging behind its keepalives)
        self.state.applied_lsn = max(self.state.applied_lsn, flushed)
        metrics.FLUSHED_LSN.set(flushed)

    # -- transactions --------------------------------------------------------------------

    def _begin(self, msg: Begin) -> None:
        self.final_lsn = msg.final_lsn
        self.xid = msg.xid
        self.skip_txn = msg.final_lsn < self.start_lsn
        self.txn_rows = 0
        if self.history is not None:
            self.history.begin(msg.final_lsn, msg.commit_time)
        self.flow.begin(time.monotonic())

    def _commit(self, msg: Commit) -> None:
        flow = self.flow
        self.last_commit_lsn = msg.end_lsn
        if flow.committing:  # the last batch's COMMIT may have ended: take it
            self._reap(wait=False)
        if self.skip_txn:
            self.skip_txn = False
            flow.skipped()
            metrics.TRANSACTIONS_SKIPPED.inc()
            return
        if self.relations.suspects:  # storage this transaction changed: truncated or not
            self.relations.committed(self.xid, self.writer)
        flow.commit(msg.end_lsn, msg.commit_time, self.txn_rows)
        now = self.state.last_message_at = time.monotonic()
        if flow.batch_due(now):
            self._commit_batch()
            self._boundary(now)
        if flow.feedback_due(now):
            self._feedback(now)

    def _commit_batch(self) -> None:
        """Hand the batch to the writer's thread - its last runs, its versions, then the
        progress row and COMMIT, in that queue's order - and decode on into fresh runs. The
        previous batch's outcome is taken first: one COMMIT in flight at a time."""
        flow = self.flow
        piped = self._small_batch()
        if piped is None:
            self._write_all(background=True, versions=False)  # the COMMIT takes them
        self._reap(wait=True)
        self.writer.commit_async(flow.pending_end_lsn, flow.pending_commit_time, piped)
        flow.handed()

    def _small_batch(self) -> list[tuple[MirroredTable, TableBatch]] | None:
        """The batch's runs to travel with its COMMIT in one round trip, or None for the
        ordinary way (pipelined.take_small). Not with history (its versions go with the
        runs) or a streamed transaction in flight (its writes come first)."""
        if self.history is not None or self.streamed.in_flight:
            return None
        runs = pipelined.take_small(self.dirty, self.flow.pending_rows)
        if runs is not None:
            self.unwritten = 0
        return runs

    def _reap(self, wait: bool) -> None:
        """Take the handed COMMIT's outcome, if there is one and it is in (or ``wait``):
        only now is the batch applied - flush LSN, metrics, state. A failure is raised
        here (the stream rolls back; nothing past the last completed COMMIT is
        acknowledged, and the source sends the rest again)."""
        if not self.flow.committing:
            return
        ok = self.writer.commit_result(wait)
        if ok is None:
            return
        done = self.flow.commit_done(ok)
        if ok:  # (False: the writer holds none - never counted as applied)
            self._applied(*done)

    def _applied(self, txns: int, rows: int, commit_time) -> None:
        flow = self.flow
        metrics.TRANSACTIONS_APPLIED.inc(txns)
        metrics.BATCH_TRANSACTIONS.observe(txns)
        metrics.BATCH_ROWS.observe(rows)
        metrics.APPLIED_LSN.set(flow.applied_lsn)
        self.state.applied_lsn = flow.applied_lsn
        self.state.last_commit_time = commit_time
        self.state.received_lsn = flow.received_lsn

    def _rollback(self) -> None:
        self.writer.rollback()  # a COMMIT in flight ends first: take what became of it
        try:
            self._reap(wait=True)
        except Exception:  # noqa: BLE001, S110 - it failed: rolled_back counts it as such,
            pass  # and the batch is resent after the restart
        self.flow.rolled_back()
        for tw in self.dirty.values():
            tw.batch.clear()
        self.dirty.clear()
        self.unwritten = 0

    # -- schema (relations.py) -------------------------------------------------------

    def _relation(self, rel: Relation) -> None:
        old = self.tables.get(rel.relation_id)
        if old is not None and not old.batch.empty:  # rows of the old shape go first
            self.writer.flush(old)
            self.dirty.pop(rel.relation_id, None)
        txn = self.streamed.current
        if txn is None:
            self.writer.sync()
            self._reap(wait=True)  # (ended with the sync)
            self.relations.wait_visible(self.xid)
            self.relations.on_relation(rel, self.writer, self.final_lsn, self._writers(),
                                       xid=self.xid)
        else:
            self.streamed.relation(rel, self.relations, self.last_commit_lsn, self._writers())

    def _writers(self) -> list[TargetWriter]:
        return [self.writer, *(t.writer for t in self.streamed.in_flight.values())]

    def _sync_pending(self) -> None:
        """Copy the waiting tables beside a temporary slot and join them in (relations.py)."""
        keys = set(self.relations.pending_sync)
        self.writer.sync()  # the copy joins with the writer's connection idle
        try:
            synced = self.sync_tables(keys, lambda: self._feedback(time.monotonic()))
        except psycopg.OperationalError as exc:
            raise TransientError(f"lost a connection while copying {sorted(keys)}: {exc}") \
                from exc
        self.relations.joined(synced, self.writer)
