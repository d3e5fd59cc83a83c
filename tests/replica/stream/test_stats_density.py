"""The statistics check compares the live count with the rows the planner expects - the
recorded density times the pages the table has now - so a table that only grows is never
analyzed inline (each ANALYZE was a slow probe of the lag benchmark), while a density that
is wrong still is (tests/replica/stream/test_stale_stats.py: the traps themselves)."""

from __future__ import annotations

import psycopg

from replica.stream.batch import Layout
from replica.stream.statistics import analyze_if_stale, planner_rows
from replica.stream.tables import MirroredTable

COLS = ("id", "a", "b", "t", "ts")  # the replication benchmark's table
TYPES = ("int8", "float8", "float8", "text", "timestamptz")
FILL = ("INSERT INTO public.grows SELECT g, g, random(), 'x', now()"
        " FROM generate_series(%s::int8, %s::int8) g")


def test_the_planners_rows_are_the_recorded_density_times_the_pages_now():
    assert planner_rows(1000.0, 10, 40) == 4000.0  # grown 4x: the estimate grew with it
    assert planner_rows(10.0, 1000, 1000) == 10.0  # a queue's few rows on many pages
    assert planner_rows(0.0, 500, 1000) == 0.0  # analyzed with every row dead
    assert planner_rows(-1.0, 0, 7) is None  # never analyzed: the planner uses the width
    assert planner_rows(0.0, 0, 7) is None  # analyzed empty: likewise


def _stats(c: psycopg.Connection) -> tuple[float, int]:
    return c.execute("SELECT reltuples, relpages FROM pg_class"
                     " WHERE oid = 'public.grows'::regclass").fetchone()


def _flush_live_count(c: psycopg.Connection) -> None:
    c.execute("SELECT pg_stat_force_next_flush()")
    c.execute("SELECT 1")  # the flush happens at this statement's end


def test_a_table_that_only_grows_is_not_analyzed_but_a_refilled_one_is(replica_db):
    tw = MirroredTable(16610, "public", "grows", Layout("public.grows", COLS, TYPES, (0,)), 0)
    with psycopg.connect(replica_db.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE public.grows (id int8 PRIMARY KEY, a float8, b float8, t text,"
                  " ts timestamptz) WITH (autovacuum_enabled = off)")
        c.execute("VACUUM (ANALYZE) public.grows")  # the lag benchmark's start: empty
        c.execute(FILL, (1, 20_000))
        _flush_live_count(c)
        assert c.execute("SELECT pg_stat_get_live_tuples('public.grows'::regclass)"
                         ).fetchone()[0] == 20_000  # what the check reads
        # 20k live against reltuples 0: the old rule analyzed here; the planner sizes the
        # table from its pages and the row width, and its plan is the index probe
        with c.transaction():
            assert not analyze_if_stale(c, tw, 15)
        assert _stats(c) == (0.0, 0)
        c.execute("ANALYZE public.grows")
        c.execute(FILL, (20_001, 100_000))  # five times the rows ANALYZE saw
        _flush_live_count(c)
        tw.stats_checked_at = float("-inf")
        with c.transaction():
            assert not analyze_if_stale(c, tw, 15)  # the density holds: nothing to do
            assert not analyze_if_stale(c, tw, 40_000)  # a big run likewise
        assert _stats(c)[0] == 20_000
        # a queue: nearly every row deleted, VACUUM records the few left on every page
        c.execute("DELETE FROM public.grows WHERE id < 99990")
        _flush_live_count(c)  # before VACUUM sets the count: not subtracted after it
        c.execute("VACUUM (ANALYZE) public.grows")
        c.execute(FILL.replace("'x'", "'y'"), (100_001, 175_000))  # refilled in place
        _flush_live_count(c)
        tw.stats_checked_at = float("-inf")
        with c.transaction():
            assert analyze_if_stale(c, tw, 15)
        assert _stats(c)[0] > 70_000
