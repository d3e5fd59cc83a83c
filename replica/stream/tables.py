"""A mirrored table's statements: SQL built once per table shape, executed by apply.py.

Why apart from apply: building the set-based statements (stage table, COPY targets, the
UPDATE/DELETE joins on the key, the multiset delete of key-less FULL tables, the key move)
is pure - no connection - and a test can read the SQL; writing is apply.py's concern.
"""

from __future__ import annotations

from psycopg import sql

from replica.stream.batch import DELETE, FRESH, UPDATE, Layout, TableBatch

OP = "pgml_replica_op"
N = "pgml_replica_n"
MOVE_FROM, MOVE_TO = 5, 6
class MirroredTable:
    """One published table as the stream sees it: its layout, the run being absorbed, the
    LSN from which its changes apply, its stage table and the statements that write it
    (built here, cached, executed by ``apply.TargetWriter``)."""

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
        # (element oid, array oid) per column on the target, 0s where a column's values
        # cannot travel as a binary array; None until apply.py looks them up
        self.array_types: tuple[tuple[int, int], ...] | None = None
        self.stats_checked_at = float("-inf")  # statistics.analyze_if_stale's last small-run check

    @property
    def qualname(self) -> str:
        return self.layout.qualname

    def _on(self, a: str = "t", b: str = "s") -> sql.Composable:
        cols = self.layout.columns
        return sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(a, cols[i]), sql.Identifier(b, cols[i]))
            for i in self.layout.key_pos)

    def stmt(self, what, kinds: str | None = None, code: int = UPDATE
             ) -> sql.Composable | None:
        """The statement for ``what`` (cached): create_stage, copy_table, copy_stage,
        insert_staged, delete, update, patch (kinds, code), multiset_delete, move (kinds);
        delete_any and replace_any take binary arrays (one per key column) and need no
        stage: measured 2x the stage's rows/s for deletes, 5x for 100-row runs; replace_any
        is delete_any returning the keys it found, the first half of a full-row update
        written as delete + COPY (runs.py ``_write_arrays``: 1.3-1.6x ``UPDATE ... FROM
        unnest``, benchmarks/update_forms.py). insert_any and update_any take one binary
        array per column, for the one-round-trip batch (pipelined.py), which cannot COPY;
        update_any is None when every column is in the key. The rest use literals, so
        several can go to the server in one message."""
        cache_key = (what, kinds, code)
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
                "UPDATE {} t SET {} FROM {} s WHERE s.{} = {} AND {}").format(
                self.ident, set_list(positions), self.stage, sql.Identifier(OP),
                sql.Literal(code), self._on())
        elif what == "delete_any":  # parameters: one array per key column
            keys = [cols[i] for i in self.layout.key_pos]
            if len(keys) == 1:
                s = sql.SQL("DELETE FROM {} WHERE {} = ANY(%b)").format(
                    self.ident, sql.Identifier(keys[0]))
            else:
                s = sql.SQL("DELETE FROM {} t USING unnest({}) AS s ({}) WHERE {}").format(
                    self.ident, sql.SQL(", ").join(sql.SQL("%b") for _ in keys),
                    sql.SQL(", ").join(map(sql.Identifier, keys)), self._on())
        elif what == "insert_any":  # parameters: one array per column
            s = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS s ({})").format(
                self.ident, cols_sql, sql.SQL(", ").join(sql.Identifier("s", c) for c in cols),
                sql.SQL(", ").join(sql.SQL("%b") for _ in cols), cols_sql)
        elif what == "update_any":  # parameters: one array per column
            positions = [i for i in range(len(cols)) if i not in key]
            s = None if not positions else sql.SQL(
                "UPDATE {} t SET {} FROM unnest({}) AS s ({}) WHERE {}").format(
                self.ident, set_list(positions), sql.SQL(", ").join(sql.SQL("%b") for _ in cols),
                cols_sql, self._on())
        elif what == "replace_any":  # delete_any, the keys found returned (see runs.py)
            keys = [cols[i] for i in self.layout.key_pos]
            s = self.stmt("delete_any") + sql.SQL(" RETURNING {}").format(
                sql.SQL(", ").join(sql.Identifier("t", k) for k in keys)
                if len(keys) > 1 else sql.Identifier(keys[0]))
        elif what == "insert_staged":
            s = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} s WHERE s.{} = {}").format(
                self.ident, cols_sql, sql.SQL(", ").join(sql.Identifier("s", c) for c in cols),
                self.stage, sql.Identifier(OP), sql.Literal(FRESH))
        elif what in ("multiset_delete", "multiset_delete_skip_locked"):
            row_t = sql.SQL(", ").join(sql.Identifier("t2", c) for c in cols)
            row_s = sql.SQL(", ").join(sql.Identifier("s", c) for c in cols)
            # skip_locked (the main apply connection only): equal rows are interchangeable,
            # and one a streamed transaction holds (it commits only once the loop reads on)
            # must not be waited for; TargetWriter checks that enough rows were deleted
            lock = sql.SQL(" FOR UPDATE OF t2 SKIP LOCKED" if what.endswith("locked") else "")
            s = sql.SQL(
                "WITH c AS MATERIALIZED (SELECT t2.ctid AS tid, s.ctid AS sid, s.{n} AS n"
                " FROM {t} t2 JOIN {s} s ON s.{op} = {d} AND ROW({rt})::text = ROW({rs})::text"
                "{lock}) DELETE FROM {t} t USING (SELECT x.tid FROM (SELECT c.tid, c.n,"
                " row_number() OVER (PARTITION BY c.sid) AS rn FROM c) x"
                " WHERE x.rn <= x.n) d WHERE t.ctid = d.tid").format(
                t=self.ident, s=self.stage, n=sql.Identifier(N), op=sql.Identifier(OP),
                d=sql.Literal(DELETE), rt=row_t, rs=row_s, lock=lock)
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
