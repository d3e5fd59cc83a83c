"""Relation messages -> the tables the stream writes, and the target's shape with them.

Why here: a Relation message is where three rules meet (docs/sidecar.md):
- Schema changes (DESIGN.md invariant 4): a message newer than the table's copy re-shapes the
  target table before the next row of it is applied - ADD, DROP, retype by name (schema.py),
  NOT NULL relaxed where the source dropped it. Names that both vanished and appeared cannot
  be told from a rename, so that table is copied again instead.
- Tables not copied yet (added to the publication later): their changes are dropped until
  the stream's next boundary, where the table is copied beside a temporary slot and
  ``joined`` at that slot's LSN.
- The run layout (column order, key positions, target types) every change is absorbed with.
- A Relation message inside a transaction the target already holds (replayed after a
  restart, below ``applied_lsn``) installs the layout but never alters the target: the
  target is already at the shape of ``applied_lsn``, which may be newer than the message
  (re-shaping it back would drop a column added later).
"""

from __future__ import annotations

import logging
import time

import psycopg

from decoder import Relation
from replica import metrics
from replica.errors import ConfigError
from replica.source.catalog import ColumnDef, TableKey, TypeResolver, table_filenodes
from replica.stream.apply import TargetWriter
from replica.stream.batch import Layout
from replica.stream.tables import MirroredTable
from replica.target import progress, schema

log = logging.getLogger("pgml_replica")

NEVER = 1 << 64  # sync LSN of a table waiting to be copied: none of its changes apply


