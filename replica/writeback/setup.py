"""`pgml-replica writeback`: predictions readable on the source through postgres_fdw.

Why this shape: the application lives on the managed source (RDS), which cannot score models,
so the source gets *foreign tables* over the ML replica's `pgml_out` views (see
sql/expose.sql). The replica side is a login role that can read those views and nothing else;
the source side is the `postgres_fdw` extension, a foreign server pointing at the replica as
the *source* reaches it, a user mapping holding the reader's password, a schema (`ml`) with a
foreign table per exposed view of the project, and a `<view>_joined` view that puts each
prediction next to its source row.

Everything is idempotent and declarative: running it again converges (new exposures appear,
un-exposed ones disappear, a changed password is rotated, `--materialize` switches the mode
either way); `drop=True` removes what it made. Each side is one transaction, so a failure
leaves nothing half-made there.

Secrets: the reader's password is read from an environment variable or a file, never printed,
logged or put in an error. It reaches the servers as a bound parameter stashed in a
transaction-local setting and is spliced into the DDL server-side, so `log_statement = 'ddl'`
and pg_stat_statements (which record DDL text) do not see it; the replica gets only a SCRAM
verifier, computed here.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from replica.errors import WritebackError
from replica.secrets import describe, scrub, secrets_of

log = logging.getLogger(__name__)

DEFAULT_PASSWORD_ENV = "PGML_REPLICA_READER_PASSWORD"
DEFAULT_SERVER = "pgml_replica"
DEFAULT_SCHEMA = "ml"
DEFAULT_READER = "pgml_reader"
JOINED_SUFFIX = "_joined"
_SECRET_SETTING = "pgml_replica.writeback_secret"
# Comments that record what writeback created, so --drop removes only that: a schema or a
# postgres_fdw extension that was there before (e.g. installed by rds_superuser) stays.
MADE_SCHEMA = "pgml-replica write-back: created by pgml-replica writeback"
MADE_SERVER = "pgml-replica write-back server"
MADE_SERVER_AND_EXTENSION = MADE_SERVER + " (writeback created the postgres_fdw extension)"


@dataclass(frozen=True)
class Exposure:
    """One pgml_out view on the replica, as the source needs to know it."""

    view_name: str
    project_name: str
    base_schema: str
    base_table: str
    key_columns: tuple[str, ...]
    task: str
    materialized: bool
    columns: tuple[tuple[str, str], ...]  # (name, SQL type) of the view, in order


@dataclass
class WritebackResult:
    """What was set up (or removed), and the SQL a user runs next on the source."""

    schema: str
    server: str
    exposures: list[Exposure]
    foreign_tables: list[str] = field(default_factory=list)
    joined_views: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    next_sql: str = ""


# -- secrets -----------------------------------------------------------------------------------


def read_password(password_env: str | None = DEFAULT_PASSWORD_ENV,
                  password_file: str | os.PathLike | None = None) -> str:
    """The reader's password: from the file when one is named, else from the variable."""
    if password_file is not None:
        path = Path(password_file)
        try:
            password = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise WritebackError(f"cannot read the password file {path}: {exc.strerror}") from None
        if not password:
            raise WritebackError(f"the password file {path} is empty")
        return password
    name = password_env or DEFAULT_PASSWORD_ENV
    password = os.environ.get(name, "")
    if not password:
        raise WritebackError(f"no password for the replica's reader role: set the environment "
                             f"variable {name} or pass --password-file")
    return password


def _db_error(what: str, exc: psycopg.Error) -> WritebackError:
    """A WritebackError naming the step and the server's message (``writeback`` masks any
    secret in it before it leaves this module)."""
    diag = exc.diag
    parts = [diag.message_primary or str(exc).strip()]
    if diag.message_detail:
        parts.append(diag.message_detail)
    if diag.message_hint:
        parts.append("hint: " + diag.message_hint)
    return WritebackError(f"{what}: {'; '.join(parts)}")


