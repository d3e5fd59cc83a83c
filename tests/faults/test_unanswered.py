"""A target that accepts bytes but never answers: the backend serving the sidecar's apply
connection stopped with SIGSTOP (its kernel still takes and ACKs what the sidecar sends, so
keepalives and tcp_user_timeout see nothing, and statement_timeout runs in the stopped
process). connect.Watchdog notices the unanswered wait within its bound (the receive
timeout, up to 3.25 x it), terminates that backend and drops the connection; the sidecar
reconnects and catches up while the old backend is still stopped, and the old backend dies
as soon as it runs again, without applying anything it had been sent. The same bound holds
when the target's replies stop on the way back (the proxy holds what the server sends): the
statements run there, their answers never come."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from tests.faults.compare import wait_equal
from tests.faults.proxy import HOLD_DOWN, PASS, ProxyProcess
from tests.faults.test_network import RECEIVE_TIMEOUT, TABLES, _detect, _reconnects, _setup, _work
from tests.replica.conftest import wait_for


def _apply_pid(replica_db, besides: int = 0) -> int:
    return wait_for(lambda: replica_db.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgml-replica apply'"
        " AND datname = current_database() AND pid <> %s", (besides,)), 30,
        "the apply session")[0][0]


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def test_a_stopped_target_backend_is_dropped_and_replaced(source_db, replica_db, sidecars):
    _setup(source_db)
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn,
                  receive_timeout=RECEIVE_TIMEOUT).wait_streaming()
    wait_equal(sc, source_db, replica_db, TABLES, 30, "the copy")
    pid = _apply_pid(replica_db)
    before, at = _reconnects("target"), time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        _work(source_db, 2000)
        _detect(sc, "target", before, at, RECEIVE_TIMEOUT * 3.25 + 10)
        wait_equal(sc, source_db, replica_db, TABLES, 60, "recovery beside the stopped backend")
        assert _stopped(pid)  # recovered while it is still stopped
        _apply_pid(replica_db, besides=pid)  # a new apply session
    finally:
        os.kill(pid, signal.SIGCONT)
    # terminated while stopped: it ends as soon as it runs, having applied nothing more
    wait_for(lambda: not replica_db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                            (pid,)), 30, "the stopped backend to end")
    _work(source_db, 3000)
    wait_equal(sc, source_db, replica_db, TABLES, 60, "streaming on")
    assert sc.error is None


def test_replies_that_never_come_back_are_bounded(source_db, replica_db, sidecars, pg_replica):
    """The apply's statements (its COMMIT too) reach the target and run; the replies are
    held. The watchdog's own session gets no answer either: it drops the connection; after
    the path recovers the progress row says what committed, and nothing doubles."""
    _setup(source_db)
    px = ProxyProcess("127.0.0.1", pg_replica.port)
    try:
        sc = sidecars(source=source_db.dsn, target=px.dsn(replica_db.dsn),
                      receive_timeout=RECEIVE_TIMEOUT).wait_streaming()
        wait_equal(sc, source_db, replica_db, TABLES, 30, "the copy")
        before, at = _reconnects("target"), time.monotonic()
        px.set(HOLD_DOWN)
        _work(source_db, 2000)
        _detect(sc, "target", before, at, RECEIVE_TIMEOUT * 3.25 + 10)
        px.set(PASS)
        _work(source_db, 3000)
        wait_equal(sc, source_db, replica_db, TABLES, 90, "recovery after the held replies")
        sc.wait_streaming()
    finally:
        px.close()


def test_a_long_statement_or_lock_wait_is_not_cut(replica_db, caplog):
    """Busy is not stuck: a statement the target is working on ('active': running, or
    waiting for a lock) is left alone however long it takes - but it is never silent: each
    bound it lasts logs a warning (a planner's bad plan once ran 475 s with no word)."""
    from replica.connect import Watchdog, connect

    caplog.set_level("WARNING", logger="pgml_replica")

    with connect(replica_db.dsn, "target", "apply") as conn, replica_db.connect() as holder:
        watchdog = Watchdog(conn, replica_db.dsn, "target", 2)
        conn.execute("SELECT pg_sleep(5)")  # 2.5 bounds
        holder.execute("CREATE TABLE held (v int)")
        holder.execute("BEGIN; LOCK TABLE held")
        threading.Timer(5, holder.execute, ("COMMIT",)).start()
        conn.execute("SELECT count(*) FROM held")  # waits 5 s on the lock
        assert not watchdog.cut.is_set()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    said = [r.getMessage() for r in caplog.records if "worked on one statement" in r.getMessage()]
    assert said and all(f"pid {watchdog.pid}" in m for m in said), caplog.text
