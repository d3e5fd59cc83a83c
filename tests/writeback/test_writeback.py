"""`pgml-replica writeback` between the two test clusters: foreign server, user mapping,
foreign tables and joined views on the source; the reader role on the replica; idempotence,
mode switches, removal, an RDS-like non-superuser, and the password kept secret.

The base table is loaded on both sides with the same rows (the sidecar's part is proven in
test_end_to_end.py); what is under test here is the write-back plumbing."""

from __future__ import annotations

import logging

import psycopg
import pytest
from psycopg import sql

from replica.errors import WritebackError
from replica.operate.cli import main
from replica.writeback.setup import writeback
from tests.writeback.conftest import FEATURES, create_patients, train

PROJECT = "diabetes"


@pytest.fixture
def pair(source_db, ml_db):
    """patients on both sides, a deployed linear model, and an exposure of it."""
    with source_db.connect() as conn:
        create_patients(conn)
    with ml_db.connect() as conn:
        create_patients(conn)
        train(conn, PROJECT, "public.patients", "progression", "linear")
        conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])", (PROJECT,))
    return source_db, ml_db


def _replica_prediction(ml_db, key: int) -> float:
    arr = sql.SQL(", ").join(sql.Identifier(f) for f in ["id", *FEATURES])
    return ml_db.execute(sql.SQL("SELECT pgml.predict(%s, ARRAY[{}]::float8[]) FROM"
                                 " public.patients WHERE id = %s").format(arr),
                         (PROJECT, key))[0][0]


def _source_objects(source_db) -> dict[str, list]:
    q = {
        "servers": "SELECT srvname FROM pg_foreign_server ORDER BY 1",
        "mappings": "SELECT srvname, usename FROM pg_user_mappings ORDER BY 1",
        "foreign": "SELECT foreign_table_schema || '.' || foreign_table_name FROM"
                   " information_schema.foreign_tables ORDER BY 1",
        "views": "SELECT table_schema || '.' || table_name FROM information_schema.views"
                 " WHERE table_schema = 'ml' ORDER BY 1",
        "schemas": "SELECT nspname FROM pg_namespace WHERE nspname = 'ml'",
        "extensions": "SELECT extname FROM pg_extension WHERE extname = 'postgres_fdw'",
    }
    return {k: source_db.execute(v) for k, v in q.items()}


