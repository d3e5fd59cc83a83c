"""What the source says about the replicated tables: columns, types, keys, publication.

Why types are resolved here: a column crosses to the target as COPY BINARY bytes, so the
target column's type must read exactly the bytes the source sends. Built-in types share OIDs
and formats on every server; an enum's binary form is its label, which ``text`` reads; a
domain's is its base type's; an array embeds its element type's OID, so only arrays of
built-in types travel. Everything else stops with an error naming table, column and type
(see docs/sidecar.md, "Types").
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from replica.errors import ConfigError, UnsupportedColumns, UnsupportedTypeError

#: (schema, table) - how tables are named everywhere in the sidecar
TableKey = tuple[str, str]
FIRST_NORMAL_OID = 16384  # OIDs below this are built in and equal on every server
#: the reg* types (regproc 24 .. regcollation 4191): their binary form is an OID of the
#: source's catalog, which names another object, or none, on the target
OID_VALUED = {24: "regproc", 2202: "regprocedure", 2203: "regoper", 2204: "regoperator",
              2205: "regclass", 2206: "regtype", 3734: "regconfig", 3769: "regdictionary",
              4089: "regnamespace", 4096: "regrole", 4191: "regcollation"}


#: SQL over ``pg_class c``: the storage files holding the table's rows (a partitioned table's:
#: its leaves'). A change means the rows were rewritten, or partitions attached or detached,
#: by DDL the WAL does not carry as row changes (ADD COLUMN ... DEFAULT volatile, ALTER TYPE
#: ... USING, ATTACH PARTITION): the stream cannot follow that, a re-copy can.
FILENODES = sql.SQL("coalesce((SELECT string_agg(l.relfilenode::text, ',' ORDER BY l.oid)"
                    " FROM pg_partition_tree(c.oid) p JOIN pg_class l ON l.oid = p.relid"
                    " WHERE l.relkind = 'r'), c.relfilenode::text)")


def table_filenodes(conn: psycopg.Connection, schema: str, name: str) -> str | None:
    """FILENODES of the table now (None: it is gone)."""
    row = conn.execute(sql.SQL("SELECT {} FROM pg_class c JOIN pg_namespace n ON n.oid ="
                               " c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
                               ).format(FILENODES), (schema, name)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class ColumnDef:
    name: str
    type_sql: str  # the target column's type, as SQL
    not_null: bool = False


@dataclass(frozen=True, slots=True)
class TableDef:
    schema: str
    name: str
    oid: int
    columns: tuple[ColumnDef, ...]
    key: tuple[str, ...]  # primary key, else replica identity index; () = rows are a multiset
    replica_identity: str  # 'd' default, 'f' full, 'i' index, 'n' nothing
    row_filter: str | None = None  # the publication's WHERE (PostgreSQL 15)
    pages: int = 0
    est_rows: int = 0
    relkind: str = "r"  # 'p' = partitioned (published via its root): no ctid ranges
    filenode: str = ""  # FILENODES as read before the copy (stream/relations.py: rewrites)

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True, slots=True)
class _PgType:
    oid: int
    nspname: str
    typtype: str
    basetype: int
    basetypmod: int
    elem: int
    category: str
    has_send: bool


class TypeResolver:
    """Maps (source type OID, typmod) to the target column type, caching catalog lookups."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._types: dict[int, _PgType] = {}
        self._formatted: dict[tuple[int, int], str] = {}

    def _type(self, oid: int) -> _PgType:
        if oid not in self._types:
            row = self._conn.execute(
                "SELECT t.oid, n.nspname, t.typtype, t.typbasetype, t.typtypmod, t.typelem,"
                " t.typcategory, t.typsend <> 0 AND t.typreceive <> 0"
                " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
                " WHERE t.oid = %s", (oid,)).fetchone()
            if row is None:
                raise ConfigError(f"type OID {oid} does not exist on the source (dropped "
                                  "while replicating?)")
            self._types[oid] = _PgType(*row)
        return self._types[oid]

    def format(self, oid: int, typmod: int) -> str:
        key = (oid, typmod)
        if key not in self._formatted:
            self._formatted[key] = self._conn.execute(
                "SELECT format_type(%s, %s)", (oid, None if typmod < 0 else typmod)
            ).fetchone()[0]
        return self._formatted[key]

    def target_type(self, table: str, column: str, oid: int, typmod: int) -> str:
        t = self._type(oid)
        name = self.format(oid, typmod)
        if t.typtype == "d":
            return self.target_type(table, column, t.basetype,
                                    t.basetypmod if t.basetypmod >= 0 else typmod)
        if t.typtype == "e":
            return "text"  # enum_send is the label's text; new labels need no DDL
        if oid in OID_VALUED or t.elem in OID_VALUED:
            raise UnsupportedTypeError(table, column, name, "its binary form is an OID of the "
                                       "source's catalog, meaningless on the target; store "
                                       "the name as text (e.g. a generated column "
                                       f"{column}::text) and publish that instead")
        if oid < FIRST_NORMAL_OID:
            if not t.has_send:
                raise UnsupportedTypeError(table, column, name, "it has no binary format")
            return name
        if t.category == "A" or t.elem:
            raise UnsupportedTypeError(table, column, name, "an array's binary form embeds "
                                       "its element type's OID, which differs per server")
        if t.typtype == "b" and t.has_send:
            return name  # an extension's type: the same extension must exist on the target
        kinds = {"c": "a composite type", "p": "a pseudo-type", "r": "a user-defined range",
                 "m": "a user-defined multirange"}
        raise UnsupportedTypeError(table, column, name, kinds.get(t.typtype, "no binary format"))


def read_table(conn: psycopg.Connection, schema: str, name: str,
               resolver: TypeResolver, *, columns: list[str] | None = None,
               row_filter: str | None = None) -> TableDef:
    """The table as the target must mirror it (only published, non-generated columns)."""
    head = conn.execute(sql.SQL(
        "SELECT c.oid, c.relreplident, c.relpages, greatest(c.reltuples, 0)::bigint, c.relkind,"
        " (SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i"
        "   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)"
        "   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        "   WHERE i.indrelid = c.oid AND i.indisprimary),"
        " (SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i"
        "   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)"
        "   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        "   WHERE i.indrelid = c.oid AND i.indisreplident), {}"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s").format(FILENODES), (schema, name)).fetchone()
    if head is None:
        raise ConfigError(f"table {schema}.{name} does not exist on the source")
    oid, ident, pages, est_rows, relkind, pk, ident_cols, filenode = head
    attrs = conn.execute(
        "SELECT attname, atttypid, atttypmod, attnotnull FROM pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''"
        " ORDER BY attnum", (oid,)).fetchall()
    qual = f"{schema}.{name}"
    cols, problems = [], []
    for a, t, m, nn in attrs:  # every unsupported column at once (preflight lists them all)
        if columns is None or a in columns:
            try:
                cols.append(ColumnDef(a, resolver.target_type(qual, a, t, m), nn))
            except UnsupportedTypeError as exc:
                problems.append(exc)
    if problems:
        raise problems[0] if len(problems) == 1 else UnsupportedColumns(problems)
    key = tuple(pk or ident_cols or ())
    if any(k not in {c.name for c in cols} for k in key):
        key = ()  # a column list without the key: PostgreSQL allows it for insert-only
    return TableDef(schema, name, oid, tuple(cols), key, ident, row_filter, pages, est_rows,
                    relkind, filenode)
