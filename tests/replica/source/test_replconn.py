"""ReplicationConnection against the real source: commands, the stream, errors, secrets.

Streams are captured through ReplicationConnection itself (``stream.capture(...,
connect=ReplicationConnection)``), so quoting and the pinned session settings are its own."""

from __future__ import annotations

import time

import pytest
from psycopg import sql

import decoder
from replica.errors import (
    ConfigError,
    ConnectionRejected,
    ReplicationCommandError,
    ReplicationConnectionError,
    ReplicationDsnError,
    ReplicationError,
    ReplicationStreamEnded,
    TransientError,
)
from replica.source.replconn import ReplicationConnection


def _slot_row(db, slot):
    rows = db.execute("SELECT temporary, two_phase, plugin, active_pid FROM "
                      "pg_replication_slots WHERE slot_name = %s", (slot,))
    return rows[0] if rows else None


def test_identify_system(source_db):
    with ReplicationConnection(source_db.dsn) as conn:
        info = conn.identify_system()
    sysid, = source_db.execute("SELECT system_identifier::text FROM pg_control_system()")[0]
    current = decoder.parse_lsn(source_db.execute("SELECT pg_current_wal_lsn()::text")[0][0])
    assert info["systemid"] == sysid and info["dbname"] == source_db.name
    assert info["timeline"] == 1 and 0 < info["xlogpos"] <= current


def test_exported_snapshot_sees_exactly_the_slot_start(source_db):
    db = source_db
    db.execute("CREATE TABLE t (id int)")
    db.execute("INSERT INTO t VALUES (1)")
    with ReplicationConnection(db.dsn) as conn:
        slot = conn.create_slot("snap_slot")
        assert slot["slot_name"] == "snap_slot" and slot["output_plugin"] == "pgoutput"
        assert slot["consistent_point"] > 0 and slot["snapshot_name"]
        db.execute("INSERT INTO t VALUES (2)")
        with db.connect(autocommit=False) as other:
            other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            other.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                sql.Literal(slot["snapshot_name"])))
            assert other.execute("SELECT array_agg(id) FROM t").fetchone()[0] == [1]
    assert _slot_row(db, "snap_slot")[:3] == (False, False, "pgoutput")


def test_temporary_and_two_phase_slots_and_drop(source_db):
    db = source_db
    with ReplicationConnection(db.dsn) as conn:
        made = conn.create_slot("tmp_slot", snapshot="nothing", temporary=True)
        assert made["snapshot_name"] is None
        assert _slot_row(db, "tmp_slot")[0] is True
    deadline = time.monotonic() + 30
    while _slot_row(db, "tmp_slot") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _slot_row(db, "tmp_slot") is None  # gone with its connection
    with ReplicationConnection(db.dsn) as conn:
        conn.create_slot("tp_slot", snapshot="nothing", two_phase=True)
        assert _slot_row(db, "tp_slot")[1] is True
        conn.drop_slot("tp_slot")
    assert _slot_row(db, "tp_slot") is None
    with pytest.raises(ValueError, match="snapshot must be one of"):
        ReplicationConnection(db.dsn).create_slot("x", snapshot="bogus")


def test_server_refusals_carry_the_sqlstate(source_db):
    with ReplicationConnection(source_db.dsn) as conn:
        conn.create_slot("dup", snapshot="nothing")
        with pytest.raises(ReplicationCommandError) as err:
            conn.create_slot("dup", snapshot="nothing")
        assert err.value.sqlstate == "42710" and "already exists" in str(err.value)
        with pytest.raises(ReplicationCommandError) as err:
            conn.start("no_such_slot", 0, {"proto_version": "1", "publication_names": "p"})
        assert err.value.sqlstate == "42704"
        with pytest.raises(ReplicationCommandError) as err:
            conn.drop_slot("no_such_slot")
        assert err.value.sqlstate == "42704"
        conn.identify_system()  # the connection is still usable after a refusal


def test_names_and_values_are_quoted(source_db, stream):
    """A publication name with spaces, quotes and capitals; a hostile option value."""
    db = source_db
    db.execute('CREATE TABLE "Odd Table" (id int PRIMARY KEY)')
    db.execute('CREATE PUBLICATION "My ""Pub"" 1" FOR TABLE "Odd Table"')
    db.execute("CREATE PUBLICATION plain FOR TABLE \"Odd Table\"")
    slot, lsn = stream.create_slot(db)
    db.execute('INSERT INTO "Odd Table" VALUES (7)')
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, publication='My "Pub" 1, plain',
                         connect=ReplicationConnection)
    assert [m.new_tuple.raw for m in cap.of(decoder.Insert)] == [(b"7",)]
    with ReplicationConnection(db.dsn) as conn:
        conn.start(slot, lsn, {"proto_version": "1",
                               "publication_names": "x'); DROP TABLE \"Odd Table\"; --"})
        with pytest.raises(ReplicationStreamEnded) as err:
            while conn.read(5) is not None:
                pass
        assert "does not exist" in str(err.value)
    assert db.execute('SELECT count(*) FROM "Odd Table"') == [(1,)]
    with pytest.raises(ValueError, match="not a pgoutput option name"):
        ReplicationConnection(db.dsn).start(slot, lsn, {"bad name": "1"})


