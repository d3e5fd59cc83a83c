"""Network faults between the sidecar and each server, through tests/faults/proxy.py: a
blackhole longer than the documented detection bound, RST mid-message, a 1-byte trickle,
latency, and kill -9 between the target's COMMIT and the feedback to the source. After each
fault: 0 rows differ (compare.py: count + hash, pinned session settings) and the sidecar
recovered by itself (no error, streaming again). docs/sidecar.md "Faults" is this file's
table; the detection times it prints are what the table quotes."""

from __future__ import annotations

import time

import pytest

from replica import metrics
from tests.faults.compare import wait_equal
from tests.faults.proxy import BLACKHOLE, HOLD_UP, LATENCY, PASS, TRICKLE, ProxyProcess
from tests.replica.conftest import ProcessSidecar, wait_for

TABLES = ["public.t", "public.bag"]
RECEIVE_TIMEOUT = 4.0  # the sidecar's --receive-timeout in these tests (default 60)


def _reconnects(peer: str) -> float:
    return metrics.RECONNECTS.labels(peer)._value.get()


def _setup(db, rows: int = 1000) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text, d date, f float8);"
               "CREATE TABLE bag (v int); ALTER TABLE bag REPLICA IDENTITY FULL;"
               "INSERT INTO bag SELECT g % 5 FROM generate_series(1, 50) g")
    db.execute("INSERT INTO t SELECT g, md5(g::text), date '2024-03-04' + g, g / 3.0"
               " FROM generate_series(1, %s) g", (rows,))


def _work(db, first: int, n: int = 200) -> None:
    with db.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO t SELECT g, 'w', date '2024-01-01', 0.1"
                     " FROM generate_series(%s::int, %s::int) g"
                     " ON CONFLICT (id) DO UPDATE SET v = 'u'", (first, first + n))
        conn.execute("DELETE FROM bag WHERE ctid = (SELECT min(ctid) FROM bag WHERE v = 1)")
        conn.execute("INSERT INTO bag VALUES (1), (1)")
        conn.execute("UPDATE t SET f = f + 1 WHERE id % 7 = 0")


@pytest.fixture
def proxies(pg_source, pg_replica):
    made: list[ProxyProcess] = []

    def make(cluster, trickle_delay: float = 0.002) -> ProxyProcess:
        p = ProxyProcess("127.0.0.1", cluster.port, trickle_delay=trickle_delay)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


def _detect(sc, peer: str, before: float, fault_at: float, timeout: float) -> float:
    wait_for(lambda: _reconnects(peer) > before or sc.error, timeout,
             f"the sidecar to notice the {peer} is gone")
    if sc.error:
        raise sc.error
    took = time.monotonic() - fault_at
    print(f"\n{peer}: detected after {took:.1f} s")
    return took


def test_source_blackhole_is_detected_and_recovered(source_db, replica_db, sidecars, proxies,
                                                    pg_source):
    _setup(source_db)
    px = proxies(pg_source)
    sc = sidecars(source=px.dsn(source_db.dsn), target=replica_db.dsn,
                  receive_timeout=RECEIVE_TIMEOUT, status_interval=1).wait_streaming()
    wait_equal(sc, source_db, replica_db, TABLES, 30, "the copy")
    before, at = _reconnects("source"), time.monotonic()
    px.set(BLACKHOLE)
    _work(source_db, 2000)
    _detect(sc, "source", before, at, RECEIVE_TIMEOUT * 4)
    px.set(PASS)
    wait_equal(sc, source_db, replica_db, TABLES, 60, "recovery after the blackhole")
    sc.wait_streaming()


def test_rst_mid_message_on_either_side(source_db, replica_db, sidecars, proxies, pg_source,
                                        pg_replica):
    _setup(source_db, rows=20000)
    src, tgt = proxies(pg_source), proxies(pg_replica)
    sc = sidecars(source=src.dsn(source_db.dsn), target=tgt.dsn(replica_db.dsn),
                  receive_timeout=RECEIVE_TIMEOUT)
    wait_for(lambda: sc.state.phase in ("copying", "streaming"), 30, "the copy to start")
    tgt.reset()  # during the copy (or right at its end)
    sc.wait_streaming(60)
    for i, side in enumerate((src, tgt, src)):
        _work(source_db, 30000 + 1000 * i, 5000)
        time.sleep(0.05)  # the changes in flight
        side.reset()
    wait_equal(sc, source_db, replica_db, TABLES, 90, "recovery after the resets")
    sc.wait_streaming()


