"""The stream's decisions, without I/O: what to acknowledge, when to reply, when to commit.

Why separate (STYLE.md, psycopg's generators): these rules carry exactly-once and the idle
slot (DESIGN.md invariants 1 and 5), and are easiest to get right where a test can drive them
with plain numbers and a fake clock. stream.py only feeds events in and acts on the answers.

The rules:
- Flush LSN = end LSN of the last source transaction the target committed (``applied``).
  A batch handed to the writer's thread for its commit (``handed``) is *committing*: the
  stream decodes the next batch meanwhile, and only the writer's report that the COMMIT
  returned (``commit_done``) moves ``applied``. At most one batch is committing.
- With nothing in flight (no transaction being received, none waiting in the open target
  transaction, none committing) the keepalive's WAL end is confirmed too: every transaction
  that committed before it has been received and applied, so an idle slot does not pin WAL.
- Reply at once when the server asks, at least every ``status_interval`` seconds, and soon
  after the flush position moves (at most every ``min_gap`` seconds).
- Silence from the source: after half of ``receive_timeout`` without a message, ask the
  server for a reply; after all of it, the connection is dead (a half-open TCP path looks
  exactly like a quiet source otherwise) and is reopened - PostgreSQL's own subscriber does
  the same with ``wal_receiver_timeout``.
- A batch (one target transaction) is committed at a source commit boundary once it holds
  ``batch_max_rows`` changes or is ``batch_max_seconds`` old, and whenever the socket has
  nothing more to read - so lag stays low when the load is light and batches grow under load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass
class FlowControl:
    applied_lsn: int  # end LSN of the last source commit the target holds
    status_interval: float = 10.0
    batch_max_rows: int = 200_000
    batch_max_seconds: float = 0.5
    min_gap: float = 0.25
    commit_poll: float = 0.002  # socket wait while a COMMIT runs in the writer's thread

    received_lsn: int = 0  # highest WAL position the server told us about
    keepalive_lsn: int = 0  # WAL end of the last keepalive
    in_txn: bool = False  # between a Begin and its Commit
    pending_txns: int = 0  # complete source transactions in the open target transaction
    pending_rows: int = 0
    pending_end_lsn: int = 0
    pending_commit_time: datetime | None = None
    batch_started: float | None = None
    # the batch handed to the writer's thread for its COMMIT, not yet reported done
    committing_txns: int = 0
    committing_rows: int = 0
    committing_end_lsn: int = 0
    committing_commit_time: datetime | None = None
    last_sent: float = float("-inf")
    sent_flush: int = 0
    reply_requested: bool = False

    # -- events from the stream ----------------------------------------------------------

    def keepalive(self, wal_end: int, reply_requested: bool) -> None:
        self.keepalive_lsn = max(self.keepalive_lsn, wal_end)
        self.received_lsn = max(self.received_lsn, wal_end)
        self.reply_requested = self.reply_requested or reply_requested

    def wal(self, wal_end: int) -> None:
        if wal_end > self.received_lsn:
            self.received_lsn = wal_end

    def begin(self, now: float) -> None:
        self.in_txn = True
        if self.batch_started is None:
            self.batch_started = now

    def commit(self, end_lsn: int, commit_time: datetime, rows: int) -> None:
        """A source transaction is complete in the open target transaction."""
        self.in_txn = False
        self.pending_txns += 1
        self.pending_rows += rows
        self.pending_end_lsn = end_lsn
        self.pending_commit_time = commit_time
        self.wal(end_lsn)

    def skipped(self) -> None:
        """A transaction at or below the progress LSN ended (replayed, not applied)."""
        self.in_txn = False

    @property
    def committing(self) -> bool:
        """A batch's COMMIT is in the writer's thread, its outcome not yet taken."""
        return self.committing_txns > 0

    def handed(self) -> None:
        """The open batch went to the writer's thread for its COMMIT; the next batch starts.
        Nothing is acknowledged for it until ``commit_done``. One at a time: the stream
        takes the previous outcome before it hands over the next."""
        if self.committing:
            raise RuntimeError("a batch handed over while the last one is still committing")
        if self.pending_txns:
            self.committing_txns, self.committing_rows = self.pending_txns, self.pending_rows
            self.committing_end_lsn = self.pending_end_lsn
            self.committing_commit_time = self.pending_commit_time
        self.pending_txns = self.pending_rows = 0
        self.batch_started = None

    def commit_done(self, ok: bool) -> tuple[int, int, datetime | None]:
        """The writer's thread reported the handed batch: committed (``ok``) or failed (then
        nothing of it is acknowledged; the stream rolls back and the source resends it).
        Returns the batch's (transactions, rows, commit time) for the metrics."""
        done = (self.committing_txns, self.committing_rows, self.committing_commit_time)
        if ok and self.committing_txns:
            self.applied_lsn = max(self.applied_lsn, self.committing_end_lsn)
        self.committing_txns = self.committing_rows = 0
        return done

    def streamed_committed(self, end_lsn: int, commit_time: datetime) -> None:
        """A streamed transaction committed on the target (after the batch before it)."""
        self.applied_lsn = max(self.applied_lsn, end_lsn)
        self.pending_commit_time = commit_time
        self.wal(end_lsn)

    def rolled_back(self) -> None:
        """The open target transaction was thrown away; a batch still marked committing
        (its outcome not taken) counts as failed: never acknowledge what is not known. A
        keepalive's WAL end heard so far may lie past what was thrown away: forgotten too
        (the final feedback after a stop would confirm it; the next keepalive is safe)."""
        self.keepalive_lsn = 0
        self.in_txn = False
        self.pending_txns = self.pending_rows = 0
        self.batch_started = None
        self.commit_done(False)

    # -- decisions -----------------------------------------------------------------------

    def batch_due(self, now: float, idle: bool = False) -> bool:
        """Commit now? Only at a source commit boundary, and only with something in hand."""
        if self.in_txn or not self.pending_txns:
            return False
        return (idle or self.pending_rows >= self.batch_max_rows
                or now - (self.batch_started or now) >= self.batch_max_seconds)

    def flush_lsn(self) -> int:
        if self.in_txn or self.pending_txns or self.committing_txns:
            return self.applied_lsn
        return max(self.applied_lsn, self.keepalive_lsn)

    def feedback_due(self, now: float) -> bool:
        if self.reply_requested or now - self.last_sent >= self.status_interval:
            return True
        return self.flush_lsn() > self.sent_flush and now - self.last_sent >= self.min_gap

    def feedback(self, now: float) -> tuple[int, int, int]:
        """(written, flushed, applied) to send now; records that it was sent."""
        flush = self.flush_lsn()
        self.sent_flush = flush
        self.last_sent = now
        self.reply_requested = False
        return max(self.received_lsn, flush), flush, flush

    def wait_seconds(self, now: float) -> float:
        """How long the loop may block on the socket before something is due."""
        wait = self.last_sent + self.status_interval - now
        if self.flush_lsn() > self.sent_flush:
            wait = min(wait, self.last_sent + self.min_gap - now)
        if self.pending_txns and self.batch_started is not None:
            wait = min(wait, self.batch_started + self.batch_max_seconds - now)
        if self.committing_txns:  # look again soon: its outcome moves the flush position
            wait = min(wait, self.commit_poll)
        return max(0.0, min(wait, 1.0))


PING, DEAD = "ping", "dead"


def on_silence(silent: float, timeout: float, pinged: bool) -> str | None:
    """What ``silent`` seconds without a message from the source call for (see above)."""
    if silent >= timeout:
        return DEAD
    if silent >= timeout / 2 and not pinged:
        return PING
    return None


@dataclass
class ReadPacing:
    """When the socket runs dry in the middle of a burst, pause a moment before deciding the
    stream is idle. Reading the moment a message arrives costs the walsender a send() and us
    a wakeup per message; a short pause lets a burst collect instead. Measured with 100-row
    transactions: walsender CPU 6.0 -> 2.7 us per message, a bare reader 156k -> 340k
    messages/s (docs/sidecar.md, "Reading")."""

    pause: float = 0.0002
    hot: bool = False  # the last read found data
