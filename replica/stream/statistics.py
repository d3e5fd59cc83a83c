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
STATS_MARGIN = 1000  # live rows beyond twice reltuples that make statistics stale
log = logging.getLogger("pgml_replica")
_STATS_SQL = ("SELECT c.reltuples, coalesce(s.n_live_tup, 0) FROM pg_class c JOIN pg_namespace n"
              " ON n.oid = c.relnamespace LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
              " WHERE n.nspname = %s AND c.relname = %s")


def analyze_if_stale(conn: psycopg.Connection, tw: MirroredTable, rows: int) -> bool:
    """ANALYZE ``tw`` first when its statistics cannot be right; True if it did.

    Why: statistics taken while the table was (nearly) empty - autoanalyze or VACUUM after
    a big delete: reltuples 0 or a few rows, the pages kept - make the planner expect one
    row and nest a scan of the whole table around the run's unnest, a join filter per pair.
    A big run (a 400k-row benchmark's 100-row-transaction updates sat in one 40k-row
    statement for minutes) is caught by its own size: it matches ``rows`` keys, so the
    table holds about that many. A small one is caught by what the server counts live
    (``n_live_tup``) against ``reltuples``, checked at most once a second per table: a
    table emptied and filled again (a queue) gave every 15-row update a scan of it, 75 ms
    at 75k rows and growing, and the lag benchmark fell 0.3-0.8 s behind native. Fresh
    statistics give the index probe per row; ANALYZE samples a bounded number of rows."""
    small = rows < STATS_CHECK_ROWS
    if small:
        now = time.monotonic()
        if now < tw.stats_checked_at + STATS_RECHECK_S:
            return False
        tw.stats_checked_at = now
    row = conn.execute(_STATS_SQL, (tw.schema, tw.name)).fetchone()
    if row is None or row[0] < 0:  # -1: never analyzed, the planner sizes it by its pages
        return False
    reltuples, live = row
    # the margins: ANALYZE's estimate of a table about the run's size may fall a little
    # short, and that must not analyze every run
    if (live <= 2 * reltuples + STATS_MARGIN) if small else (2 * reltuples >= rows):
        return False
    log.info("%s: statistics say %.0f rows, %s: analyzing it first", tw.qualname, reltuples,
             f"the server counts {live} live" if small else f"a run matches {rows} keys")
    conn.execute(sql.SQL("ANALYZE {}").format(tw.ident))
    return True
