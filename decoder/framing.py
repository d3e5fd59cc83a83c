"""The replication stream's outer framing: what wraps each pgoutput message.

Every CopyData payload of a ``START_REPLICATION`` stream starts with one tag byte
(PostgreSQL docs, "Streaming Replication Protocol"). All integers are big-endian; LSNs are
unsigned 64-bit WAL positions; times are signed microseconds since 2000-01-01 00:00 UTC.

Server -> client::

    XLogData 'w'            offset  size
      Byte1 'w'             0       1
      Int64 wal_start       1       8   WAL position of the start of the payload
      Int64 wal_end         9       8   current end of WAL on the server
      Int64 send_time       17      8   server clock at transmission
      Byte[n] payload       25      n   one logical replication message (see messages.py)

    Primary keepalive 'k'
      Byte1 'k'             0       1
      Int64 wal_end         1       8   current end of WAL on the server
      Int64 send_time       9       8
      Byte1 reply_requested 17      1   1 = answer now or be disconnected at wal_sender_timeout

Client -> server::

    Standby status update 'r'
      Byte1 'r'             0       1
      Int64 written_lsn     1       8   last WAL byte + 1 received
      Int64 flushed_lsn     9       8   last WAL byte + 1 made durable (the slot advances to it)
      Int64 applied_lsn     17      8   last WAL byte + 1 applied
      Int64 client_time     25      8
      Byte1 reply_requested 33      1

Why here and not in the I/O layer: framing is bytes in, values out, and must be as strict
(and as testable without a server) as the message decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import final

from decoder._construct import fast_constructor
from decoder.errors import DecodeError

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_LSN = (1 << 64) - 1

_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">Qq?")
_STATUS = struct.Struct(">cQQQqB")


def pg_time(micros: int, message_type: str, offset: int) -> datetime:
    """A PostgreSQL TimestampTz (µs since 2000-01-01 UTC) as an aware UTC datetime."""
    try:
        return PG_EPOCH + timedelta(0, 0, micros)
    except OverflowError:
        raise DecodeError(message_type, offset,
                          f"timestamp {micros} µs is outside Python's datetime range") from None


def to_pg_time(when: datetime) -> int:
    """An aware datetime as PostgreSQL TimestampTz microseconds."""
    if when.tzinfo is None:
        raise ValueError("need a timezone-aware datetime (PostgreSQL times are absolute)")
    delta = when - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_lsn(lsn: int) -> str:
    """``0x16B3748`` -> ``"0/16B3748"``, PostgreSQL's pg_lsn text form."""
    if not 0 <= lsn <= _MAX_LSN:
        raise ValueError(f"LSN {lsn} is outside 0..2**64-1")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``"0/16B3748"`` -> ``0x16B3748``; raises DecodeError for anything else."""
    hi, sep, lo = text.partition("/")
    if (not sep or not 1 <= len(hi) <= 8 or not 1 <= len(lo) <= 8
            or not all(c in "0123456789abcdefABCDEF" for c in hi + lo)):
        raise DecodeError("LSN", 0, f"{text!r} is not an LSN of the form X/Y (hex/hex)")
    return (int(hi, 16) << 32) | int(lo, 16)


@final  # split_frame tells the frames apart by ``type(frame) is XLogData``
@dataclass(frozen=True, slots=True)
class XLogData:
    """One WAL data message; ``payload`` is the pgoutput message for ``Decoder.decode``."""

    wal_start: int
    wal_end: int
    send_time: datetime
    payload: bytes


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """The server's heartbeat; ``wal_end`` may be confirmed when nothing is in flight."""

    wal_end: int
    send_time: datetime
    reply_requested: bool


_new_xlogdata = fast_constructor(XLogData)


XLOGDATA_HEADER_SIZE = 25  # b'w' + wal_start, wal_end, send_time (three Int64)


def split_frame(buf: bytes) -> bytes | PrimaryKeepalive:
    """An XLogData frame's pgoutput message (without building the frame object), or the
    keepalive.

    For the apply loop's hot path: the frame tag is looked at once, here, and the byte
    layout stays in this module. A malformed frame raises the DecodeError that says why.
    """
    if len(buf) >= XLOGDATA_HEADER_SIZE and buf[0] == 0x77:
        return buf[XLOGDATA_HEADER_SIZE:]
    frame = parse_copy_data(buf)
    return frame.payload if type(frame) is XLogData else frame


def parse_copy_data(buf: bytes) -> XLogData | PrimaryKeepalive:
    """Split one CopyData payload of the replication stream into its frame."""
    if type(buf) is not bytes:
        buf = bytes(buf)
    n = len(buf)
    if n == 0:
        raise DecodeError("CopyData", 0, "empty CopyData payload")
    tag = buf[0]
    if tag == 0x77:  # 'w'
        if n < XLOGDATA_HEADER_SIZE:
            raise DecodeError("XLogData", n, f"truncated: header needs {XLOGDATA_HEADER_SIZE}"
                              f" bytes, got {n}")
        start, end, sent = _XLOGDATA.unpack_from(buf, 1)
        try:  # pg_time() inlined: this runs once per message
            when = PG_EPOCH + timedelta(0, 0, sent)
        except OverflowError:
            when = pg_time(sent, "XLogData", 17)  # raises the DecodeError
        return _new_xlogdata(start, end, when, buf[XLOGDATA_HEADER_SIZE:])
    if tag == 0x6B:  # 'k'
        if n != 18:
            raise DecodeError("PrimaryKeepalive", min(n, 18),
                              f"expected 18 bytes, got {n}")
        end, sent, reply = _KEEPALIVE.unpack_from(buf, 1)
        return PrimaryKeepalive(end, pg_time(sent, "PrimaryKeepalive", 9), reply)
    raise DecodeError("CopyData", 0, f"unknown replication frame tag {bytes([tag])!r} "
                      "(expected b'w' XLogData or b'k' keepalive)")


def standby_status_update(written_lsn: int, flushed_lsn: int, applied_lsn: int,
                          now: datetime | None = None, reply_requested: bool = False) -> bytes:
    """Encode the client's 'r' message; the server advances the slot to ``flushed_lsn``."""
    for name, lsn in (("written", written_lsn), ("flushed", flushed_lsn),
                      ("applied", applied_lsn)):
        if not 0 <= lsn <= _MAX_LSN:
            raise ValueError(f"{name}_lsn {lsn} is outside 0..2**64-1")
    clock = to_pg_time(now if now is not None else datetime.now(UTC))
    return _STATUS.pack(b"r", written_lsn, flushed_lsn, applied_lsn, clock,
                        1 if reply_requested else 0)
