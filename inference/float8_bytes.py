"""float8 columns as one bytea from the server, read into numpy without a Python object per
value; and a big table read as two halves at once.

Why its own module: how the values travel (the aggregate each column becomes, the layout of
its bytes, the halves' statement) is one concern shared by the training loader
(relations.load) and the bulk scorer's reader (bulk_read); what is loaded, checked and split
is relations.py's.

Two halves. A permanent table of HALVES_MIN_ROWS or more is read by one statement as two
halves of its blocks (ctid ranges) that a parallel worker and the backend aggregate at once:
on 2 cores the load is no longer one process's work (``read_halves``; docs/pgml.md).
"""

from __future__ import annotations

import numpy as np
import plpy

from inference import store
from inference.errors import PgmlError

#: a NULL float8 in the float8send form
NAN_BYTES = r"'\x7ff8000000000000'::bytea"
_TRANSPOSE_BLOCK = 1 << 14


# A plain table estimated at this many rows or more is read as two halves of its blocks, one
# in a parallel worker (``read_halves``): 1M x 11 float8 took 0.26 s of the backend's CPU
# against 0.38 s in one scan, and less wall on 2 cores (numbers in docs/benchmarks.md).
HALVES_MIN_ROWS = 200_000
# For the halves' statement only (SET LOCAL, restored after): the planner then runs the two
# aggregates as a Parallel Append -- one half in the backend, the other in a worker (it plans
# two workers, one of which finds nothing left; with one it keeps the plain Append). No
# table is big enough for a parallel scan, so no half is itself split among processes (a
# partial array_agg, PostgreSQL 16+, would join its parts in no fixed order).
HALVES_SETTINGS = {"max_parallel_workers_per_gather": "2", "parallel_setup_cost": "0",
                   "parallel_tuple_cost": "0", "enable_parallel_append": "on",
                   "min_parallel_table_scan_size": "4TB"}


def middle_block(table: str) -> int | None:
    """The block that starts the second half of a permanent plain table or materialized view
    of two blocks or more; None for anything else (a view, a partitioned, foreign or temporary
    table -- a temporary one cannot be read by a worker -- has no ctid order to halve)."""
    rows = store.query(
        "SELECT c.relkind::text AS kind, c.relpersistence::text AS p,"
        " (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8 AS blocks"
        " FROM pg_class c WHERE c.oid = to_regclass($1)", ("text",), (table,))
    if not rows or rows[0]["kind"] not in ("r", "m") or rows[0]["p"] != "p":
        return None
    blocks = int(rows[0]["blocks"])
    return blocks // 2 if blocks >= 2 else None


def read_halves(table: str, parts: list[str], middle: int,
                 width: int) -> tuple[int, np.ndarray]:
    """(row count, n x width aligned matrix) of ``parts`` (count and the matrix aggregate)
    read as two halves: the blocks before ``middle`` and those from it (no upper bound, so a
    table that has grown since is read whole). Each half is one scan in block order under the
    statement's one MVCC snapshot, so the first half's rows then the second's are the rows of
    one sequential scan in its order; where no worker is free, the backend reads both."""
    select = ", ".join(parts)
    sql = (f"SELECT 0 AS h, {select} FROM {table} WHERE ctid < '({middle},0)'::tid"  # noqa: S608 - quoted identifiers, an integer
           f" UNION ALL SELECT 1 AS h, {select} FROM {table} WHERE ctid >= '({middle},0)'::tid")
    got = sorted(plpy.execute(sql), key=lambda r: r["h"])
    n = sum(int(r["n"]) for r in got)
    matrix = np.empty((n, width))
    start = 0
    for r in got:
        count = int(r["n"])
        if count:
            matrix[start:start + count] = float8_array(r["m"], (count, width))
        start += count
    return n, matrix


_RAW: list[bool] = []  # whether pgml._float8_array_bytes exists (asked once per backend)


