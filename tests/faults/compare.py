"""Are two tables equal? Count + an order-independent hash over an explicit column list,
read with identical session settings on both sides (a value's text depends on DateStyle,
extra_float_digits, IntervalStyle and TimeZone, and a role or database may set any of them).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from tests.replica.conftest import wait_for

PINNED = "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC"


def columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (table,)).fetchall()]


def digest(conn: psycopg.Connection, table: str, cols: list[str]) -> tuple:
    schema, _, name = table.rpartition(".")
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(map(sql.Identifier, cols)))
    return conn.execute(sql.SQL(
        "SELECT count(*), coalesce(sum(('x' || substr(md5({}::text), 1, 15))::bit(60)"
        "::bigint::numeric), 0) FROM {}").format(
            row, sql.Identifier(schema or "public", name))).fetchone()


def differing(source_db, replica_db, tables: list[str]) -> list[str]:
    """The tables whose rows differ (or that the target lacks); [] when all are equal."""
    out = []
    with source_db.connect(options=PINNED) as s, replica_db.connect(options=PINNED) as r:
        for t in tables:
            cols = columns(s, t)
            try:
                if digest(s, t, cols) != digest(r, t, cols):
                    out.append(t)
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                out.append(t)
    return out


def wait_equal(sidecar, source_db, replica_db, tables: list[str], timeout: float = 60,
               what: str = "the target to equal the source") -> None:
    """Until 0 tables differ; a sidecar that stopped with an error fails first."""
    def check():
        error = getattr(sidecar, "error", None)
        if error is not None:
            raise error
        return not differing(source_db, replica_db, tables)
    wait_for(check, timeout, what)
