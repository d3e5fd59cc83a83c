"""PostgreSQL's binary COPY format, written from numpy columns without a Python object per value.

Layout (PostgreSQL docs, "COPY ... Binary Format"; every integer big-endian)::

    header   b"PGCOPY\\n\\xff\\r\\n\\0"  flags int32 (0)  extension length int32 (0)
    row      field count int16, then per field: length int32 (-1: NULL, no bytes) + bytes
    trailer  int16 -1

A field's bytes are its type's ``send`` output, which the column type's ``recv`` reads back:
float8 is 8 bytes of IEEE 754; float8[] is an array header (ndim int32, has-nulls int32,
element type oid int32, then per dimension size int32 and lower bound int32) followed by each
element as a length-prefixed field. A key column read with its type's ``send`` function
(inference/bulk.py) is therefore copied through byte for byte, whatever its type.

Two kinds of field, both given for every row at once:

- ``Fixed``: every row's field (length header included) has the same size -- a float8
  column, a float8[] of K elements, an int8 key without NULLs. An (n, width) uint8 matrix; a
  table of only these is one (n, row width) matrix filled column slice by column slice.
- ``Varying``: per-row lengths (-1 for NULL) and the concatenated bytes -- a text key, or a key
  column with NULLs. Placed with one vectorised scatter (``np.repeat`` of the destination
  offsets), still no loop over rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
TRAILER = b"\xff\xff"
FLOAT8_OID = 701


@dataclass(frozen=True)
class Fixed:
    """Every row's complete field (length header + bytes): an (n, width) uint8 matrix."""
    cells: np.ndarray


@dataclass(frozen=True)
class Varying:
    """Per-row byte lengths (int, -1 for NULL) and every non-NULL value's bytes, concatenated."""
    lengths: np.ndarray
    data: bytes


def float8_field(values: np.ndarray) -> Fixed:
    """A float8 column (NaN stays a NaN value, not NULL)."""
    n = len(values)
    cells = np.empty((n, 12), dtype=np.uint8)
    cells[:, :4] = _be(8, ">i4")
    cells[:, 4:] = np.ascontiguousarray(values, dtype=">f8").view(np.uint8).reshape(n, 8)
    return Fixed(cells)


def float8_array_field(matrix: np.ndarray) -> Fixed:
    """A float8[] column of one-dimensional arrays with the K values of each row of ``matrix``."""
    n, k = matrix.shape
    head = np.array([20 + 12 * k, 1, 0, FLOAT8_OID, k, 1], dtype=">i4").view(np.uint8)
    cells = np.empty((n, 24 + 12 * k), dtype=np.uint8)
    cells[:, :24] = head
    elements = cells[:, 24:].reshape(n, k, 12)
    elements[:, :, :4] = _be(8, ">i4")
    elements[:, :, 4:] = np.ascontiguousarray(matrix, dtype=">f8").view(np.uint8).reshape(n, k, 8)
    return Fixed(cells)


def sent_field(lengths: np.ndarray, data: bytes) -> Fixed | Varying:
    """A column read as its type's send output: ``Fixed`` where every row has the same length
    and none is NULL (the common integer key), else ``Varying``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if int(np.maximum(lengths, 0).sum()) != len(data):
        raise ValueError(f"{len(data)} bytes for values of {np.maximum(lengths, 0).sum()}")
    if n and lengths.min() == lengths.max() >= 0:
        width = int(lengths[0])
        cells = np.empty((n, 4 + width), dtype=np.uint8)
        cells[:, :4] = _be(width, ">i4")
        cells[:, 4:] = np.frombuffer(data, dtype=np.uint8).reshape(n, width)
        return Fixed(cells)
    return Varying(lengths, data)


def encode(n: int, fields: list[Fixed | Varying]) -> bytes:
    """The complete binary COPY stream of ``n`` rows with ``fields`` as its columns, in order."""
    return HEADER + rows(n, fields).tobytes() + TRAILER


def write(out, n: int, fields: list[Fixed | Varying]) -> None:
    """``encode`` into the binary file ``out``, without a bytes copy of the rows."""
    out.write(HEADER)
    body = rows(n, fields)
    if body.size:
        out.write(memoryview(body.reshape(-1)))
    out.write(TRAILER)


def rows(n: int, fields: list[Fixed | Varying]) -> np.ndarray:
    """The stream's rows, between HEADER and TRAILER, as uint8 (a 2-D matrix when every field
    is ``Fixed``: one row of the table per row of the matrix)."""
    count = _be(len(fields), ">i2")
    if all(isinstance(f, Fixed) for f in fields):
        width = 2 + sum(f.cells.shape[1] for f in fields)
        matrix = np.empty((n, width), dtype=np.uint8)
        matrix[:, :2] = count
        at = 2
        for f in fields:
            matrix[:, at:at + f.cells.shape[1]] = f.cells
            at += f.cells.shape[1]
        return matrix
    sizes = [np.full(n, f.cells.shape[1], dtype=np.int64) if isinstance(f, Fixed)
             else 4 + np.maximum(f.lengths, 0) for f in fields]
    row_size = 2 + np.sum(sizes, axis=0) if n else np.zeros(0, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int64)
    if n:
        np.cumsum(row_size[:-1], out=starts[1:])
    out = np.empty(int(row_size.sum()) if n else 0, dtype=np.uint8)
    _scatter_fixed(out, starts, count.reshape(1, 2).repeat(n, axis=0))
    at = starts + 2
    for f, size in zip(fields, sizes, strict=True):
        if isinstance(f, Fixed):
            _scatter_fixed(out, at, f.cells)
        else:
            head = np.asarray(f.lengths, dtype=">i4").view(np.uint8).reshape(n, 4)
            _scatter_fixed(out, at, head)
            present = np.maximum(f.lengths, 0)
            data = np.frombuffer(f.data, dtype=np.uint8)
            if len(data):
                first = np.zeros(n, dtype=np.int64)
                np.cumsum(present[:-1], out=first[1:])
                out[np.repeat(at + 4 - first, present) + np.arange(len(data))] = data
        at = at + size
    return out


def _be(value: int, dtype: str) -> np.ndarray:
    """The big-endian bytes of one integer (a numpy scalar is always native-endian)."""
    return np.array([value], dtype=dtype).view(np.uint8)


def _scatter_fixed(out: np.ndarray, at: np.ndarray, cells: np.ndarray) -> None:
    """cells[i] into out[at[i]:at[i] + width] for every row i."""
    width = cells.shape[1]
    if width:
        out[(at[:, None] + np.arange(width)).reshape(-1)] = cells.reshape(-1)
