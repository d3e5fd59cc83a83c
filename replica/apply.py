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

import time
from datetime import datetime

import psycopg
from psycopg import sql

from replica import metrics, progress
from replica.batch import DELETE, UPDATE, Layout, TableBatch, encode
from replica.errors import ApplyError, TransientError

OP = "pgml_replica_op"
N = "pgml_replica_n"
MOVE_FROM, MOVE_TO = 5, 6
_OPS = ("insert", "update", "delete", "truncate")


class TableWriter:
    """One published table: its layout, the run being absorbed, its stage and statements."""

    def __init__(self, relation_id: int, schema: str, name: str, layout: Layout,
                 sync_lsn: int) -> None:
        self.relation_id = relation_id
        self.schema, self.name = schema, name
        self.layout = layout
        self.sync_lsn = sync_lsn  # apply changes of transactions committing at/after this
        self.batch = TableBatch(layout)  # the run of the non-streamed transactions
        self.ident = sql.Identifier(schema, name)
        self.stage = sql.Identifier("pg_temp", f"pgml_replica_stage_{relation_id}")
        self._stmts: dict = {}

    @property
    def qualname(self) -> str:
        return self.layout.qualname

    def _on(self, a: str = "t", b: str = "s") -> sql.Composable:
        cols = self.layout.columns
        return sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(a, cols[i]), sql.Identifier(b, cols[i]))
            for i in self.layout.key_pos)

    def stmt(self, what, kinds: str | None = None) -> sql.Composable | None:
        """The statement for ``what`` (cached): create_stage, copy_table, copy_stage,
        delete, update, patch (with the pattern's kinds), multiset_delete, move (kinds)."""
        cache_key = (what, kinds)
        if cache_key in self._stmts:
            return self._stmts[cache_key]
        cols = self.layout.columns
        cols_sql = sql.SQL(", ").join(map(sql.Identifier, cols))
        key = set(self.layout.key_pos)

        def set_list(positions) -> sql.Composable:
            return sql.SQL(", ").join(sql.SQL("{} = s.{}").format(
                sql.Identifier(cols[i]), sql.Identifier(cols[i])) for i in positions)

        s: sql.Composable | None
        if what == "create_stage":
            s = sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT "
                        "0::int4 AS {}, 0::int4 AS {}, {} FROM {} WITH NO DATA").format(
                self.stage, sql.Identifier(OP),
                sql.Identifier(N), cols_sql, self.ident)
        elif what == "copy_table":
            s = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(self.ident, cols_sql)
        elif what == "copy_stage":
            s = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(self.stage)
        elif what == "delete":
            s = sql.SQL("DELETE FROM {} t USING {} s WHERE s.{} = {} AND {}").format(
                self.ident, self.stage, sql.Identifier(OP), sql.Literal(DELETE), self._on())
        elif what in ("update", "patch"):
            positions = [i for i in range(len(cols)) if i not in key
                         and (kinds is None or kinds[i] != "u")]
            s = None if not positions else sql.SQL(
                "UPDATE {} t SET {} FROM {} s WHERE s.{} = %s AND {}").format(
                self.ident, set_list(positions), self.stage, sql.Identifier(OP), self._on())
        elif what == "multiset_delete":
            row_t = sql.SQL(", ").join(sql.Identifier("t2", c) for c in cols)
            row_s = sql.SQL(", ").join(sql.Identifier("s", c) for c in cols)
            s = sql.SQL(
                "DELETE FROM {t} t USING (SELECT x.tid FROM (SELECT t2.ctid AS tid, s.{n} AS n,"
                " row_number() OVER (PARTITION BY s.ctid) AS rn FROM {t} t2 JOIN {s} s"
                " ON s.{op} = {d} AND ROW({rt})::text = ROW({rs})::text) x"
                " WHERE x.rn <= x.n) d WHERE t.ctid = d.tid").format(
                t=self.ident, s=self.stage, n=sql.Identifier(N), op=sql.Identifier(OP),
                d=sql.Literal(DELETE), rt=row_t, rs=row_s)
        elif what == "move":
            positions = [i for i in range(len(cols)) if kinds[i] != "u"]
            s = sql.SQL("UPDATE {} t SET {} FROM {} f, {} s WHERE f.{op} = {} AND s.{op} = {}"
                        " AND {}").format(
                self.ident, set_list(positions), self.stage, self.stage, sql.Literal(MOVE_FROM),
                sql.Literal(MOVE_TO), self._on("t", "f"), op=sql.Identifier(OP))
        else:
            raise ValueError(what)
        self._stmts[cache_key] = s
        return s


