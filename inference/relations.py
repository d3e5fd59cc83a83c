"""Relations into numpy inside PL/Python: names, column checks, snapshots, loading.

Loading. One query scans the relation once and returns every column as a single bytea of
float8 values: the bytes of ``array_agg(col::float8)`` itself through
pgml._float8_array_bytes (``float8_column_sql``; ~30% cheaper), or, without that function,
big-endian ``string_agg(float8send(col::float8))``; NULL as NaN either way. numpy reads those
bytes without creating a Python object per value. Measured for 1M rows x 11 columns
inside PL/Python on the 2-core dev box: this 0.7 s; one ``array_agg`` per column converted
through Python lists 1.4 s; ``plpy.execute`` row by row 4.65 s (PERF-NOTES); psycopg binary
COPY over a loopback connection 1.37 s (PERF-NOTES) -- and a loopback connection could not
see the snapshot table that the same transaction has just created, needs credentials, and
would escape the caller's transaction. So: in-process string_agg.

Two halves. A big plain table is read by one statement as two halves of its blocks, a
parallel worker and the backend at once (float8_bytes.py, which also holds the bytes' layout).

Row order. A snapshot table is written once and never updated, so a sequential scan returns
its rows in the same physical order every time; synchronized scans (which can start a scan
in the middle of a big table) are switched off for the load. That, the stored random_state
and the split rule (train_split.py) make a retrain from the same snapshot see the same rows
in the same split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import plpy

from inference import float8_bytes, store
from inference.encoding import TEXT_TYPES
from inference.errors import InvalidData, NotNumeric, UnknownColumn, UnknownRelation
from inference.float8_bytes import (
    NAN_BYTES,
    aligned,
    float8_array,
    float8_column,
    float8_column_sql,
    raw_arrays,
    read_halves,
    transpose,
)

# Base types a feature or label may have (a domain over one of them counts as that type).
NUMERIC_TYPES = {21: "smallint", 23: "integer", 20: "bigint", 700: "real",
                 701: "double precision", 1700: "numeric", 16: "boolean"}
_BOOL = 16


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    base_oid: int
    position: int
    nullable: bool
    elem_oid: int = 0  # an array column: the base type of its elements (else 0)

    @property
    def is_array(self) -> bool:
        return self.elem_oid != 0


def element_names(name: str, width: int) -> list[str]:
    """The features an array column of ``width`` elements becomes: name[1] .. name[width],
    in the array's storage order (row-major for a multi-dimensional array such as an image)."""
    return [f"{name}[{i + 1}]" for i in range(width)]


def resolve(relation_name: str) -> tuple[int, str]:
    """(oid, quoted schema-qualified name) of a table, view, materialized or foreign table.

    The name goes to to_regclass as a bound parameter; what comes back is PostgreSQL's own
    quoting of the relation (``oid::regclass``), the only form used in SQL text afterwards.
    """
    rows = None
    try:
        with plpy.subtransaction():  # to_regclass raises on malformed names in PostgreSQL 15
            rows = store.query(
                "SELECT c.oid::int8 AS oid, c.relkind::text AS kind,"
                " format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                ("text",), (relation_name,))
    except plpy.SPIError:
        rows = None
    if not rows:
        raise UnknownRelation(
            f"relation {relation_name!r} does not exist; name a table or view, "
            "schema-qualified if it is not on the search_path (e.g. 'public.patients')"
        )
    if rows[0]["kind"] not in ("r", "v", "m", "f", "p"):
        raise UnknownRelation(f"{relation_name!r} is not a table or view")
    return rows[0]["oid"], rows[0]["name"]


def columns(oid: int) -> list[Column]:
    rows = store.query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS pg_type,"
        " (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8 AS base,"
        " a.attnum::int AS position, NOT a.attnotnull AS nullable,"
        " coalesce((SELECT CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END"
        "   FROM pg_type b JOIN pg_type e ON e.oid = b.typelem"
        "  WHERE b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END"
        "    AND b.typcategory = 'A'), 0)::int8 AS elem"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        ("int8",), (oid,))
    return [Column(r["name"], r["pg_type"], r["base"], r["position"], r["nullable"], r["elem"])
            for r in rows]


