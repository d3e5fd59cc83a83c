"""What the history holds now, per table, read from the target: for the metrics, /status and
the dashboard (replica/operate/api.py, dashboard/).

Why the sidecar reads it, and cheaply: compaction runs inside the replica
(``pgml.history_compact``, inference/history_compact.py), so the only trace of a run is the
table's segment row in ``pgml_history.segments`` (rewritten by each run); and versions still
in Postgres are counted from the statistics (``n_live_tup``), never by ``count(*)`` over a
table that grows with every change. Read every ``INTERVAL`` seconds by the stream's recorder,
right after one of its commits, on the connection that just committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from replica import metrics

INTERVAL = 10.0
QUERY = """
SELECT t.relation_name, coalesce(s.n_live_tup, 0), coalesce(pg_total_relation_size(c.oid), 0),
       coalesce(g.versions, 0), coalesce(g.bytes, 0), coalesce(g.segments, 0), g.written
FROM pgml_history.tables t
LEFT JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', 'pgml_history', t.history_table))
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
LEFT JOIN LATERAL (SELECT count(*) AS segments, sum(versions) AS versions, sum(bytes) AS bytes,
                          max(created_at) AS written
                   FROM pgml_history.segments WHERE relation_name = t.relation_name) g ON true
ORDER BY 1
"""

_written: dict[str, datetime] = {}  # table -> its segment's time when last read


def read(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """One dict per table with history (none when the catalog is not there). Bounded: the
    stream waits for this between its transactions."""
    conn.execute("SET LOCAL lock_timeout = '200ms'; SET LOCAL statement_timeout = '2s'")
    if conn.execute("SELECT to_regclass('pgml_history.segments') IS NULL").fetchone()[0]:
        return []
    return [{"table": t, "versions_postgres": int(vp), "bytes_postgres": int(bp),
             "versions_parquet": int(vq), "bytes_parquet": int(bq), "segments": int(k),
             "last_compaction": written}
            for t, vp, bp, vq, bq, k, written in conn.execute(QUERY).fetchall()]


def publish(tables: list[dict[str, Any]]) -> None:
    """The gauges, and a compaction counted when a table's segment was written again since
    the last read (a segment there before the sidecar started is not a run it saw)."""
    for t in tables:
        name = t["table"]
        metrics.HISTORY_STORED_VERSIONS.labels(name, "postgres").set(t["versions_postgres"])
        metrics.HISTORY_STORED_VERSIONS.labels(name, "parquet").set(t["versions_parquet"])
        metrics.HISTORY_STORED_BYTES.labels(name, "postgres").set(t["bytes_postgres"])
        metrics.HISTORY_STORED_BYTES.labels(name, "parquet").set(t["bytes_parquet"])
        written = t["last_compaction"]
        if written is None:
            continue
        metrics.HISTORY_LAST_COMPACTION.labels(name).set(written.timestamp())
        seen = _written.get(name)
        if seen is not None and written != seen:
            metrics.HISTORY_COMPACTIONS.labels(name).inc()
        elif seen is None:
            metrics.HISTORY_COMPACTIONS.labels(name).inc(0)  # the series exists from now
        _written[name] = written


def refresh(conn: psycopg.Connection) -> None:
    """Read and publish, between target transactions (the read's own is rolled back)."""
    try:
        publish(read(conn))
    finally:
        conn.rollback()
