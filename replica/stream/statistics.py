"""The planner's statistics of a mirrored table, checked before a run's unnest join.

Why its own module: the apply path writes runs; whether the target's statistics can be
trusted for the join it is about to send is a separate question with its own evidence
(docs/sidecar.md, "stale statistics"), asked by ``apply.TargetWriter`` before an unnest
join and tested on its own (tests/replica/stream/test_stale_stats.py).
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg import sql

from replica.stream.tables import MirroredTable

STATS_CHECK_ROWS = 1000  # an unnest join of a run this big first checks the row estimate
STATS_RECHECK_S = 1.0  # smaller runs check a table's statistics at most this often
STATS_MARGIN = 1000  # live rows beyond twice the planner's rows that make statistics stale
log = logging.getLogger("pgml_replica")
# reltuples and relpages as the planner reads them, the pages the table has now (the
# planner scales the statistics' density by them), and the server's live count - by
# function, not through pg_stat_user_tables (a view over every table's counters)
_STATS_SQL = ("SELECT c.reltuples, c.relpages, pg_relation_size(c.oid)"
              " / current_setting('block_size')::int, pg_stat_get_live_tuples(c.oid)"
              " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
              " WHERE n.nspname = %s AND c.relname = %s")


def analyze_if_stale(conn: psycopg.Connection, tw: MirroredTable, rows: int) -> bool:
    """ANALYZE ``tw`` first when its statistics cannot be right; True if it did.

    Why: statistics taken while the table was (nearly) empty - autoanalyze or VACUUM after
    a big delete: reltuples 0 or a few rows, the pages kept - make the planner expect one
    row and nest a scan of the whole table around the run's unnest, a join filter per pair.
    A big run (a 400k-row benchmark's 100-row-transaction updates sat in one 40k-row
    statement for minutes) is caught by its own size: it matches ``rows`` keys, so the
    table holds about that many. A small one is caught by what the server counts live
    (``n_live_tup``) against the planner's estimate, checked at most once a second per
    table, one catalog read that costs no more than a statement of the run: a
    table emptied and filled again (a queue) gave every 15-row update a scan of it, 75 ms
    at 75k rows and growing, and the lag benchmark fell 0.3-0.8 s behind native. Fresh
    statistics give the index probe per row; ANALYZE samples a bounded number of rows.
    Both compare with the rows the planner expects (``planner_rows``), not ``reltuples``."""
    small = rows < STATS_CHECK_ROWS
    if small:
        now = time.monotonic()
        if now < tw.stats_checked_at + STATS_RECHECK_S:
            return False
        tw.stats_checked_at = now
    row = conn.execute(_STATS_SQL, (tw.schema, tw.name)).fetchone()
    expected = None if row is None else planner_rows(*row[:3])
    if expected is None:  # no density to trust or distrust: the planner sizes it by width
        return False
    live = row[3]
    # the margins: ANALYZE's estimate of a table about the run's size may fall a little
    # short, and that must not analyze every run
    if (live <= 2 * expected + STATS_MARGIN) if small else (2 * expected >= rows):
        return False
    log.info("%s: the planner expects %.0f rows, %s: analyzing it first", tw.qualname,
             expected, f"the server counts {live} live" if small else
             f"a run matches {rows} keys")
    conn.execute(sql.SQL("ANALYZE {}").format(tw.ident))
    return True


def planner_rows(reltuples: float, relpages: int, pages: int) -> float | None:
    """The rows the planner expects in a table: the density its statistics recorded
    (``reltuples / relpages``) times the pages the table has now - PostgreSQL's own rule
    (``table_block_relation_estimate_size``). None where there is no recorded density (never
    analyzed, or analyzed empty: the planner then derives one from the row width, which
    cannot be off by the orders of magnitude that make the trap above).

    Why the density and not ``reltuples`` alone: a table that only grows keeps its density,
    and the planner's estimate grows with its pages - comparing the live count with
    ``reltuples`` analyzed it at every doubling (five ANALYZEs inline in 15 s of the lag
    benchmark, up to 16 ms each, every one a slow probe), though every plan was right. The
    trap is a density that is wrong: rows dead when it was taken (a big delete), or a
    queue's few rows left on many pages, filled again without the pages growing."""
    if reltuples < 0 or relpages <= 0:
        return None
    return reltuples / relpages * pages