def test_live_predictions_read_on_the_source(pair, reader, monkeypatch):
    source_db, ml_db = pair
    role, password = reader
    monkeypatch.setenv("PGML_REPLICA_READER_PASSWORD", password)
    result = writeback(source_db.dsn, ml_db.dsn, PROJECT, replica_user=role)
    assert result.foreign_tables == ["ml.diabetes"]
    assert result.joined_views == ["ml.diabetes_joined"]
    got = source_db.execute("SELECT prediction FROM ml.diabetes WHERE id = 42")[0][0]
    assert abs(got - _replica_prediction(ml_db, 42)) < 1e-9
    joined = source_db.execute("SELECT id, age, progression, prediction FROM ml.diabetes_joined"
                               " WHERE id = 42")
    assert joined[0][0] == 42 and abs(joined[0][3] - got) < 1e-12
    # the key filter is sent to the replica: a point lookup, not a scan of every prediction
    plan = "\n".join(r[0] for r in source_db.execute(
        "EXPLAIN VERBOSE SELECT prediction FROM ml.diabetes WHERE id = 42"))
    assert "Foreign Scan on ml.diabetes" in plan
    assert "Remote SQL: SELECT prediction FROM pgml_out.diabetes WHERE ((id = 42))" in plan, plan
    plan = "\n".join(r[0] for r in source_db.execute(
        "EXPLAIN VERBOSE SELECT * FROM ml.diabetes_joined WHERE id = 42"))
    assert "FROM pgml_out.diabetes WHERE ((id = 42))" in plan, plan
    # the SQL printed for the user runs as printed (with a key for $1)
    for line in result.next_sql.splitlines():
        if line.startswith("SELECT"):
            assert source_db.execute(line.replace("$1", "42").rstrip(";"))
    # through the same server the reader cannot reach the mirrored table
    source_db.execute("CREATE FOREIGN TABLE public.sneak (id bigint) SERVER pgml_replica"
                      " OPTIONS (schema_name 'public', table_name 'patients')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        source_db.execute("SELECT * FROM public.sneak")


def test_rds_like_owner_with_password_auth_and_materialize(pair, reader, rds_master, monkeypatch):
    """A non-superuser on the source, a reader that must log in with its password on the
    replica: postgres_fdw's rules for non-superusers hold, as on RDS."""
    source_db, ml_db = pair
    role, password = reader
    master_dsn, master = rds_master
    source_db.execute(sql.SQL("GRANT SELECT ON public.patients TO {}").format(
        sql.Identifier(master)))
    monkeypatch.setenv("PGML_REPLICA_READER_PASSWORD", password)
    result = writeback(master_dsn, ml_db.dsn, PROJECT, replica_user=role, materialize=True)
    assert ml_db.execute("SELECT materialized FROM pgml.exposures")[0][0] is True
    assert ml_db.execute("SELECT count(*) FROM pgml_expose.diabetes")[0][0] == 442
    with psycopg.connect(master_dsn, autocommit=True) as conn:
        got = conn.execute("SELECT prediction FROM ml.diabetes WHERE id = 7").fetchone()[0]
        assert abs(got - _replica_prediction(ml_db, 7)) < 1e-9
        assert conn.execute("SELECT count(*) FROM ml.diabetes_joined").fetchone()[0] == 442
    # the mapping holds a password, and only the server's owner (or a superuser) sees it
    owner = source_db.execute("SELECT srvowner::regrole::text FROM pg_foreign_server")[0][0]
    assert owner == master
    assert result.foreign_tables == ["ml.diabetes"]
    # switching back to live is the same command without --materialize
    writeback(master_dsn, ml_db.dsn, PROJECT, replica_user=role)
    assert ml_db.execute("SELECT materialized FROM pgml.exposures")[0][0] is False
    assert ml_db.execute("SELECT to_regclass('pgml_expose.diabetes')")[0][0] is None
    # removal by the same non-superuser: postgres_fdw was there before (a superuser made it,
    # as rds_superuser does on RDS), so it stays; everything writeback made goes
    writeback(master_dsn, ml_db.dsn, PROJECT, replica_user=role, drop=True)
    assert _source_objects(source_db) == {"servers": [], "mappings": [], "foreign": [],
                                          "views": [], "schemas": [],
                                          "extensions": [("postgres_fdw",)]}


def test_reader_without_password_auth_fails_clearly_and_leaves_nothing(pair, rds_master,
                                                                        monkeypatch):
    """A reader the replica trusts without a password: postgres_fdw refuses it for a
    non-superuser; the error says so, and the source keeps nothing half-made."""
    source_db, ml_db = pair
    master_dsn, _ = rds_master
    role = f"trusted_{ml_db.name}"
    monkeypatch.setenv("PGML_REPLICA_READER_PASSWORD", "pw-that-must-not-leak-1")
    before = _source_objects(source_db)
    try:
        with pytest.raises(WritebackError) as err:
            writeback(master_dsn, ml_db.dsn, PROJECT, replica_user=role)
        assert "password" in str(err.value) and "replica-host" in str(err.value)
        assert "pw-that-must-not-leak-1" not in str(err.value)
        assert _source_objects(source_db) == before
    finally:
        with ml_db.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_idempotent_converges_and_drop_removes_everything(pair, reader, monkeypatch):
    source_db, ml_db = pair
    role, password = reader
    monkeypatch.setenv("PGML_REPLICA_READER_PASSWORD", password)
    writeback(source_db.dsn, ml_db.dsn, PROJECT, replica_user=role)
    oid = source_db.execute("SELECT 'ml.diabetes'::regclass::oid")[0][0]
    source_db.execute("CREATE ROLE app_" + source_db.name)
    try:
        source_db.execute(f"GRANT USAGE ON SCHEMA ml TO app_{source_db.name}")
        source_db.execute(f"GRANT SELECT ON ml.diabetes TO app_{source_db.name}")
        # again, with a second exposure, a rotated password and a new column on the source
        ml_db.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'], 'second')",
                      (PROJECT,))
        source_db.execute("ALTER TABLE public.patients ADD COLUMN note text DEFAULT 'n'")
        monkeypatch.setenv("PGML_REPLICA_READER_PASSWORD", password + "-rotated")
        result = writeback(source_db.dsn, ml_db.dsn, PROJECT, replica_user=role)
        assert result.foreign_tables == ["ml.diabetes", "ml.second"]
        assert source_db.execute("SELECT 'ml.diabetes'::regclass::oid")[0][0] == oid
        assert source_db.execute("SELECT has_table_privilege(%s, 'ml.diabetes', 'SELECT')",
                                 (f"app_{source_db.name}",))[0][0]
        assert source_db.execute("SELECT count(*) FROM ml.second WHERE id < 11")[0][0] == 10
        assert source_db.execute("SELECT note, prediction IS NOT NULL FROM ml.diabetes_joined"
                                 " WHERE id = 3") == [("n", True)]
        # un-exposed on the replica -> gone from the source on the next run
        ml_db.execute("SELECT pgml.unexpose('second')")
        result = writeback(source_db.dsn, ml_db.dsn, PROJECT, replica_user=role)
        assert result.removed == ["ml.second"]
        # removal
        result = writeback(source_db.dsn, ml_db.dsn, PROJECT, replica_user=role, drop=True)
        assert "server pgml_replica" in result.removed
        assert _source_objects(source_db) == {"servers": [], "mappings": [], "foreign": [],
                                              "views": [], "schemas": [], "extensions": []}
        assert ml_db.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)
                             )[0][0] == 0
        # the exposure on the replica is the user's (pgml.expose) and stays
        assert ml_db.execute("SELECT count(*) FROM pgml_out.diabetes")[0][0] == 442
        # dropping again is harmless
        writeback(source_db.dsn, ml_db.dsn, PROJECT, replica_user=role, drop=True)
    finally:
        source_db.execute(f"DROP OWNED BY app_{source_db.name}")
        source_db.execute(f"DROP ROLE app_{source_db.name}")


