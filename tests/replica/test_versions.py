"""What the newer sources offer, used where they have it: protocol 4 ('parallel' streaming,
Stream Abort with its LSN and time) from 16, the origin option from 16, failover slots from
17, the reason a slot was invalidated from 17 (idle_timeout from 18).

Run against every configured source version (``--source-versions 15,16,17,18``); each test
says what it expects of the version it meets, so an older server proves the fallback."""

from __future__ import annotations

import logging
import time

import pytest

from replica.errors import ConfigError, PreflightError, ResnapshotNeeded
from replica.source.preflight import preflight
from replica.stream.negotiate import negotiate
from tests.replica.conftest import lose_slot_wal, wait_for


def _slot(db, column: str):
    rows = db.execute(f"SELECT {column} FROM pg_replication_slots"  # noqa: S608 - constant
                      " WHERE database = current_database() AND slot_name = 'pgml_replica'")
    return rows[0][0] if rows else None


# -- the negotiation, as data ----------------------------------------------------------------

@pytest.mark.parametrize(("server", "asked", "protocol", "streaming"), [
    (180004, "auto", 4, "parallel"), (170010, "auto", 4, "parallel"),
    (160014, "auto", 4, "parallel"), (150014, "auto", 2, "on"), (140010, "auto", 2, "on"),
    (130020, "auto", 1, None), (170010, 2, 2, "on"), (170010, 3, 3, "on"),
    (170010, 1, 1, None), (150014, 3, 3, "on"),
])
def test_protocol_follows_the_server_version_unless_forced(server, asked, protocol, streaming):
    n = negotiate(server, asked)
    assert (n.protocol, n.options.get("streaming")) == (protocol, streaming)
    assert n.options["binary"] == "true" and "origin" not in n.options


@pytest.mark.parametrize(("server", "asked", "origin", "needs"), [
    (150014, 4, None, "16+"), (140010, 3, None, "15+"), (150014, "auto", "any", "16+"),
])
def test_what_the_server_lacks_is_refused_before_the_command(server, asked, origin, needs):
    with pytest.raises(ConfigError, match=needs):
        negotiate(server, asked, origin)


def test_origin_is_sent_only_when_asked():
    assert negotiate(160014, "auto", "any").options["origin"] == "any"
    assert negotiate(170010, "auto", "none").describe() == \
        "protocol 4 (binary 'true', streaming 'parallel', origin 'none')"


# -- against each source ----------------------------------------------------------------------