def raw_arrays() -> bool:
    """Whether this install has pgml._float8_array_bytes (sql/40_pgml_scale.sql)."""
    if not _RAW:
        found = store.query("SELECT to_regprocedure('pgml._float8_array_bytes(float8[], int4,"
                            " bool)') IS NOT NULL AS ok")
        _RAW.append(bool(found[0]["ok"]))
    return _RAW[0]


def float8_column_sql(value: str, raw: bool) -> str:
    """The aggregate that returns every row's ``value`` (float8 SQL; NULL as NaN) as one bytea:
    the array's own bytes where pgml._float8_array_bytes exists (0.47-0.50 s against
    0.67-0.71 s of backend CPU for 1M x 11, measured in one run; a scan alone is 0.12 s), else
    big-endian ``float8send`` values. ``float8_column`` reads either."""
    if raw:
        return f"pgml._float8_array_bytes(array_agg(coalesce({value}, 'NaN'::float8)))"
    return f"string_agg(coalesce(float8send({value}), {NAN_BYTES}), ''::bytea)"


def float8_column(data: bytes | None, n: int, raw: bool) -> np.ndarray:
    """The n values ``float8_column_sql`` returned, as a read-only float64 view of ``data``.

    A one-dimensional float8[] without NULLs is, after its length word: ndim int32, data
    offset int32 (0: no NULL bitmap), element type oid, the dimension's size and lower bound,
    then the values in the server's byte order (this process's: PL/Python runs inside it).
    """
    if not n:
        return np.empty(0)
    if not raw:
        return np.frombuffer(data, dtype=">f8")
    return float8_array(data, (n,))


def float8_array(data: bytes | None, shape: tuple[int, ...]) -> np.ndarray:
    """A float8[] of ``shape`` from its bytes after the length word (``float8_column``'s layout,
    one size and one lower bound per dimension), NULL elements as NaN: a read-only view of
    ``data`` without NULLs; with NULLs, the bitmap after the lower bounds (bit i, least
    significant first, set where element i is not NULL) places the values that follow the
    data offset (counted from the length word, which ``data`` does not have)."""
    count = int(np.prod(shape))
    if not count:
        return np.empty(shape)
    ndim = len(shape)
    head = [int(v) for v in np.frombuffer(data, dtype="=i4", count=3 + ndim)]
    header = 12 + 8 * ndim
    if head[0] != ndim or head[2] != 701 or tuple(head[3:]) != tuple(shape) or (
            head[1] and head[1] < header + 4 + (count + 7) // 8):
        raise PgmlError(f"unexpected float8[] layout {head} for the shape {shape}")
    if not head[1]:
        return np.frombuffer(data, dtype="=f8", offset=header).reshape(shape)
    present = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=(count + 7) // 8,
                                          offset=header), count=count, bitorder="little")
    out = np.full(count, np.nan)
    out[present.view(bool)] = np.frombuffer(data, dtype="=f8", offset=head[1] - 4)
    return out.reshape(shape)


def aligned(matrix: np.ndarray) -> np.ndarray:
    """``matrix``, copied where its values are not 8-byte aligned: the array's values sit 28
    bytes into the bytes PL/Python hands over, and numpy's ``take`` of unaligned rows costs
    2.4x an aligned one (0.13 against 0.055 s for 1M x 10; the copy: 0.02 s)."""
    return matrix if matrix.flags.aligned else matrix.copy()


def transpose(matrix: np.ndarray) -> np.ndarray:
    """The columns of a row-major matrix as the C-contiguous rows of a new array, copied in
    blocks of rows that stay in the caches (numpy's own transposing copy: 0.045 s for 1M x 11
    against 0.034 s)."""
    n, k = matrix.shape
    out = np.empty((k, n))
    for start in range(0, n, _TRANSPOSE_BLOCK):
        out[:, start:start + _TRANSPOSE_BLOCK] = matrix[start:start + _TRANSPOSE_BLOCK].T
    return out
