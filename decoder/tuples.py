"""TupleData: one row image inside Insert, Update and Delete.

Layout (PostgreSQL docs, "Logical Replication Message Formats")::

    Int16 ncols
    ncols x column:
      Byte1 kind         'n' NULL             (nothing follows)
                         'u' unchanged TOAST  (nothing follows: the value was not logged)
                         't' text             Int32 length, Byte[length] text output form
                         'b' binary           Int32 length, Byte[length] binary send form
                                              (with the ``binary 'true'`` option, for types
                                              that have a send function)

Why lazy: splitting a row into per-column byte slices is cheap, turning them into Python
objects is not, and the apply path mostly does not need to (binary values are exactly COPY
BINARY's field format). So decoding keeps ``kinds`` and ``raw``; ``values()`` converts on
demand through the type registry.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from decoder.errors import DecodeError, ValueConversionError
from decoder.types import CONVERSION_ERRORS, REGISTRY
from decoder.types.registry import describe

if TYPE_CHECKING:
    from decoder.messages import Relation

_INT32 = struct.Struct(">i").unpack_from
_UINT16 = struct.Struct(">H").unpack_from


class _UnchangedToast:
    """The type of UNCHANGED_TOAST: a value the server did not send because it did not change."""

    __slots__ = ()
    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


#: Stands for a column sent as 'u': an out-of-line (TOASTed) value that did not change.
#: Never None, so it cannot be mistaken for SQL NULL; the stored value must be kept.
UNCHANGED_TOAST: Any = _UnchangedToast()

@dataclass(frozen=True, slots=True)
class TupleData:
    """A row image: one kind letter and one raw byte string per column."""

    kinds: str  # one char per column: 'n' null, 'u' unchanged TOAST, 't' text, 'b' binary
    raw: tuple[bytes | None, ...]  # each column's bytes exactly as sent; None for 'n'/'u'

    def values(self, relation: Relation) -> tuple:
        """Python values by the relation's column type OIDs.

        None for NULL, UNCHANGED_TOAST for 'u'. Raises ValueConversionError (a DecodeError)
        naming the column when one value has no Python form.
        """
        loaders = relation._loaders
        if loaders is None:
            loaders = tuple(REGISTRY.loaders(c.type_oid) for c in relation.columns)
            object.__setattr__(relation, "_loaders", loaders)
        if len(loaders) != len(self.raw):
            raise DecodeError("TupleData", 0, f"row has {len(self.raw)} columns but relation "
                              f"{relation.namespace}.{relation.name} has {len(loaders)}")
        out = []
        append = out.append
        try:
            for kind, raw, (text, binary) in zip(self.kinds, self.raw, loaders, strict=True):
                if kind == "t":
                    append(text(raw))
                elif kind == "b":
                    append(binary(raw))
                elif kind == "n":
                    append(None)
                else:
                    append(UNCHANGED_TOAST)
        except CONVERSION_ERRORS as exc:
            col = relation.columns[len(out)]
            raise ValueConversionError(col.type_oid, describe(exc),
                                       column=col.name) from exc
        return tuple(out)


def read_tuple(buf: bytes, pos: int, message_type: str) -> tuple[TupleData, int]:
    """Split the TupleData starting at ``buf[pos]``; return it and the offset after it."""
    n = len(buf)
    if pos + 2 > n:
        raise DecodeError(message_type, pos, "truncated: TupleData needs Int16 ncols")
    (ncols,) = _UINT16(buf, pos)
    pos += 2
    kinds = bytearray(ncols)
    raw: list[bytes | None] = [None] * ncols
    for i in range(ncols):
        if pos >= n:
            raise DecodeError(message_type, pos,
                              f"truncated: TupleData ends before column {i + 1} of {ncols}")
        kind = buf[pos]
        if kind == 0x74 or kind == 0x62:  # 't', 'b'
            if pos + 5 > n:
                raise DecodeError(message_type, pos + 1,
                                  f"truncated: column {i + 1} needs an Int32 length")
            (length,) = _INT32(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if length < 0 or pos > n:
                raise DecodeError(message_type, start - 4,
                                  f"column {i + 1} length {length} does not fit the "
                                  f"{n - start} bytes left")
            raw[i] = buf[start:pos]
        elif kind == 0x6E or kind == 0x75:  # 'n', 'u'
            pos += 1
        else:
            raise DecodeError(message_type, pos, f"column {i + 1} has unknown kind "
                              f"{bytes([kind])!r} (expected n, u, t or b)")
        kinds[i] = kind
    return TupleData(kinds.decode("ascii"), tuple(raw)), pos
