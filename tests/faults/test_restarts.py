"""Source and target restarts, through the proxies, in each phase: during the copy, while
streaming, and with a protocol-2 streamed transaction in flight (bigger than a 64 kB
``logical_decoding_work_mem``, applied in an open target transaction as it runs). The source
restarts with ``pg_ctl restart -m immediate`` (a crash: its open transactions are gone, the
slot falls back to its last checkpoint), the target with a fast restart (every session
ended). After each: 0 rows differ (compare.py) and the sidecar recovered by itself - it
counted a reconnect to that side, has no error, and streams again.

One of these runs in ``make test`` (the source crash with a streamed transaction in flight);
the rest are ``slow``."""

from __future__ import annotations

import threading

import psycopg
import pytest

from replica import metrics
from tests.faults.compare import wait_equal
from tests.faults.proxy import LATENCY, PASS, ProxyProcess
from tests.replica.conftest import wait_for

TABLES = ["public.t", "public.bag"]
BIG = "SELECT count(*) FROM t WHERE id BETWEEN 1000001 AND 1020000"  # the streamed one's rows
RECEIVE_TIMEOUT = 4.0


def _reconnects(peer: str) -> float:
    return metrics.RECONNECTS.labels(peer)._value.get()


def _copied() -> float:
    return metrics.SNAPSHOT_ROWS.labels("public.t")._value.get()


def _setup(db, rows: int) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text);"
               "CREATE TABLE bag (v int); ALTER TABLE bag REPLICA IDENTITY FULL;"
               "INSERT INTO bag SELECT g % 5 FROM generate_series(1, 50) g")
    db.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, %s) g", (rows,))


class Writer:
    """Small transactions on both tables until stopped, through the outage (a source that
    restarts refuses connections for a moment)."""

    def __init__(self, db, first: int) -> None:
        self.db, self.next = db, first
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.db.connect() as conn:
                    while not self.stop.is_set():
                        with conn.transaction():
                            conn.execute("INSERT INTO t VALUES (%s, 'w') ON CONFLICT (id) DO"
                                         " UPDATE SET v = 'u'", (self.next,))
                            conn.execute("DELETE FROM bag WHERE ctid = (SELECT min(ctid)"
                                         " FROM bag WHERE v = %s)", (self.next % 5,))
                            conn.execute("INSERT INTO bag VALUES (%s), (%s)",
                                         (self.next % 5, self.next % 5))
                        self.next += 1
                        self.stop.wait(0.01)
            except psycopg.OperationalError:  # the source is restarting
                self.stop.wait(0.2)

    def done(self) -> None:
        self.stop.set()
        self.thread.join(30)


def _restart(side: str, pg_source, pg_replica) -> None:
    if side == "source":
        pg_source.restart("immediate")
    else:
        pg_replica.restart("fast")


def _streamed_in_flight(source_db, replica_db) -> psycopg.Connection:
    """A transaction far bigger than 64 kB, still open on the source, whose streamed chunks
    the sidecar holds in an open target transaction."""
    conn = source_db.connect(autocommit=False)
    conn.execute("INSERT INTO t SELECT g, repeat('z', 200) FROM"
                 " generate_series(1000001, 1020000) g")
    wait_for(lambda: replica_db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgml-replica stream'"
        " AND state = 'idle in transaction' AND datname = current_database()"
        " AND backend_xid IS NOT NULL") >= [(1,)],
        60, "the streamed transaction to be applied as it runs")
    assert replica_db.execute(BIG) == [(0,)]
    return conn


def _run(side: str, phase: str, source_db, replica_db, sidecars, pg_source, pg_replica):
    _setup(source_db, rows=200000 if phase == "copy" else 1000)
    src = ProxyProcess("127.0.0.1", pg_source.port)
    tgt = ProxyProcess("127.0.0.1", pg_replica.port)
    writer = None
    try:
        sc = sidecars(source=src.dsn(source_db.dsn), target=tgt.dsn(replica_db.dsn),
                      receive_timeout=RECEIVE_TIMEOUT, decoding_work_mem="64kB",
                      segment_rows=500, snapshot_workers=1, snapshot_chunk_pages=100)
        copied = _copied()
        if phase == "copy":  # some rows in, most not
            tgt.set(LATENCY)
            wait_for(lambda: _copied() > copied or sc.error, 60,
                     "the copy")
        else:
            sc.wait_streaming()
        writer = Writer(source_db, 2000000)
        big = _streamed_in_flight(source_db, replica_db) if phase == "streamed" else None
        before = _reconnects(side)
        at = sc.state.phase
        _restart(side, pg_source, pg_replica)
        tgt.set(PASS)
        if big is not None:
            if side == "source":  # the crash ended it: the sidecar must drop what it holds
                big.close()
            else:
                big.commit()
                big.close()
        wait_for(lambda: _reconnects(side) > before or sc.error, 120,
                 f"the sidecar to notice the {side} restart")
        writer.stop.wait(1)  # changes after the restart too
        writer.done()
        sc.wait_streaming(120)
        wait_equal(sc, source_db, replica_db, TABLES, 120, f"recovery after a {side} restart")
        if phase == "copy":  # the restart cut the copy: it started again
            assert at == "copying"
            print("copied", _copied() - copied)
            assert _copied() - copied > 200000
        if phase == "streamed":
            kept = source_db.execute(BIG)[0][0]
            assert kept == (0 if side == "source" else 20000)
        assert sc.error is None and sc.state.phase == "streaming"
    finally:
        if writer is not None:
            writer.done()
        src.close()
        tgt.close()


@pytest.mark.source_versions  # protocol 2 from 15, 4 (streaming 'parallel') from 16
def test_source_crash_with_a_streamed_transaction_in_flight(source_db, replica_db, sidecars,
                                                            pg_source, pg_replica):
    _run("source", "streamed", source_db, replica_db, sidecars, pg_source, pg_replica)


@pytest.mark.slow
@pytest.mark.parametrize(("side", "phase"), [
    ("source", "copy"), ("source", "streaming"),
    ("target", "copy"), ("target", "streaming"), ("target", "streamed")])
def test_restart_in_each_phase(side, phase, source_db, replica_db, sidecars, pg_source,
                               pg_replica):
    _run(side, phase, source_db, replica_db, sidecars, pg_source, pg_replica)
