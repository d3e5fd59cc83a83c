"""The SQL write-back runs on the source, built without a server.

Why apart from ``source_side``: what the DDL says (a foreign table per exposure, a joined view,
the server's options, the SQL printed for the user) is decided by the exposure alone; keeping
it pure lets the unit tests read it without two clusters, and leaves ``source_side`` with the
catalog reads and the order of steps. Every name is quoted (``sql.Identifier``) or bound; the
column types come from ``format_type()`` on the replica, server-quoted SQL, not user input.
"""

from __future__ import annotations

from collections.abc import Mapping

from psycopg import sql

from replica.errors import WritebackError
from replica.writeback.model import Exposure, WritebackResult


def qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def server_options(where: Mapping[str, str], have: set[str] | None = None) -> sql.Composed:
    """The OPTIONS list of the foreign server: ``k 'v'`` for CREATE SERVER (``have`` None),
    ``SET``/``ADD k 'v'`` for ALTER SERVER, by whether the server has the option already."""
    if have is None:
        return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v))
                                  for k, v in where.items())
    return sql.SQL(", ").join(
        sql.SQL("{} {} {}").format(sql.SQL("SET" if k in have else "ADD"), sql.Identifier(k),
                                   sql.Literal(v)) for k, v in where.items())


def create_foreign_table(schema: str, server: str, e: Exposure) -> sql.Composed:
    """The foreign table over ``pgml_out.<view>``, with the view's columns and types."""
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                              for n, t in e.columns)
    return sql.SQL("CREATE FOREIGN TABLE {} ({}) SERVER {} "
                   "OPTIONS (schema_name 'pgml_out', table_name {})").format(
        qualified(schema, e.view_name), cols, sql.Identifier(server), sql.Literal(e.view_name))


def comment_foreign_table(schema: str, e: Exposure) -> sql.Composed:
    return sql.SQL("COMMENT ON FOREIGN TABLE {} IS {}").format(
        qualified(schema, e.view_name),
        sql.Literal(f"pgml-replica write-back: {'materialized' if e.materialized else 'live'} "
                    f"predictions of project {e.project_name} from pgml_out.{e.view_name}"))


def joined_view_body(schema: str, e: Exposure, base_columns: set[str]) -> sql.Composed:
    """``SELECT b.*, p.<prediction columns>`` joined on the key: each base row with its
    prediction (NULL until it is scored). A base column named like a prediction column
    cannot stand beside it."""
    extra = e.prediction_columns
    clash = base_columns.intersection(extra)
    if clash:
        raise WritebackError(f"{e.base_schema}.{e.base_table} has columns named like the "
                             f"prediction columns ({', '.join(sorted(clash))}); the joined view "
                             f"cannot hold both")
    return sql.SQL("SELECT b.*, {} FROM {} AS b LEFT JOIN {} AS p ON {}").format(
        sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c)) for c in extra),
        qualified(e.base_schema, e.base_table), qualified(schema, e.view_name),
        sql.SQL(" AND ").join(sql.SQL("p.{0} = b.{0}").format(sql.Identifier(k))
                              for k in e.key_columns))


def next_sql_names(result: WritebackResult) -> set[str]:
    """Every name the printed SQL uses (the server quotes them: see ``render_next_sql``)."""
    names = {result.schema, "app_role"}
    for e in result.exposures:
        names.update([e.view_name, e.joined_name, *(n for n, _ in e.columns)])
    return names


def render_next_sql(result: WritebackResult, quoted: Mapping[str, str]) -> str:
    """Copy-pasteable SQL for the source, with ``quoted`` mapping each name of
    ``next_sql_names`` to its quoted form (quote_ident quotes only where needed, so the text
    reads as a person would write it)."""
    q = {n: sql.SQL(v) for n, v in quoted.items()}
    lines = ["-- on the source: predictions by key (the key filter runs on the replica)"]
    for e in result.exposures:
        where = sql.SQL(" AND ").join(sql.SQL("{} = $1").format(q[k]) for k in e.key_columns)
        cols = sql.SQL(", ").join(q[n] for n in e.prediction_columns)
        lines.append(sql.SQL("SELECT {} FROM {}.{} WHERE {};").format(
            cols, q[result.schema], q[e.view_name], where).as_string(None))
        if f"{result.schema}.{e.joined_name}" in result.joined_views:
            lines.append(sql.SQL("SELECT * FROM {}.{} WHERE {};").format(
                q[result.schema], q[e.joined_name], where).as_string(None))
    lines.append("-- let an application role read them:")
    for stmt in (sql.SQL("GRANT USAGE ON SCHEMA {} TO {};"),
                 sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {};")):
        lines.append(stmt.format(q[result.schema], q["app_role"]).as_string(None))
    return "\n".join(lines)
