"""predict_relation's read: the relation in chunks of rows, every chunk under one snapshot.

Why chunks: scoring chunk k in a worker thread while the backend reads chunk k+1
(bulk_pipeline.py) needs the rows to arrive in pieces; one aggregate over the whole relation
returns nothing before the scan ends.

Why one query: in a VOLATILE function every SPI statement takes a new snapshot under READ
COMMITTED, so one query per chunk could see a row twice or not at all when another session
commits in between. Instead one query, opened as an SPI cursor (its portal keeps the snapshot
of its start for every fetch), returns one row per chunk::

    SELECT c.* FROM generate_series(0, <last>, <step>) AS pgml_bulk_chunk(lo)
    CROSS JOIN LATERAL (SELECT count(*), <aggregates>  FROM <relation> AS pgml_bulk_rows
                        WHERE ctid >= (lo,0) AND ctid < (lo + step,0)) c

Each lateral subquery is a TID range scan (PostgreSQL 14+) of ``step`` heap blocks, the last
one open-ended so rows in blocks added since the size was looked up are read too; a fetch
runs exactly one of them. Every row lives in exactly one block, so each row is read once;
the uncommitted rows of the caller's own transaction are seen as by any of its queries. A
cursor's plan is never parallel, so aggregates see the rows in physical order.

Aggregates per chunk: the features as ONE aggregate, each row's values as an array
(``array_agg(ARRAY[coalesce(f1::float8, 'NaN'), ...])``: a 2-D float8[] whose bytes reach
PL/Python through pgml._float8_array_bytes and numpy reads as the (rows, features) matrix);
one aggregate call per row instead of one per value. Measured for 1M rows x 10 (backend CPU,
one run, load ~3): 0.31 s in 16 chunks, against 0.40 s for one aggregate per column in the
same chunks and 0.44 s for the 2-D form in one piece (its arrays grow to 80 MB; one piece also
meets the 1 GB array limit near 6M rows x 10 -- a chunk stays under CHUNK_BYTES). Without
pgml._float8_array_bytes, one ``string_agg(float8send(...))`` per column
(float8_bytes.float8_column_sql). Each key: its type's send output concatenated (for binary
COPY, copybin.sent_field) with the lengths -- skipped for a fixed-width key declared NOT NULL,
where every length is the width -- or, for the array write path, ``array_agg(key::text)``.

Relations that are not plain heap tables or materialized views (views, foreign and partitioned
tables, other table access methods) have no block ranges: they are read as one chunk. Chunk
size: about ``pgml.bulk_chunk_rows`` rows (default CHUNK_ROWS; 0 = one chunk), converted to
blocks from pg_class's rows per page, or by counting the first few blocks' rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import plpy

from inference import float8_bytes, store

# Rows per chunk: measured for 1M rows x 10 features at load ~4.5 (docs/benchmarks.md), 131k
# rows (8 chunks) 0.78 s wall against 1.29 s for 65k (16 chunks) and 0.97 s for 262k: each
# chunk costs GIL hand-overs between the threads (bulk_pipeline), too few chunks overlap less.
CHUNK_ROWS = 131_072
CHUNK_BYTES = 128 << 20  # a chunk's features, at most (rows x features x 8 bytes)
SAMPLE_BLOCKS = 8
_LAST_BLOCK = 4294967295  # InvalidBlockNumber: above every real block


@dataclass(frozen=True)
class Chunk:
    """``n`` rows: per key column its copybin field (sent) or its values as text, and the
    features as an (n, features) float64 matrix (NaN for NULL)."""
    n: int
    keys: list
    X: np.ndarray


@dataclass(frozen=True)
class Blocks:
    """Chunk bounds: block ranges of ``step`` blocks from 0 to ``last`` (the last chunk's
    first block); None (``read_blocks``) means one chunk without bounds."""
    step: int
    last: int
    rows: int  # estimated rows in the relation (for the native scorer's size rule)


def chunk_rows(features: int) -> int:
    """``SET pgml.bulk_chunk_rows = N``, else CHUNK_ROWS; 0 or less: one chunk. Capped so
    that a chunk's feature array stays near CHUNK_BYTES (far below PostgreSQL's 1 GB)."""
    value = store.query("SELECT current_setting('pgml.bulk_chunk_rows', true) AS v")[0]["v"]
    try:
        rows = int(value) if value not in (None, "") else CHUNK_ROWS
    except ValueError:
        rows = CHUNK_ROWS
    return min(rows, max(1024, CHUNK_BYTES // (8 * max(1, features)))) if rows > 0 else rows


def plan_blocks(oid: int, source: str, rows_per_chunk: int) -> Blocks | None:
    """Chunk bounds for the relation, or None to read it as one chunk."""
    found = store.query(
        "SELECT c.relkind IN ('r', 'm') AND a.amname = 'heap' AS heap, c.reltuples::float8 AS"
        " tuples, c.relpages::int8 AS pages, pg_relation_size(c.oid)"
        " / current_setting('block_size')::int8 AS blocks FROM pg_class c"
        " LEFT JOIN pg_am a ON a.oid = c.relam WHERE c.oid = $1::oid", ("int8",), (oid,))[0]
    blocks = int(found["blocks"] or 0)
    if not found["heap"] or rows_per_chunk <= 0 or blocks == 0:
        return None
    if found["pages"] > 0 and found["tuples"] > 0:
        per_block = found["tuples"] / found["pages"]
    else:  # never vacuumed or analyzed: count the first blocks' rows
        sample = min(blocks, SAMPLE_BLOCKS)
        counted = plpy.execute(f"SELECT count(*)::int8 AS n FROM {source}"  # noqa: S608 - quoted
                               f" WHERE ctid < '({sample},0)'::tid")[0]["n"]
        per_block = counted / sample if counted else 100.0
    step = max(1, round(rows_per_chunk / per_block))
    if blocks <= step:
        return None
    return Blocks(step=step, last=(blocks - 1) // step * step, rows=int(per_block * blocks))


def read(source: str, keys, features, categories: dict[str, list[str]] | None,
         sent: bool, blocks: Blocks | None, dtype=np.float64) -> Iterator[Chunk]:
    """The relation's rows, chunk after chunk (empty chunks skipped), through one cursor;
    the features as ``dtype`` (float32 for compiled trees, which take it: the conversion
    then happens here, in the backend's thread, not in the scoring worker)."""
    raw = float8_bytes.raw_arrays()
    parts, params = _aggregates(keys, features, categories, sent, raw)
    rows = f"SELECT {', '.join(parts)} FROM {source} AS pgml_bulk_rows"  # noqa: S608 - quoted
    if blocks is None:
        sql = rows
    else:
        lo = "pgml_bulk_chunk.lo"
        hi = f"CASE WHEN {lo} >= {blocks.last} THEN {_LAST_BLOCK} ELSE {lo} + {blocks.step} END"
        sql = (f"SELECT c.* FROM generate_series(0, {blocks.last}, {blocks.step})"  # noqa: S608 - integers, quoted names
               f" AS pgml_bulk_chunk(lo) CROSS JOIN LATERAL ({rows}"
               f" WHERE ctid >= ('(' || {lo} || ',0)')::tid"
               f" AND ctid < ('(' || {hi} || ',0)')::tid) c")
    cursor = plpy.cursor(plpy.prepare(sql, ["text[]"] * len(params)), params)
    for row in cursor:
        if row["n"]:
            yield _chunk(row, keys, features, sent, raw, dtype)


def _aggregates(keys, features, categories, sent: bool, raw: bool) -> tuple[list[str], list]:
    """The select list (count, keys, features) and the categories' parameters."""
    parts = ["count(*)::int8 AS n"]
    for i, k in enumerate(keys):
        name = plpy.quote_ident(k.name)
        if not sent:
            parts.append(f"array_agg({name}::text) AS k{i}")
            continue
        send, width = send_function(k)
        parts.append(f"string_agg({send}({name}), ''::bytea) AS k{i}")
        if width > 0 and not k.nullable:
            continue  # every length is the width (_chunk)
        if width > 0:  # a fixed-width type: each length is a constant (or NULL's -1)
            size = width.to_bytes(4, "big").hex()
            parts.append(f"string_agg(CASE WHEN {name} IS NULL THEN '\\xffffffff'::bytea"
                         f" ELSE '\\x{size}'::bytea END, ''::bytea) AS l{i}")
        else:
            parts.append(f"string_agg(int4send(coalesce(octet_length({send}({name})), -1)),"
                         f" ''::bytea) AS l{i}")
    params: list[list[str]] = []
    values = []
    for c in features:
        value = plpy.quote_ident(c.name)
        if categories and c.name in categories:
            params.append(list(categories[c.name]))
            value = (f"(CASE WHEN {value} IS NULL THEN 0 ELSE array_position(${len(params)}"
                     f"::text[], {value}::text) END)::float8")
        else:
            value = f"{value}::int::float8" if c.base_oid == 16 else f"{value}::float8"
        values.append(value)
    if raw:  # one aggregate: each row's features as one array, NULL as NaN
        row = ", ".join(f"coalesce({v}, 'NaN'::float8)" for v in values)
        parts.append(f"pgml._float8_array_bytes(array_agg(ARRAY[{row}]::float8[])) AS x")
    else:
        parts += [f"{float8_bytes.float8_column_sql(v, raw)} AS c{i}" for i, v in enumerate(values)]
    return parts, params


def _matrix(data: bytes, n: int, width: int, dtype=np.float64) -> np.ndarray:
    """The (n, width) float8[] that ``array_agg(ARRAY[...])`` built, as a native matrix of
    ``dtype``: ``float8_bytes.float8_array`` reads the layout (the loader's twin), and the copy
    ``astype`` makes is wanted - the values start 4 bytes off an 8-byte boundary of the
    bytes object, and not every scorer takes an unaligned matrix."""
    return float8_bytes.float8_array(data, (n, width)).astype(dtype)


def _chunk(row, keys, features, sent: bool, raw: bool, dtype) -> Chunk:
    n = row["n"]
    if "x" in row:
        X = _matrix(row["x"], n, len(features), dtype)
    else:
        X = np.empty((n, len(features)), dtype=dtype)
        for i in range(len(features)):
            X[:, i] = float8_bytes.float8_column(row[f"c{i}"], n, raw)
    if not sent:
        return Chunk(n, [row[f"k{i}"] or [] for i in range(len(keys))], X)
    from inference import copybin

    fields = []
    for i in range(len(keys)):
        data = row[f"k{i}"] or b""
        lengths = row.get(f"l{i}")
        if lengths is None:  # NOT NULL and fixed width
            found = np.full(n, len(data) // n, dtype=np.int64)
        else:
            found = np.frombuffer(lengths, dtype=">i4")
        fields.append(copybin.sent_field(found, data))
    return Chunk(n, fields, X)


def send_function(column) -> tuple[str, int]:
    """The key column's type's binary send function, as SQL (regproc quotes it if needed), and
    the byte width of its send output where that is fixed (else 0): a domain's is its base
    type's, and its recv function reads the bytes back in the new table."""
    found = store.query(
        "SELECT typsend::regproc::text AS f, CASE WHEN typtype <> 'e'"  # an enum sends its label
        " AND (typbyval OR oid = ANY ('{uuid,macaddr,interval,point,timetz}'::regtype[]))"
        " THEN typlen ELSE 0 END::int AS w FROM pg_type WHERE oid = $1::oid",
        ("int8",), (column.base_oid,))
    return found[0]["f"], found[0]["w"]
