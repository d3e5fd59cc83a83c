"""Real PostgreSQL servers for the suite: a logical-replication source and a PL/Python ML replica.

Two throw-away PostgreSQL 15 clusters are started once per test session on free loopback
ports and destroyed at the end. Tests that need isolation take a fresh database from
``source_db`` / ``replica_db`` (dropped afterwards together with its replication slots).

PL/Python inside the replica imports the project's Python environment: ``plpython_path`` is
the list of directories to put on its ``sys.path`` - a fresh copy of this checkout's
``inference/`` package (so the code under test is what runs in the server, even when the
checkout lives where the ``postgres`` OS user cannot read) and the virtual environment's
site-packages.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from devtools.localcluster import (
    REPLICA_SETTINGS,
    SOURCE_SETTINGS,
    LocalCluster,
    make_cluster,
)

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count()


@dataclass
class Database:
    """One database on a test cluster."""

    cluster: LocalCluster
    name: str

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    def connect(self, autocommit: bool = True, **kw) -> psycopg.Connection:
        return self.cluster.connect(self.name, autocommit=autocommit, **kw)

    def execute(self, query, params=None) -> list[tuple]:
        """Run one statement in autocommit; return its rows (empty when it has none)."""
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


def _base_dir() -> Path:
    base = Path(os.environ.get("PGML_REPLICA_TEST_TMP", tempfile.gettempdir()))
    base.mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture(scope="session")
def pg_source():
    cluster = make_cluster("source", SOURCE_SETTINGS, _base_dir())
    cluster.start()
    with cluster.connect() as conn:
        conn.execute("CREATE ROLE pw_required NOLOGIN")
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def pg_replica():
    cluster = make_cluster("replica", REPLICA_SETTINGS, _base_dir())
    cluster.start()
    with cluster.connect() as conn:
        conn.execute("CREATE ROLE pw_required NOLOGIN")
    yield cluster
    cluster.destroy()


def _fresh_database(cluster: LocalCluster, prefix: str):
    name = f"{prefix}_{os.getpid()}_{next(_db_counter)}"
    cluster.create_database(name)
    yield Database(cluster, name)
    if cluster.is_running():
        cluster.drop_database(name)


@pytest.fixture
def source_db(pg_source):
    """A fresh, empty database on the source cluster."""
    yield from _fresh_database(pg_source, "src")


@pytest.fixture
def replica_db(pg_replica):
    """A fresh, empty database on the ML replica cluster."""
    yield from _fresh_database(pg_replica, "ml")


def _readable_by_postgres(path: Path) -> bool:
    if os.geteuid() != 0:
        return os.access(path, os.R_OK | os.X_OK)
    proc = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-r", str(path), "-a",
                           "-x", str(path)], capture_output=True)
    return proc.returncode == 0


@pytest.fixture(scope="session")
def plpython_path() -> list[str]:
    """sys.path entries that make PL/Python import this checkout's inference/ and the venv."""
    if sys.version_info[:2] != (3, 11):
        pytest.fail(f"the suite must run on Python 3.11 (PL/Python embeds 3.11), not "
                    f"{sys.version.split()[0]}: run it through `make test`")
    site = Path(sysconfig.get_paths()["purelib"]).resolve()  # .venv may be a symlink
    if not _readable_by_postgres(site):
        pytest.fail(f"{site} is not readable by the postgres OS user, so PL/Python cannot "
                    "import the environment; `make test` builds one it can read")
    stage = Path(tempfile.mkdtemp(prefix="pgml-replica-pypath-", dir=_base_dir()))
    os.chmod(stage, 0o755)
    shutil.copytree(ROOT / "inference", stage / "inference",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(stage):
        for d in dirnames:
            os.chmod(Path(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(Path(dirpath, f), 0o644)
    yield [str(stage), str(site)]
    shutil.rmtree(stage, ignore_errors=True)