def check_columns(relation_name: str, cols: list[Column], y_columns: list[str]) -> None:
    """Every y column exists; every column (features and labels) is numeric."""
    names = [c.name for c in cols]
    for y in y_columns:
        if y not in names:
            raise UnknownColumn(
                f"column {y!r} does not exist in {relation_name}; its columns are: "
                + ", ".join(names)
            )
    if len(cols) <= len(y_columns):
        raise InvalidData(f"{relation_name} has no feature columns besides {', '.join(y_columns)}")
    for c in cols:
        if c.is_array and c.name not in y_columns and c.elem_oid in NUMERIC_TYPES:
            continue  # an array of numbers: one feature per element, as PostgresML
        if c.base_oid in TEXT_TYPES and not c.is_array:
            continue  # a text categorical (inference/encoding.py): codes of its categories
        if c.base_oid not in NUMERIC_TYPES:
            role = "y column" if c.name in y_columns else "feature column"
            raise NotNumeric(
                f"{role} {c.name!r} of {relation_name} has type {c.pg_type}, which is not "
                "numeric or text; train on a view that casts it to a number or text, or "
                "leaves it out"
            )


def needs_copy(oid: int, cols: list[Column], requested: bool) -> bool:
    """Whether a new snapshot copies the relation (CREATE TABLE AS) or reads it in place.

    In place is PostgresML's ``materialize_snapshot => false`` (its default): the load is then
    the only read of the relation, one statement under one MVCC snapshot, and a retrain reads
    the relation as it is then. A copy is kept when asked for, and where our own steps need
    it: a text or array column is read by more than one statement (its categories or width
    first, then the load), which under READ COMMITTED could each see other rows; a temporary
    relation is gone (or, by name, another session's) by the time a retrain looks for it.
    """
    if requested or any(c.is_array or c.base_oid in TEXT_TYPES for c in cols):
        return True
    rows = store.query("SELECT relpersistence::text AS p FROM pg_class WHERE oid = $1::oid",
                       ("int8",), (oid,))
    return bool(rows) and rows[0]["p"] == "t"


def snapshot_columns(snapshot: store.Snapshot, oid: int) -> list[Column]:
    """The columns a retrain loads: the snapshot's own, found again in ``oid`` (its table).

    A materialized copy has exactly them; a relation read in place may have gained columns
    since (not features of this snapshot: left out) or lost some (an error naming them).
    """
    recorded = [c["name"] for c in snapshot.columns]
    found = {c.name: c for c in columns(oid)}
    missing = [name for name in recorded if name not in found]
    if missing:
        raise UnknownColumn(
            f"{snapshot.relation_name} no longer has the column(s) {', '.join(missing)} of "
            f"snapshot {snapshot.id}; pass relation_name to take a new snapshot")
    return [found[name] for name in recorded]


def materialize(snapshot: store.Snapshot, source: str, cols: list[Column]) -> None:
    """Copy the relation into the snapshot's own table (CREATE TABLE AS); nothing for a
    snapshot that reads its relation in place (``needs_copy``)."""
    if not snapshot.materialized:
        return
    select = ", ".join(plpy.quote_ident(c.name) for c in cols)
    plpy.execute(f"CREATE TABLE {snapshot.table} AS SELECT {select} FROM {source}")  # noqa: S608 - quoted identifiers and our integer id


