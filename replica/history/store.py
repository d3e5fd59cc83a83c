"""The history tables on the ML replica: their DDL, the catalog, and the seed at a copy.

One append-only table per mirrored table, ``pgml_history."<schema>__<table>"``: the table's
columns (every column it ever had: added columns are NULL in older versions, dropped ones
stay) plus

=====================  ===========  ==================================================
column                 type         meaning
=====================  ===========  ==================================================
_pgml_commit_time      timestamptz  the source transaction's commit time
_pgml_commit_lsn       pg_lsn       its commit LSN (the seed: the copy's sync LSN)
_pgml_seq              int4         order within the transaction (seed -1, marker -2)
_pgml_op               "char"       I, U, D (key columns only), T (truncate: ends every
                                    version before it; all columns NULL), S (seed row)
_pgml_unchanged        text[]       columns sent as unchanged TOAST: stored NULL here and
                                    filled from the previous version when read
=====================  ===========  ==================================================

Version order is (_pgml_commit_lsn, _pgml_seq). ``pgml_history.tables`` says which tables
have history, since when, and the retention. No index: the apply path only appends.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg import sql

SCHEMA = "pgml_history"
META = ("_pgml_commit_time", "_pgml_commit_lsn", "_pgml_seq", "_pgml_op", "_pgml_unchanged")
META_TYPES = ("timestamptz", "pg_lsn", "int4", '"char"', "text[]")

CATALOG_DDL = """
CREATE SCHEMA IF NOT EXISTS pgml_history;
CREATE TABLE IF NOT EXISTS pgml_history.tables (
    relation_name text PRIMARY KEY,          -- schema.table as mirrored
    history_table text NOT NULL,             -- its table in pgml_history
    key_columns text[] NOT NULL,
    started_at timestamptz,                  -- the first seed: history starts here
    retention interval                       -- NULL: kept for ever
);
CREATE TABLE IF NOT EXISTS pgml_history.segments (
    relation_name text NOT NULL,
    path text NOT NULL,
    lsn_from pg_lsn NOT NULL,
    lsn_to pg_lsn NOT NULL,
    versions bigint NOT NULL,
    bytes bigint NOT NULL,
    newest_commit_time timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relation_name, lsn_from)
);
"""


def history_name(schema: str, table: str) -> str:
    return f"{schema}__{table}"


def ensure(conn: psycopg.Connection, schema: str, table: str, key_columns: list[str],
           retention: timedelta | None) -> sql.Identifier:
    """The history table of ``schema.table`` with every column the target table has now
    (added columns join; none is ever dropped). Runs in the caller's transaction."""
    conn.execute(CATALOG_DDL)
    hist = sql.Identifier(SCHEMA, history_name(schema, table))
    meta = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                              for n, t in zip(META, META_TYPES, strict=True))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(hist, meta))
    have = {r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped", (hist.as_string(conn),)).fetchall()}
    for name, typ in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum", (sql.Identifier(schema, table).as_string(conn),)).fetchall():
        if name not in have:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                hist, sql.Identifier(name), sql.SQL(typ)))
    conn.execute(
        "INSERT INTO pgml_history.tables (relation_name, history_table, key_columns,"
        " retention) VALUES (%s, %s, %s, %s) ON CONFLICT (relation_name) DO UPDATE SET"
        " key_columns = EXCLUDED.key_columns, retention = EXCLUDED.retention",
        (f"{schema}.{table}", history_name(schema, table), key_columns, retention))
    return hist


def seed(conn: psycopg.Connection, schema: str, table: str, columns: list[str],
         key_columns: list[str], sync_lsn: int, retention: timedelta | None) -> None:
    """After the copy, in the transaction that marks the table synced: a truncate marker
    (ends whatever an earlier copy left open) and every copied row as a version valid from
    now (the copy's snapshot is older; the source's commit times of those rows are not known)."""
    hist = ensure(conn, schema, table, key_columns, retention)
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    lsn = sql.Literal(f"{sync_lsn >> 32:X}/{sync_lsn & 0xFFFFFFFF:X}")
    meta = sql.SQL(", ").join(map(sql.Identifier, META[:4]))
    conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES (now(), {}::pg_lsn, -2, 'T')").format(
        hist, meta, lsn))
    conn.execute(sql.SQL("INSERT INTO {h} ({cols}, {meta}) SELECT {cols}, now(), {lsn}::pg_lsn,"
                         " -1, 'S' FROM {t}").format(
        h=hist, cols=cols, meta=meta, lsn=lsn, t=sql.Identifier(schema, table)))
    conn.execute("UPDATE pgml_history.tables SET started_at = coalesce(started_at, now())"
                 " WHERE relation_name = %s", (f"{schema}.{table}",))
