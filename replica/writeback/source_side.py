"""Write-back on the source: postgres_fdw, the foreign server, the user mapping, a foreign
table and a joined view per exposure, and a proof that the source can read through them.

Why one transaction: the source is the application's database; a failure (the replica not
reachable from there, a name taken) must leave nothing half-made. Steps that may fail on
purpose run in a savepoint. Everything converges: a second run updates the server's address
and the password, replaces a foreign table whose columns changed, and drops foreign tables
whose exposure is gone from the replica. The SQL text itself is built in ``source_sql``.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from replica.connect import credential_params
from replica.errors import WritebackError
from replica.writeback import source_sql
from replica.writeback.model import (
    JOINED_SUFFIX,
    MADE_SCHEMA,
    MADE_SERVER,
    MADE_SERVER_AND_EXTENSION,
    Exposure,
    WritebackResult,
)
from replica.writeback.secret_ddl import db_error, execute_with_secret


def server_oid(conn: psycopg.Connection, server: str) -> int | None:
    row = conn.execute("SELECT oid FROM pg_foreign_server WHERE srvname = %s",
                       (server,)).fetchone()
    return row[0] if row else None


def our_foreign_tables(conn: psycopg.Connection, schema: str, server: str) -> dict[str, str]:
    """{local name: remote pgml_out view} for the foreign tables of `schema` on our server."""
    rows = conn.execute(
        """SELECT c.relname,
                  coalesce((SELECT substr(o, length('table_name=') + 1)
                               FROM unnest(ft.ftoptions) AS o
                              WHERE starts_with(o, 'table_name=')), c.relname)
             FROM pg_foreign_table ft
             JOIN pg_class c ON c.oid = ft.ftrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_foreign_server s ON s.oid = ft.ftserver
            WHERE n.nspname = %s AND s.srvname = %s""", (schema, server)).fetchall()
    return dict(rows)


def relation_columns(conn: psycopg.Connection, schema: str, name: str
                     ) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """(relkind, columns) of schema.name on this server, or None when it does not exist."""
    row = conn.execute(
        """SELECT c.relkind::text,
                  (SELECT array_agg(ARRAY[a.attname::text, format_type(a.atttypid, a.atttypmod)]
                                    ORDER BY a.attnum)
                     FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s""", (schema, name)).fetchone()
    if row is None:
        return None
    return row[0], tuple((c[0], c[1]) for c in (row[1] or []))


def drop_foreign_table(conn: psycopg.Connection, schema: str, name: str) -> None:
    """The foreign table and the joined view over it; refused while other objects use it."""
    joined = relation_columns(conn, schema, name + JOINED_SUFFIX)
    if joined is not None and joined[0] == "v":
        conn.execute(sql.SQL("DROP VIEW {}").format(
            source_sql.qualified(schema, name + JOINED_SUFFIX)))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("DROP FOREIGN TABLE {}").format(
                source_sql.qualified(schema, name)))
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise WritebackError(
            f"{schema}.{name} cannot be replaced or removed: other objects on the source use it "
            f"({exc.diag.message_detail or 'see DROP ... CASCADE'}); drop or change those "
            f"first") from None


def ensure_server(conn: psycopg.Connection, server: str, where: dict[str, str]) -> None:
    had_fdw = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgres_fdw'"
                           ).fetchone() is not None
    conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
    ident = sql.Identifier(server)
    oid = server_oid(conn, server)
    if oid is None:
        conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})")
                     .format(ident, source_sql.server_options(where)))
        conn.execute(sql.SQL("COMMENT ON SERVER {} IS {}").format(
            ident, sql.Literal(MADE_SERVER if had_fdw else MADE_SERVER_AND_EXTENSION)))
        return
    fdw = conn.execute("SELECT w.fdwname FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w"
                       " ON w.oid = s.srvfdw WHERE s.oid = %s", (oid,)).fetchone()[0]
    if fdw != "postgres_fdw":
        raise WritebackError(f"a foreign server {server!r} already exists on the source for "
                             f"another wrapper ({fdw}); pass --server with another name")
    have = {o.split("=", 1)[0] for o in conn.execute(
        "SELECT coalesce(srvoptions, '{}') FROM pg_foreign_server WHERE oid = %s",
        (oid,)).fetchone()[0]}
    conn.execute(sql.SQL("ALTER SERVER {} OPTIONS ({})").format(
        ident, source_sql.server_options(where, have)))


def ensure_mapping(conn: psycopg.Connection, server: str, reader: str, password: str) -> None:
    """A PUBLIC mapping: access on the source is decided by grants on the schema, and views
    (whose foreign scans use their owner's mapping) work for every reader of the view."""
    conn.execute(sql.SQL("DROP USER MAPPING IF EXISTS FOR PUBLIC SERVER {}")
                 .format(sql.Identifier(server)))
    execute_with_secret(conn, password,
                        "CREATE USER MAPPING FOR PUBLIC SERVER %I OPTIONS (user %L, password %L)",
                        [server, reader])


def ensure_foreign_table(conn: psycopg.Connection, schema: str, server: str,
                         e: Exposure) -> None:
    existing = relation_columns(conn, schema, e.view_name)
    ours = our_foreign_tables(conn, schema, server).get(e.view_name) == e.view_name
    if existing is not None:
        if existing[0] == "f" and ours and existing[1] == e.columns:
            return
        if existing[0] != "f" or not ours:
            raise WritebackError(f"{schema}.{e.view_name} already exists on the source and is "
                                 f"not a write-back foreign table; pass --schema with another "
                                 f"schema or rename it")
        drop_foreign_table(conn, schema, e.view_name)
    conn.execute(source_sql.create_foreign_table(schema, server, e))
    conn.execute(source_sql.comment_foreign_table(schema, e))


def ensure_joined(conn: psycopg.Connection, schema: str, e: Exposure) -> str | None:
    """`<view>_joined` when the base table is on the source; None when it is not."""
    base = relation_columns(conn, e.base_schema, e.base_table)
    if base is None or base[0] not in ("r", "p", "v", "m", "f"):
        return None
    body = source_sql.joined_view_body(schema, e, {n for n, _ in base[1]})
    target = source_sql.qualified(schema, e.joined_name)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(target, body))
    except (psycopg.errors.InvalidTableDefinition, psycopg.errors.DatatypeMismatch):
        # the base table's columns changed since: rebuild (grants on it must be given again)
        conn.execute(sql.SQL("DROP VIEW {}").format(target))
        conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(target, body))
    return f"{schema}.{e.joined_name}"


