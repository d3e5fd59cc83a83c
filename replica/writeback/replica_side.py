"""Write-back on the ML replica: the reader role and the mode of each exposure.

Why a dedicated reader: the source's user mapping holds this role's password, so the role may
read the ``pgml_out`` views and nothing else (``pgml.grant_reader``); a superuser is refused.
Only a SCRAM verifier, computed here, reaches the replica. One transaction: a failure leaves
nothing half-made on the replica.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from replica.connect import credential_params
from replica.errors import WritebackError
from replica.writeback.model import Exposure
from replica.writeback.secret_ddl import db_error, execute_with_secret

log = logging.getLogger(__name__)


def has_expose(conn: psycopg.Connection) -> bool:
    """Whether pgml.expose is installed on the replica."""
    return conn.execute("SELECT to_regclass('pgml.exposures')").fetchone()[0] is not None


def require_expose(conn: psycopg.Connection) -> None:
    if not has_expose(conn):
        raise WritebackError("the ML replica has no pgml.expose: install it with "
                             "`pgml-replica install --target ...` and expose a view with "
                             "SELECT pgml.expose(project, relation, ARRAY[key columns])")


def load_exposures(conn: psycopg.Connection, project: str | None) -> list[Exposure]:
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


def exposed_views(conn: psycopg.Connection) -> set[str]:
    """Every exposed view name, of any project: what the source may keep a foreign table of."""
    return {e.view_name for e in load_exposures(conn, None)}


def ensure_reader(conn: psycopg.Connection, role: str, password: str) -> None:
    """Create or update the reader login role; only a SCRAM verifier reaches the server."""
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is not None and row[0]:
        raise WritebackError(f"the reader role {role!r} is a superuser on the replica; the "
                             f"source must read through a role that can read pgml_out and "
                             f"nothing else: pass --replica-user with a dedicated role")
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                            b"scram-sha-256").decode()
    verb = "ALTER ROLE %I LOGIN PASSWORD %L" if row else "CREATE ROLE %I LOGIN PASSWORD %L"
    execute_with_secret(conn, verifier, verb, [role])
    conn.execute("SELECT pgml.grant_reader(%s)", (role,))


def setup_replica(target_dsn: str, project: str, reader: str, password: str,
                  materialize: bool) -> tuple[list[Exposure], set[str], dict[str, str]]:
    """Reader role, grants, the mode of each exposure. Returns the project's exposures, every
    exposed view name (any project) and where the replica is, as seen from here."""
    try:
        with psycopg.connect(target_dsn, autocommit=True,
                             **credential_params(target_dsn, "target")) as conn:
            require_expose(conn)
            with conn.transaction():
                exposures = load_exposures(conn, project)
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
                ensure_reader(conn, reader, password)
                exposures = load_exposures(conn, project)
                everything = exposed_views(conn)
            where = {"host": conn.info.host, "port": str(conn.info.port),
                     "dbname": conn.info.dbname}
    except psycopg.Error as exc:
        raise db_error("setting up the ML replica failed", exc) from None
    return exposures, everything, where
