"""Lost connections: the sidecar reconnects with backoff and resumes exactly where the
target's progress row says (nothing lost, nothing doubled)."""

from __future__ import annotations

import threading

import psycopg

from replica import metrics
from replica.operate.runner import backoff


def _reconnects(peer: str) -> float:
    return metrics.RECONNECTS.labels(peer)._value.get()


def _writer(source_db, stop: threading.Event, first: int) -> threading.Thread:
    """Keeps inserting (and retrying through the outage) until stopped."""
    def run() -> None:
        i = first
        while not stop.is_set():
            try:
                with source_db.connect() as conn:
                    while not stop.is_set():
                        with conn.transaction():
                            conn.execute("INSERT INTO t VALUES (%s, 'w') ON CONFLICT DO"
                                         " NOTHING", (i,))
                            conn.execute("DELETE FROM bag WHERE ctid = (SELECT ctid FROM bag"
                                         " LIMIT 1)")
                            conn.execute("INSERT INTO bag VALUES (%s)", (i % 5,))
                        i += 1
            except psycopg.OperationalError:  # the source is restarting
                stop.wait(0.2)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _setup(source_db):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE bag (v int);"
                      "ALTER TABLE bag REPLICA IDENTITY FULL;"
                      "INSERT INTO bag SELECT g % 5 FROM generate_series(1, 50) g")


def test_target_restart(source_db, replica_db, sidecars, pg_replica):
    _setup(source_db)
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    before = _reconnects("target")
    stop = threading.Event()
    th = _writer(source_db, stop, 1)
    stop.wait(0.5)
    pg_replica.restart()
    stop.wait(1.0)
    stop.set()
    th.join(30)
    sc.wait_same(source_db, replica_db, ["public.t", "public.bag"], 90, "recovery")
    assert _reconnects("target") > before
    assert sc.state.phase == "streaming"


def test_source_restart(source_db, replica_db, sidecars, pg_source):
    _setup(source_db)
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    before = _reconnects("source")
    stop = threading.Event()
    th = _writer(source_db, stop, 1)
    stop.wait(0.5)
    pg_source.restart()
    stop.wait(1.0)
    stop.set()
    th.join(30)
    sc.wait_same(source_db, replica_db, ["public.t", "public.bag"], 90, "recovery")
    assert _reconnects("source") > before


def test_backoff_grows_with_full_jitter():
    import random

    rng = random.Random(1)
    delays = [[backoff(a, rng) for _ in range(200)] for a in range(8)]
    assert all(0 <= d <= 0.5 for d in delays[0])
    assert max(delays[3]) <= 4.0 and max(delays[3]) > 2.0
    assert max(delays[7]) <= 30.0 and min(delays[7]) < 5.0  # jitter: spread, capped
