"""`writeback --drop`: remove what write-back made, and only that.

Why it reads markers: a schema or a ``postgres_fdw`` extension that was there before (e.g.
installed by ``rds_superuser``) must stay, so removal goes by the comments setup left
(``MADE_*`` in ``model``). The server, its mapping and the replica's reader role go only when
no other project's foreign table still uses the server. The exposures themselves are the
user's (``pgml.expose``) and stay; materialized ones are switched back to live.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from replica.connect import credential_params
from replica.writeback.model import MADE_SCHEMA, MADE_SERVER_AND_EXTENSION, WritebackResult
from replica.writeback.replica_side import exposed_views, has_expose, load_exposures
from replica.writeback.secret_ddl import db_error
from replica.writeback.source_side import drop_foreign_table, our_foreign_tables, server_oid


def drop(source_dsn: str, target_dsn: str, project: str, schema: str, server: str,
         reader: str) -> WritebackResult:
    """Undo ``writeback`` for ``project``: replica first (back to live), then the source,
    then the reader role when the server is gone."""
    try:
        with psycopg.connect(target_dsn, autocommit=True,
                             **credential_params(target_dsn, "target")) as conn, conn.transaction():
            exposed = has_expose(conn)
            exposures = load_exposures(conn, project) if exposed else []
            everything = exposed_views(conn) if exposed else set()
            for e in exposures:
                if e.materialized:
                    conn.execute("SELECT pgml.materialize(%s, false)", (e.view_name,))
    except psycopg.Error as exc:
        raise db_error("removing write-back from the ML replica failed", exc) from None
    result = WritebackResult(schema=schema, server=server, exposures=exposures)
    try:
        with psycopg.connect(source_dsn, autocommit=True,
                             **credential_params(source_dsn, "source")) as conn, conn.transaction():
            made_fdw = server_gone = False
            if server_oid(conn, server) is not None:
                mine = {e.view_name for e in exposures}
                for local, remote in sorted(our_foreign_tables(conn, schema, server).items()):
                    if remote in mine or remote not in everything:
                        drop_foreign_table(conn, schema, local)
                        result.removed.append(f"{schema}.{local}")
                server_gone, made_fdw = _drop_server_if_unused(conn, server, result)
            made_schema = conn.execute(
                "SELECT obj_description(to_regnamespace(%s), 'pg_namespace') = %s",
                (schema, MADE_SCHEMA)).fetchone()[0]
            _drop_if_made(conn, sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)),
                          made_schema, f"schema {schema}",
                          f"schema {schema} still holds other objects; it stays", result)
            _drop_if_made(conn, sql.SQL("DROP EXTENSION IF EXISTS postgres_fdw"), made_fdw,
                          "extension postgres_fdw",
                          "postgres_fdw stays: other foreign servers use it", result)
    except psycopg.Error as exc:
        raise db_error("removing write-back from the source failed", exc) from None
    if server_gone:
        drop_reader(target_dsn, reader, result)
    return result


def _drop_server_if_unused(conn: psycopg.Connection, server: str,
                           result: WritebackResult) -> tuple[bool, bool]:
    """Drop the mapping and the server unless other projects' foreign tables use it.
    Returns (dropped, whether write-back had created postgres_fdw with it)."""
    left, comment = conn.execute(
        "SELECT (SELECT count(*) FROM pg_foreign_table ft WHERE ft.ftserver = s.oid),"
        " obj_description(s.oid, 'pg_foreign_server')"
        " FROM pg_foreign_server s WHERE s.srvname = %s", (server,)).fetchone()
    if left:
        result.notes.append(f"server {server} still serves {left} foreign tables "
                            f"of other projects; it stays")
        return False, False
    ident = sql.Identifier(server)
    conn.execute(sql.SQL("DROP USER MAPPING IF EXISTS FOR PUBLIC SERVER {}").format(ident))
    conn.execute(sql.SQL("DROP SERVER {}").format(ident))
    result.removed.append(f"server {server}")
    return True, comment == MADE_SERVER_AND_EXTENSION


def _drop_if_made(conn: psycopg.Connection, statement: sql.Composable, made: bool,
                  removed: str, stays: str, result: WritebackResult) -> None:
    """Run ``statement`` when write-back made the object; note ``stays`` when something else
    still depends on it (a savepoint keeps the rest of the removal)."""
    if not made:
        return
    try:
        with conn.transaction():
            conn.execute(statement)
        result.removed.append(removed)
    except psycopg.errors.DependentObjectsStillExist:
        result.notes.append(stays)


def drop_reader(target_dsn: str, reader: str, result: WritebackResult) -> None:
    """The source no longer reads through the reader role: revoke it and, where nothing else
    holds it, drop it."""
    try:
        with psycopg.connect(target_dsn, autocommit=True,
                             **credential_params(target_dsn, "target")) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (reader,)).fetchone():
                if conn.execute("SELECT to_regproc('pgml.revoke_reader')").fetchone()[0]:
                    conn.execute("SELECT pgml.revoke_reader(%s)", (reader,))
                try:
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(reader)))
                    result.removed.append(f"replica role {reader}")
                except psycopg.errors.DependentObjectsStillExist:
                    result.notes.append(f"replica role {reader} still has privileges in other "
                                        f"databases; it stays")
    except psycopg.Error as exc:
        raise db_error("removing the reader role from the ML replica failed", exc) from None

