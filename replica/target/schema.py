"""Target tables: created from the source catalog, altered by Relation messages.

Why no foreign keys, triggers, defaults or secondary indexes are copied: the target only
mirrors rows in source commit order; a constraint the source already checked can only make
the target refuse (or slow down) what the source accepted. The primary key (or the replica
identity index, as a primary key) is kept because the set-based apply joins on it.

Column changes are matched by name. A Relation message with only new names adds columns,
with only missing names drops them, with a new type for a name retypes it (``USING
col::type``). Both missing and new names at once cannot be told apart from a rename, so the
caller re-copies that table instead of guessing (docs/sidecar.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from replica.errors import UnsupportedError
from replica.source.catalog import ColumnDef, TableDef


@dataclass(frozen=True, slots=True)
class TargetTable:
    """The target table as it is now: column name -> type, and its primary key."""

    schema: str
    name: str
    columns: dict[str, str]
    key: tuple[str, ...]
    not_null: frozenset[str] = frozenset()


@dataclass
class SchemaDiff:
    added: list[ColumnDef] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    retyped: list[ColumnDef] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.dropped or self.retyped)

    @property
    def ambiguous(self) -> bool:
        """Names both vanished and appeared: a rename, or a drop plus an add - unknowable."""
        return bool(self.added and self.dropped)


def read_target(conn: psycopg.Connection, schema: str, name: str) -> TargetTable | None:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        " coalesce(a.attnum = ANY(i.indkey::int2[]), false),"
        " array_position(i.indkey::int2[], a.attnum)"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum", (schema, name)).fetchall()
    if not rows:
        return None
    key = tuple(r[0] for r in sorted((r for r in rows if r[3]), key=lambda r: r[4]))
    return TargetTable(schema, name, {r[0]: r[1] for r in rows}, key,
                       frozenset(r[0] for r in rows if r[2]))


def diff(current: TargetTable, wanted: list[ColumnDef]) -> SchemaDiff:
    names = {c.name for c in wanted}
    d = SchemaDiff()
    for col in wanted:
        have = current.columns.get(col.name)
        if have is None:
            d.added.append(col)
        elif have != col.type_sql:
            d.retyped.append(col)
    d.dropped = [n for n in current.columns if n not in names]
    return d


def create_table(conn: psycopg.Connection, table: TableDef, *, with_key: bool = True) -> None:
    """CREATE the target table (and its schema). ``with_key=False`` leaves the primary key
    for ``add_key`` after a bulk load, which builds the index once instead of row by row."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
    cols = [sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(c.type_sql),
                                      sql.SQL(" NOT NULL") if c.not_null or c.name in table.key
                                      else sql.SQL(""))
            for c in table.columns]
    if with_key and table.key:
        cols.append(sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, table.key))))
    try:
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table.ident,
                                                           sql.SQL(", ").join(cols)))
    except psycopg.errors.UndefinedObject as exc:  # an extension's type missing on the target
        raise UnsupportedError(f"cannot create {table.qualname} on the target: "
                               f"{exc.diag.message_primary}; install the extension that "
                               "provides the type on the target") from None


def add_key(conn: psycopg.Connection, table: TableDef) -> None:
    if table.key:
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
            table.ident, sql.SQL(", ").join(map(sql.Identifier, table.key))))


def apply_diff(conn: psycopg.Connection, schema: str, name: str, d: SchemaDiff,
               missing_values: dict[str, str | None] | None = None) -> None:
    """ALTER the target table. ``missing_values`` holds, per added column, the value the
    source's existing rows have (a non-volatile DEFAULT given with ADD COLUMN) as array text."""
    ident = sql.Identifier(schema, name)
    for col in d.dropped:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                    ident, sql.Identifier(col)))
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise _blocked(schema, name, col, "dropped", exc) from None
    for col in d.added:
        missing = (missing_values or {}).get(col.name)
        if missing is None:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                ident, sql.Identifier(col.name), sql.SQL(col.type_sql)))
        else:  # existing rows get the source's value without a rewrite, then no default
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {} DEFAULT ({}::{}[])[1]").format(
                ident, sql.Identifier(col.name), sql.SQL(col.type_sql), sql.Literal(missing),
                sql.SQL(col.type_sql)))
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(
                ident, sql.Identifier(col.name)))
    for col in d.retyped:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
                    ident, sql.Identifier(col.name), sql.SQL(col.type_sql),
                    sql.Identifier(col.name), sql.SQL(col.type_sql)))
        except (psycopg.errors.FeatureNotSupported,
                psycopg.errors.DependentObjectsStillExist) as exc:  # a view uses it
            raise _blocked(schema, name, col.name, "changed the type of", exc) from None
        except (psycopg.errors.DataException, psycopg.errors.CannotCoerce,
                psycopg.errors.DatatypeMismatch) as exc:
            raise UnsupportedError(
                f"{schema}.{name}: the source changed column {col.name} to {col.type_sql}, "
                f"but its values on the target do not cast ({exc.diag.message_primary}); "
                "re-copy the table (pgml-replica run --resnapshot)") from None


def _blocked(schema: str, name: str, column: str, what: str,
             exc: psycopg.Error) -> UnsupportedError:
    return UnsupportedError(
        f"the source {what} column {column} of {schema}.{name}, but something on the target "
        f"depends on it ({exc.diag.message_primary}; {exc.diag.message_detail or ''}): drop "
        "or adapt that view, then start the sidecar again")


def relax_not_null(conn: psycopg.Connection, schema: str, name: str,
                   columns: list[str]) -> None:
    """The source dropped NOT NULL: the target must accept the NULLs that follow."""
    for col in columns:
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
            sql.Identifier(schema, name), sql.Identifier(col)))


def source_missing_values(conn: psycopg.Connection, schema: str, name: str,
                          columns: list[str]) -> dict[str, str | None]:
    """For columns the source added with a non-volatile DEFAULT: the value its existing rows
    read (``attmissingval``, as array text). Columns without one map to None."""
    rows = conn.execute(
        "SELECT a.attname, CASE WHEN a.atthasmissing THEN a.attmissingval::text END"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attname = ANY(%s)"
        " AND NOT a.attisdropped", (schema, name, columns)).fetchall()
    return {n: v for n, v in rows}


def source_nullable(conn: psycopg.Connection, schema: str, name: str) -> set[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
        " AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attnotnull",
        (schema, name)).fetchall()
    return {r[0] for r in rows}
