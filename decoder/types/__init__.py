"""Built-in type families and the default registry (see registry.py for the why).

=============================  ==========================================================
PostgreSQL type                Python value (text and binary form alike)
=============================  ==========================================================
bool                           bool
int2, int4, int8, oid          int
float4, float8                 float (NaN, inf kept)
numeric                        decimal.Decimal (scale kept; NaN, +/-Infinity kept)
text, varchar, bpchar, name,   str (bpchar keeps its padding)
"char"
bytea                          bytes
date                           datetime.date
time / timetz                  datetime.time (timetz with a fixed-offset tzinfo)
timestamp                      naive datetime.datetime
timestamptz                    aware datetime.datetime in UTC
interval                       datetime.timedelta, or Interval(months, days, microseconds)
                               when there are months
uuid                           uuid.UUID
json, jsonb                    json.loads() result
arrays of all the above        list (nested for more dimensions; NULL elements None)
anything else                  str (text form) / bytes (binary form), unconverted
=============================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from decoder.types import dates, numbers, oids, strings
from decoder.types.dates import Interval
from decoder.types.registry import CONVERSION_ERRORS, TypeRegistry

__all__ = ["CONVERSION_ERRORS", "REGISTRY", "Interval", "TypeRegistry", "oids", "to_python"]


def _default_registry() -> TypeRegistry:
    reg = TypeRegistry()
    o, n, s, d = oids, numbers, strings, dates
    for oid, name, text, binary in [
        (o.BOOL, "bool", n.bool_text, n.bool_binary),
        (o.INT2, "int2", n.int_text, n.int2_binary),
        (o.INT4, "int4", n.int_text, n.int4_binary),
        (o.INT8, "int8", n.int_text, n.int8_binary),
        (o.OID, "oid", n.int_text, n.oid_binary),
        (o.FLOAT4, "float4", n.float_text, n.float4_binary),
        (o.FLOAT8, "float8", n.float_text, n.float8_binary),
        (o.NUMERIC, "numeric", n.numeric_text, n.numeric_binary),
        (o.TEXT, "text", s.text, s.text),
        (o.VARCHAR, "varchar", s.text, s.text),
        (o.BPCHAR, "bpchar", s.text, s.text),
        (o.NAME, "name", s.text, s.text),
        (o.CHAR, "char", s.text, s.text),
        (o.BYTEA, "bytea", s.bytea_text, s.bytea_binary),
        (o.UUID, "uuid", s.uuid_text, s.uuid_binary),
        (o.JSON, "json", s.json_text, s.json_text),
        (o.JSONB, "jsonb", s.json_text, s.jsonb_binary),
        (o.DATE, "date", d.date_text, d.date_binary),
        (o.TIME, "time", d.time_text, d.time_binary),
        (o.TIMETZ, "timetz", d.time_text, d.timetz_binary),
        (o.TIMESTAMP, "timestamp", d.timestamp_text, d.timestamp_binary),
        (o.TIMESTAMPTZ, "timestamptz", d.timestamptz_text, d.timestamptz_binary),
        (o.INTERVAL, "interval", d.interval_text, d.interval_binary),
    ]:
        reg.register(oid, name, text, binary)
    for array_oid, element_oid in oids.ARRAYS.items():
        reg.register_array(array_oid, element_oid)
    return reg


#: The registry TupleData.values() and to_python() use; register extra types on it.
REGISTRY = _default_registry()


def to_python(type_oid: int, raw: bytes | None, binary: bool) -> Any:
    """Convert one column value (its text or binary form) by type OID."""
    return REGISTRY.to_python(type_oid, raw, binary)
