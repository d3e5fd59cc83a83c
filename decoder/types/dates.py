"""date, time, timetz, timestamp, timestamptz and interval: text and binary forms.

Binary layouts: date Int32 days since 2000-01-01; time Int64 µs since midnight; timetz
Int64 µs + Int32 zone seconds *west* of UTC; timestamp/timestamptz Int64 µs since
2000-01-01 (timestamptz in UTC); interval Int64 µs, Int32 days, Int32 months. The extreme
values (Int32/Int64 max/min) of date and timestamps mean +/-infinity.

Text forms are read as DateStyle=ISO and IntervalStyle=postgres, the settings
ReplicationConnection (like PostgreSQL's own subscriber) puts on the walsender.

Decisions (docs/decoder.md): 'infinity' / '-infinity' become the type's max / min (date.max,
datetime.max, for timestamptz with tzinfo=UTC); values Python cannot hold (BC, years past
9999, time 24:00:00) raise ValueConversionError; timestamptz comes back in UTC; an interval
is a ``timedelta`` unless it has months, then an :class:`Interval` (a month has no fixed
length, so folding it into days would change the value).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone

_I4 = struct.Struct(">i").unpack
_I8 = struct.Struct(">q").unpack
_TIMETZ = struct.Struct(">qi").unpack
_INTERVAL = struct.Struct(">qii").unpack

_EPOCH_ORDINAL = date(2000, 1, 1).toordinal()
_EPOCH = datetime(2000, 1, 1)
_EPOCH_UTC = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_UTC = datetime.max.replace(tzinfo=UTC)
_MIN_UTC = datetime.min.replace(tzinfo=UTC)
_I4_MAX, _I4_MIN = 2**31 - 1, -(2**31)
_I8_MAX, _I8_MIN = 2**63 - 1, -(2**63)


@dataclass(frozen=True, slots=True)
class Interval:
    """An interval with a month part, kept exact: PostgreSQL's (months, days, µs) triple."""

    months: int
    days: int
    microseconds: int


def _out_of_range(raw: bytes, kind: str) -> ValueError:
    return ValueError(f"{kind} {raw[:40].decode('utf-8', 'replace')!r} is outside Python's "
                      "range (years 1-9999, no BC); use the raw value")


def date_text(raw: bytes) -> date:
    if raw == b"infinity":
        return date.max
    if raw == b"-infinity":
        return date.min
    if raw.endswith(b" BC") or raw.find(b"-") > 4:
        raise _out_of_range(raw, "date")
    return date.fromisoformat(raw.decode("ascii"))


def date_binary(raw: bytes) -> date:
    (days,) = _I4(raw)
    if days == _I4_MAX:
        return date.max
    if days == _I4_MIN:
        return date.min
    return date.fromordinal(_EPOCH_ORDINAL + days)


def time_text(raw: bytes) -> time:
    return time.fromisoformat(raw.decode("ascii"))


def _time_of(micros: int) -> time:
    seconds, us = divmod(micros, 1_000_000)
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    return time(h, m, s, us)


def time_binary(raw: bytes) -> time:
    return _time_of(_I8(raw)[0])


def timetz_binary(raw: bytes) -> time:
    micros, zone = _TIMETZ(raw)
    return _time_of(micros).replace(tzinfo=timezone(timedelta(seconds=-zone)))


def timestamp_text(raw: bytes) -> datetime:
    if raw == b"infinity":
        return datetime.max
    if raw == b"-infinity":
        return datetime.min
    if raw.endswith(b" BC") or raw.find(b"-") > 4:
        raise _out_of_range(raw, "timestamp")
    return datetime.fromisoformat(raw.decode("ascii"))


def timestamp_binary(raw: bytes) -> datetime:
    (micros,) = _I8(raw)
    if micros == _I8_MAX:
        return datetime.max
    if micros == _I8_MIN:
        return datetime.min
    return _EPOCH + timedelta(0, 0, micros)


def timestamptz_text(raw: bytes) -> datetime:
    if raw == b"infinity":
        return _MAX_UTC
    if raw == b"-infinity":
        return _MIN_UTC
    if raw.endswith(b" BC") or raw.find(b"-") > 4:
        raise _out_of_range(raw, "timestamptz")
    value = datetime.fromisoformat(raw.decode("ascii"))
    if value.tzinfo is None:
        raise ValueError(f"timestamptz {raw[:40]!r} has no UTC offset")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def timestamptz_binary(raw: bytes) -> datetime:
    (micros,) = _I8(raw)
    if micros == _I8_MAX:
        return _MAX_UTC
    if micros == _I8_MIN:
        return _MIN_UTC
    return _EPOCH_UTC + timedelta(0, 0, micros)


def _interval(months: int, days: int, micros: int) -> timedelta | Interval:
    if months:
        return Interval(months, days, micros)
    return timedelta(days=days, microseconds=micros)


_UNITS = {b"year": 12, b"years": 12, b"mon": 1, b"mons": 1}


def interval_text(raw: bytes) -> timedelta | Interval:
    """IntervalStyle=postgres, e.g. ``1 year 2 mons -3 days +04:05:06.789``."""
    months = days = micros = 0
    tokens = raw.split()
    if not tokens:
        raise ValueError("empty interval")
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if b":" in token:  # [+-]H:MM:SS[.ffffff], hours unbounded
            sign = -1 if token[:1] == b"-" else 1
            parts = token.lstrip(b"+-").split(b":")
            if len(parts) != 3:
                raise ValueError(f"bad interval time {token[:40]!r}")
            whole, _, frac = parts[2].partition(b".")
            if len(frac) > 6 or not (frac.isdigit() or not frac):
                raise ValueError(f"bad interval fraction {token[:40]!r}")
            seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + int(whole)
            micros += sign * (seconds * 1_000_000 + int(frac.ljust(6, b"0") or b"0"))
            i += 1
            continue
        unit = tokens[i + 1] if i + 1 < len(tokens) else b""
        count = int(token)
        if unit in (b"day", b"days"):
            days += count
        elif unit in _UNITS:
            months += count * _UNITS[unit]
        else:
            raise ValueError(f"unsupported interval unit {unit[:20]!r} (IntervalStyle "
                             "must be postgres)")
        i += 2
    return _interval(months, days, micros)


def interval_binary(raw: bytes) -> timedelta | Interval:
    micros, days, months = _INTERVAL(raw)
    return _interval(months, days, micros)
