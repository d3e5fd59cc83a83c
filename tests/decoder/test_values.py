"""Value conversion against a real server: every supported type, text and binary mode.

Each case is (SQL type, SQL literal, expected Python value). One table gets a column per
case and one row of the literals; the decoded row must equal the expectations in both
modes, and a row of NULLs must decode to None everywhere.
"""

from __future__ import annotations

import math
import struct
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from psycopg import sql

from decoder import Insert, Interval, Relation, ValueConversionError

BIG = "1" + "0" * 5000  # more digits than int() will parse from a string
ALL_BYTES = bytes(range(256))
IST = timezone(timedelta(hours=5, minutes=30))

CASES: list[tuple[str, str, object]] = [
    ("bool", "true", True),
    ("bool", "false", False),
    ("int2", "-32768", -32768),
    ("int4", "2147483647", 2147483647),
    ("int8", "-9223372036854775808", -9223372036854775808),
    ("oid", "4294967295", 4294967295),
    ("float4", "1.5", 1.5),
    ("float4", "-Infinity", float("-inf")),
    ("float8", "0.30000000000000004", 0.1 + 0.2),
    ("float8", "-0", -0.0),
    ("float8", "NaN", float("nan")),
    ("float8", "Infinity", float("inf")),
    ("float8", "1e-310", 1e-310),
    ("float8", "1.7976931348623157e308", 1.7976931348623157e308),
    ("numeric", "1.50", Decimal("1.50")),
    ("numeric", "-123.4500", Decimal("-123.4500")),
    ("numeric", "0", Decimal("0")),
    ("numeric", "0.000", Decimal("0.000")),
    ("numeric", "0.0001", Decimal("0.0001")),
    ("numeric", "1e-20", Decimal("0.00000000000000000001")),
    ("numeric", "12345678901234567890.123456789", Decimal("12345678901234567890.123456789")),
    ("numeric", "99999999.9999", Decimal("99999999.9999")),
    ("numeric", BIG, Decimal(BIG)),
    ("numeric", "NaN", Decimal("NaN")),
    ("numeric", "Infinity", Decimal("Infinity")),
    ("numeric", "-Infinity", Decimal("-Infinity")),
    ("numeric(6,2)", "-7", Decimal("-7.00")),
    ("text", "héllo wörld ✓ 𝄞", "héllo wörld ✓ 𝄞"),
    ("text", "", ""),
    ("text", 'a\\b "q" \'s\'\nline {x,y}', 'a\\b "q" \'s\'\nline {x,y}'),
    ("varchar(5)", "abc", "abc"),
    ("char(5)", "ab", "ab   "),
    ("name", "some_name", "some_name"),
    ('"char"', "x", "x"),
    ("bytea", "\\x00ff10", b"\x00\xff\x10"),
    ("bytea", "\\x" + ALL_BYTES.hex(), ALL_BYTES),
    ("bytea", "\\x", b""),
    ("date", "2024-02-29", date(2024, 2, 29)),
    ("date", "0001-01-01", date(1, 1, 1)),
    ("date", "9999-12-31", date(9999, 12, 31)),
    ("date", "infinity", date.max),
    ("date", "-infinity", date.min),
    ("time", "00:00:00", time(0, 0)),
    ("time", "23:59:59.999999", time(23, 59, 59, 999999)),
    ("time", "12:34:56.5", time(12, 34, 56, 500000)),
    ("timetz", "12:34:56+05:30", time(12, 34, 56, tzinfo=IST)),
    ("timetz", "01:02:03.25-08", time(1, 2, 3, 250000, tzinfo=timezone(timedelta(hours=-8)))),
    ("timestamp", "2024-02-29 12:34:56.123456", datetime(2024, 2, 29, 12, 34, 56, 123456)),
    ("timestamp", "0001-01-01 00:00:00", datetime(1, 1, 1)),
    ("timestamp", "9999-12-31 23:59:59.999999", datetime(9999, 12, 31, 23, 59, 59, 999999)),
    ("timestamp", "infinity", datetime.max),
    ("timestamp", "-infinity", datetime.min),
    ("timestamptz", "2024-02-29 12:34:56.123456+00",
     datetime(2024, 2, 29, 12, 34, 56, 123456, tzinfo=UTC)),
    ("timestamptz", "2024-06-01 00:00:00-07", datetime(2024, 6, 1, 7, tzinfo=UTC)),
    ("timestamptz", "1850-01-01 00:00:00+00", datetime(1850, 1, 1, tzinfo=UTC)),
    ("timestamptz", "infinity", datetime.max.replace(tzinfo=UTC)),
    ("interval", "1 year 2 mons 3 days 04:05:06.789",
     Interval(14, 3, ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 789_000)),
    ("interval", "-1 days +02:03:00", timedelta(days=-1, hours=2, minutes=3)),
    ("interval", "0", timedelta(0)),
    ("interval", "-0.5 seconds", timedelta(microseconds=-500_000)),
    ("interval", "100 hours", timedelta(hours=100)),
    ("interval", "-1 mons", Interval(-1, 0, 0)),
    ("interval", "1 day -00:00:01.000001", timedelta(days=1, seconds=-1, microseconds=-1)),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
     uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("json", '{"a": [1, 2.5, "x", null, true], "é": {}}',
     {"a": [1, 2.5, "x", None, True], "é": {}}),
    ("jsonb", '{"k": "v", "n": 1e3, "l": []}', {"k": "v", "n": 1000, "l": []}),
    ("jsonb", '"just a string"', "just a string"),
    ("int4[]", "{1,NULL,3}", [1, None, 3]),
    ("int4[]", "{}", []),
    ("int4[]", "[0:1]={5,6}", [5, 6]),
    ("int4[]", "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
    ("int2[]", "{-1,2}", [-1, 2]),
    ("int8[]", "{9223372036854775807}", [9223372036854775807]),
    ("text[]", '{"a,b","c\\"d","e\\\\f","NULL",NULL,"",x y,"{}"}',
     ["a,b", 'c"d', "e\\f", "NULL", None, "", "x y", "{}"]),
    ("varchar[]", "{ü,ß}", ["ü", "ß"]),
    ("char(3)[]", "{a,bc}", ["a  ", "bc "]),
    ("name[]", "{n1}", ["n1"]),
    ("numeric[]", "{1.5,NaN,-Infinity}", [Decimal("1.5"), Decimal("NaN"), Decimal("-Infinity")]),
    ("bool[]", "{t,f,NULL}", [True, False, None]),
    ("float4[]", "{0.5}", [0.5]),
    ("float8[]", "{Infinity,-0,1.25}", [float("inf"), -0.0, 1.25]),
    ("bytea[]", '{"\\\\x0102",NULL}', [b"\x01\x02", None]),
    ("date[]", "{2024-01-01,infinity}", [date(2024, 1, 1), date.max]),
    ("time[]", "{10:00:00}", [time(10)]),
    ("timestamp[]", '{"2024-01-01 10:00:00"}', [datetime(2024, 1, 1, 10)]),
    ("timestamptz[]", '{"2024-01-01 10:00:00+02"}', [datetime(2024, 1, 1, 8, tzinfo=UTC)]),
    ("interval[]", '{"1 day","1 mon 2 days"}', [timedelta(days=1), Interval(1, 2, 0)]),
    ("uuid[]", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
     [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]),
    ("json[]", '{"{\\"a\\": 1}","[]"}', [{"a": 1}, []]),
    ("jsonb[]", '{"{\\"b\\": [true]}"}', [{"b": [True]}]),
]


def same(a, b) -> bool:
    """Equality that also holds for NaN and tells -0.0 from 0.0 and UTC from other zones."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return (a.is_nan() and b.is_nan()) or (str(a) == str(b))
    if isinstance(a, datetime | time) and isinstance(b, datetime | time):
        return a == b and a.tzinfo == b.tzinfo
    return type(a) is type(b) and a == b


def _stream_rows(stream, db, cases, binary,
                 dsn_options="") -> tuple[Relation, list[tuple]]:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(f"c{i}"), sql.SQL(typ))
        for i, (typ, _, _) in enumerate(cases))
    db.execute(sql.SQL("CREATE TABLE vals (id int PRIMARY KEY, {})").format(columns))
    db.execute("CREATE PUBLICATION pub FOR TABLE vals")
    slot, lsn = stream.create_slot(db)
    literals = sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Literal(lit), sql.SQL(typ))
                                  for typ, lit, _ in cases)
    db.execute(sql.SQL("INSERT INTO vals VALUES (1, {})").format(literals))
    db.execute("INSERT INTO vals (id) VALUES (2)")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary, dsn_options=dsn_options)
    rel = cap.of(Relation)[0]
    return rel, [m.new_tuple for m in cap.of(Insert)]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_every_supported_type_decodes_in_text_and_binary(source_db, binary, zone, stream):
    """TimeZone only changes timestamptz's text form (the offset): values stay the same."""
    rel, (row, nulls) = _stream_rows(stream, source_db, CASES, binary,
                                     dsn_options=f"-c TimeZone={zone}")
    assert row.kinds == ("b" if binary else "t") * (len(CASES) + 1)
    assert [c.type_oid for c in rel.columns[1:]] == [
        source_db.execute(sql.SQL("SELECT {}::regtype::oid").format(sql.Literal(typ)))[0][0]
        for typ, _, _ in CASES]
    values = row.values(rel)
    assert values[0] == 1
    wrong = [(typ, lit[:40], got, want) for (typ, lit, want), got in zip(CASES, values[1:],
                                                                       strict=True)
             if not same(got, want)]
    assert wrong == []
    assert nulls.values(rel) == (2,) + (None,) * len(CASES)


def test_float4_binary_is_the_exact_single_precision_value(source_db, binary, stream):
    rel, (row, _) = _stream_rows(stream, source_db, [("float4", "0.1", None)], binary)
    expected = struct.unpack(">f", struct.pack(">f", 0.1))[0] if binary else 0.1
    assert row.values(rel)[1] == expected


@pytest.mark.parametrize("typ, literal", [
    ("date", "0044-03-15 BC"),
    ("timestamp", "10000-01-01 00:00:00"),
    ("timestamptz", "0001-01-01 00:00:00+00 BC"),
    ("time", "24:00:00"),
])
def test_values_python_cannot_hold_raise_value_conversion_error(source_db, binary, typ,
                                                                 literal, stream):
    rel, (row, _) = _stream_rows(stream, source_db, [(typ, literal, None)], binary)
    with pytest.raises(ValueConversionError) as err:
        row.values(rel)
    assert err.value.column == "c0" and err.value.type_oid == rel.columns[1].type_oid
    assert "c0" in str(err.value)
    assert row.raw[1]  # the raw bytes are still there to pass on