def load(table: str, cols: list[Column], widths: dict[str, int] | None = None,
         categories: dict[str, list[str]] | None = None,
         labels: tuple[str, ...] = ()) -> tuple[int, dict[str, np.ndarray]]:
    """(row count, column name -> float64 values with NaN for NULL), one scan of ``table``.

    An array column becomes one entry per element (``element_names``); ``widths`` gives their
    number where known (a snapshot's stored widths), else every array must have the same.

    With pgml._float8_array_bytes (``float8_bytes.raw_arrays``) the scalar columns come as one
    row-major matrix, copied once into contiguous columns (``Columns``); ``gather`` copies rows a
    split needs from the matrix, once, into native matrices. Otherwise (the float8send form)
    the arrays are read-only big-endian views over the bytes the query returned, and
    ``gather`` converts as it takes.

    A text column of ``categories`` (name -> the snapshot's sorted values) loads as codes
    (inference/encoding.py): NULL 0 (NaN for a label, which must not be NULL), a known value
    its 1-based position, an unknown one NaN.
    """
    parts = ["count(*)::int8 AS n"]
    raw = raw_arrays()
    scalars: list[tuple[int, str]] = []  # with raw arrays: (column index, float8 SQL) of the
    # columns read together as one row-major matrix, one ARRAY[...] per row (see Columns)
    categories = categories or {}
    params: list[list[str]] = []
    widths = dict(widths or {})
    for c in cols:
        if c.is_array and c.name not in widths:
            widths[c.name] = array_width(table, c)
    estimate = _estimated_rows(table)
    matrix_read = raw and estimate * max(len(cols), 1) <= MATRIX_VALUES
    for i, c in enumerate(cols):
        value = plpy.quote_ident(c.name)
        if c.is_array:  # each row's elements in storage order; a NULL array as NULL elements
            elem = "e::int::float8" if c.elem_oid == _BOOL else "e::float8"
            nulls = f"decode(repeat('7ff8000000000000', {int(widths[c.name])}), 'hex')"
            inner = (f"SELECT string_agg(coalesce(float8send({elem}), {NAN_BYTES}), ''::bytea"  # noqa: S608 - quoted
                     f" ORDER BY o) FROM unnest({value}) WITH ORDINALITY u(e, o)")
            parts.append(f"string_agg(coalesce(({inner}), {nulls}), ''::bytea) AS c{i}")
            continue
        if c.name in categories:
            params.append(list(categories[c.name]))
            found = f"array_position(${len(params)}::text[], {value}::text COLLATE \"C\")"
            value = (f"{found}::float8" if c.name in labels
                     else f"(CASE WHEN {value} IS NULL THEN 0 ELSE {found} END)::float8")
        else:
            value = f"{value}::int::float8" if c.base_oid == _BOOL else f"{value}::float8"
        if matrix_read:
            scalars.append((i, value))
            continue
        parts.append(f"{float8_column_sql(value, raw)} AS c{i}")
    if scalars:
        parts.append("pgml._float8_array_bytes(array_agg(ARRAY["
                     + ", ".join(value for _, value in scalars) + "])) AS m")
    middle = None
    if len(parts) == 2 and scalars and not params and estimate >= float8_bytes.HALVES_MIN_ROWS:
        middle = float8_bytes.middle_block(table)
    # One process scans each part, in physical order: from PostgreSQL 16 string_agg can run in
    # parallel workers (so can array_agg), whose partial results arrive in no fixed order (a
    # retrain would split other rows). Two halves (``read_halves``) are each one such scan.
    settings = {"synchronize_seqscans": "off", "max_parallel_workers_per_gather": "0"}
    if middle is not None:
        settings.update(float8_bytes.HALVES_SETTINGS)
    previous = {name: _set(name, value) for name, value in settings.items()}
    try:
        if middle is not None:
            n, matrix = read_halves(table, parts, middle, len(scalars))
            row = {"n": n}
        else:
            sql = f"SELECT {', '.join(parts)} FROM {table}"  # noqa: S608 - quoted identifiers
            if params:
                row = plpy.execute(plpy.prepare(sql, ["text[]"] * len(params)), params)[0]
            else:
                row = plpy.execute(sql)[0]
    finally:
        for name, value in previous.items():
            _set(name, value)
    n = row["n"]
    out = Columns()
    in_matrix: dict[int, int] = {}
    if scalars:
        if middle is None:
            matrix = aligned(float8_array(row["m"], (n, len(scalars))))
        by_column = list(transpose(matrix))  # one view object per column: gather checks them
        in_matrix = {i: j for j, (i, _) in enumerate(scalars)}
        out.rows = (matrix, {cols[i].name: (j, by_column[j]) for j, (i, _) in enumerate(scalars)})
    for i, c in enumerate(cols):
        if i in in_matrix:
            out[c.name] = by_column[in_matrix[i]]
            continue
        if not c.is_array:
            out[c.name] = float8_column(row[f"c{i}"], n, raw)
            continue
        data = np.frombuffer(row[f"c{i}"], dtype=">f8") if n else np.empty(0)
        width = int(widths[c.name])
        matrix = data.reshape(n, width) if n else np.empty((0, width))
        for j, name in enumerate(element_names(c.name, width)):
            out[name] = matrix[:, j]
    return n, out


# Values one array_agg may collect: it fails at 2^27 slots (1 GB of Datums), so a relation
# whose planner estimate of rows x columns exceeds half of the last size that fits (a 2x margin
# for stale statistics) is read one array per column, each then holding one value per row.
MATRIX_VALUES = 1 << 25


