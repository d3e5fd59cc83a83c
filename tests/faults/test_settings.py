"""Connections that cannot hang or mis-parse (issue 10 items 1, 3, 7): keepalives and a
statement timeout where a silent network would otherwise block forever, session settings
pinned against ALTER ROLE/DATABASE, and a malformed DSN never echoed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.faults.compare import PINNED, wait_equal
from tests.replica.conftest import ROOT, wait_for


def test_ordinary_connections_have_keepalives_and_the_dsn_wins(source_db):
    from replica.connect import connect

    with connect(source_db.dsn, "source", "test", statement_timeout=7) as conn:
        params = conn.info.get_parameters()
        assert params.get("keepalives") == "1" and params.get("tcp_user_timeout") == "30000"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "7s"
    with connect(source_db.dsn + " keepalives_idle=99", "source", "test") as conn:
        assert conn.info.get_parameters()["keepalives_idle"] == "99"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"


def test_replication_connection_has_keepalives(source_db):
    from replica.source.replconn import ReplicationConnection

    with ReplicationConnection(source_db.dsn) as rc:
        info = {o.keyword.decode(): (o.val or b"").decode() for o in rc._pgconn.info}
    assert info["keepalives"] == "1" and info["keepalives_count"] == "3"


def test_values_do_not_depend_on_role_or_database_settings(source_db, replica_db,
                                                            sidecars):
    """attmissingval read as text on the source and parsed on the target: with DMY dates and
    extra_float_digits = -3 on the role (source) and the database (target) they used to
    arrive as 2024-04-03 and 0.3."""
    role = f"odd_{source_db.name}"
    source_db.execute(f"CREATE ROLE {role} LOGIN SUPERUSER REPLICATION;"
                      f"ALTER ROLE {role} SET DateStyle = 'SQL, DMY';"
                      f"ALTER ROLE {role} SET extra_float_digits = -3;"
                      f"ALTER ROLE {role} SET IntervalStyle = 'sql_standard'")
    replica_db.execute(f"ALTER DATABASE {replica_db.name} SET DateStyle = 'SQL, DMY';"
                       f"ALTER DATABASE {replica_db.name} SET extra_float_digits = -3")
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY);"
                      "INSERT INTO t SELECT generate_series(1, 10)")
    sc = sidecars(source=f"{source_db.dsn} user={role}", target=replica_db.dsn)
    try:
        sc.wait_streaming()
        wait_equal(sc, source_db, replica_db, ["public.t"], 30, "the copy")
        source_db.execute("ALTER TABLE t ADD COLUMN d date DEFAULT '2024-03-04',"
                          " ADD COLUMN f float8 DEFAULT 0.30000000000000004,"
                          " ADD COLUMN i interval DEFAULT '1 day 02:03:04';"
                          "INSERT INTO t (id) VALUES (11)")
        wait_equal(sc, source_db, replica_db, ["public.t"], 30, "the added columns")
        with replica_db.connect(options=PINNED) as conn:
            rows = conn.execute("SELECT DISTINCT d::text, f::text, i::text FROM t").fetchall()
        assert rows == [("2024-03-04", "0.30000000000000004", "1 day 02:03:04")]
    finally:
        sc.stop()
        wait_for(lambda: not source_db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE usename = %s", (role,)), 30,
            "the role's sessions to end")
        source_db.execute(f"DROP OWNED BY {role}")
        source_db.execute(f"DROP ROLE {role}")


VERBS = [["run"], ["status"], ["drop"], ["check"], ["writeback", "--project", "p"],
         ["install", "--target"], ["install", "--source"]]  # the last: a usage error


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: "-".join(v[:1] + v[-1:]))
def test_a_malformed_dsn_is_never_echoed(verb):
    args = verb if verb[-1].startswith("--") else [*verb, "--source"]
    out = subprocess.run([sys.executable, "-m", "replica", *args,
                          "host=x password=Mb4SECRETx bad"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert "Mb4SECRET" not in said, said
