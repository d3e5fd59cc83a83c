"""Credentials that can change: every connection, first or re-, asks its provider again.

Against the real source: a role in ``pw_required`` (scram on loopback, tests/fix_pg) whose
password is rotated with ALTER ROLE while the sidecar streams; its backends are then
terminated, and the sidecar must come back with the new password from the file or the
command - and no credential may show up in the log, /status, the metrics or an error.
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from replica import credentials, metrics
from replica.config import Settings
from replica.connect import connect
from replica.errors import ConfigError, ConnectionRejected, TransientError
from replica.secrets import MASK, redact, scrub
from replica.source.replconn import ReplicationConnection
from tests.replica.conftest import wait_for

_roles = itertools.count()


@pytest.fixture(autouse=True)
def _no_providers_left():
    yield
    credentials.install("source", None)
    credentials.install("target", None)


def _role(source_db, password: str) -> str:
    name = f"rot_{_roles.__next__()}_{source_db.name}"[:63]
    source_db.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER IN ROLE pw_required PASSWORD {}")
                      .format(sql.Identifier(name), sql.Literal(password)))
    return name


def _provider_settings(kind: str, secret: Path) -> dict:
    if kind == "file":
        return {"source_password_file": str(secret)}
    return {"source_password_command": f"cat '{secret}'"}


def test_providers_are_chosen_by_the_settings(tmp_path):
    chosen = credentials.providers_from(Settings(source_password_file=str(tmp_path / "pw"),
                                                 target_password_command="echo x"))
    assert isinstance(chosen["source"], credentials.PasswordFile)
    assert isinstance(chosen["target"], credentials.PasswordCommand)
    assert credentials.providers_from(Settings()) == {"source": None, "target": None}
    with pytest.raises(ConfigError, match="choose one way"):
        credentials.providers_from(Settings(source_password_file="/x", source_iam="eu-west-1"))


def test_password_command_failure_says_nothing_of_its_output():
    secret = "s3cr3t-from-the-vault"
    cmd = credentials.PasswordCommand(f"echo {secret}; echo {secret} >&2; exit 3")
    with pytest.raises(TransientError) as err:
        cmd({})
    assert "status 3" in str(err.value) and secret not in str(err.value)
    assert secret not in repr(cmd) and "vault" not in repr(cmd)
    with pytest.raises(TransientError, match="did not finish"):
        credentials.PasswordCommand("sleep 5", timeout=0.2)({})


def test_password_file_is_read_at_each_connect(tmp_path, source_db):
    role = _role(source_db, "first-pw-1")
    dsn = make_conninfo(source_db.dsn, user=role)
    secret = tmp_path / "pw"
    secret.write_text("first-pw-1\n")
    credentials.install_from(Settings(source_password_file=str(secret)))
    with connect(dsn, "source", "test") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == role
    source_db.execute(sql.SQL("ALTER ROLE {} PASSWORD 'second-pw-2'")
                      .format(sql.Identifier(role)))
    with pytest.raises(ConnectionRejected) as err:
        connect(dsn, "source", "test")
    assert "first-pw-1" not in str(err.value)
    secret.write_text("second-pw-2\n")
    with connect(dsn, "source", "test") as c, ReplicationConnection(dsn) as rc:
        assert c.execute("SELECT 1").fetchone()[0] == 1
        assert rc.identify_system()["dbname"] == source_db.name
    # every password handed out is masked wherever it turns up
    assert scrub("x second-pw-2 y", []) == f"x {MASK} y"
    assert redact({"error": "first-pw-1 failed"}) == {"error": f"{MASK} failed"}


@pytest.mark.parametrize("kind", ["file", "command"])
def test_rotated_password_is_picked_up_at_reconnect(kind, tmp_path, source_db, replica_db,
                                                    sidecars, caplog):
    caplog.set_level(logging.DEBUG)
    old, new = f"old-{kind}-Pw-9f3a", f"new-{kind}-Pw-41c7"
    role = _role(source_db, old)
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text);"
                      "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g")
    secret = tmp_path / "pw"
    secret.write_text(old + "\n")
    settings = _provider_settings(kind, secret)
    credentials.install_from(Settings(**settings))
    dsn = make_conninfo(source_db.dsn, user=role)
    sc = sidecars(source=dsn, target=replica_db.dsn, **settings).wait_streaming()
    sc.wait_same(source_db, replica_db, ["public.t"])
    before = metrics.RECONNECTS.labels("source")._value.get()

    source_db.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role),
                                                                   sql.Literal(new)))
    secret.write_text(new + "\n")
    source_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE usename = %s AND pid <> pg_backend_pid()", (role,))
    source_db.execute("INSERT INTO t SELECT g, 'b' FROM generate_series(101, 200) g")
    wait_for(lambda: metrics.RECONNECTS.labels("source")._value.get() > before, 30,
             "a reconnect")
    sc.wait_same(source_db, replica_db, ["public.t"], 60, "rows after the rotation")
    assert sc.state.phase == "streaming"
    with source_db.connect() as c:  # the sidecar is connected again, as the rotated role
        assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                         (role,)).fetchone()[0] >= 2

    exposed = "\n".join([caplog.text, str(sc.state.to_dict()), repr(sc.settings),
                         generate_latest(metrics.REGISTRY).decode(), str(sc.state.error)])
    for pw in (old, new):
        assert pw not in exposed


def test_iam_token_is_well_formed_and_made_for_every_connection(monkeypatch, source_db):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    iam = credentials.IamToken("eu-west-1", host="db.example.eu-west-1.rds.amazonaws.com")
    token = iam({"user": "app", "port": "5432"})
    assert re.fullmatch(
        r"db\.example\.eu-west-1\.rds\.amazonaws\.com:5432/\?Action=connect&DBUser=app&"
        r"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F\d{8}%2Feu-west-1"
        r"%2Frds-db%2Faws4_request&X-Amz-Date=\d{8}T\d{6}Z&X-Amz-Expires=900&"
        r"X-Amz-SignedHeaders=host&X-Amz-Signature=[0-9a-f]{64}", token), token
    # the local source trusts this role on loopback, so the token is sent and ignored: what
    # counts is that each connection, ordinary or replication, asked for a fresh one
    credentials.install_from(Settings(source_iam="eu-west-1",
                                      source_iam_host="db.example.eu-west-1.rds.amazonaws.com"))
    iam = credentials.provider("source")
    for _ in range(3):
        with connect(source_db.dsn, "source", "test") as c:
            c.execute("SELECT 1")
    with ReplicationConnection(source_db.dsn) as rc:
        rc.identify_system()
    assert iam.calls == 4
    assert "X-Amz-Signature" not in repr(iam)


def test_iam_without_aws_credentials_is_a_config_error(monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="AWS credentials"):
        credentials.IamToken("eu-west-1")({"host": "h", "user": "u"})


def test_connection_refused_with_a_provided_password_does_not_quote_it(source_db, tmp_path):
    role = _role(source_db, "right-pw-77")
    (tmp_path / "pw").write_text("wrong-pw-88")
    credentials.install("source", credentials.PasswordFile(str(tmp_path / "pw")))
    with pytest.raises(ConnectionRejected) as err:
        connect(make_conninfo(source_db.dsn, user=role), "source", "test")
    assert "wrong-pw-88" not in str(err.value)


def test_iam_token_is_asked_again_when_the_sidecar_reconnects(monkeypatch, source_db,
                                                               replica_db, sidecars):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    settings = {"source_iam": "eu-west-1"}
    credentials.install_from(Settings(**settings))
    iam = credentials.provider("source")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, **settings).wait_streaming()
    before, reconnects = iam.calls, metrics.RECONNECTS.labels("source")._value.get()
    assert before >= 2  # the catalog and the replication connection, at least
    source_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name LIKE 'pgml-replica%' AND datname ="
                      " current_database() AND pid <> pg_backend_pid()")
    wait_for(lambda: metrics.RECONNECTS.labels("source")._value.get() > reconnects, 30,
             "a reconnect")
    source_db.execute("INSERT INTO t VALUES (1)")
    sc.wait_same(source_db, replica_db, ["public.t"], 60)
    assert iam.calls >= before + 2  # a fresh token for each new connection