def _execute_with_secret(conn: psycopg.Connection, secret: str, template: str,
                         args: list[str]) -> None:
    """Run ``format(template, *args, secret)`` as DDL inside the server.

    The secret travels as a bind parameter into a transaction-local setting and is cleared
    right after; the DDL text that carries it never appears as a top-level statement. Needs
    an open transaction: the setting is transaction-local.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise RuntimeError("_execute_with_secret must run inside a transaction")
    conn.execute("SELECT set_config(%s, %s, true)", (_SECRET_SETTING, secret))
    fmt_args = "".join(f", {sql.Literal(a).as_string(conn)}" for a in args)
    body = (f"BEGIN EXECUTE format({sql.Literal(template).as_string(conn)}{fmt_args},"
            f" current_setting({sql.Literal(_SECRET_SETTING).as_string(conn)}));"
            f" PERFORM set_config({sql.Literal(_SECRET_SETTING).as_string(conn)}, '', true); END")
    conn.execute(sql.SQL("DO {}").format(sql.Literal(body)))


# -- the replica side --------------------------------------------------------------------------


def _require_expose(conn: psycopg.Connection) -> None:
    if conn.execute("SELECT to_regclass('pgml.exposures')").fetchone()[0] is None:
        raise WritebackError("the ML replica has no pgml.expose: install it with "
                             "`pgml-replica install --target ...` and expose a view with "
                             "SELECT pgml.expose(project, relation, ARRAY[key columns])")


def _load_exposures(conn: psycopg.Connection, project: str | None) -> list[Exposure]:
    """The project's exposures (all of them when project is None), with their view columns."""
    rows = conn.execute(
        """SELECT x.view_name, x.project_name, n.nspname, c.relname, x.key_columns, x.task,
                  x.materialized,
                  (SELECT array_agg(ARRAY[a.attname::text, format_type(a.atttypid, a.atttypmod)]
                                    ORDER BY a.attnum)
                     FROM pg_attribute a
                    WHERE a.attrelid = to_regclass(format('pgml_out.%%I', x.view_name))
                      AND a.attnum > 0 AND NOT a.attisdropped)
             FROM pgml.exposures x
             LEFT JOIN pg_class c ON c.oid = to_regclass(x.relation_name)
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE %(project)s::text IS NULL OR x.project_name = %(project)s
            ORDER BY x.view_name""", {"project": project}).fetchall()
    return [Exposure(view_name=r[0], project_name=r[1], base_schema=r[2], base_table=r[3],
                     key_columns=tuple(r[4]), task=r[5], materialized=r[6],
                     columns=tuple((c[0], c[1]) for c in (r[7] or [])))
            for r in rows]


def _ensure_reader(conn: psycopg.Connection, role: str, password: str) -> None:
    """Create or update the reader login role; only a SCRAM verifier reaches the server."""
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is not None and row[0]:
        raise WritebackError(f"the reader role {role!r} is a superuser on the replica; the "
                             f"source must read through a role that can read pgml_out and "
                             f"nothing else: pass --replica-user with a dedicated role")
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                            b"scram-sha-256").decode()
    verb = "ALTER ROLE %I LOGIN PASSWORD %L" if row else "CREATE ROLE %I LOGIN PASSWORD %L"
    _execute_with_secret(conn, verifier, verb, [role])
    conn.execute("SELECT pgml.grant_reader(%s)", (role,))


