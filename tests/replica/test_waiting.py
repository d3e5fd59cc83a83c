"""Waiting, said out loud: a transaction left open on the source holds up the slot's creation
(CREATE_REPLICATION_SLOT waits for every transaction open at that moment) or a table's copy
(a lock); the sidecar must say so - phase, /status, a log line, a metric - and go on, and
mirror every row, the moment the transaction ends."""

from __future__ import annotations

import logging
import threading

from replica import metrics
from replica.operate.api import status_body
from replica.source.activity import COPY, WaitWatcher, query_start
from replica.state import Phase, SidecarState
from tests.replica.conftest import wait_for


def _wait_seconds(what: str) -> float:
    return metrics.WAIT_SECONDS.labels(what)._value.get()


def _open_transaction(source_db, application: str, statement: str):
    """A session idle in transaction holding an xid (a report, a forgotten psql)."""
    holder = source_db.connect(autocommit=False)
    holder.execute(f"SET application_name = '{application}'")
    holder.execute(statement)
    pid = holder.info.backend_pid
    return holder, pid


def test_slot_creation_names_the_open_transaction_then_goes_on(source_db, replica_db,
                                                                sidecars, caplog):
    caplog.set_level(logging.INFO, logger="pgml_replica")
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text);"
                      "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 500) g")
    holder, pid = _open_transaction(
        source_db, "nightly-report",
        "INSERT INTO t VALUES (100001, 'a-literal-that-may-be-secret')")
    try:
        sc = sidecars(source=source_db.dsn, target=replica_db.dsn)
        wait_for(lambda: sc.state.phase == "waiting_for_transactions" or sc.error, 60,
                 "the waiting phase")
        body = status_body(sc.state, 30.0)
        assert body["phase"] == "waiting_for_transactions"
        assert body["waiting"]["what"] == "slot"
        (blocker,) = [b for b in body["waiting"]["blockers"] if b["pid"] == pid]
        assert blocker["application"] == "nightly-report"
        assert blocker["user"] == "postgres"
        assert blocker["state"] == "idle in transaction"
        assert blocker["transaction_seconds"] >= 0
        assert blocker["query"].startswith("INSERT INTO t VALUES (100001, '?')")
        assert "a-literal-that-may-be-secret" not in str(body)
        wait_for(lambda: f"pid {pid} " in caplog.text, 15, "the log line")
        line = next(r.getMessage() for r in caplog.records if f"pid {pid} " in r.getMessage())
        assert "slot creation has waited" in line and "nightly-report" in line
        assert "a-literal-that-may-be-secret" not in caplog.text
        assert _wait_seconds("slot") > 0
    finally:
        holder.commit()
        holder.close()
    sc.wait_streaming(60)
    sc.wait_same(source_db, replica_db, ["public.t"], 60, "every row, the committed one too")
    assert sc.state.waiting is None
    assert status_body(sc.state, 30.0)["waiting"] is None
    assert _wait_seconds("slot") == 0
    assert any("waited" in r.getMessage() and "goes on" in r.getMessage()
               for r in caplog.records)


def test_a_copy_waiting_on_a_lock_is_reported_and_cleared(source_db):
    """A COPY needs ACCESS SHARE; a transaction that altered (or locked) the table blocks it.
    Such a holder has an xid, so in a run it first holds up the slot (above); this drives the
    watcher of the copy step directly, with a real backend named as the copy's are."""
    source_db.execute("CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1)")
    holder, pid = _open_transaction(source_db, "migration",
                                    "LOCK TABLE u IN ACCESS EXCLUSIVE MODE")
    state = SidecarState(phase=Phase.COPYING)
    copier = source_db.connect()
    copier.execute("SET application_name = 'pgml-replica copy'")
    done = threading.Event()

    def copy() -> None:
        with copier.cursor().copy("COPY u TO STDOUT") as cp:
            for _ in cp:
                pass
        done.set()

    th = threading.Thread(target=copy, daemon=True)
    try:
        with WaitWatcher(source_db.dsn, state, "copy", COPY, poll=0.2, after=0.5):
            th.start()
            wait_for(lambda: state.waiting, 30, "the copy's wait")
            assert state.phase == Phase.WAITING_FOR_TRANSACTIONS
            (blocker,) = state.waiting["blockers"]
            assert (blocker["pid"], blocker["application"]) == (pid, "migration")
            assert blocker["wait_event"] == "Lock:relation"
            assert _wait_seconds("copy") > 0
            holder.rollback()
            assert done.wait(30)
            wait_for(lambda: state.waiting is None, 30, "the wait to clear")
            assert state.phase == Phase.COPYING
    finally:
        holder.close()
        th.join(30)
        copier.close()
    assert _wait_seconds("copy") == 0


def test_query_start_hides_literals_and_passwords():
    assert query_start("ALTER ROLE app PASSWORD 'hunter2-secret'") == \
        "ALTER ROLE app PASSWORD '?'"
    assert query_start("select $x$hunter2$x$, 'it''s'") == "select $$?$$, '?'"
    assert "hunter2" not in query_start("SELECT dblink('host=h password=hunter2 user=u')")
    assert "hunter2" not in query_start("SELECT * FROM f(E'hunter2")
    long = query_start("SELECT " + ", ".join(f"c{i}" for i in range(100)))
    assert len(long) == 80 and long.endswith("…")


def test_publication_creation_waiting_on_a_lock_is_reported_then_goes_on(source_db, replica_db,
                                                                        sidecars):
    """CREATE PUBLICATION ... FOR TABLE locks the table (SHARE UPDATE EXCLUSIVE): a migration
    holding ACCESS EXCLUSIVE holds `run` up before any slot exists - reported the same way."""
    source_db.execute("CREATE TABLE p (id int PRIMARY KEY); INSERT INTO p VALUES (1)")
    holder, pid = _open_transaction(source_db, "migration",
                                    "LOCK TABLE p IN ACCESS EXCLUSIVE MODE")
    try:
        sc = sidecars(source=source_db.dsn, target=replica_db.dsn, tables="public.p")
        wait_for(lambda: (sc.state.waiting or {}).get("what") == "publication" or sc.error,
                 60, "the publication's wait to be reported")
        body = status_body(sc.state, 30.0)
        assert body["phase"] == "waiting_for_transactions"
        assert [b["pid"] for b in body["waiting"]["blockers"]] == [pid]
        assert _wait_seconds("publication") > 0
    finally:
        holder.commit()
        holder.close()
    sc.wait_streaming(60)
    sc.wait_same(source_db, replica_db, ["public.p"], 60, "the table")
    assert sc.state.waiting is None and _wait_seconds("publication") == 0

