"""The command line as users and operators script it: run with only what RDS grants,
status, drop, environment variables, graceful SIGTERM, and no secret anywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from psycopg import sql

from devtools.localcluster import free_port
from replica.errors import ConnectionRejected
from replica.operate.cli import build_parser, main, settings_from
from tests.replica.conftest import ROOT, same, wait_for

SRC_PW, TGT_PW = "S3cr3t-src-pw", "S3cr3t-tgt-pw"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "replica", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PGML_REPLICA_NO_PGML_INSTALL": "1",
                               **(env or {})})


@pytest.fixture
def least_privilege(source_db, replica_db):
    """Roles with only what RDS grants: REPLICATION + SELECT on the source (the publication
    made by the owner beforehand), CREATE on the target database; both log in by password."""
    src_role, tgt_role = f"repl_{source_db.name}", f"ml_{replica_db.name}"
    q = sql.SQL
    source_db.execute(q("CREATE ROLE {} LOGIN REPLICATION PASSWORD {} IN ROLE pw_required")
                      .format(sql.Identifier(src_role), sql.Literal(SRC_PW)))
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text);"
                      "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g;"
                      "CREATE PUBLICATION pgml_replica FOR TABLE t")
    source_db.execute(q("GRANT SELECT ON t TO {}").format(sql.Identifier(src_role)))
    replica_db.execute(q("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pw_required").format(
        sql.Identifier(tgt_role), sql.Literal(TGT_PW)))
    replica_db.execute(q("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(replica_db.name), sql.Identifier(tgt_role)))
    replica_db.execute(q("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(tgt_role)))
    return (source_db.cluster.dsn(source_db.name, user=src_role, password=SRC_PW),
            replica_db.cluster.dsn(replica_db.name, user=tgt_role, password=TGT_PW))


def test_run_status_drop_with_least_privilege_and_no_secrets(source_db, replica_db, sidecars,
                                                             least_privilege, tmp_path):
    src_dsn, tgt_dsn = least_privilege
    port = free_port()
    log = tmp_path / "sidecar.log"
    env = {"PGML_REPLICA_SOURCE": src_dsn, "PGML_REPLICA_TARGET": tgt_dsn,
           "PGML_REPLICA_HTTP_PORT": str(port), "PGML_REPLICA_STATUS_INTERVAL": "1"}
    sc = sidecars("process", env=env, log=log)  # every flag from the environment
    wait_for(lambda: same(source_db, replica_db, ["public.t"]), 60, "the copy")
    source_db.execute("UPDATE t SET v = 'changed' WHERE id < 50")
    wait_for(lambda: same(source_db, replica_db, ["public.t"]), 30, "the update")

    ready = wait_for(lambda: _get(port, "/readyz"), 30, "/readyz")
    assert ready.status_code == 200
    status = _get(port, "/status").json()
    assert status["phase"] == "streaming" and status["slot"] == "pgml_replica"
    assert status["tables"]["public.t"]["synced"] is True
    metrics_text = _get(port, "/metrics").text
    assert 'pgml_replica_rows_applied_total{op="update",table="public.t"} 49.0' in metrics_text

    out = cli("status", "--json", env={"PGML_REPLICA_SOURCE": src_dsn,
                                       "PGML_REPLICA_TARGET": tgt_dsn})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["active"] is True and report["wal_status"] == "reserved"
    assert report["tables"]["public.t"]["synced"] is True
    assert report["applied_lsn"] and report["lag_bytes"] is not None
    for text in (out.stdout, json.dumps(status), metrics_text):
        assert SRC_PW not in text and TGT_PW not in text

    assert sc.terminate() == 0  # graceful: exit 0 after final feedback
    (applied,) = replica_db.execute("SELECT end_lsn FROM pgml_replica.progress")[0]
    assert source_db.execute("SELECT NOT active AND confirmed_flush_lsn >= %s::pg_lsn"
                             " FROM pg_replication_slots", (applied,)) == [(True,)]
    assert SRC_PW not in log.read_text() and TGT_PW not in log.read_text()

    out = cli("drop", "--source", source_db.dsn, "--target", replica_db.dsn)
    assert out.returncode == 0, out.stderr
    assert "slot pgml_replica: dropped" in out.stdout
    assert source_db.execute("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert source_db.execute("SELECT count(*) FROM pg_publication") == [(0,)]
    assert replica_db.execute("SELECT count(*) FROM pgml_replica.progress") == [(0,)]


def _get(port: int, path: str):
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.HTTPError:
        return None


def test_errors_name_the_problem_and_never_the_password(source_db):
    wrong = source_db.cluster.dsn(source_db.name, user="nobody_here", password="Wr0ng-pw-42")
    out = cli("status", "--source", wrong, "--json")
    assert out.returncode == 1
    assert "Wr0ng-pw-42" not in out.stdout + out.stderr
    assert "nobody_here" in out.stdout + out.stderr
    out = cli("run", "--source", wrong)
    assert out.returncode == 2 and "--target (or PGML_REPLICA_TARGET)" in out.stderr
    out = cli("run", "--source", wrong, "--target", wrong, "--http-port", "0")
    # a role that does not exist is permanent: stop with ConnectionRejected's code, not retry
    assert out.returncode == ConnectionRejected.exit_code == 7 and "Wr0ng-pw-42" not in out.stderr
    assert "on the source" in out.stderr and "nobody_here" in out.stderr


def test_preflight_lists_what_to_change(source_db, replica_db):
    source_db.execute("CREATE ROLE plain_role_cli LOGIN; CREATE TABLE nokey (v int);"
                      "CREATE TABLE secret (id int PRIMARY KEY)")
    dsn = source_db.cluster.dsn(source_db.name, user="plain_role_cli")
    out = cli("run", "--source", dsn, "--target", replica_db.dsn, "--http-port", "0")
    assert out.returncode == 2, out.stderr
    assert "GRANT rds_replication TO plain_role_cli" in out.stderr
    assert "no SELECT on public.secret" in out.stderr
    assert "public.nokey has no primary key" in out.stderr
    assert "REPLICA IDENTITY FULL" in out.stderr


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("PGML_REPLICA_SLOT", "from_env")
    monkeypatch.setenv("PGML_REPLICA_SCHEMA", "sales")
    monkeypatch.setenv("PGML_REPLICA_BATCH_MAX_ROWS", "7")
    s = settings_from(build_parser().parse_args(["run", "--publication", "p1"]))
    assert (s.slot, s.schema_name, s.batch_max_rows, s.publication) == \
        ("from_env", "sales", 7, "p1")
    s = settings_from(build_parser().parse_args(["run", "--slot", "flag"]))
    assert s.slot == "flag"
    assert s.table_list() == [] and s.http_port == 8000


def test_invalid_setting_exits_2(capsys):
    assert main(["status", "--source", "host=127.0.0.1 port=1 password=Zz9-secret", "--slot", "s",
                 "--publication", "p", "--target", "host=127.0.0.1 port=1"]) == 1
    assert "Zz9-secret" not in capsys.readouterr().err
    assert main(["run", "--source", "a", "--target", "b", "--http-port", "x"]) == 2


def test_sigterm_during_the_initial_copy_exits_0_and_the_next_run_finishes(
        source_db, replica_db, sidecars, tmp_path):
    source_db.execute("CREATE TABLE big (id int PRIMARY KEY, v text);"
                      "INSERT INTO big SELECT g, repeat('v', 300) FROM"
                      " generate_series(1, 1500000) g")
    log = tmp_path / "sidecar.log"
    sc = sidecars("process", "--source", source_db.dsn, "--target", replica_db.dsn,
                  "--snapshot-workers", "1", "--snapshot-chunk-pages", "500", log=log)
    wait_for(lambda: replica_db.execute("SELECT to_regclass('public.big')")[0][0], 60,
             "the copy to start", every=0.01)
    assert sc.terminate() == 0, log.read_text()[-2000:]
    assert replica_db.execute("SELECT count(*) FROM pgml_replica.tables") == [(0,)]
    again = sidecars("process", "--source", source_db.dsn, "--target", replica_db.dsn,
                     log=log)
    wait_for(lambda: same(source_db, replica_db, ["public.big"]), 120, "the copy")
    assert again.terminate() == 0