class Relations:
    def __init__(self, source: psycopg.Connection, synced: dict[TableKey, int],
                 applied_lsn: int = 0) -> None:
        self.source = source  # the source's catalog (types, defaults, NOT NULL)
        self.applied_lsn = applied_lsn  # the target holds every commit below this
        self.resolver = TypeResolver(source)
        self.synced = dict(synced)  # table -> sync LSN
        self.pending_sync: set[TableKey] = set()
        self.tables: dict[int, MirroredTable] = {}
        self.relations: dict[int, Relation] = {}
        # relation id -> [table, xid, storage now, truncated]: storage changed by the
        # transaction in hand, decided at its commit (truncated, committed)
        self.suspects: dict[int, list] = {}
        self.truncated_by: dict[int, int] = {}  # relation id -> xid of its last Truncate

    def wait_visible(self, xid: int, timeout: float = 10.0) -> None:
        """Wait until transaction ``xid`` is visible on the source. The walsender may send a
        commit a moment before the committing backend leaves the proc array, and the
        catalog read that follows its Relation message must see what it changed."""
        deadline = time.monotonic() + timeout
        # not visible: in the snapshot's xip, or at/after its xmax (xmax is latest completed
        # + 1, so a commit the walsender decoded before the proc array saw it is there;
        # 32-bit xids, so "at/after" is a wrapping difference below 2^31)
        while self.source.execute(
                "SELECT %(x)s::int8 = ANY (SELECT x::text::int8 %% 4294967296 FROM"
                " pg_snapshot_xip(s) x) OR ((%(x)s::int8 - pg_snapshot_xmax(s)::text::int8"
                " %% 4294967296) %% 4294967296 + 4294967296) %% 4294967296 < 2147483648"
                " FROM pg_current_snapshot() s", {"x": xid}).fetchone()[0]:
            if time.monotonic() > deadline:
                return  # still running?: read what there is, the safety nets remain
            time.sleep(0.001)

    def published(self, keys: set[TableKey]) -> None:
        """The publication's tables now: any not copied yet waits for the next boundary."""
        self.pending_sync |= {k for k in keys if k not in self.synced}

    def on_relation(self, rel: Relation, writer: TargetWriter, position: int,
                    writers: list[TargetWriter], may_alter: bool = True,
                    xid: int = 0) -> MirroredTable | None:
        """Install the table for ``rel``; ``writer`` holds the transaction the message came
        in, ``position`` is an LSN every change that follows commits at or after. With
        ``may_alter`` False (a streamed transaction, whose DDL the source's catalog does not
        show yet) return None instead of altering the target. ``xid``: the (committed,
        visible) transaction the message came in, 0 when unknown."""
        self.relations[rel.relation_id] = rel
        old = self.tables.get(rel.relation_id)
        key = (rel.namespace or "pg_catalog", rel.name)
        qual = f"{key[0]}.{key[1]}"
        names = tuple(c.name for c in rel.columns)
        sync_lsn = self.synced.get(key)
        target = None if sync_lsn is None else schema.read_target(writer.conn, *key)
        if target is not None and position >= sync_lsn and position >= self.applied_lsn \
                and key not in self.pending_sync \
                and self._rewritten(key, writer, rel.relation_id, xid):
            self.pending_sync.add(key)
        if target is None or key in self.pending_sync:
            self.pending_sync.add(key)
            tw = self.tables[rel.relation_id] = MirroredTable(
                rel.relation_id, *key, Layout(qual, names, ("",) * len(names), ()), NEVER)
            return tw
        try:
            wanted = [ColumnDef(c.name, self.resolver.target_type(qual, c.name, c.type_oid,
                                                                  c.type_modifier))
                      for c in rel.columns]
        except ConfigError:
            if may_alter:
                raise
            return None  # a type created by the streamed transaction itself
        newer = position >= sync_lsn and position >= self.applied_lsn
        if not may_alter and newer and schema.diff(target, wanted):
            return None
        if newer:  # this message is newer than the table's copy and than the target
            target = self._reshape(key, target, wanted, writer)
            if target is None:  # now waiting for a re-copy
                return self.on_relation(rel, writer, position, writers)
        types = tuple(target.columns.get(n, c.type_sql) for n, c in zip(names, wanted,
                                                                      strict=True))
        key_pos = tuple(names.index(k) for k in target.key) \
            if target.key and all(k in names for k in target.key) else ()
        tw = MirroredTable(rel.relation_id, *key, Layout(qual, names, types, key_pos), sync_lsn)
        if old is None or old.layout != tw.layout:
            for w in writers:
                w.forget_stage(tw)
        self.tables[rel.relation_id] = tw
        return tw

    def _rewritten(self, key: TableKey, writer: TargetWriter, rid: int = 0,
                   xid: int = 0) -> bool:
        """Were the table's rows rewritten on the source since it was copied (its storage
        files changed)? Then DDL the WAL does not carry ran - ADD COLUMN ... DEFAULT
        <volatile>, ALTER COLUMN ... TYPE ... USING, ATTACH/DETACH PARTITION under a root
        published via_root (also VACUUM FULL and CLUSTER, which cost a needless copy: their
        rewrite cannot be told from ALTER ... TYPE ... USING to the same type) - and only a
        re-copy makes the target right. A Relation message is where it shows: pgoutput sends
        one after every relcache invalidation, and DDL is one.

        A TRUNCATE changes the files too, but the stream carries it. Its transaction (``xid``)
        brings a Relation message before its Truncate message, so here the storage has
        changed and nothing says why yet: when the change is the transaction's own and not a
        column's (``_own_storage``), the decision waits for its commit (``committed``). A
        streamed transaction's Relation message comes while it runs (the catalog shows the
        old files): its truncate is remembered (``truncated``) and its files recorded at the
        table's next Relation message, by the same rule. One whose changes were kept until
        its commit (decoded after it) is copied again: not told apart here."""
        now = table_filenodes(self.source, *key)
        then = progress.copied_filenode(writer.conn, writer.slot, *key)
        if now is None or now == then:
            return False
        if then is None:  # copied by a version that did not record it: from here on
            progress.record_filenode(writer.conn, writer.slot, *key, now)
            return False
        if xid and self._own_storage(key, xid):
            self.suspects[rid] = [key, xid, now, False]
            return False
        done = self.truncated_by.get(rid)
        if done and self._own_storage(key, done):
            # the storage of a truncate applied earlier in this stream, read only now: a
            # streamed transaction's (its Relation message came before its commit, when the
            # catalog did not show the new files yet); the same reasoning as at a commit
            progress.record_filenode(writer.conn, writer.slot, *key, now)
            log.info("%s.%s was truncated on the source: its new storage %s recorded, no "
                     "copy needed", *key, now)
            return False
        log.warning("%s.%s was rewritten on the source by DDL the stream cannot follow "
                    "(storage %s -> %s): copying it again", *key, then, now)
        return True

    def _own_storage(self, key: TableKey, xid: int) -> bool:
        """Are the storage files the table has now those transaction ``xid`` left, with no
        column changed by it? Why this is the question: the source's catalog shows its
        *current* state, which may be later than the transaction in hand - a later
        transaction's ALTER ... TYPE ... USING must still be re-copied. The table's pg_class
        row made by ``xid`` (its xmin) means no later transaction replaced it, so the files
        read now are the ones ``xid`` committed. No pg_attribute row of the table made by
        ``xid`` means that it changed no column: no ADD COLUMN ... DEFAULT <volatile> nor
        ALTER ... TYPE after its TRUNCATE rewrote rows the stream carried (those rewrites
        update the column's row; the rewrites that leave no trace there - CLUSTER, SET
        TABLESPACE, SET LOGGED - keep every value). A plain table only (a partitioned one's files are its
        leaves'); a TRUNCATE in a subtransaction (xmin is the subtransaction's) is re-copied."""
        return bool(self.source.execute(
            "SELECT c.xmin::text::int8 = %(x)s AND c.relkind = 'r' AND NOT EXISTS (SELECT 1"
            " FROM pg_attribute a WHERE a.attrelid = c.oid AND a.xmin::text::int8 = %(x)s)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %(s)s AND c.relname = %(t)s",
            {"x": xid, "s": key[0], "t": key[1]}).fetchone()[0])

    def truncated(self, rid: int, xid: int) -> None:
        """A Truncate message for ``rid`` applied in transaction ``xid`` (a streamed one's
        may abort: then its catalog rows never show, and ``_own_storage`` is False)."""
        self.truncated_by[rid] = xid
        suspect = self.suspects.get(rid)
        if suspect is not None and suspect[1] == xid:
            suspect[3] = True

    def committed(self, xid: int, writer: TargetWriter) -> None:
        """Transaction ``xid`` commits: a table whose new storage it made with a TRUNCATE the
        stream applied records that storage as its copy's (in the same target transaction
        as the truncate, so both or neither commit) - no re-copy. One it rewrote otherwise
        is copied again at the next boundary (its rows so far are replaced by the copy)."""
        writer.sync()
        for key, sx, now, truncated in self.suspects.values():
            if truncated and sx == xid:
                progress.record_filenode(writer.conn, writer.slot, *key, now)
                log.info("%s.%s was truncated on the source: its new storage %s recorded, "
                         "no copy needed", *key, now)
            else:
                log.warning("%s.%s was rewritten on the source by DDL the stream cannot "
                            "follow (storage now %s): copying it again", *key, now)
                self.pending_sync.add(key)
        self.suspects.clear()

    def _reshape(self, key: TableKey, target: schema.TargetTable, wanted: list[ColumnDef],
                 writer: TargetWriter) -> schema.TargetTable | None:
        """ALTER the target to the Relation's columns; None when the table must be re-copied."""
        conn = writer.conn
        d = schema.diff(target, wanted)
        if d.ambiguous:
            self.pending_sync.add(key)
            return None
        if d:
            missing = schema.source_missing_values(self.source, *key,
                                                   [c.name for c in d.added]) if d.added else {}
            schema.apply_diff(conn, *key, d, missing)
            metrics.SCHEMA_CHANGES.labels(f"{key[0]}.{key[1]}").inc(
                len(d.added) + len(d.dropped) + len(d.retyped))
        relax = (target.not_null & schema.source_nullable(self.source, *key)) - set(target.key)
        relax -= set(d.dropped)
        if relax:
            schema.relax_not_null(conn, *key, sorted(relax))
        return schema.read_target(conn, *key) if d or relax else target

    def joined(self, synced: dict[TableKey, int], writer: TargetWriter) -> None:
        """Tables copied at these LSNs: rebuild their writers from the last Relation."""
        self.synced.update(synced)
        self.pending_sync -= set(synced)
        for rid, rel in list(self.relations.items()):
            if (rel.namespace or "pg_catalog", rel.name) in synced:
                self.tables.pop(rid, None)
                self.on_relation(rel, writer, 0, [writer])
