"""A run's key match against a table whose statistics were taken while every row was dead.

Autoanalyze after a big delete leaves reltuples 0 with the pages still there; the planner
then expects one row and, for a big run of a composite key, nests a seq scan of the whole
table around the unnest (a join filter per pair: what stalled a 400k-row benchmark run for
minutes); a small run of one key scans the whole table per statement. The writer analyzes
such a table before the statement (``replace_any``: the delete half of a run's full-row
updates, apply.py); the plan then probes the key."""

from __future__ import annotations

import psycopg
from psycopg import sql

from replica.stream.batch import Layout
from replica.stream.statistics import analyze_if_stale
from replica.stream.tables import MirroredTable

ROWS, RUN = 100_000, 40_000
COLS = ("id", "a", "b", "t", "ts")  # the replication benchmark's table
FILL = ("INSERT INTO public.stale SELECT g, g, random(), md5(g::text), now()"
        " FROM generate_series(%s, %s) g")


def _plan(conn: psycopg.Connection, tw: MirroredTable) -> str:
    ids = list(range(ROWS + 1, ROWS + 1 + RUN))  # a composite key (id, a): an unnest join
    stmt = sql.SQL("EXPLAIN ") + tw.stmt("replace_any")
    return "\n".join(r[0] for r in conn.execute(stmt, [ids, [float(i) for i in ids]]))


def _reltuples(conn: psycopg.Connection) -> float:
    return conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'public.stale'::regclass"
                        ).fetchone()[0]


def test_statistics_taken_on_dead_rows_are_refreshed_before_a_big_unnest_join(replica_db):
    types = ("int8", "float8", "float8", "text", "timestamptz")
    tw = MirroredTable(16600, "public", "stale", Layout("public.stale", COLS, types, (0, 1)),
                       0)
    with psycopg.connect(replica_db.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE public.stale (id int8, a float8, b float8, t text,"
                  " ts timestamptz, PRIMARY KEY (id, a)) WITH (autovacuum_enabled = off)")
        c.execute(FILL, (1, ROWS))
        c.execute("ANALYZE public.stale")  # column statistics of the old rows: they stay
        c.execute("DELETE FROM public.stale")
        c.execute("ANALYZE public.stale")  # every row dead: reltuples 0, the pages stay
        c.execute(FILL, (ROWS + 1, 2 * ROWS))
        assert _reltuples(c) == 0  # the planner expects one row of 100k
        with c.transaction():  # the writer's case: inside the apply transaction
            assert analyze_if_stale(c, tw, RUN)
        assert _reltuples(c) >= RUN
        fresh = _plan(c, tw)
        assert "Join Filter" not in fresh, fresh  # no scan of the table per row of the run
        assert not analyze_if_stale(c, tw, RUN)  # fresh now: no second ANALYZE
        assert not analyze_if_stale(c, tw, 10)  # fresh for a small run too


def test_a_table_emptied_and_filled_again_is_analyzed_before_small_runs(replica_db):
    """VACUUM leaves reltuples at the few rows left (its pages kept: a live row at the end);
    refilled, every small update would scan the whole table (the lag benchmark's stall).
    The server's live count against reltuples catches it, at most once a second."""
    types = ("int8", "float8", "float8", "text", "timestamptz")
    tw = MirroredTable(16601, "public", "queue", Layout("public.queue", COLS, types, (0,)), 0)
    fill = FILL.replace("public.stale", "public.queue").replace("md5(g::text)", "'x'")
    with psycopg.connect(replica_db.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE public.queue (id int8 PRIMARY KEY, a float8, b float8, t text,"
                  " ts timestamptz) WITH (autovacuum_enabled = off)")
        c.execute(fill, (1, 4 * ROWS))  # the benchmark's 400k: pages enough for the trap
        c.execute("DELETE FROM public.queue WHERE id < %s", (4 * ROWS - 9,))
        c.execute("SELECT pg_stat_force_next_flush()")  # the delete's count goes in first:
        c.execute("SELECT 1")  # flushed after VACUUM's, it would take the refill's away
        c.execute("VACUUM (ANALYZE) public.queue")  # 10 rows left, at the end: pages kept
        assert c.execute("SELECT reltuples, relpages FROM pg_class"
                         " WHERE oid = 'public.queue'::regclass").fetchone()[0] == 10
        c.execute(fill, (4 * ROWS + 1, 4 * ROWS + 75_000))
        c.execute("SELECT pg_stat_force_next_flush()")
        c.execute("SELECT 1")  # the flush happens at this statement's end
        ids = list(range(4 * ROWS + 100, 4 * ROWS + 115))
        stmt = sql.SQL("EXPLAIN ") + tw.stmt("replace_any")
        stale = "\n".join(r[0] for r in c.execute(stmt, [ids]))
        assert "Seq Scan" in stale, stale  # the trap: the whole table per statement
        with c.transaction():
            assert analyze_if_stale(c, tw, 15)
        fresh = "\n".join(r[0] for r in c.execute(stmt, [ids]))
        assert "Index Scan" in fresh and "Seq Scan" not in fresh, fresh
        tw.stats_checked_at = float("-inf")
        assert not analyze_if_stale(c, tw, 15)  # fresh now
        c.execute("ANALYZE public.queue")
        assert not analyze_if_stale(c, tw, 15)  # checked within the second: no query at all