class TargetWriter:
    """One target connection holding one open transaction of applied changes."""

    def __init__(self, conn: psycopg.Connection, slot: str) -> None:
        self.conn = conn
        self.slot = slot
        self.busy_seconds = 0.0  # time spent writing in the open transaction
        self._stages_ready: set[int] = set()  # relation ids with a committed stage table
        self._stages_new: set[int] = set()  # created in the open transaction
        self._dirty: set[int] = set()  # stages holding rows in the open transaction
        # written, not yet committed: relation id -> (table, [insert, update, delete, truncate])
        self._ops: dict[int, tuple[TableWriter, list[int]]] = {}

    def forget_stage(self, tw: TableWriter) -> None:
        """The table's columns changed: its stage must be built again."""
        if tw.relation_id in self._stages_ready or tw.relation_id in self._stages_new:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tw.stage))
        self._stages_ready.discard(tw.relation_id)
        self._stages_new.discard(tw.relation_id)
        self._dirty.discard(tw.relation_id)
        tw._stmts.clear()

    def flush(self, tw: TableWriter, b: TableBatch | None = None) -> int:
        """Write a run of the table (its own by default) into the open transaction; return
        the row images sent."""
        b = tw.batch if b is None else b
        if b.empty:
            b.ops = [0, 0, 0, 0]
            return 0
        t0 = time.perf_counter()
        try:
            sent = self._write(tw, b)
        except psycopg.OperationalError as exc:
            raise TransientError(f"target connection lost: {exc}", "target") from exc
        except psycopg.Error as exc:
            raise ApplyError(f"the target rejected changes to {tw.qualname}: "
                             f"{exc.diag.message_primary or exc}") from exc
        self._count(tw, b.ops)
        b.ops = [0, 0, 0, 0]
        b.clear()
        self.busy_seconds += time.perf_counter() - t0
        return sent

    def _count(self, tw: TableWriter, ops: list[int]) -> None:
        mine = self._ops.setdefault(tw.relation_id, (tw, [0, 0, 0, 0]))[1]
        for i, n in enumerate(ops):
            mine[i] += n

    def _write(self, tw: TableWriter, b: TableBatch) -> int:
        conn = self.conn
        if b.truncated:
            conn.execute(sql.SQL("TRUNCATE {}").format(tw.ident))
        staged, patterns = b.staged()
        if staged:
            self._stage(tw, encode(staged, extra=True))
            if tw.layout.keyed:
                conn.execute(tw.stmt("delete"))
                upd = tw.stmt("update")
                if upd is not None:
                    conn.execute(upd, (UPDATE,))
                for kinds, code in patterns.items():
                    patch = tw.stmt("patch", kinds)
                    if patch is not None:
                        conn.execute(patch, (code,))
        fresh = b.fresh_rows()
        if fresh:
            with conn.cursor().copy(tw.stmt("copy_table")) as cp:
                cp.write(encode(fresh))
        if staged and not tw.layout.keyed:  # after the inserts: a delete may match one
            conn.execute(tw.stmt("multiset_delete"))
        return len(staged) + len(fresh)

    def _stage(self, tw: TableWriter, data: bytes) -> None:
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

    def move(self, tw: TableWriter, b: TableBatch, old_raw: tuple, new_raw: tuple,
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
        try:
            self.conn.execute("SELECT 1")
            self.conn.rollback()
        except psycopg.OperationalError as exc:
            raise TransientError(f"target connection lost: {exc}", "target") from exc

    def commit(self, end_lsn: int, commit_time: datetime | None) -> None:
        """Commit everything written, with the source position it reaches."""
        t0 = time.perf_counter()
        try:
            progress.advance(self.conn, self.slot, end_lsn, commit_time)
            self.conn.commit()
        except psycopg.OperationalError as exc:
            self._reset()
            raise TransientError(f"target connection lost at commit: {exc}", "target") from exc
        self.busy_seconds += time.perf_counter() - t0
        metrics.APPLY_SECONDS.observe(self.busy_seconds)
        for tw, ops in self._ops.values():
            for op, n in zip(_OPS, ops, strict=True):
                if n:
                    metrics.ROWS_APPLIED.labels(tw.qualname, op).inc(n)
        self._stages_ready |= self._stages_new
        self._reset()

    def rollback(self) -> None:
        try:
            self.conn.rollback()
        except psycopg.Error:
            pass  # the connection is gone; the transaction with it
        self._reset()

    def savepoint(self, name: str) -> None:
        self.conn.execute(sql.SQL("SAVEPOINT {}").format(sql.Identifier(name)))

    def rollback_to(self, name: str) -> None:
        """Undo a subtransaction's writes (stage tables may hold rows of it: truncate first)."""
        self.conn.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(name)))
        self._stages_new.clear()  # may be undone with it: _stage rebuilds (DROP IF EXISTS)
        self._dirty = set(self._stages_ready)

    def close(self) -> None:
        self.rollback()
        self.conn.close()

    def _reset(self) -> None:
        self._stages_new.clear()
        self._dirty.clear()
        self._ops.clear()
        self.busy_seconds = 0.0