@pytest.mark.source_versions
def test_negotiated_protocol_streams_aborts_and_shows_in_status(
        source_db, replica_db, sidecars, source_version, caplog):
    """Large transactions stream (pg_stat_replication_slots counts them) under the protocol the
    version offers; a streamed abort and an aborted subtransaction inside a streamed commit
    never reach the target; /status and the log say what was negotiated."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    with caplog.at_level(logging.INFO, logger="pgml_replica"):
        sc = sidecars(source=source_db.dsn, target=replica_db.dsn, decoding_work_mem="64kB",
                      segment_rows=500).wait_streaming()
    expected = (4, "parallel") if source_version >= 16 else (2, "on")
    status = sc.state.to_dict()
    assert (status["protocol"], status["stream_options"]["streaming"]) == expected
    assert f"protocol {expected[0]} (binary 'true', streaming '{expected[1]}')" in caplog.text
    with source_db.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(1, 5000) g")
        conn.rollback()  # streamed, then aborted: Stream Abort (with LSN and time on 4)
        conn.execute("INSERT INTO t SELECT g, 'kept' FROM generate_series(1, 3000) g")
        conn.execute("SAVEPOINT s")
        conn.execute("INSERT INTO t SELECT g, repeat('b', 100) FROM"
                     " generate_series(3001, 8000) g")
        conn.execute("ROLLBACK TO SAVEPOINT s")  # a subtransaction's Stream Abort
        conn.execute("UPDATE t SET v = 'done' WHERE id <= 10")
        conn.commit()
    sc.wait_same(source_db, replica_db, ["public.t"], 60)
    assert replica_db.execute("SELECT count(*), max(id) FROM t") == [(3000, 3000)]
    # the committed one at least (an aborted one is not always counted: seen on 18)
    wait_for(lambda: source_db.execute(
        "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'pgml_replica'"
    )[0][0] >= 1, 10, "the source to count a streamed transaction")


@pytest.mark.source_versions
def test_origin_none_leaves_out_changes_replicated_from_elsewhere(
        source_db, replica_db, sidecars, source_version):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    if source_version < 16:
        sc = sidecars(source=source_db.dsn, target=replica_db.dsn, origin="none")
        wait_for(lambda: sc.error is not None, 60, "the sidecar to refuse --origin")
        assert isinstance(sc.error, ConfigError) and "16+" in str(sc.error)
        return
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, origin="none").wait_streaming()
    assert sc.state.stream_options["origin"] == "none"
    origin = f"other_{source_db.name}"
    with source_db.connect() as conn:
        conn.execute("SELECT pg_replication_origin_create(%s)", (origin,))
        try:
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (origin,))
            conn.execute("INSERT INTO t VALUES (1, 'from another node')")
            conn.execute("SELECT pg_replication_origin_session_reset()")
        finally:
            conn.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
    source_db.execute("INSERT INTO t VALUES (2, 'local')")
    wait_for(lambda: replica_db.execute("SELECT count(*) FROM t WHERE id = 2") == [(1,)], 30,
             "the local change")
    assert replica_db.execute("SELECT id FROM t") == [(2,)]


# -- failover slots (17+) ---------------------------------------------------------------------

@pytest.mark.source_versions
def test_failover_slot_is_created_or_refused_by_version(source_db, replica_db, sidecars,
                                                        source_version, caplog):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    if source_version < 17:
        sc = sidecars(source=source_db.dsn, target=replica_db.dsn, failover_slot=True)
        wait_for(lambda: sc.error is not None, 60, "the preflight to refuse")
        assert isinstance(sc.error, PreflightError)
        assert "--failover-slot needs a PostgreSQL 17+ source" in str(sc.error)
        assert _slot(source_db, "slot_name") is None  # nothing was created
        return
    with caplog.at_level(logging.WARNING, logger="pgml_replica"):
        sc = sidecars(source=source_db.dsn, target=replica_db.dsn,
                      failover_slot=True).wait_streaming()
    assert _slot(source_db, "failover") is True
    assert "synchronized_standby_slots is empty" in caplog.text  # no standby here


@pytest.mark.source_versions(min=17)
def test_slot_handed_over_without_failover_is_made_one(source_db, replica_db, sidecars):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    source_db.execute("SELECT pg_create_logical_replication_slot('pgml_replica', 'pgoutput')")
    assert _slot(source_db, "failover") is False
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn,
                  failover_slot=True).wait_streaming()
    assert _slot(source_db, "failover") is True
    source_db.execute("INSERT INTO t VALUES (1)")
    sc.wait_same(source_db, replica_db, ["public.t"])


@pytest.mark.source_versions(min=17)
def test_preflight_says_what_the_primary_lacks_for_a_failover(source_db, pg_source):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    tables = [("public", "t")]
    with source_db.connect() as conn:
        quiet = preflight(conn, publication="pgml_replica", slot="pgml_replica", tables=tables)
        assert quiet == []  # not asked for, and nothing on this source syncs slots
        told = preflight(conn, publication="pgml_replica", slot="pgml_replica", tables=tables,
                         failover_slot=True)
    assert any("synchronized_standby_slots is empty" in w for w in told)
    assert any("sync_replication_slots = on" in w and "hot_standby_feedback = on" in w
               for w in told)
    with pg_source.connect() as conn:
        conn.execute("ALTER SYSTEM SET synchronized_standby_slots = 'no_such_standby'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: source_db.execute("SHOW synchronized_standby_slots")
                 == [("no_such_standby",)], 10, "the reload")
        with source_db.connect() as conn:
            told = preflight(conn, publication="pgml_replica", slot="pgml_replica",
                             tables=tables, failover_slot=True)
            hint = preflight(conn, publication="pgml_replica", slot="pgml_replica",
                             tables=tables)
    finally:
        with pg_source.connect() as conn:
            conn.execute("ALTER SYSTEM RESET synchronized_standby_slots")
            conn.execute("SELECT pg_reload_conf()")
    assert any("names no_such_standby, which is not a physical slot" in w for w in told)
    assert any("pass --failover-slot" in w for w in hint)


# -- why a slot was lost (17+) ----------------------------------------------------------------

@pytest.mark.source_versions(min=17)
def test_wal_removed_is_named_with_how_to_avoid_it(source_db, replica_db, sidecars, pg_source):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming().stop()
    lose_slot_wal(source_db, pg_source,
                  lambda: _slot(source_db, "invalidation_reason") == "wal_removed",
                  "invalidation_reason wal_removed")
    again = sidecars(source=source_db.dsn, target=replica_db.dsn)
    wait_for(lambda: again.error is not None, 30, "the sidecar to refuse")
    assert isinstance(again.error, ResnapshotNeeded)
    message = str(again.error)
    assert "invalidation_reason = wal_removed" in message
    assert "raise max_slot_wal_keep_size" in message and "--resnapshot" in message


@pytest.mark.source_versions(min=18)
def test_idle_timeout_is_named_with_how_to_avoid_it(source_db, replica_db, sidecars,
                                                    pg_source):
    """PostgreSQL 18 invalidates a slot unused for idle_replication_slot_timeout (seconds) at
    the next checkpoint; with 1 s and a forced CHECKPOINT that takes a few seconds here."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming().stop()
    with pg_source.connect() as conn:
        conn.execute("ALTER SYSTEM SET idle_replication_slot_timeout = '1s'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        def invalidated() -> bool:
            source_db.execute("CHECKPOINT")
            return _slot(source_db, "invalidation_reason") == "idle_timeout"
        time.sleep(1.5)  # unused for longer than the timeout (inactive_since + 1 s)
        wait_for(invalidated, 30, "invalidation_reason idle_timeout")
    finally:
        with pg_source.connect() as conn:
            conn.execute("ALTER SYSTEM RESET idle_replication_slot_timeout")
            conn.execute("SELECT pg_reload_conf()")
    again = sidecars(source=source_db.dsn, target=replica_db.dsn)
    wait_for(lambda: again.error is not None, 30, "the sidecar to refuse")
    assert isinstance(again.error, ResnapshotNeeded)
    assert "invalidation_reason = idle_timeout" in str(again.error)
    assert "idle_replication_slot_timeout" in str(again.error)
