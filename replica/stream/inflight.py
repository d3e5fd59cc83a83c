"""Protocol 2: large transactions applied while they still run on the source.

Why: with ``streaming 'on'`` the walsender sends a transaction in chunks as soon as it
outgrows ``logical_decoding_work_mem``, instead of spilling it to disk and sending it after
its commit (PERF-NOTES; measured here: walsender CPU per change 5.7 -> 3.1 us). Each
in-progress transaction gets its own target connection and an open target transaction that
takes its chunks as they arrive; Stream Commit commits it with its end LSN in the progress
row (invariant 1), Stream Abort rolls it back, so an aborted transaction never appears.

Rules that keep this exact:
- Before a chunk is applied, the batch of ordinary transactions is committed: they committed
  on the source before anything of the streamed transaction that is still to come, and no
  lock of theirs may stand in its way.
- Subtransactions: at the first change of a subtransaction the chunk so far is written and a
  savepoint named after its xid is set; Stream Abort of a subtransaction rolls back to it.
- A table whose copy has not met the stream yet (its sync LSN lies past every commit
  received so far, or it waits to be copied) cannot be decided before the commit LSN is
  known: from then on the transaction's changes are kept in memory and applied at Stream
  Commit by the ordinary rule (commit LSN at or after the table's sync LSN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from decoder import Message, Relation, StreamAbort, Truncate
from replica.stream.apply import TargetWriter, apply_change
from replica.stream.batch import TableBatch
from replica.stream.relations import NEVER, Relations
from replica.stream.tables import MirroredTable


@dataclass
class StreamedTxn:
    xid: int
    writer: TargetWriter
    batches: dict[int, tuple[MirroredTable, TableBatch]] = field(default_factory=dict)
    subxid: int = -1  # xid of the changes in the in-memory batches
    savepoints: list[int] = field(default_factory=list)  # subxids, in the order set
    deferred: list[Message] | None = None  # None: applying as they come; else kept
    unwritten: int = 0
    rows: int = 0

    def write(self, background: bool = True) -> None:
        """Write the runs, by default in the writer's thread (later changes go into fresh
        runs meanwhile)."""
        for rid, (tw, b) in list(self.batches.items()):
            if not background:
                self.writer.flush(tw, b)
            elif not b.empty or any(b.ops):
                self.batches[rid] = (tw, TableBatch(tw.layout))
                self.writer.submit(tw, b)
        if background and self.writer.history is not None:  # before any savepoint comes
            self.writer.history.spill()
        self.unwritten = 0

    def replay(self, m: Message, tw: MirroredTable) -> None:
        """A change kept until the commit LSN was known."""
        self.rows += 1
        apply_change(m, tw, self.batch(tw), self.writer)
        history = self.writer.history
        if history is not None:
            if type(m) is Truncate:
                history.truncate(tw)
            else:
                history.change(tw, m)

    def replay_kept(self, relations: Relations, commit_lsn: int,
                    others: list[TargetWriter]) -> None:
        """At Stream Commit: the changes kept in memory go in by the ordinary rule, now that
        the commit LSN is known; kept Relation messages re-shape their table in order."""
        if not self.deferred:
            return
        relations.wait_visible(self.xid)
        seen: set[int] = set()  # a Truncate is kept once per table it names
        for m in self.deferred:
            if type(m) is Relation:
                self.write()
                self.writer.sync()
                relations.on_relation(m, self.writer, commit_lsn, [self.writer, *others])
            elif type(m) is Truncate:
                if id(m) not in seen:
                    seen.add(id(m))
                    for rid in m.relation_ids:
                        if commit_lsn >= (table := relations.tables[rid]).sync_lsn:
                            self.replay(m, table)
                        elif table.sync_lsn == NEVER and self.writer.history is not None:
                            # waiting for its re-copy: its versions still end here, as
                            # for an ordinary transaction (stream/loop.py _truncate)
                            self.writer.history.truncate(table)
            elif commit_lsn >= (table := relations.tables[m.relation_id]).sync_lsn:
                self.replay(m, table)

    def install_kept_relations(self, relations: Relations, commit_lsn: int,
                               writers: list[TargetWriter]) -> None:
        """The transaction is skipped (the target has it already); the Relation messages it
        kept still define how later changes of their tables are laid out."""
        for m in self.deferred or ():
            if type(m) is Relation:
                writers[0].sync()
                relations.on_relation(m, writers[0], commit_lsn, writers)

    def batch(self, tw: MirroredTable) -> TableBatch:
        entry = self.batches.get(tw.relation_id)
        if entry is None or entry[0] is not tw:  # first use, or the table was re-shaped
            if entry is not None:
                self.writer.flush(*entry)
            entry = self.batches[tw.relation_id] = (tw, TableBatch(tw.layout))
        return entry[1]


class StreamedApply:
    """The in-progress transactions of one session."""

    def __init__(self, new_writer: Callable[[], TargetWriter], segment_rows: int,
                 history=None) -> None:
        self._new_writer = new_writer
        self.history = history  # replica.history.recorder.Recorder of the stream, or None
        self._pool: list[TargetWriter] = []
        self.segment_rows = segment_rows
        self.in_flight: dict[int, StreamedTxn] = {}
        self.current: StreamedTxn | None = None  # inside a Stream Start .. Stop block

    def start(self, xid: int) -> None:
        txn = self.in_flight.get(xid)
        if txn is None:
            writer = self._pool.pop() if self._pool else self._new_writer()
            txn = self.in_flight[xid] = StreamedTxn(xid, writer, subxid=xid)
            writer.history = None
            if self.history is not None:  # versions stamped at Stream Commit (history/staged)
                self.history.streamed().attach(writer)
        self.current = txn

    def stop(self) -> None:
        self.current = None

    def route(self, msg: Message, tw: MirroredTable, decided_lsn: int
              ) -> tuple[MirroredTable, TableBatch, TargetWriter] | None:
        """Where a change inside a streamed block goes, or None when it was kept for the
        commit. ``decided_lsn``: every transaction committing from here on is past it."""
        txn = self.current
        if txn.deferred is None and tw.sync_lsn > decided_lsn:
            txn.deferred = []
        if txn.deferred is not None:
            txn.deferred.append(msg)
            return None
        xid = msg.xid
        if xid != txn.subxid:
            txn.write()
            if xid != txn.xid and xid not in txn.savepoints:
                txn.writer.savepoint(f"s{xid}")
                txn.savepoints.append(xid)
            txn.subxid = xid
        txn.rows += 1
        txn.unwritten += 1
        if txn.unwritten >= self.segment_rows:
            txn.write()
        return tw, txn.batch(tw), txn.writer

    def defer(self, msg: Message, start: bool = False) -> bool:
        """Keep ``msg`` for the commit if the current transaction already keeps its changes
        (or ``start`` makes it); False when it is being applied as it comes."""
        txn = self.current
        if start and txn.deferred is None:
            txn.write()
            txn.deferred = []
        if txn.deferred is None:
            return False
        txn.deferred.append(msg)
        return True

    def relation(self, rel: Relation, relations: Relations, decided_lsn: int,
                 writers: list[TargetWriter]) -> None:
        """A Relation inside a streamed block. Kept if the transaction already keeps its
        changes; else applied now, unless the table's shape on the source is not what the
        catalog shows yet - then this transaction changed the table itself, and from here on
        it is kept until its commit, when the source's catalog shows what it did."""
        if self.defer(rel):
            return
        if relations.on_relation(rel, self.current.writer, decided_lsn, writers,
                                 may_alter=False) is None:
            self.defer(rel, start=True)

    def commit(self, txn: StreamedTxn, end_lsn: int, commit_time: datetime,
               commit_lsn: int = 0) -> None:
        """Write what is left and commit with the end LSN in the progress row (versions
        with the commit's LSN and time)."""
        if txn.writer.history is not None:
            txn.writer.history.stamp(commit_lsn, commit_time)
        txn.write(background=False)
        txn.writer.commit(end_lsn, commit_time)
        self.release(txn)

    def abort(self, msg: StreamAbort) -> None:
        txn = self.in_flight.get(msg.xid)
        if txn is None:
            return
        if msg.subxid == msg.xid:
            del self.in_flight[msg.xid]
            self._release(txn)
            return
        if txn.deferred:
            txn.deferred = [m for m in txn.deferred if m.xid != msg.subxid]
        if msg.subxid in txn.savepoints:
            i = txn.savepoints.index(msg.subxid)
            for _, b in txn.batches.values():  # in memory: the latest subtransaction's
                b.clear()
                b.ops = [0, 0, 0, 0]
            txn.writer.rollback_to(f"s{msg.subxid}")
            if txn.writer.history is not None:  # its versions too (after what was queued ran)
                txn.writer.history.clear()
            del txn.savepoints[i + 1:]
            txn.subxid = -1

    def finish(self, xid: int) -> StreamedTxn | None:
        """Take a transaction out for its commit (the caller commits, then ``release``)."""
        return self.in_flight.pop(xid, None)

    def release(self, txn: StreamedTxn) -> None:
        self._pool.append(txn.writer)

    def rollback_txn(self, txn: StreamedTxn) -> None:
        self._release(txn)

    def _release(self, txn: StreamedTxn) -> None:
        txn.writer.rollback()
        self._pool.append(txn.writer)

    def rollback_all(self) -> None:
        for txn in self.in_flight.values():
            self._release(txn)
        self.in_flight.clear()
        self.current = None

    def close(self) -> None:
        self.rollback_all()
        for w in self._pool:
            w.close()
        self._pool.clear()
