"""The stream loop's steps for changes (Insert, Update, Delete, Truncate): which run of which
writer a change joins, or that it is dropped - kept apart from the socket loop in
stream/loop.py.

Why a mixin of ``Stream``: the rules read the loop's per-transaction state (the
transaction's final LSN, whether it is a replay, the streamed transaction in hand) and the
batch it fills (``dirty``, ``unwritten``), and a full segment is handed to the writer's
thread from here. The rules:

- A transaction whose commit starts below the target's progress LSN is already applied: its
  changes are dropped (invariant 1).
- A table's changes are applied only from transactions committing at or after the table's
  sync LSN, where its copy met the stream (progress.py). A table the target has not copied
  yet (added to the publication later, or re-copied after an ambiguous schema change) is
  skipped until the next commit boundary, where it is copied beside a temporary slot and
  joined in (relations.py).
- A change inside a protocol 2 streamed transaction goes to that transaction's own writer
  (inflight.py).
- How a change joins a run (netting per key) is ``apply.apply_change``: one rule for
  ordinary and streamed transactions.
"""

from __future__ import annotations

from decoder import Delete, Insert, Message, Truncate, Update
from replica.errors import UnsupportedError
from replica.stream.apply import TargetWriter, apply_change
from replica.stream.batch import TableBatch
from replica.stream.tables import MirroredTable


class ChangeSteps:
    """Mixed into ``stream.loop.Stream``; see the module docstring for what it relies on."""

    def _write_all(self, background: bool = False, versions: bool = True) -> None:
        """Write the absorbed runs: in the writer's thread while decoding goes on (a full
        segment, or the batch's last runs before its COMMIT), or here. Streamed
        transactions' writes still in flight finish first: they come earlier in the
        stream."""
        for txn in self.streamed.in_flight.values():
            txn.writer.sync()
        for tw in self.dirty.values():
            if background:
                b, tw.batch = tw.batch, TableBatch(tw.layout)
                self.writer.submit(tw, b)
            else:
                self.writer.flush(tw)
        if background and versions and self.history is not None:  # in the same thread
            self.writer.submit(None, self.history.take())
        self.dirty.clear()
        self.unwritten = 0

    def _route(self, relation_id: int, msg: Message
               ) -> tuple[MirroredTable, TableBatch, TargetWriter] | None:
        """Where a change goes (table, run, writer), or None when it must be dropped (or, in
        a streamed transaction, is kept for its commit)."""
        tw = self.tables.get(relation_id)
        if tw is None:
            # a streamed transaction that keeps its changes also keeps its Relation messages
            # until its commit: the change goes with them
            if self.streamed.current is not None and self.streamed.defer(msg):
                return None
            raise UnsupportedError(f"a change for relation {relation_id} arrived before its "
                                   "Relation message")
        if self.streamed.current is not None:
            return self.streamed.route(msg, tw, self.last_commit_lsn)
        if self.skip_txn or self.final_lsn < tw.sync_lsn:
            return None
        self.txn_rows += 1
        self.unwritten += 1
        self.dirty[relation_id] = tw
        if self.unwritten >= self.settings.segment_rows:
            self._write_all(background=True)
        return tw, tw.batch, self.writer

    def _change(self, msg: Insert | Update | Delete) -> None:
        to = self._route(msg.relation_id, msg)
        if to is not None:
            apply_change(msg, *to)
            if to[2].history is not None:  # the writer's: streamed transactions have their own
                to[2].history.change(to[0], msg)

    def _truncate(self, msg: Truncate) -> None:
        for rid in msg.relation_ids:
            to = self._route(rid, msg)
            if to is not None:
                self.relations.truncated(rid, msg.xid or self.xid)  # new storage: no copy
                apply_change(msg, *to)
                if to[2].history is not None:
                    to[2].history.truncate(to[0])
            elif self.history is not None and not self.skip_txn and rid in self.tables \
                    and self.streamed.current is None \
                    and self.history.wants(self.tables[rid].qualname):
                # a table waiting for a re-copy (DDL the stream cannot follow): the
                # TRUNCATE still ends its versions here, not only when the copy is done
                self.history.truncate(self.tables[rid])
