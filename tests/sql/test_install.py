"""The installer: version, idempotent upgrade that keeps models, the one Python-path setting,
a clear failure when PL/Python cannot read the environment, and plain psql-runnable files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from devtools.localcluster import PG_BIN
from replica.target.pgml_install import (
    CORE_FILES,
    InstallError,
    install,
    package_version,
    sql_files,
)
from tests.sql.helpers import connect, one

DIABETES_ROW = [0.038, 0.05, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.02, -0.018]


def test_install_reports_the_package_version(replica_db, plpython_path):
    version = install(replica_db.dsn, python_path=plpython_path)
    assert version == package_version()
    with connect(replica_db) as conn:
        assert one(conn, "SELECT pgml.version()") == version
        env = one(conn, "SELECT pgml._environment()")
        assert env["inference"].startswith(plpython_path[0])
        paths = one(conn, "SELECT value FROM pgml.settings WHERE name = 'python_path'")
        assert paths == plpython_path


def test_reinstall_upgrades_in_place_and_keeps_models(pgml_db, plpython_path):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('keep', 'regression', 'pgml.diabetes', 'target')")
        before = one(conn, "SELECT pgml.predict('keep', %s::float8[])", (DIABETES_ROW,))
        models = conn.execute("SELECT id, runtime, metrics FROM pgml.models").fetchall()
    install(pgml_db.dsn, python_path=plpython_path)
    install(pgml_db.dsn, python_path=plpython_path)
    with connect(pgml_db) as conn:  # a new backend: bootstraps and loads the model again
        assert conn.execute("SELECT id, runtime, metrics FROM pgml.models").fetchall() == models
        assert one(conn, "SELECT pgml.predict('keep', %s::float8[])", (DIABETES_ROW,)) == before
        assert one(conn, "SELECT count(*) FROM pgml.settings") == 2
        assert not conn.notices


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a path the server cannot read")
def test_unreadable_python_path_fails_the_install_clearly(replica_db, plpython_path):
    hidden = Path(tempfile.mkdtemp(prefix="pgml-hidden-"))
    try:
        shutil.copytree(Path(plpython_path[0]) / "inference", hidden / "inference")
        os.chmod(hidden, 0o700)  # root only: the postgres OS user cannot list it
        with pytest.raises(InstallError) as err:
            install(replica_db.dsn, python_path=[str(hidden)])
    finally:
        shutil.rmtree(hidden, ignore_errors=True)
    message = str(err.value)
    assert "cannot import" in message and str(hidden) in message
    assert "readable" in message and "No module named 'inference'" in message
    with connect(replica_db) as conn:  # the whole install was rolled back
        assert one(conn, "SELECT to_regnamespace('pgml')") is None


def test_failed_login_does_not_leak_the_password(pg_replica, replica_db):
    with pg_replica.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS pgml_installer")
        conn.execute("CREATE ROLE pgml_installer LOGIN PASSWORD 'right-one' IN ROLE pw_required")
    dsn = pg_replica.dsn(replica_db.name, user="pgml_installer", password="Wr0ng-Secret-77")
    with pytest.raises(InstallError) as err:
        install(dsn, python_path=["/nowhere"])
    assert "Wr0ng-Secret-77" not in str(err.value)
    assert "pgml_installer@" in str(err.value)


def test_sql_files_are_plain_psql_scripts(replica_db, plpython_path):
    """A person can install with psql alone: the core files, then the python_path setting."""
    names = [name for name, _ in sql_files()]
    assert names[:2] == list(CORE_FILES)
    root = Path(__file__).resolve().parents[2] / "sql"
    for name in CORE_FILES:
        proc = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", replica_db.dsn,
             "-f", str(root / name)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    with connect(replica_db) as conn:
        conn.execute("INSERT INTO pgml.settings (name, value) VALUES ('python_path', %s)",
                     (json.dumps(plpython_path),))
        assert one(conn, "SELECT pgml._environment()")["inference"].startswith(plpython_path[0])


def test_concurrent_installs_serialize(replica_db, plpython_path):
    """Two installers at once: the advisory lock makes the second wait, both succeed."""
    import threading

    errors: list[Exception] = []

    def run():
        try:
            install(replica_db.dsn, python_path=plpython_path)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with psycopg.connect(replica_db.dsn) as conn:
        assert conn.execute("SELECT pgml.version()").fetchone()[0] == package_version()
