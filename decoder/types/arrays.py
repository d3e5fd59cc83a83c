"""Arrays of any registered element type, text and binary forms, as (nested) lists.

Text form: ``{1,2,NULL,"a \\"b\\""}``, optionally prefixed by bounds ``[0:2]=`` when the
lower bound is not 1; nested braces for more dimensions. Binary form (array_send)::

    Int32 ndim, Int32 has_nulls, UInt32 element_oid,
    ndim x (Int32 size, Int32 lower_bound),
    size1*size2*... x (Int32 length (-1 = NULL), Byte[length] element binary form)

Lower bounds are dropped: a Python list always starts at 0. Parsing works on the bytes
directly (UTF-8 never puts ``{ } , " \\`` inside a multi-byte character), so each element
reaches its loader as bytes, exactly as a scalar would.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

Loader = Callable[[bytes], Any]

_HEAD = struct.Struct(">iiI")
_DIM = struct.Struct(">ii")
_I4 = struct.Struct(">i").unpack_from
_MAXDIM = 6  # PostgreSQL's MAXDIM


def text_array_loader(element: Loader) -> Loader:
    def load(raw: bytes) -> list[Any]:
        return _parse_text(raw, element)

    return load


def binary_array_loader(element: Loader, element_oid: int) -> Loader:
    def load(raw: bytes) -> list[Any]:
        return _parse_binary(raw, element, element_oid)

    return load


def _parse_text(raw: bytes, element: Loader) -> list[Any]:
    n = len(raw)
    i = 0
    if raw[:1] == b"[":  # explicit bounds, e.g. [0:2]={...}
        i = raw.find(b"=") + 1
        if i == 0:
            raise ValueError("array bounds without '='")
    if raw[i:i + 1] != b"{":
        raise ValueError(f"array text must start with '{{', got {raw[:20]!r}")
    root: list[Any] | None = None
    stack: list[list[Any]] = []
    while i < n:
        c = raw[i]
        if c == 0x7B:  # {
            if not stack and root is not None:
                raise ValueError("text after the end of the array")
            new: list[Any] = []
            if stack:
                stack[-1].append(new)
            else:
                root = new
            stack.append(new)
            i += 1
        elif c == 0x7D:  # }
            if not stack:
                raise ValueError("unbalanced '}' in array")
            stack.pop()
            i += 1
        elif c == 0x2C:  # ,
            i += 1
        elif not stack:
            raise ValueError("text after the end of the array")
        elif c == 0x22:  # quoted element: backslash escapes the next byte
            value = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted array element")
                c = raw[i]
                if c == 0x22:
                    i += 1
                    break
                if c == 0x5C:
                    i += 1
                    if i >= n:
                        raise ValueError("array text ends inside an escape")
                    c = raw[i]
                value.append(c)
                i += 1
            stack[-1].append(element(bytes(value)))
        else:
            j = i
            while j < n and raw[j] not in (0x2C, 0x7D):
                j += 1
            token = raw[i:j]
            stack[-1].append(None if token.upper() == b"NULL" else element(token))
            i = j
    if stack or root is None:
        raise ValueError("unterminated array text")
    return root


def _parse_binary(raw: bytes, element: Loader, element_oid: int) -> list[Any]:
    ndim, _flags, oid = _HEAD.unpack_from(raw)
    if ndim == 0:
        if len(raw) != 12:
            raise ValueError("bytes after an empty array")
        return []
    if not 0 < ndim <= _MAXDIM:
        raise ValueError(f"array has {ndim} dimensions (0..{_MAXDIM} allowed)")
    if oid != element_oid:
        raise ValueError(f"array element OID {oid}, expected {element_oid}")
    pos = 12
    dims = []
    total = 1
    for _ in range(ndim):
        size, _lower = _DIM.unpack_from(raw, pos)
        pos += 8
        if size < 0:
            raise ValueError(f"negative array dimension {size}")
        dims.append(size)
        total *= size
    n = len(raw)
    if total * 4 > n - pos:
        raise ValueError(f"{total} array elements cannot fit in {n - pos} bytes")
    flat: list[Any] = []
    append = flat.append
    for _ in range(total):
        (length,) = _I4(raw, pos)
        pos += 4
        if length == -1:
            append(None)
            continue
        end = pos + length
        if length < 0 or end > n:
            raise ValueError(f"array element length {length} runs past the end")
        append(element(raw[pos:end]))
        pos = end
    if pos != n:
        raise ValueError(f"{n - pos} bytes after the last array element")
    for size in reversed(dims[1:]):  # fold the flat list into nested lists
        flat = [flat[k:k + size] for k in range(0, len(flat), size)]
    return flat
