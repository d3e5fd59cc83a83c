"""bool, int2/4/8, oid, float4/8 and numeric: text and binary forms.

Binary layouts (the types' send functions): bool 1 byte 0/1; int2/int4/int8/oid
big-endian two's complement (oid unsigned); float4/float8 IEEE 754 big-endian.
numeric::

    Int16 ndigits, Int16 weight, UInt16 sign, Int16 dscale, ndigits x UInt16 digit (0..9999)
    value = sum(digit[i] * 10000 ** (weight - i)); sign 0x0000 +, 0x4000 -, 0xC000 NaN,
    0xD000 +Infinity, 0xF000 -Infinity; dscale = digits shown after the decimal point.

Why Decimal for numeric: it is exact, keeps the declared scale ("1.50" stays 1.50) and
represents NaN and ±Infinity, which float and int cannot all do.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from decimal import Decimal

# Annotated with what each format unpacks to (struct's stubs say tuple[Any, ...]), so the
# loaders type-check without a per-value cast.
_I2: Callable[[bytes], tuple[int]] = struct.Struct(">h").unpack
_I4: Callable[[bytes], tuple[int]] = struct.Struct(">i").unpack
_I8: Callable[[bytes], tuple[int]] = struct.Struct(">q").unpack
_U4: Callable[[bytes], tuple[int]] = struct.Struct(">I").unpack
_F4: Callable[[bytes], tuple[float]] = struct.Struct(">f").unpack
_F8: Callable[[bytes], tuple[float]] = struct.Struct(">d").unpack
_NUMERIC_HEAD = struct.Struct(">hhHh")

_NUMERIC_SPECIAL = {0xC000: Decimal("NaN"), 0xD000: Decimal("Infinity"),
                    0xF000: Decimal("-Infinity")}


def bool_text(raw: bytes) -> bool:
    if raw == b"t":
        return True
    if raw == b"f":
        return False
    raise ValueError(f"bool text must be 't' or 'f', got {raw[:20]!r}")


def bool_binary(raw: bytes) -> bool:
    if raw == b"\x01":
        return True
    if raw == b"\x00":
        return False
    raise ValueError(f"bool binary must be one byte 0 or 1, got {raw[:20]!r}")


def int_text(raw: bytes) -> int:
    return int(raw)


def int2_binary(raw: bytes) -> int:
    return _I2(raw)[0]


def int4_binary(raw: bytes) -> int:
    return _I4(raw)[0]


def int8_binary(raw: bytes) -> int:
    return _I8(raw)[0]


def oid_binary(raw: bytes) -> int:
    return _U4(raw)[0]


def float_text(raw: bytes) -> float:
    return float(raw)


def float4_binary(raw: bytes) -> float:
    return _F4(raw)[0]


def float8_binary(raw: bytes) -> float:
    return _F8(raw)[0]


def numeric_text(raw: bytes) -> Decimal:
    return Decimal(raw.decode("ascii"))


def numeric_binary(raw: bytes) -> Decimal:
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(raw)
    special = _NUMERIC_SPECIAL.get(sign)
    if special is not None:
        return special
    if sign not in (0, 0x4000) or ndigits < 0 or dscale < 0 or len(raw) != 8 + 2 * ndigits:
        raise ValueError(f"malformed numeric header (ndigits={ndigits}, sign={sign:#x}, "
                         f"dscale={dscale}, {len(raw)} bytes)")
    digits = struct.unpack_from(f">{ndigits}H", raw, 8)
    if any(d > 9999 for d in digits):
        raise ValueError("numeric digit outside 0..9999")
    # Build the digit string: Decimal parses strings of any length exactly, where int()
    # refuses more than 4300 digits.
    coefficient = "".join(f"{d:04d}" for d in digits)
    shift = 4 * (weight - ndigits + 1) + dscale  # zeros to add (or padding digits to drop)
    coefficient = coefficient + "0" * shift if shift >= 0 else coefficient[:shift]
    return Decimal(f"{'-' if sign else ''}{coefficient or '0'}E{-dscale}")
