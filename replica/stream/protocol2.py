"""The stream loop's steps for protocol 2's streamed transactions (Stream Start, Stop, Abort,
Commit), kept apart from the socket loop in stream/loop.py.

Why a mixin of ``Stream``: each step orders work the loop owns - the batch of ordinary
transactions is committed first (they committed on the source before anything of the
streamed transaction still to come, and their locks must not stand in its way), the
streamed transaction's own target transaction is committed with its end LSN, then feedback -
so the steps use the loop's ``flow``, ``streamed``, ``relations`` and helpers. What happens
inside a streamed transaction (savepoints, kept changes, replays) is stream/inflight.py's.
"""

from __future__ import annotations

import time

from decoder import StreamAbort, StreamCommit, StreamStart, StreamStop
from replica import metrics


class StreamedSteps:
    """Mixed into ``stream.loop.Stream``; see the module docstring for what it relies on."""

    def _stream_start(self, msg: StreamStart) -> None:
        if self.flow.pending_txns:  # they committed first; and their locks must go
            self._commit_batch()
        self._reap(wait=True)  # gone only when the COMMIT handed to the writer ended
        self.streamed.start(msg.xid)

    def _stream_stop(self, msg: StreamStop) -> None:
        self.streamed.stop()

    def _stream_abort(self, msg: StreamAbort) -> None:
        self.streamed.abort(msg)

    def _stream_commit(self, msg: StreamCommit) -> None:
        self.last_commit_lsn = msg.end_lsn
        if self.flow.pending_txns:
            self._commit_batch()
        self._reap(wait=True)  # the batch before it commits first, and is acknowledged first
        txn = self.streamed.finish(msg.xid)
        if txn is None:  # nothing of it was published
            return
        if msg.commit_lsn < self.start_lsn:  # applied before a restart: its changes go,
            # but its Relation messages stand - the walsender will not send them again
            txn.install_kept_relations(self.relations, msg.commit_lsn, self._writers())
            self.streamed.rollback_txn(txn)
            metrics.TRANSACTIONS_SKIPPED.inc()
            return
        txn.replay_kept(self.relations, msg.commit_lsn, self._writers())
        self.flow.wal(msg.end_lsn)
        self.streamed.commit(txn, msg.end_lsn, msg.commit_time, msg.commit_lsn)
        self.flow.streamed_committed(msg.end_lsn, msg.commit_time)
        self._applied(1, txn.rows, msg.commit_time)
        now = time.monotonic()
        self._boundary(now)
        if self.flow.feedback_due(now):
            self._feedback(now)
