"""Row images to PostgreSQL's binary wire formats: a COPY BINARY stream, a 1-D binary array.

Why here, beside the decoder: with ``binary 'true'`` a TupleData's raw column bytes are
exactly COPY BINARY's field format, so writing rows on the target is only adding length
words around what was decoded. These are the pure-Python forms; decoder._speedups has the
compiled ones with the same behaviour, and ``decoder.accel`` says which one runs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" * 2
COPY_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_LEN = struct.Struct(">i").pack
_NCOLS = struct.Struct(">h").pack
_INT4_FIELD = struct.Struct(">ii").pack
_ARRAY_HEAD = struct.Struct(">iiIii").pack  # ndim, has nulls, element type, length, lower bound

Image = tuple[bytes | None, ...]


def binary_array(elem_oid: int, values: Sequence[bytes | None]) -> bytes:
    """A one-dimensional array in binary wire format from raw binary values (None = NULL)."""
    fields = [_NULL if v is None else _LEN(len(v)) + v for v in values]
    return _ARRAY_HEAD(1, None in values, elem_oid, len(fields), 1) + b"".join(fields)


def column_arrays(images: Sequence[Image], positions: Sequence[int],
                  elem_oids: Sequence[int]) -> list[bytes]:
    """For each position, the binary array of that column across the row images (a run's
    keys or columns as ``= ANY($1)`` / ``unnest($1, ...)`` parameters)."""
    if len(elem_oids) != len(positions):
        raise ValueError("one element oid per position")
    columns = list(zip(*images, strict=True))
    if not images:
        return [binary_array(oid, ()) for oid in elem_oids]
    return [binary_array(oid, columns[i]) for i, oid in zip(positions, elem_oids, strict=True)]


def _fields(raw: Image) -> bytes:
    return b"".join([_NULL if v is None else _LEN(len(v)) + v for v in raw])


def copy_rows(rows: Sequence[Any], extra: bool = False) -> bytes:
    """A complete COPY BINARY stream of ``rows``: images (tuples of bytes or None), or
    (op, n, image) when ``extra`` (two leading int4 columns). Plain rows all take the first
    row's column count."""
    out = [COPY_HEADER]
    append = out.append
    if extra:
        for op, n, raw in rows:
            append(_NCOLS(len(raw) + 2) + _INT4_FIELD(4, op) + _INT4_FIELD(4, n) + _fields(raw))
    else:
        ncols = None
        for raw in rows:
            if ncols is None:
                ncols = _NCOLS(len(raw))
            append(ncols + _fields(raw))
    append(COPY_TRAILER)
    return b"".join(out)
