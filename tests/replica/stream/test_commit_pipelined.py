"""A batch's COMMIT fails in the target writer's thread while the stream decodes on (issue 14):
nothing of it - nor of what the stream decoded after it - is acknowledged to the source, and
after the sidecar reconnects every row (and, with history on, every version) is there once.

How the COMMIT is caught in flight: a deferred constraint trigger on the target sleeps at
COMMIT for the marker row (once: a sequence, which no rollback undoes), the source writes
more transactions meanwhile, and the test terminates that backend while it sleeps. A
pipelining bug that counts a batch as applied when it is handed over (not when it is done)
lets the flush LSN pass the marker's transaction during the sleep; one that loses or
doubles the batch after the failure shows in the tables' multiset digests."""

from __future__ import annotations

import time

import pytest

from replica import metrics
from tests.faults.compare import wait_equal
from tests.replica.conftest import ThreadSidecar, wait_for

TABLES = ["public.t", "public.bag"]
SLEEP_S = 20  # the COMMIT's sleep: ended early by the test's pg_terminate_backend

TRIGGER = f"""
CREATE SEQUENCE public.once;
CREATE FUNCTION public.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('public.once') = 1 THEN PERFORM pg_sleep({SLEEP_S}); END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON public.t DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.id = -1) EXECUTE FUNCTION public.slow_commit();
"""


def _reconnects() -> float:
    return metrics.RECONNECTS.labels("target")._value.get()


def _work(db, first: int, txns: int, rows: int = 10) -> None:
    """``txns`` source transactions, each ``rows`` rows into t and one into the key-less bag
    (a doubled replay shows there as an extra row)."""
    with db.connect() as c:
        for i in range(txns):
            lo = first + i * rows
            with c.transaction():
                c.execute("INSERT INTO t SELECT g, md5(g::text)"
                          " FROM generate_series(%s::int8, %s::int8) g", (lo, lo + rows - 1))
                c.execute("INSERT INTO bag VALUES (%s)", (i % 3,))


def _unconfirmed(source_db, replica_db, marker_at: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        (passed,) = source_db.execute(
            "SELECT confirmed_flush_lsn > %s::pg_lsn FROM pg_replication_slots"
            " WHERE slot_name = 'pgml_replica'", (marker_at,))[0]
        assert not passed, "the flush LSN passed a transaction still committing"
        assert replica_db.execute("SELECT count(*) FROM t WHERE id >= 2000")[0][0] == 0
        time.sleep(0.05)


@pytest.mark.parametrize("history", [None, "public.t,public.bag"], ids=["mirror", "history"])
def test_a_commit_failing_in_the_writer_thread_acknowledges_nothing_and_replays_once(
        source_db, replica_db, history):
    source_db.execute("CREATE TABLE t (id int8 PRIMARY KEY, v text);"
                      "CREATE TABLE bag (v int); ALTER TABLE bag REPLICA IDENTITY FULL;"
                      "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100) g")
    sc = ThreadSidecar(source=source_db.dsn, target=replica_db.dsn, history=history,
                       batch_max_seconds=0.05).start()
    try:
        sc.wait_streaming()
        _work(source_db, 1000, 5)  # the Relation messages: the stream knows both tables
        wait_equal(sc, source_db, replica_db, TABLES, 60, "the copy and the first changes")
        replica_db.execute(TRIGGER)
        before = _reconnects()
        (marker_at,) = source_db.execute("SELECT pg_current_wal_lsn()::text")[0]
        source_db.execute("INSERT INTO t VALUES (-1, 'marker')")  # its COMMIT will sleep
        pid = wait_for(lambda: replica_db.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            " AND datname = current_database()"), 30, "the COMMIT to sleep")[0][0]
        # the stream is free while that COMMIT sleeps (idle, then reading on): long enough
        # for feedback (min gap 0.25 s) each time - none may confirm the marker's transaction
        _unconfirmed(source_db, replica_db, marker_at, 1.0)
        _work(source_db, 2000, 20)
        _unconfirmed(source_db, replica_db, marker_at, 1.0)
        assert sc.state.received_lsn > 0 and sc.error is None
        replica_db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: _reconnects() > before or sc.error, 60, "the sidecar to reconnect")
        _work(source_db, 5000, 5)
        wait_equal(sc, source_db, replica_db, TABLES, 60, "the replay after the failed commit")
        assert replica_db.execute("SELECT count(*) FROM t WHERE id = -1")[0][0] == 1
        if history:
            for table in ("public__t", "public__bag"):
                dup = replica_db.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM pgml_history.{table}"  # noqa: S608
                    " WHERE _pgml_seq >= 0 GROUP BY _pgml_commit_lsn, _pgml_seq"  # (copy: -1)
                    " HAVING count(*) > 1) d")[0][0]
                assert dup == 0, f"doubled versions in {table}"
            # every change after the copy is one version: 30 transactions of 10 + 1 rows,
            # and the marker row (the copy's seed versions have _pgml_seq < 0)
            (tv,) = replica_db.execute("SELECT count(*) FROM pgml_history.public__t"
                                       " WHERE _pgml_seq >= 0")[0]
            (bv,) = replica_db.execute("SELECT count(*) FROM pgml_history.public__bag"
                                       " WHERE _pgml_seq >= 0")[0]
            assert (tv, bv) == (30 * 10 + 1, 30)
            assert replica_db.execute("SELECT count(*) FROM pgml_history.public__t"
                                      " WHERE _pgml_seq = -1")[0][0] == 100
        sc.stop()
        assert sc.error is None
    finally:
        sc.stop_event.set()
        sc.thread.join(30)
