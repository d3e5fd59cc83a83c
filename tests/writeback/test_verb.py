"""`pgml-replica writeback` as a verb of replica.operate.cli: its flags are Settings fields
(each also PGML_REPLICA_*), main() prints the errors and picks the exit code, and the
writeback package does not reach up into the operate layer. No server needed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from replica.config import WRITEBACK_FIELDS
from replica.errors import WritebackError
from replica.operate.cli import build_parser, main, settings_from

WRITEBACK = Path(__file__).resolve().parents[2] / "replica" / "writeback"


def parse(*argv: str):
    return settings_from(build_parser().parse_args(["writeback", *argv]))


def test_flags_keep_their_names_and_fill_the_writeback_settings(monkeypatch):
    for field in WRITEBACK_FIELDS:
        monkeypatch.delenv("PGML_REPLICA_" + field.upper(), raising=False)
    s = parse("--project", "p", "--schema", "preds", "--server", "srv", "--replica-host", "h",
              "--replica-port", "6432", "--replica-user", "r", "--password-env", "MY_PW",
              "--password-file", "/run/pw", "--materialize")
    assert (s.project, s.writeback_schema, s.fdw_server, s.replica_host, s.replica_port,
            s.replica_user, s.password_env, s.password_file, s.materialize) == \
        ("p", "preds", "srv", "h", 6432, "r", "MY_PW", "/run/pw", True)
    assert parse("--no-materialize").materialize is False
    d = parse()
    assert (d.writeback_schema, d.fdw_server, d.replica_user, d.password_env, d.materialize) == \
        ("ml", "pgml_replica", "pgml_reader", "PGML_REPLICA_READER_PASSWORD", False)


def test_every_flag_is_also_its_environment_variable(monkeypatch):
    env = {"PROJECT": "p", "WRITEBACK_SCHEMA": "preds", "FDW_SERVER": "srv",
           "REPLICA_HOST": "h", "REPLICA_PORT": "6432", "REPLICA_USER": "r",
           "PASSWORD_ENV": "MY_PW", "PASSWORD_FILE": "/run/pw", "MATERIALIZE": "true"}
    for name, value in env.items():
        monkeypatch.setenv("PGML_REPLICA_" + name, value)
    s = parse()
    assert (s.project, s.writeback_schema, s.fdw_server, s.replica_host, s.replica_port,
            s.replica_user, s.password_env, s.password_file, s.materialize) == \
        ("p", "preds", "srv", "h", 6432, "r", "MY_PW", "/run/pw", True)
    assert parse("--schema", "flag", "--no-materialize").writeback_schema == "flag"


@pytest.mark.parametrize("argv, says", [
    ([], "--source"),
    (["--source", "host=a password=s3cr3t-dsn", "--target", "host=b"], "--project"),
])
def test_missing_settings_exit_2_naming_the_flag(monkeypatch, capsys, argv, says):
    for name in ("SOURCE", "TARGET", "PROJECT"):
        monkeypatch.delenv("PGML_REPLICA_" + name, raising=False)
    assert main(["writeback", *argv]) == WritebackError.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("pgml-replica writeback: missing") and says in err
    assert "s3cr3t-dsn" not in err


def test_a_bad_port_is_refused_before_any_connection(capsys):
    assert main(["writeback", "--source", "host=a", "--target", "host=b", "--project", "p",
                 "--replica-port", "70000"]) == 2
    assert "replica_port" in capsys.readouterr().err


def test_writeback_never_imports_the_operate_layer():
    for path in sorted(WRITEBACK.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("replica.operate") for n in names), path.name