def _setup_replica(target_dsn: str, project: str, reader: str, password: str,
                   materialize: bool) -> tuple[list[Exposure], set[str], dict[str, str]]:
    """Reader role, grants, the mode of each exposure. Returns the project's exposures, every
    exposed view name (any project) and where the replica is, as seen from here."""
    try:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            _require_expose(conn)
            with conn.transaction():
                exposures = _load_exposures(conn, project)
                if not exposures:
                    raise WritebackError(
                        f"project {project!r} has no exposed views on the ML replica: run "
                        f"SELECT pgml.expose({sql.Literal(project).as_string(conn)}, "
                        f"'schema.table', ARRAY['id']) there first")
                for e in exposures:
                    if e.base_table is None:
                        raise WritebackError(f"pgml_out.{e.view_name} reads a relation that "
                                             f"no longer exists on the replica; expose it again")
                    if e.materialized != materialize:
                        log.info("pgml_out.%s: switching to %s predictions", e.view_name,
                                 "materialized" if materialize else "live")
                        conn.execute("SELECT pgml.materialize(%s, %s)", (e.view_name, materialize))
                _ensure_reader(conn, reader, password)
                exposures = _load_exposures(conn, project)
                everything = {e.view_name for e in _load_exposures(conn, None)}
            where = {"host": conn.info.host, "port": str(conn.info.port),
                     "dbname": conn.info.dbname}
    except psycopg.Error as exc:
        raise _db_error("setting up the ML replica failed", exc) from None
    return exposures, everything, where


# -- the source side ---------------------------------------------------------------------------


def _server_oid(conn: psycopg.Connection, server: str) -> int | None:
    row = conn.execute("SELECT oid FROM pg_foreign_server WHERE srvname = %s",
                       (server,)).fetchone()
    return row[0] if row else None


def _our_foreign_tables(conn: psycopg.Connection, schema: str, server: str) -> dict[str, str]:
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


def _relation_columns(conn: psycopg.Connection, schema: str, name: str
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


def _drop_joined(conn: psycopg.Connection, schema: str, view: str) -> bool:
    name = view + JOINED_SUFFIX
    found = _relation_columns(conn, schema, name)
    if found is None or found[0] != "v":
        return False
    conn.execute(sql.SQL("DROP VIEW {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
    return True


def _drop_foreign_table(conn: psycopg.Connection, schema: str, name: str) -> None:
    _drop_joined(conn, schema, name)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("DROP FOREIGN TABLE {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name)))
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise WritebackError(
            f"{schema}.{name} cannot be replaced or removed: other objects on the source use it "
            f"({exc.diag.message_detail or 'see DROP ... CASCADE'}); drop or change those "
            f"first") from None


def _ensure_server(conn: psycopg.Connection, server: str, where: dict[str, str]) -> None:
    had_fdw = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgres_fdw'"
                           ).fetchone() is not None
    conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
    ident = sql.Identifier(server)
    oid = _server_oid(conn, server)
    if oid is None:
        opts = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v))
                                  for k, v in where.items())
        conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})")
                     .format(ident, opts))
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
    opts = sql.SQL(", ").join(
        sql.SQL("{} {} {}").format(sql.SQL("SET" if k in have else "ADD"), sql.Identifier(k),
                                   sql.Literal(v)) for k, v in where.items())
    conn.execute(sql.SQL("ALTER SERVER {} OPTIONS ({})").format(ident, opts))


def _ensure_mapping(conn: psycopg.Connection, server: str, reader: str, password: str) -> None:
    """A PUBLIC mapping: access on the source is decided by grants on the schema, and views
    (whose foreign scans use their owner's mapping) work for every reader of the view."""
    conn.execute(sql.SQL("DROP USER MAPPING IF EXISTS FOR PUBLIC SERVER {}")
                 .format(sql.Identifier(server)))
    _execute_with_secret(conn, password,
                         "CREATE USER MAPPING FOR PUBLIC SERVER %I OPTIONS (user %L, password %L)",
                         [server, reader])


