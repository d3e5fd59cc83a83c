"""The publication on the source: which tables it holds, creating it, what will be mirrored.

Why its own module: "does the publication exist / which tables does it publish" is asked by
preflight, bootstrap, the runner's poll, status and ``drop``; one place answers. On RDS the
master user is not a superuser, so ``FOR TABLES IN SCHEMA`` falls back to ``FOR TABLE`` of
the schema's tables (which needs ownership of each).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from replica.config import Settings
from replica.errors import ConfigError
from replica.source.catalog import TableDef, TableKey, TypeResolver, read_table


def publication_exists(conn: psycopg.Connection, publication: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                        (publication,)).fetchone() is not None


def publication_tables(conn: psycopg.Connection, publication: str
                       ) -> dict[tuple[str, str], tuple[list[str] | None, str | None]]:
    """(schema, table) -> (published column names or None for all, row filter or None)."""
    rows = conn.execute(
        "SELECT schemaname, tablename, attnames, rowfilter FROM pg_publication_tables"
        " WHERE pubname = %s ORDER BY 1, 2", (publication,)).fetchall()
    return {(s, t): (list(cols) if cols is not None else None, rf) for s, t, cols, rf in rows}


def publication_tables_unless_locked(conn: psycopg.Connection, publication: str,
                                    lock_timeout_ms: int = 200):
    """``publication_tables``, or None when a published table's lock is held longer than
    ``lock_timeout_ms``. Why: from PostgreSQL 16 ``pg_publication_tables`` waits for a lock on
    every published table, so an ACCESS EXCLUSIVE held by an open TRUNCATE or ALTER stalls
    the stream's poll past its statement bound, and the sidecar reconnected for nothing (15
    does not wait). The poll asks again a few seconds later."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            return publication_tables(conn, publication)
    except psycopg.errors.LockNotAvailable:
        return None


def publication_members(conn: psycopg.Connection, publication: str) -> set[TableKey] | None:
    """The tables the publication holds as they were added - a partitioned table itself,
    where ``pg_publication_tables`` lists its leaves (without publish_via_partition_root) -
    plus every table it lists; None when it holds all tables."""
    if conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s",
                    (publication,)).fetchone()[0]:
        return None
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication p JOIN pg_publication_rel r"
        " ON r.prpubid = p.oid JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE p.pubname = %s", (publication,)).fetchall()
    if conn.info.server_version >= 150000:  # FOR TABLES IN SCHEMA: its roots too
        rows += conn.execute(
            "SELECT n.nspname, c.relname FROM pg_publication p JOIN pg_publication_namespace"
            " pn ON pn.pnpubid = p.oid JOIN pg_namespace n ON n.oid = pn.pnnspid JOIN pg_class"
            " c ON c.relnamespace = n.oid WHERE p.pubname = %s AND c.relkind IN ('r', 'p')",
            (publication,)).fetchall()
    return {(s, t) for s, t in rows} | set(publication_tables(conn, publication))


def schema_tables(conn: psycopg.Connection, schema: str) -> list[TableKey]:
    rows = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
                        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN"
                        " ('r', 'p') AND NOT c.relispartition ORDER BY 2", (schema,)).fetchall()
    return [(s, t) for s, t in rows]


def candidate_tables(conn: psycopg.Connection, publication: str,
                     tables: list[tuple[str, str]], schema: str | None) -> list[tuple[str, str]]:
    """What will be replicated: the publication's tables (if it exists) plus what the flags
    name (``--tables``, or every table of ``--schema``; public when the publication is new
    and neither flag is given)."""
    existing = list(publication_tables(conn, publication)) \
        if publication_exists(conn, publication) else None
    if tables:
        requested = tables
    elif schema is not None or existing is None:
        requested = schema_tables(conn, schema or "public")
    else:
        requested = []
    existing = existing or []
    return existing + [t for t in requested if t not in existing]


def ensure_publication(conn: psycopg.Connection, settings: Settings) -> list[TableKey]:
    """Create the publication if missing; add tables the flags name that it lacks."""
    pub = sql.Identifier(settings.publication)
    named = settings.table_list()
    if not publication_exists(conn, settings.publication):
        if named:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                pub, sql.SQL(", ").join(sql.Identifier(s, t) for s, t in named)))
        else:
            schema = settings.schema_name or "public"
            try:  # follows new tables of the schema; needs a superuser (not on RDS)
                with conn.transaction():
                    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLES IN SCHEMA {}").format(
                        pub, sql.Identifier(schema)))
            except psycopg.errors.InsufficientPrivilege:
                conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    pub, sql.SQL(", ").join(sql.Identifier(s, t)
                                            for s, t in schema_tables(conn, schema))))
    elif named:
        have = publication_members(conn, settings.publication)
        for s, t in named:
            if have is not None and (s, t) not in have:
                try:
                    conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                        pub, sql.Identifier(s, t)))
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise ConfigError(f"table {s}.{t} is not in publication "
                                      f"{settings.publication} and this role may not add it "
                                      f"({exc.diag.message_primary}): ask the publication's "
                                      "owner to ALTER PUBLICATION ... ADD TABLE") from None
    return sorted(publication_tables(conn, settings.publication))


def publication_defs(conn: psycopg.Connection, publication: str,
                     keys: set[TableKey] | None = None) -> list[TableDef]:
    resolver = TypeResolver(conn)
    return [read_table(conn, s, t, resolver, columns=cols, row_filter=rf)
            for (s, t), (cols, rf) in publication_tables(conn, publication).items()
            if keys is None or (s, t) in keys]


def drop_publication(conn: psycopg.Connection, publication: str) -> bool:
    """True if it existed."""
    existed = publication_exists(conn, publication)
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
    return existed
