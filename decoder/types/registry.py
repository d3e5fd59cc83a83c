"""Value conversion by type OID: one (text loader, binary loader) pair per type.

Why a registry (as psycopg's adapters map): the decoder and its callers never branch on
type names; a family module supplies loaders, the registry maps OIDs to them, and an OID
nobody registered comes back unconverted (str for text, bytes for binary) instead of
failing, because a replication stream carries whatever types the user's tables have.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from decoder.errors import ValueConversionError
from decoder.types.arrays import binary_array_loader, text_array_loader

Loader = Callable[[bytes], Any]

#: A relation's conversion plan, cached on it (see tuples._plan): (text loaders, binary
#: loaders, 't' * ncols, 'b' * ncols).
LoaderPlan = tuple[tuple[Loader, ...], tuple[Loader, ...], str, str]

#: What a loader may raise on bytes that do not match its type; turned into
#: ValueConversionError at the boundary so callers see one error class.
CONVERSION_ERRORS = (ValueError, ArithmeticError, IndexError, KeyError, TypeError,
                     struct.error, RecursionError)


def _raw_text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _raw_binary(raw: bytes) -> bytes:
    return raw


UNKNOWN: tuple[Loader, Loader] = (_raw_text, _raw_binary)


def describe(exc: BaseException) -> str:
    """A short reason for a failed conversion, for ValueConversionError messages."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TypeRegistry:
    """OID -> (text loader, binary loader); unknown OIDs get the raw-value pair."""

    def __init__(self) -> None:
        self._loaders: dict[int, tuple[Loader, Loader]] = {}
        self.names: dict[int, str] = {}

    def register(self, oid: int, name: str, text: Loader, binary: Loader) -> None:
        """Load ``oid`` with these functions (bytes -> value). Register before decoding:
        a Relation caches its loaders on its first ``TupleData.values()``."""
        self._loaders[oid] = (text, binary)
        self.names[oid] = name

    def register_array(self, array_oid: int, element_oid: int) -> None:
        """An array type whose elements load like ``element_oid`` (registered first)."""
        text, binary = self._loaders[element_oid]
        self.register(array_oid, self.names[element_oid] + "[]", text_array_loader(text),
                      binary_array_loader(binary, element_oid))

    def loaders(self, oid: int) -> tuple[Loader, Loader]:
        return self._loaders.get(oid, UNKNOWN)

    def to_python(self, type_oid: int, raw: bytes | None, binary: bool) -> Any:
        """One value in its text (``binary=False``) or binary form as a Python value."""
        if raw is None:
            return None
        try:
            return self._loaders.get(type_oid, UNKNOWN)[1 if binary else 0](raw)
        except CONVERSION_ERRORS as exc:
            name = self.names.get(type_oid, "unknown type")
            form = "binary" if binary else "text"
            raise ValueConversionError(type_oid, f"{name} {form} value "
                                       f"{bytes(raw[:40])!r}: {describe(exc)}") from exc
