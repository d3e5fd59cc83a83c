"""`pgml-replica check`: run's preflight and plan as a table with the fix for each problem,
exit 0 ready / 2 problems - and nothing created on either side."""

from __future__ import annotations

import os
import subprocess
import sys

from psycopg import sql

from replica.source.preflight import AREAS, area_of, findings
from tests.replica.conftest import ROOT

PW = "Ch3ck-pw-never-shown"


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replica", "check", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "1000"})


def _nothing_created(source_db, replica_db) -> None:
    assert source_db.execute("SELECT pubname FROM pg_publication") == []
    assert source_db.execute("SELECT slot_name FROM pg_replication_slots"
                             " WHERE database = current_database()") == []
    assert replica_db.execute("SELECT nspname FROM pg_namespace"
                              " WHERE nspname IN ('pgml_replica', 'pgml')") == []


def test_problems_are_listed_with_their_fix_and_exit_2(source_db, replica_db):
    role = f"plain_{source_db.name}"[:63]
    source_db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    source_db.execute("CREATE TABLE nokey (v int); CREATE TABLE secret (id int PRIMARY KEY)")
    out = check("--source", source_db.cluster.dsn(source_db.name, user=role),
                "--target", replica_db.dsn)
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout
    assert f"GRANT rds_replication TO {role}" in text
    assert "no SELECT on public.secret" in text and "GRANT SELECT ON public.secret" in text
    assert "public.nokey has no primary key" in text and "REPLICA IDENTITY FULL" in text
    assert "problem(s) to fix first" in text
    assert "create publication pgml_replica for public.nokey, public.secret" in text
    assert "create slot pgml_replica" in text
    _nothing_created(source_db, replica_db)


def test_ready_source_exits_0_and_says_what_run_would_do(source_db, replica_db, tmp_path):
    role = f"ok_{source_db.name}"[:63]
    source_db.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER IN ROLE pw_required PASSWORD {}")
                      .format(sql.Identifier(role), sql.Literal(PW)))
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    (tmp_path / "pw").write_text(PW + "\n")
    out = check("--source", source_db.cluster.dsn(source_db.name, user=role),
                "--source-password-command", f"cat {tmp_path / 'pw'}",
                "--target", replica_db.dsn)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "ready" in text and "problem " not in text
    for area, _ in AREAS:
        if area != "failover":
            assert area in text
    assert "PL/Python" in text and "pgml" in text
    assert "create publication pgml_replica for public.t" in text
    assert "copy public.t" in text
    assert PW not in out.stdout + out.stderr
    _nothing_created(source_db, replica_db)


def test_findings_are_the_preflight_of_run(source_db):
    source_db.execute("CREATE TABLE nokey (v int)")
    with source_db.connect() as conn:
        found = findings(conn, publication="p", slot="s", tables=[("public", "nokey"),
                                                                     ("public", "missing")])
    failed = {(f.area, f.found) for f in found if not f.ok}
    assert ("tables", "table public.missing does not exist on the source") in failed
    assert any(a == "replica identity" and "nokey" in t for a, t in failed)
    assert {f.area for f in found if f.ok} >= {"parameters", "slots", "privileges"}
    assert area_of("wal_level is 'replica', ...") == "parameters"