def test_read_times_out_with_none_and_commands_wait_for_the_stream(source_db, stream):
    db = source_db
    db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    slot, lsn = stream.create_slot(db)
    with ReplicationConnection(db.dsn) as conn:
        with pytest.raises(ReplicationError, match="call start"):
            conn.read(0.1)
        conn.start(slot, lsn, {"proto_version": "1", "publication_names": "pub"})
        assert conn.fileno() > 0
        got = [conn.read(0.1) for _ in range(20)]
        # An idle slot sends nothing but keepalives.
        assert None in got
        assert all(decoder.parse_copy_data(g).__class__ is decoder.PrimaryKeepalive
                   for g in got if g is not None)
        with pytest.raises(ReplicationError, match="while streaming"):
            conn.identify_system()
    assert conn.closed
    with pytest.raises(ReplicationError, match="closed"):
        conn.identify_system()


def test_terminated_walsender_is_a_transient_error(source_db, stream):
    db = source_db
    db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    slot, lsn = stream.create_slot(db)
    with ReplicationConnection(db.dsn, application_name="doomed") as conn:
        conn.start(slot, lsn, {"proto_version": "1", "publication_names": "pub"})
        conn.read(0.2)
        db.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                   "WHERE slot_name = %s", (slot,))
        deadline = time.monotonic() + 30
        with pytest.raises(ReplicationError) as err:
            while time.monotonic() < deadline:
                conn.read(0.5)
    assert isinstance(err.value, TransientError)
    assert isinstance(err.value, ReplicationConnectionError | ReplicationStreamEnded)
    assert "terminating connection" in str(err.value)


def test_server_settings_are_pinned_whatever_the_database_says(source_db, stream):
    """ALTER DATABASE settings reach the walsender; ours (DateStyle ISO, ...) override them,
    while the caller's own DSN options override ours."""
    db = source_db
    for setting in ("datestyle = 'SQL, DMY'", "intervalstyle = 'sql_standard'",
                    "extra_float_digits = -3"):
        db.execute(sql.SQL("ALTER DATABASE {} SET " + setting).format(sql.Identifier(db.name)))
    db.execute("CREATE TABLE t (d date, i interval, f float8)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    slot, lsn = stream.create_slot(db)
    db.execute("INSERT INTO t VALUES ('2024-03-04', '1 day 02:00:00', 0.1::float8 + 0.2::float8)")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, connect=ReplicationConnection)
    (insert,) = cap.of(decoder.Insert)
    assert insert.new_tuple.raw == (b"2024-03-04", b"1 day 02:00:00", b"0.30000000000000004")
    cap = stream.capture(db, slot, lsn, dsn_options="-c datestyle=German",
                         connect=ReplicationConnection)
    assert cap.of(decoder.Insert)[0].new_tuple.raw[0] == b"04.03.2024"


def test_password_never_appears_in_errors(source_db, pg_source):
    with pg_source.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS repl_pw")
        conn.execute("CREATE ROLE repl_pw LOGIN REPLICATION PASSWORD 'Sup3r-s3cret' "
                     "IN ROLE pw_required")
    good = pg_source.dsn(source_db.name, user="repl_pw", password="Sup3r-s3cret")
    with ReplicationConnection(good) as conn:
        assert conn.identify_system()["dbname"] == source_db.name
    bad = pg_source.dsn(source_db.name, user="repl_pw", password="Wr0ng-s3cret")
    # a refused password is permanent (issue 8): stop with ConnectionRejected, never retry
    with pytest.raises(ConnectionRejected) as err:
        ReplicationConnection(bad)
    assert isinstance(err.value, ConfigError) and not isinstance(err.value, TransientError)
    assert err.value.peer == "source" and err.value.exit_code == 7
    assert "password authentication failed" in str(err.value)
    assert "Wr0ng-s3cret" not in str(err.value) and "Sup3r" not in str(err.value)
    with ReplicationConnection(good) as conn:
        with pytest.raises(ReplicationCommandError) as cmd_err:
            conn.start("missing", 0, {"proto_version": "1", "publication_names": "p"})
    assert "Sup3r-s3cret" not in str(cmd_err.value)
    assert "repl_pw@127.0.0.1" in str(cmd_err.value)
    with pytest.raises(ReplicationDsnError) as dsn_err:  # libpq would quote the string
        ReplicationConnection(good + " Sup3r-s3cret-tail")
    assert isinstance(dsn_err.value, ConfigError) and "Sup3r" not in str(dsn_err.value)
