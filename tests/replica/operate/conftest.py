"""Fixtures for the HTTP app and dashboard tests: a real uvicorn server on a free loopback
port, and the process-wide metrics registry put back the way each test found it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg import sql

from replica import metrics
from replica.operate.api import HttpServer, create_app
from replica.state import SidecarState
from tests.replica.operate.helpers import SECRET

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def serve() -> Iterator[Callable[..., HttpServer]]:
    """serve(state, max_lag_seconds=...) -> a started HttpServer on 127.0.0.1:<free port>."""
    servers: list[HttpServer] = []

    def start(state: SidecarState, **kw) -> HttpServer:
        server = HttpServer(create_app(state, **kw), host="127.0.0.1", port=0).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def wal_status_reset() -> Iterator[None]:
    """The slot gauges are process-wide (a sidecar run in this process sets them too): start
    from "never looked at the slot" and leave it that way."""
    metrics.SLOT_WAL_STATUS.clear()
    yield
    metrics.SLOT_WAL_STATUS.clear()
    metrics.SLOT_RETAINED_WAL_BYTES.set(0)


@pytest.fixture
def slot_on_source(source_db, pg_source) -> tuple[str, str]:
    """A real pgoutput slot, a published table with 37 rows, and a password role that reads
    them; returns (the role's DSN with its password, slot name)."""
    role = f"ops_{source_db.name}"
    slot = f"ops_slot_{source_db.name}"
    with pg_source.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pw_required").format(
            sql.Identifier(role), sql.Literal(SECRET)))
    source_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    source_db.execute("INSERT INTO public.items SELECT g, 'n' || g FROM generate_series(1, 37) g")
    source_db.execute(sql.SQL("GRANT SELECT ON public.items TO {}").format(sql.Identifier(role)))
    source_db.execute("CREATE PUBLICATION ops_pub FOR TABLE public.items")
    source_db.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    return pg_source.dsn(source_db.name, user=role, password=SECRET), slot


@pytest.fixture(scope="module")
def committed_plpython_path(plpython_path) -> Iterator[list[str]]:
    """plpython_path, but with inference/ as committed (git archive HEAD): these tests read
    what pgml.train writes and must not fail on another engineer's edit in progress."""
    stage = Path(tempfile.mkdtemp(prefix="pgml-replica-ops-pypath-",
                                  dir=Path(plpython_path[0]).parent))
    os.chmod(stage, 0o755)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "inference"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(stage), "--no-same-owner"], input=archive,
                   check=True)
    for dirpath, dirnames, filenames in os.walk(stage):
        for d in dirnames:
            os.chmod(Path(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(Path(dirpath, f), 0o644)
    yield [str(stage), *plpython_path[1:]]
    shutil.rmtree(stage, ignore_errors=True)


@pytest.fixture
def pgml_replica_db(replica_db, committed_plpython_path):
    """A replica database with pgml installed by the real installer (as tests/sql does)."""
    from replica.target.pgml_install import install

    install(replica_db.dsn, python_path=committed_plpython_path)
    return replica_db
