"""Fixtures for the HTTP app and dashboard tests: a real uvicorn server on a free loopback
port, and the process-wide metrics registry put back the way each test found it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from psycopg import sql

from replica import metrics
from replica.operate.api import HttpServer, create_app
from replica.state import SidecarState
from tests.replica.operate.helpers import SECRET


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