def check_reachable(conn: psycopg.Connection, schema: str, e: Exposure, reader: str,
                    where: dict[str, str]) -> None:
    """One key-only row through the foreign table: proves network path and credentials."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT {} FROM {} LIMIT 1").format(
                sql.Identifier(e.key_columns[0]), source_sql.qualified(schema, e.view_name)))
    except psycopg.Error as exc:
        err = db_error(f"the source could not read pgml_out.{e.view_name} on the replica at "
                       f"{where['host']}:{where['port']}/{where['dbname']} as {reader}", exc)
        raise WritebackError(f"{err}\n  check that --replica-host/--replica-port are how the "
                             f"source reaches the replica, and the reader's password") from None


def next_sql(conn: psycopg.Connection, result: WritebackResult) -> str:
    """The SQL printed for the user, its names quoted by the server's quote_ident."""
    quoted = dict(conn.execute("SELECT n, quote_ident(n) FROM unnest(%s::text[]) AS n",
                               (sorted(source_sql.next_sql_names(result)),)).fetchall())
    return source_sql.render_next_sql(result, quoted)


def ensure_schema(conn: psycopg.Connection, schema: str) -> None:
    """The schema of the foreign tables, marked as ours when we create it (removal reads it)."""
    if conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is None:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
            sql.Identifier(schema), sql.Literal(MADE_SCHEMA)))


def setup_source(source_dsn: str, schema: str, server: str, reader: str, password: str,
                 where: dict[str, str], exposures: list[Exposure], everything: set[str],
                 result: WritebackResult) -> None:
    try:
        with psycopg.connect(source_dsn, autocommit=True,
                             **credential_params(source_dsn, "source")) as conn, conn.transaction():
            ensure_server(conn, server, where)
            ensure_mapping(conn, server, reader, password)
            ensure_schema(conn, schema)
            for local, remote in sorted(our_foreign_tables(conn, schema, server).items()):
                if remote not in everything:  # un-exposed on the replica since the last run
                    drop_foreign_table(conn, schema, local)
                    result.removed.append(f"{schema}.{local}")
            for e in exposures:
                ensure_foreign_table(conn, schema, server, e)
                result.foreign_tables.append(f"{schema}.{e.view_name}")
                joined = ensure_joined(conn, schema, e)
                if joined:
                    result.joined_views.append(joined)
                else:
                    result.notes.append(f"{e.base_schema}.{e.base_table} is not on the source: "
                                        f"no {schema}.{e.joined_name} view")
            check_reachable(conn, schema, e=exposures[0], reader=reader, where=where)
            result.next_sql = next_sql(conn, result)
    except psycopg.Error as exc:
        raise db_error("setting up the source failed", exc) from None