def _estimated_rows(table: str) -> float:
    """The planner's row estimate of ``table`` (EXPLAIN plans the scan, for views too, without
    running it): the matrix read takes it when it times the columns is at most MATRIX_VALUES."""
    plan = plpy.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table}")[0]["QUERY PLAN"]  # noqa: S608 - quoted
    rows = json.loads(plan)[0]["Plan"]["Plan Rows"] if isinstance(plan, str) else \
        plan[0]["Plan"]["Plan Rows"]
    return float(rows)


class Columns(dict):
    """``load``'s columns by name, and, where they were read as one row-major matrix, that
    matrix: ``rows = (matrix, {name: (column, the column's array in this dict)})``.

    One ``array_agg(ARRAY[...])`` per scan costs less backend CPU than one ``array_agg`` per
    column (0.27-0.30 s against 0.36-0.45 s for 1M x 11 in the same run: one aggregate call per
    row instead of eleven). The matrix is then copied once, by blocks, into contiguous aligned
    columns for the statistics and everything else (0.03 s), and ``gather`` takes a split's
    rows from the matrix itself: whole rows, one or two cache lines each, instead of a random
    read per value (0.06 s against 0.13 s for the 1M x 10 train and test matrices). Only
    where the relation fits one array (``MATRIX_VALUES``); bigger ones: one array per column.
    """

    rows: tuple[np.ndarray, dict[str, tuple[int, np.ndarray]]] | None = None


def categories(table: str, c: Column) -> list[str]:
    """A text column's distinct non-NULL values, in byte order (the codes' order)."""
    col = plpy.quote_ident(c.name)
    row = plpy.execute(f"SELECT array_agg(DISTINCT {col}::text COLLATE \"C\") AS v"  # noqa: S608 - quoted
                       f" FROM {table} WHERE {col} IS NOT NULL")[0]
    return sorted(row["v"] or [])


def array_width(table: str, c: Column) -> int:
    """The number of elements every non-NULL array of column ``c`` holds (all must agree)."""
    col = plpy.quote_ident(c.name)
    row = plpy.execute(f"SELECT min(cardinality({col})) AS lo, max(cardinality({col})) AS hi"  # noqa: S608 - quoted
                       f" FROM {table}")[0]
    if row["lo"] is None:
        raise InvalidData(f"array column {c.name!r} has no values; it cannot be a feature")
    if row["lo"] != row["hi"]:
        raise InvalidData(
            f"array column {c.name!r} holds arrays of {row['lo']} to {row['hi']} elements; every "
            "row must have the same number of elements to be used as features")
    return int(row["lo"])


_GATHER_BLOCK = 1 << 12  # rows per block (4k: 0.127 s for 1M x 10 against 0.149 s at 32k)


def gather(values: dict[str, np.ndarray], names: list[str], rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of the columns ``names`` as one C-ordered float64 matrix.

    A big-endian column (the float8send form) is converted once, sequentially: fancy-indexing
    it directly converts value by value (0.15-0.29 s against 0.10-0.12 s for 750k x 10).
    ``mode="clip"`` (the rows are in range by construction) lets ``take`` write into the
    strided output column directly; the default mode buffers every column's result in a
    fresh array first and copies it over. The rows go in blocks so that the block of the
    output that every column writes into is still in the caches when the next column
    writes its stride.
    """
    rows = np.asarray(rows, dtype=np.intp)
    found = getattr(values, "rows", None)
    if found is not None and len(names) > 1:
        matrix, index = found
        where = [index.get(name) for name in names]
        if all(w is not None and values.get(name) is w[1] for name, w in zip(names, where,
                                                                              strict=True)):
            taken = matrix.take(rows, axis=0, mode="clip")
            js = [w[0] for w in where]
            if js == list(range(js[0], js[0] + len(js))):  # a run of columns: a slice
                return np.ascontiguousarray(taken[:, js[0]:js[0] + len(js)])
            return np.ascontiguousarray(taken[:, js])
    cols = [np.asarray(values[name], dtype=np.float64) for name in names]
    out = np.empty((len(rows), len(names)))
    for start in range(0, len(rows), _GATHER_BLOCK):
        block, part = rows[start:start + _GATHER_BLOCK], out[start:start + _GATHER_BLOCK]
        for j, col in enumerate(cols):
            np.take(col, block, out=part[:, j], mode="clip")
    return out


def _set(name: str, value: str) -> str:
    """SET LOCAL name = value; returns the value it had."""
    return store.query("SELECT current_setting($1) AS v, set_config($1, $2, true)",
                       ("text", "text"), (name, value))[0]["v"]