def _ensure_foreign_table(conn: psycopg.Connection, schema: str, server: str,
                          e: Exposure) -> None:
    existing = _relation_columns(conn, schema, e.view_name)
    ours = _our_foreign_tables(conn, schema, server).get(e.view_name) == e.view_name
    if existing is not None:
        if existing[0] == "f" and ours and existing[1] == e.columns:
            return
        if existing[0] != "f" or not ours:
            raise WritebackError(f"{schema}.{e.view_name} already exists on the source and is "
                                 f"not a write-back foreign table; pass --schema with another "
                                 f"schema or rename it")
        _drop_foreign_table(conn, schema, e.view_name)
    # Types come from format_type() on the replica: server-quoted SQL, not user input.
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                              for n, t in e.columns)
    conn.execute(sql.SQL("CREATE FOREIGN TABLE {}.{} ({}) SERVER {} "
                         "OPTIONS (schema_name 'pgml_out', table_name {})").format(
        sql.Identifier(schema), sql.Identifier(e.view_name), cols, sql.Identifier(server),
        sql.Literal(e.view_name)))
    conn.execute(sql.SQL("COMMENT ON FOREIGN TABLE {}.{} IS {}").format(
        sql.Identifier(schema), sql.Identifier(e.view_name),
        sql.Literal(f"pgml-replica write-back: {'materialized' if e.materialized else 'live'} "
                    f"predictions of project {e.project_name} from pgml_out.{e.view_name}")))


def _ensure_joined(conn: psycopg.Connection, schema: str, e: Exposure) -> str | None:
    """`<view>_joined`: each source row with its prediction (NULL until it is scored)."""
    base = _relation_columns(conn, e.base_schema, e.base_table)
    if base is None or base[0] not in ("r", "p", "v", "m", "f"):
        return None
    base_names = {n for n, _ in base[1]}
    extra = [n for n, _ in e.columns if n not in e.key_columns]
    clash = base_names.intersection(extra)
    if clash:
        raise WritebackError(f"{e.base_schema}.{e.base_table} has columns named like the "
                             f"prediction columns ({', '.join(sorted(clash))}); the joined view "
                             f"cannot hold both")
    name = e.view_name + JOINED_SUFFIX
    body = sql.SQL("SELECT b.*, {} FROM {}.{} AS b LEFT JOIN {}.{} AS p ON {}").format(
        sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c)) for c in extra),
        sql.Identifier(e.base_schema), sql.Identifier(e.base_table),
        sql.Identifier(schema), sql.Identifier(e.view_name),
        sql.SQL(" AND ").join(sql.SQL("p.{0} = b.{0}").format(sql.Identifier(k))
                              for k in e.key_columns))
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(target, body))
    except (psycopg.errors.InvalidTableDefinition, psycopg.errors.DatatypeMismatch):
        # the base table's columns changed since: rebuild (grants on it must be given again)
        conn.execute(sql.SQL("DROP VIEW {}").format(target))
        conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(target, body))
    return f"{schema}.{name}"