def test_trickle_and_latency_while_streaming(source_db, replica_db, sidecars, proxies,
                                             pg_source, pg_replica):
    _setup(source_db, rows=100)
    src, tgt = proxies(pg_source, 0), proxies(pg_replica, 0)
    sc = sidecars(source=src.dsn(source_db.dsn), target=tgt.dsn(replica_db.dsn),
                  receive_timeout=RECEIVE_TIMEOUT).wait_streaming()
    for mode in (TRICKLE, LATENCY):
        src.set(mode)
        tgt.set(mode)
        _work(source_db, 1000, 50)
        wait_equal(sc, source_db, replica_db, TABLES, 60, f"{mode} on both sides")
    src.set(PASS)
    tgt.set(PASS)
    assert sc.error is None


def _confirmed(db) -> str:
    return db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                      " WHERE slot_name = 'pgml_replica'")[0][0]


def test_kill_9_between_target_commit_and_feedback(source_db, replica_db, proxies, pg_source,
                                                   tmp_path):
    """The target commits (with its progress row); the feedback is held before it reaches
    the source; kill -9. The source sends those transactions again; the target's progress
    row says they are there, so they are skipped: nothing doubled, nothing lost."""
    _setup(source_db)
    px = proxies(pg_source)
    args = ("--source", px.dsn(source_db.dsn), "--target", replica_db.dsn,
            "--status-interval", "1", "--publication-poll-seconds", "3600")
    sc = ProcessSidecar(*args, log=tmp_path / "log").start()
    try:
        wait_equal(sc, source_db, replica_db, TABLES, 60, "the copy")
        # the stream's first change of each table brings its Relation message, and the
        # sidecar reads the source's catalog for it over a connection through this same
        # proxy: it must come before the hold, or the hold stalls that read, not feedback
        _work(source_db, 1000)
        wait_equal(sc, source_db, replica_db, TABLES, 60, "the Relation messages read")
        px.set(HOLD_UP)  # nothing the sidecar sends reaches the source from here
        held = _confirmed(source_db)
        _work(source_db, 2000)
        wait_equal(sc, source_db, replica_db, TABLES, 60, "applied, feedback held")
        time.sleep(2)  # two status intervals: feedback the source would have had by now
        assert _confirmed(source_db) == held, "the feedback was not held"
        sc.kill()
        px.set(PASS)
        px.reset()
        sc = ProcessSidecar(*args, log=tmp_path / "log").start()
        _work(source_db, 4000)
        wait_equal(sc, source_db, replica_db, TABLES, 60, "replayed without doubling")
        wait_for(lambda: _confirmed(source_db) != held, 30, "the slot to move on")
    finally:
        if sc.alive():
            sc.kill()


@pytest.mark.slow
@pytest.mark.parametrize(("side", "phase"), [
    ("source", "copy"), ("source", "streaming"), ("target", "copy"), ("target", "streaming")])
def test_blackhole_past_the_tcp_bound_while_copying_and_streaming(side, phase, source_db,
                                                                  replica_db, sidecars,
                                                                  proxies, pg_source,
                                                                  pg_replica):
    """A silent path (the proxy's kernel still ACKs) on a connection that waits: the receive
    timeout (the source's stream), the watchdog (the target's apply, and the copy's source
    and target connections: clone/snapshot.py) end it."""
    _setup(source_db, rows=200000 if phase == "copy" else 1000)
    px = proxies(pg_source if side == "source" else pg_replica)
    dsns = {"source": source_db.dsn, "target": replica_db.dsn}
    dsns[side] = px.dsn(dsns[side])
    sc = sidecars(source=dsns["source"], target=dsns["target"], receive_timeout=RECEIVE_TIMEOUT,
                  snapshot_workers=1, snapshot_chunk_pages=100)
    if phase == "copy":
        wait_for(lambda: sc.state.phase == "copying", 60, "the copy")
    else:
        sc.wait_streaming()
        wait_equal(sc, source_db, replica_db, TABLES, 60, "the copy")
    before, at = _reconnects(side), time.monotonic()
    px.set(BLACKHOLE)
    if phase == "streaming":
        _work(source_db, 300000)
    _detect(sc, side, before, at, 120)
    px.set(PASS)
    sc.wait_streaming(120)
    _work(source_db, 400000)
    wait_equal(sc, source_db, replica_db, TABLES, 120, f"recovery after a blackhole ({phase})")


