"""The target's own bookkeeping: how far each slot got, and when each table was copied.

Why in the target, in the same transaction as the data (DESIGN.md invariant 1): the row and
the rows it describes commit or vanish together, so after any crash the target knows exactly
which source transactions it holds. ``progress.end_lsn`` is the end LSN of the last source
commit applied; a transaction whose commit starts below it is already there.

``tables.sync_lsn`` is where a table's copy met the stream: the copy holds every transaction
that committed before it, so the stream applies that table's changes only from transactions
whose commit starts at or after it. The same rule joins the initial snapshot, a table added to
the publication later, and a copy taken beside a slot that already existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from decoder import format_lsn, parse_lsn

SCHEMA = "pgml_replica"

DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.progress (
        slot text PRIMARY KEY,
        end_lsn pg_lsn NOT NULL,
        commit_time timestamptz,
        source_system text,
        updated_at timestamptz NOT NULL DEFAULT now())""").format(sql.Identifier(SCHEMA)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.tables (
        slot text NOT NULL,
        schema_name text NOT NULL,
        table_name text NOT NULL,
        sync_lsn pg_lsn NOT NULL,
        rows bigint,
        synced_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (slot, schema_name, table_name))""").format(sql.Identifier(SCHEMA)),
    # the source's storage files of the table as the copy read it (catalog.FILENODES)
    sql.SQL("ALTER TABLE {}.tables ADD COLUMN IF NOT EXISTS filenode text").format(
        sql.Identifier(SCHEMA)),
]

@dataclass(frozen=True, slots=True)
class Progress:
    slot: str
    end_lsn: int
    commit_time: datetime | None
    source_system: str | None


def ensure(conn: psycopg.Connection) -> None:
    """Create the bookkeeping tables if missing (idempotent; any number of sidecars)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgml_replica.progress'))")
        for stmt in DDL:
            conn.execute(stmt)


def exists(conn: psycopg.Connection) -> bool:
    """Has any sidecar ever written progress here (``status``/``drop`` must not create it)?"""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (f"{SCHEMA}.progress",)).fetchone()[0]


def read(conn: psycopg.Connection, slot: str) -> Progress | None:
    row = conn.execute(sql.SQL("SELECT slot, end_lsn::text, commit_time, source_system FROM "
                               "{}.progress WHERE slot = %s").format(sql.Identifier(SCHEMA)),
                       (slot,)).fetchone()
    return None if row is None else Progress(row[0], parse_lsn(row[1]), row[2], row[3])


def start(conn: psycopg.Connection, slot: str, end_lsn: int, source_system: str) -> None:
    """The first progress row: streaming may begin at ``end_lsn``."""
    conn.execute(sql.SQL("INSERT INTO {}.progress (slot, end_lsn, source_system) VALUES "
                         "(%s, %s::pg_lsn, %s) ON CONFLICT (slot) DO UPDATE SET end_lsn = "
                         "excluded.end_lsn, source_system = excluded.source_system, "
                         "commit_time = NULL, updated_at = now()").format(
                             sql.Identifier(SCHEMA)),
                 (slot, format_lsn(end_lsn), source_system))


def advance_sql(slot: str, end_lsn: int, commit_time: datetime | None) -> sql.Composed:
    """``advance`` as a statement with literals, to send together with the COMMIT."""
    return sql.SQL("UPDATE {}.progress SET end_lsn = {}::pg_lsn, commit_time = {}, "
                   "updated_at = now() WHERE slot = {}").format(
        sql.Identifier(SCHEMA), sql.Literal(format_lsn(end_lsn)), sql.Literal(commit_time),
        sql.Literal(slot))


def forget(conn: psycopg.Connection, slot: str) -> None:
    """Drop everything known about a slot (a resnapshot starts from nothing)."""
    for table in ("progress", "tables"):
        conn.execute(sql.SQL("DELETE FROM {}.{} WHERE slot = %s").format(
            sql.Identifier(SCHEMA), sql.Identifier(table)), (slot,))


def synced_tables(conn: psycopg.Connection, slot: str) -> dict[tuple[str, str], int]:
    """(schema, table) -> sync LSN, for every table whose copy has finished."""
    rows = conn.execute(sql.SQL("SELECT schema_name, table_name, sync_lsn::text FROM "
                                "{}.tables WHERE slot = %s").format(sql.Identifier(SCHEMA)),
                        (slot,)).fetchall()
    return {(s, t): parse_lsn(lsn) for s, t, lsn in rows}


def mark_synced(conn: psycopg.Connection, slot: str, schema: str, table: str, sync_lsn: int,
                rows: int | None, filenode: str | None = None) -> None:
    conn.execute(sql.SQL("INSERT INTO {}.tables (slot, schema_name, table_name, sync_lsn, rows,"
                         " filenode) VALUES (%s, %s, %s, %s::pg_lsn, %s, %s) ON CONFLICT (slot,"
                         " schema_name, table_name) DO UPDATE SET sync_lsn = excluded.sync_lsn,"
                         " rows = excluded.rows, filenode = excluded.filenode, synced_at = now()"
                         ).format(sql.Identifier(SCHEMA)),
                 (slot, schema, table, format_lsn(sync_lsn), rows, filenode or None))


def copied_filenode(conn: psycopg.Connection, slot: str, schema: str, table: str
                    ) -> str | None:
    """The source's storage files of the table when it was copied (None: not recorded)."""
    row = conn.execute(sql.SQL("SELECT filenode FROM {}.tables WHERE slot = %s AND schema_name"
                               " = %s AND table_name = %s").format(sql.Identifier(SCHEMA)),
                       (slot, schema, table)).fetchone()
    return None if row is None else row[0]


def record_filenode(conn: psycopg.Connection, slot: str, schema: str, table: str,
                    filenode: str) -> None:
    conn.execute(sql.SQL("UPDATE {}.tables SET filenode = %s WHERE slot = %s AND schema_name"
                         " = %s AND table_name = %s").format(sql.Identifier(SCHEMA)),
                 (filenode, slot, schema, table))


def unmark_synced(conn: psycopg.Connection, slot: str, schema: str, table: str) -> None:
    conn.execute(sql.SQL("DELETE FROM {}.tables WHERE slot = %s AND schema_name = %s AND "
                         "table_name = %s").format(sql.Identifier(SCHEMA)), (slot, schema, table))
