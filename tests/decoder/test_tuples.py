"""TupleData and the type registry without a server: forms the server sends rarely (escape
bytea, multi-dimensional binary arrays), the sentinel, and conversion errors."""

from __future__ import annotations

import pickle
import struct
from datetime import timedelta
from decimal import Decimal

import pytest

from decoder import (
    REGISTRY,
    UNCHANGED_TOAST,
    Column,
    DecodeError,
    Relation,
    TupleData,
    TypeRegistry,
    ValueConversionError,
    to_python,
)
from decoder.types import Interval, oids

REL = Relation(None, 1, "public", "t", "d", (Column(1, "id", oids.INT4, -1),
                                             Column(0, "v", oids.TEXT, -1)))


def test_unchanged_toast_is_a_readable_singleton():
    assert UNCHANGED_TOAST is not None and repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert type(UNCHANGED_TOAST)() is UNCHANGED_TOAST


@pytest.mark.parametrize("tup, expected", [
    (TupleData("tt", (b"1", b"a")), (1, "a")),
    (TupleData("bb", (b"\0\0\0\x01", b"a")), (1, "a")),
    (TupleData("tu", (b"1", None)), (1, UNCHANGED_TOAST)),
    (TupleData("nb", (None, b"x")), (None, "x")),
])
def test_values_per_kind(tup, expected):
    assert tup.values(REL) == expected


def test_values_name_the_column_that_fails():
    for tup in (TupleData("tt", (b"1", b"\xff")), TupleData("bt", (b"\0\x01", b"a")),
                TupleData("nt", (None, b"\xff"))):
        with pytest.raises(ValueConversionError) as err:
            tup.values(REL)
        assert isinstance(err.value, DecodeError)
        assert (err.value.type_oid, err.value.column) in ((oids.TEXT, "v"), (oids.INT4, "id"))
        assert repr(err.value.column) in str(err.value)


def test_values_against_the_wrong_relation():
    with pytest.raises(DecodeError, match="row has 1 columns but relation public.t has 2"):
        TupleData("t", (b"1",)).values(REL)


@pytest.mark.parametrize("oid, raw, binary, expected", [
    (oids.BYTEA, b"plain\\\\and\\001\\377", False, b"plain\\and\x01\xff"),
    (oids.BYTEA, b"\\x", False, b""),
    (oids.NUMERIC, struct.pack(">hhHh", 0, 0, 0, 3), True, Decimal("0.000")),
    (oids.NUMERIC, struct.pack(">hhHhHH", 2, 1, 0x4000, 2, 1, 2345), True,
     Decimal("-12345.00")),
    (oids.NUMERIC, struct.pack(">hhHhH", 1, -2, 0, 8, 5), True, Decimal("0.00000005")),
    (oids.NUMERIC, struct.pack(">hhHh", 0, 0, 0xD000, 0), True, Decimal("Infinity")),
    (oids.INTERVAL, b"-1 years -2 mons +3 days -04:05:06", False,
     Interval(-14, 3, -(4 * 3600 + 5 * 60 + 6) * 1_000_000)),
    (oids.INTERVAL, b"2 days", False, timedelta(days=2)),
    (oids.INTERVAL, struct.pack(">qii", -1, 0, 0), True, timedelta(microseconds=-1)),
    (1007, struct.pack(">iiI", 2, 0, oids.INT4) + struct.pack(">iiii", 2, 1, 3, 1) +
     b"".join(struct.pack(">ii", 4, v) for v in range(6)), True,
     [[0, 1, 2], [3, 4, 5]]),
    (1007, struct.pack(">iiI", 1, 1, oids.INT4) + struct.pack(">ii", 2, 0) +
     struct.pack(">i", -1) + struct.pack(">ii", 4, 7), True, [None, 7]),
    (1007, struct.pack(">iiI", 0, 0, oids.INT4), True, []),
    (1009, b'[-1:0]={"a\\\\b",NULL}', False, ["a\\b", None]),
    (1009, b"{{a,b},{c,d}}", False, [["a", "b"], ["c", "d"]]),
    (1009, b'{"",null}', False, ["", None]),
    (99999, b"\x00raw", True, b"\x00raw"),
    (99999, b"(1,2)", False, "(1,2)"),
    (oids.TEXT, None, False, None),
])
def test_to_python(oid, raw, binary, expected):
    assert to_python(oid, raw, binary) == expected


@pytest.mark.parametrize("oid, raw, binary, text", [
    (oids.INT4, b"\0\0\x01", True, "int4 binary"),
    (oids.BOOL, b"yes", False, "bool text must be"),
    (oids.JSONB, b"\x02{}", True, "jsonb binary version"),
    (oids.NUMERIC, struct.pack(">hhHhH", 1, 0, 0, 0, 10000), True, "digit outside"),
    (1007, struct.pack(">iiI", 1, 0, oids.TEXT) + struct.pack(">ii", 1, 1), True,
     "element OID 25, expected 23"),
    (1007, struct.pack(">iiI", 1, 0, oids.INT4) + struct.pack(">ii", 10**6, 1), True,
     "cannot fit"),
    (1009, b'{"open', False, "unterminated"),
    (1009, b"{a}}", False, "unbalanced"),
    (1009, b"a,b", False, "must start with"),
    (oids.INTERVAL, b"3 fortnights", False, "IntervalStyle"),
    (oids.DATE, b"10000-01-01", False, "outside Python's range"),
    (oids.TIMESTAMPTZ, b"2024-01-01 00:00:00", False, "no UTC offset"),
])
def test_to_python_errors(oid, raw, binary, text):
    with pytest.raises(ValueConversionError, match=text) as err:
        to_python(oid, raw, binary)
    assert err.value.type_oid == oid


def test_a_registry_can_learn_new_types():
    reg = TypeRegistry()
    reg.register(90001, "point2", lambda raw: tuple(map(float, raw.strip(b"()").split(b","))),
                 lambda raw: struct.unpack(">dd", raw))
    reg.register_array(90002, 90001)
    assert reg.to_python(90001, b"(1,2.5)", False) == (1.0, 2.5)
    assert reg.to_python(90002, b'{"(1,2)","(3,4)"}', False) == [(1.0, 2.0), (3.0, 4.0)]
    assert reg.names[90002] == "point2[]"
    assert 90001 not in REGISTRY.names  # the default registry is untouched