def test_nothing_to_expose_is_a_clear_error(source_db, ml_db, monkeypatch):
    monkeypatch.setenv("PGML_REPLICA_READER_PASSWORD", "x-secret-x")
    with pytest.raises(WritebackError, match="no exposed views"):
        writeback(source_db.dsn, ml_db.dsn, "unknown_project")
    monkeypatch.delenv("PGML_REPLICA_READER_PASSWORD")
    with pytest.raises(WritebackError, match="PGML_REPLICA_READER_PASSWORD"):
        writeback(source_db.dsn, ml_db.dsn, "unknown_project")


def test_cli_never_shows_the_password(pair, reader, tmp_path, capsys, caplog, monkeypatch):
    source_db, ml_db = pair
    role, password = reader
    secret_file = tmp_path / "reader-password"
    secret_file.write_text(password + "\n")
    # statement logging of DDL, as audit setups on RDS have it
    source_db.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'ddl'").format(
        sql.Identifier(source_db.name)))
    ml_db.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'ddl'").format(
        sql.Identifier(ml_db.name)))
    monkeypatch.setenv("PGML_REPLICA_SOURCE", source_db.dsn)
    caplog.set_level(logging.DEBUG)
    assert main(["writeback", "--target", ml_db.dsn, "--project", PROJECT,
                 "--replica-user", role, "--password-file", str(secret_file)]) == 0
    out = capsys.readouterr()
    assert "SELECT prediction FROM ml.diabetes WHERE id = $1;" in out.out
    # a failing run: the reader's password is wrong on purpose via a bad port
    assert main(["writeback", "--target", ml_db.dsn, "--project", PROJECT,
                 "--replica-user", role, "--password-file", str(secret_file),
                 "--replica-port", "1"]) == WritebackError.exit_code
    failed = capsys.readouterr()
    assert "could not read pgml_out.diabetes" in failed.err
    logs = "\n".join(r.getMessage() for r in caplog.records)
    source_log = source_db.cluster.logfile.read_text(errors="replace")
    replica_log = ml_db.cluster.logfile.read_text(errors="replace")
    assert "CREATE FOREIGN TABLE" in source_log  # DDL logging was on
    for text in (out.out, out.err, failed.out, failed.err, logs, source_log, replica_log):
        assert password not in text