@pytest.mark.slow
@pytest.mark.parametrize("side", ["source", "target"])
def test_a_slow_copy_is_not_cut_by_the_watchdog(side, source_db, replica_db, sidecars, proxies,
                                               pg_source, pg_replica):
    """The watchdog on the copy's connections must leave a copy that is slow but working:
    a slow source (the target's COPY FROM waits for rows: its backend 'active') or a slow
    target (the source's COPY TO waits on a full window: 'active'; the sidecar is not
    waiting on the source then). Latency on one side, the smallest receive timeout: a copy
    that lasts several bounds, and not one reconnect."""
    _setup(source_db, rows=100000)
    px = proxies(pg_source if side == "source" else pg_replica)
    px.set(LATENCY)
    dsns = {"source": source_db.dsn, "target": replica_db.dsn}
    dsns[side] = px.dsn(dsns[side])
    before = _reconnects("source"), _reconnects("target")
    started = time.monotonic()
    sc = sidecars(source=dsns["source"], target=dsns["target"], receive_timeout=2,
                  snapshot_workers=1, snapshot_chunk_pages=100)
    sc.wait_streaming(300)
    print(f"\n{side}: the copy took {time.monotonic() - started:.1f} s")
    wait_equal(sc, source_db, replica_db, TABLES, 60, "the slow copy")
    assert sc.error is None
    assert (_reconnects("source"), _reconnects("target")) == before, "the copy was cut"


@pytest.mark.slow
def test_trickle_during_the_copy(source_db, replica_db, sidecars, proxies, pg_source):
    _setup(source_db, rows=3000)
    px = proxies(pg_source, 0)
    px.set(TRICKLE)
    sc = sidecars(source=px.dsn(source_db.dsn), target=replica_db.dsn,
                  receive_timeout=30)
    _work(source_db, 5000, 100)
    wait_equal(sc, source_db, replica_db, TABLES, 300, "the copy through a trickle")
    px.set(PASS)
    assert sc.error is None


def test_sessions_orphaned_on_the_target_are_ended(source_db, replica_db, sidecars, proxies,
                                                   pg_replica):
    """The path to the target resets the sidecar's side but keeps the server's open (a
    middlebox, a dead path): the copy's session lives on in the target, holding the lock of
    its TRUNCATE, and the copy started again would wait on it without end. The sidecar ends
    the sessions it gave up when it connects again (connect._reap)."""
    _setup(source_db, rows=100000)
    px = proxies(pg_replica)
    sc = sidecars(source=source_db.dsn, target=px.dsn(replica_db.dsn),
                  receive_timeout=RECEIVE_TIMEOUT, snapshot_workers=1, snapshot_chunk_pages=100)
    px.set(LATENCY)
    copied = metrics.SNAPSHOT_ROWS.labels("public.t")._value.get()
    wait_for(lambda: metrics.SNAPSHOT_ROWS.labels("public.t")._value.get() > copied or sc.error,
             60, "the copy")
    px.orphan()
    px.set(PASS)
    sc.wait_streaming(60)
    _work(source_db, 200000)
    wait_equal(sc, source_db, replica_db, TABLES, 60, "recovery beside the orphaned sessions")
    assert not replica_db.execute(  # what the reset left behind is gone
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND"
        " application_name LIKE 'pgml-replica %%' AND state = 'active'"
        " AND wait_event = 'ClientRead'")