def _check_reachable(conn: psycopg.Connection, schema: str, e: Exposure, reader: str,
                     where: dict[str, str]) -> None:
    """One key-only row through the foreign table: proves network path and credentials."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT {} FROM {}.{} LIMIT 1").format(
                sql.Identifier(e.key_columns[0]), sql.Identifier(schema),
                sql.Identifier(e.view_name)))
    except psycopg.Error as exc:
        err = _db_error(f"the source could not read pgml_out.{e.view_name} on the replica at "
                        f"{where['host']}:{where['port']}/{where['dbname']} as {reader}", exc)
        raise WritebackError(f"{err}\n  check that --replica-host/--replica-port are how the "
                             f"source reaches the replica, and the reader's password") from None


def _next_sql(conn: psycopg.Connection, result: WritebackResult) -> str:
    """Copy-pasteable SQL for the source. Names are quoted by the server's quote_ident, which
    quotes only where needed, so the text reads as a person would write it."""
    names = {result.schema, "app_role"}
    for e in result.exposures:
        names.update([e.view_name, e.view_name + JOINED_SUFFIX, *(n for n, _ in e.columns)])
    quoted = dict(conn.execute("SELECT n, quote_ident(n) FROM unnest(%s::text[]) AS n",
                               (sorted(names),)).fetchall())
    q = {n: sql.SQL(v) for n, v in quoted.items()}
    lines = ["-- on the source: predictions by key (the key filter runs on the replica)"]
    for e in result.exposures:
        where = sql.SQL(" AND ").join(sql.SQL("{} = $1").format(q[k]) for k in e.key_columns)
        cols = sql.SQL(", ").join(q[n] for n, _ in e.columns if n not in e.key_columns)
        lines.append(sql.SQL("SELECT {} FROM {}.{} WHERE {};").format(
            cols, q[result.schema], q[e.view_name], where).as_string(conn))
        if f"{result.schema}.{e.view_name}{JOINED_SUFFIX}" in result.joined_views:
            lines.append(sql.SQL("SELECT * FROM {}.{} WHERE {};").format(
                q[result.schema], q[e.view_name + JOINED_SUFFIX], where).as_string(conn))
    lines.append("-- let an application role read them:")
    for stmt in (sql.SQL("GRANT USAGE ON SCHEMA {} TO {};"),
                 sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {};")):
        lines.append(stmt.format(q[result.schema], q["app_role"]).as_string(conn))
    return "\n".join(lines)


def _setup_source(source_dsn: str, schema: str, server: str, reader: str, password: str,
                  where: dict[str, str], exposures: list[Exposure], everything: set[str],
                  result: WritebackResult) -> None:
    try:
        with psycopg.connect(source_dsn, autocommit=True) as conn, conn.transaction():
            _ensure_server(conn, server, where)
            _ensure_mapping(conn, server, reader, password)
            if conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(schema), sql.Literal(MADE_SCHEMA)))
            for local, remote in sorted(_our_foreign_tables(conn, schema, server).items()):
                if remote not in everything:  # un-exposed on the replica since the last run
                    _drop_foreign_table(conn, schema, local)
                    result.removed.append(f"{schema}.{local}")
            for e in exposures:
                _ensure_foreign_table(conn, schema, server, e)
                result.foreign_tables.append(f"{schema}.{e.view_name}")
                joined = _ensure_joined(conn, schema, e)
                if joined:
                    result.joined_views.append(joined)
                else:
                    result.notes.append(f"{e.base_schema}.{e.base_table} is not on the source: "
                                        f"no {schema}.{e.view_name}{JOINED_SUFFIX} view")
            _check_reachable(conn, schema, exposures[0], reader, where)
            result.next_sql = _next_sql(conn, result)
    except psycopg.Error as exc:
        raise _db_error("setting up the source failed", exc) from None


# -- removal -----------------------------------------------------------------------------------


def _drop(source_dsn: str, target_dsn: str, project: str, schema: str, server: str,
          reader: str) -> WritebackResult:
    try:
        with psycopg.connect(target_dsn, autocommit=True) as conn, conn.transaction():
            has_expose = conn.execute("SELECT to_regclass('pgml.exposures')").fetchone()[0]
            exposures = _load_exposures(conn, project) if has_expose else []
            everything = {e.view_name for e in _load_exposures(conn, None)} if has_expose else set()
            for e in exposures:
                if e.materialized:
                    conn.execute("SELECT pgml.materialize(%s, false)", (e.view_name,))
    except psycopg.Error as exc:
        raise _db_error("removing write-back from the ML replica failed", exc) from None
    result = WritebackResult(schema=schema, server=server, exposures=exposures)
    mine = {e.view_name for e in exposures}
    server_gone = made_fdw = False
    try:
        with psycopg.connect(source_dsn, autocommit=True) as conn, conn.transaction():
            if _server_oid(conn, server) is not None:
                for local, remote in sorted(_our_foreign_tables(conn, schema, server).items()):
                    if remote in mine or remote not in everything:
                        _drop_foreign_table(conn, schema, local)
                        result.removed.append(f"{schema}.{local}")
                left, comment = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_foreign_table ft WHERE ft.ftserver = s.oid),"
                    " obj_description(s.oid, 'pg_foreign_server')"
                    " FROM pg_foreign_server s WHERE s.srvname = %s", (server,)).fetchone()
                if left:
                    result.notes.append(f"server {server} still serves {left} foreign tables "
                                        f"of other projects; it stays")
                else:
                    ident = sql.Identifier(server)
                    conn.execute(sql.SQL("DROP USER MAPPING IF EXISTS FOR PUBLIC SERVER {}")
                                 .format(ident))
                    conn.execute(sql.SQL("DROP SERVER {}").format(ident))
                    result.removed.append(f"server {server}")
                    server_gone, made_fdw = True, comment == MADE_SERVER_AND_EXTENSION
            made_schema = conn.execute(
                "SELECT obj_description(to_regnamespace(%s), 'pg_namespace') = %s",
                (schema, MADE_SCHEMA)).fetchone()[0]
            if made_schema:
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)))
                    result.removed.append(f"schema {schema}")
                except psycopg.errors.DependentObjectsStillExist:
                    result.notes.append(f"schema {schema} still holds other objects; it stays")
            if made_fdw:
                try:
                    with conn.transaction():
                        conn.execute("DROP EXTENSION IF EXISTS postgres_fdw")
                    result.removed.append("extension postgres_fdw")
                except psycopg.errors.DependentObjectsStillExist:
                    result.notes.append("postgres_fdw stays: other foreign servers use it")
    except psycopg.Error as exc:
        raise _db_error("removing write-back from the source failed", exc) from None
    if server_gone:
        _drop_reader(target_dsn, reader, result)
    return result


def _drop_reader(target_dsn: str, reader: str, result: WritebackResult) -> None:
    """The source no longer reads through the reader role: revoke it and, where nothing else
    holds it, drop it."""
    try:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
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
        raise _db_error("removing the reader role from the ML replica failed", exc) from None


# -- entry point -------------------------------------------------------------------------------


def writeback(source_dsn: str, target_dsn: str, project: str, schema: str = DEFAULT_SCHEMA,
              replica_host: str | None = None, replica_port: int | str | None = None,
              replica_user: str = DEFAULT_READER, password_env: str | None = DEFAULT_PASSWORD_ENV,
              password_file: str | os.PathLike | None = None, materialize: bool = False,
              drop: bool = False, server: str = DEFAULT_SERVER) -> WritebackResult:
    """Set up (or with ``drop`` remove) predictions of ``project`` readable on the source.

    ``replica_host``/``replica_port`` say how the *source* reaches the replica; they default
    to the host and port of ``target_dsn``, which is how this process reaches it.
    """
    secrets = secrets_of(source_dsn, target_dsn)
    try:
        if drop:
            return _drop(source_dsn, target_dsn, project, schema, server, replica_user)
        password = read_password(password_env, password_file)
        secrets.append(password)
        return _setup(source_dsn, target_dsn, project, schema, replica_host, replica_port,
                      replica_user, password, materialize, server)
    except WritebackError as exc:
        # servers may echo what they were sent; nothing secret leaves this module
        raise WritebackError(scrub(str(exc), secrets)) from None
    except psycopg.Error as exc:
        raise WritebackError(scrub(f"write-back failed ({describe(source_dsn)} -> "
                                   f"{describe(target_dsn)}): {exc}", secrets)) from None


def _setup(source_dsn: str, target_dsn: str, project: str, schema: str,
           replica_host: str | None, replica_port: int | str | None, reader: str,
           password: str, materialize: bool, server: str) -> WritebackResult:
    exposures, everything, where = _setup_replica(target_dsn, project, reader, password,
                                                  materialize)
    result = WritebackResult(schema=schema, server=server, exposures=exposures)
    if replica_host is None or replica_port is None:
        result.notes.append(f"the source reaches the replica at "
                            f"{replica_host or where['host']}:{replica_port or where['port']} "
                            f"(as this process does); pass --replica-host/--replica-port when "
                            f"it reaches it another way")
    if replica_host is not None:
        where["host"] = replica_host
    if replica_port is not None:
        where["port"] = str(replica_port)
    if where["host"].startswith("/"):
        raise WritebackError("the target DSN connects over a Unix socket, which the source "
                             "cannot use: pass --replica-host (and --replica-port)")
    _setup_source(source_dsn, schema, server, reader, password, where, exposures,
                  everything, result)
    log.info("write-back of project %r ready: %s", project, ", ".join(result.foreign_tables))
    return result


# -- command line ------------------------------------------------------------------------------


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PGML_REPLICA_{name}", default)


def add_writeback_parser(subparsers) -> argparse.ArgumentParser:
    """The `writeback` subcommand; every flag also reads PGML_REPLICA_<NAME> (named in its
    help)."""
    p = subparsers.add_parser(
        "writeback", help="make a project's predictions readable on the source (postgres_fdw)",
        description="Sets up postgres_fdw on the source so that it reads the project's "
                    "pgml_out views on the ML replica (create them there with pgml.expose); "
                    "--drop removes it again. Idempotent.")

    def flag(name: str, env: str, help_: str, default: str | None = None) -> None:
        shown = f", default {default}" if default else ""
        p.add_argument(name, default=_env(env, default),
                       help=f"{help_} [PGML_REPLICA_{env}{shown}]")

    flag("--source", "SOURCE", "source DSN (the database the application uses)")
    flag("--target", "TARGET", "ML replica DSN")
    flag("--project", "PROJECT", "pgml project whose exposed views to read")
    flag("--schema", "WRITEBACK_SCHEMA", "schema on the source for the foreign tables",
         DEFAULT_SCHEMA)
    flag("--replica-host", "REPLICA_HOST",
         "host the *source* reaches the replica at (default: the target DSN's)")
    flag("--replica-port", "REPLICA_PORT",
         "port the source reaches the replica at (default: the target DSN's)")
    flag("--replica-user", "REPLICA_USER",
         "login role on the replica that reads pgml_out and nothing else", DEFAULT_READER)
    flag("--password-env", "PASSWORD_ENV",
         "environment variable that holds the reader's password", DEFAULT_PASSWORD_ENV)
    flag("--password-file", "PASSWORD_FILE",
         "file that holds the reader's password (wins over --password-env)")
    flag("--server", "FDW_SERVER", "name of the foreign server on the source", DEFAULT_SERVER)
    p.add_argument("--materialize", action=argparse.BooleanOptionalAction,
                   default=_env("MATERIALIZE", "false").lower() in ("1", "true", "yes", "on"),
                   help="keep predictions in a table on the replica, scored as rows replicate, "
                        "instead of scoring on every read [PGML_REPLICA_MATERIALIZE]")
    p.add_argument("--drop", action="store_true", help="remove what writeback set up")
    p.set_defaults(func=run_writeback)
    return p


def run_writeback(args: argparse.Namespace) -> int:
    """CLI body: print what was done and the SQL to run next; errors go to stderr."""
    import sys

    missing = [f"--{n}" for n in ("source", "target", "project") if not getattr(args, n)]
    if missing:
        print(f"pgml-replica writeback: missing {', '.join(missing)} (or the "
              f"PGML_REPLICA_* variables)", file=sys.stderr)
        return 2
    try:
        result = writeback(args.source, args.target, args.project, schema=args.schema,
                           replica_host=args.replica_host, replica_port=args.replica_port,
                           replica_user=args.replica_user, password_env=args.password_env,
                           password_file=args.password_file, materialize=args.materialize,
                           drop=args.drop, server=args.server)
    except WritebackError as exc:
        print(f"pgml-replica writeback: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.drop:
        print("removed: " + (", ".join(result.removed) or "nothing (nothing was set up)"))
    else:
        mode = "materialized" if args.materialize else "live"
        print(f"write-back ready ({mode} predictions): " + ", ".join(
            result.foreign_tables + result.joined_views))
        if result.removed:
            print("removed (no longer exposed): " + ", ".join(result.removed))
    for note in result.notes:
        print(f"note: {note}")
    if result.next_sql:
        print("\nNext, on the source:\n" + result.next_sql)
    return 0
