"""The replication stream's framing: XLogData, keepalive, standby status update, LSNs."""

from __future__ import annotations

import struct
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from decoder import (
    DecodeError,
    PrimaryKeepalive,
    XLogData,
    format_lsn,
    parse_copy_data,
    parse_lsn,
    standby_status_update,
)

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
T0_US = int((T0 - datetime(2000, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def test_xlogdata_frame():
    frame = parse_copy_data(b"w" + struct.pack(">QQq", 0x10, 0x20, T0_US) + b"I...")
    assert frame == XLogData(0x10, 0x20, T0, b"I...")
    assert parse_copy_data(memoryview(b"w" + bytes(24))).payload == b""


def test_keepalive_frame():
    assert parse_copy_data(b"k" + struct.pack(">Qq?", 0x30, T0_US, True)) == PrimaryKeepalive(
        0x30, T0, True)


@pytest.mark.parametrize("buf, mtype, text", [
    (b"", "CopyData", "empty"),
    (b"x123", "CopyData", "unknown replication frame tag b'x'"),
    (b"w" + bytes(23), "XLogData", "header needs 25 bytes, got 24"),
    (b"k" + bytes(16), "PrimaryKeepalive", "expected 18 bytes, got 17"),
    (b"k" + bytes(18), "PrimaryKeepalive", "expected 18 bytes, got 19"),
    (b"k" + struct.pack(">Qq?", 0, -2**63, False), "PrimaryKeepalive", "datetime range"),
])
def test_bad_frames_raise_decode_error(buf, mtype, text):
    with pytest.raises(DecodeError, match=text) as err:
        parse_copy_data(buf)
    assert err.value.message_type == mtype


def test_standby_status_update_layout():
    msg = standby_status_update(0x30, 0x20, 0x10, now=T0, reply_requested=True)
    assert msg == b"r" + struct.pack(">QQQqB", 0x30, 0x20, 0x10, T0_US, 1)
    assert standby_status_update(1, 1, 1)[-1:] == b"\0"
    with pytest.raises(ValueError, match="timezone-aware"):
        standby_status_update(1, 1, 1, now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="flushed_lsn"):
        standby_status_update(1, -1, 1)


@given(st.integers(0, 2**64 - 1))
def test_lsn_text_round_trips(lsn):
    assert parse_lsn(format_lsn(lsn)) == lsn
    assert parse_lsn(format_lsn(lsn).lower()) == lsn


@pytest.mark.parametrize("text", ["", "0", "0/", "/0", "G/0", "0/123456789", "1//2", " 0/1"])
def test_bad_lsn_text(text):
    with pytest.raises(DecodeError, match="not an LSN"):
        parse_lsn(text)


def test_lsn_text_matches_the_server(pg_source):
    values = [0, 1, 0x16B3748, 0xFFFFFFFF, 0x1_0000_0000, 0xABCD_0000_1234, 2**64 - 1]
    with pg_source.connect() as conn:
        for lsn in values:
            text = conn.execute("SELECT ('0/0'::pg_lsn + %s::numeric)::text", (lsn,)).fetchone()[0]
            assert format_lsn(lsn) == text
            assert parse_lsn(text) == lsn


def _read_until(conn, cls, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = conn.read(0.5)
        if data is not None and isinstance(frame := parse_copy_data(data), cls):
            return frame
    raise TimeoutError(f"no {cls.__name__} within {timeout}s")


def test_status_update_moves_the_slot_and_asks_for_a_keepalive(source_db, stream):
    db = source_db
    db.execute("CREATE TABLE t (id int)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    slot, start = stream.create_slot(db)
    db.execute("INSERT INTO t VALUES (1)")
    with stream.connect(db.dsn) as conn:
        conn.start(slot, start, {"proto_version": "1", "publication_names": "pub"})
        data = _read_until(conn, XLogData)  # the Begin of the insert
        commit_end = None
        while commit_end is None:
            frame = _read_until(conn, XLogData)
            if frame.payload[:1] == b"C":
                commit_end = struct.unpack_from(">Q", frame.payload, 10)[0]
        assert data.wal_start > 0 and data.send_time.tzinfo is UTC
        # reply_requested makes the walsender answer at once with a keepalive.
        conn.send(standby_status_update(commit_end, commit_end, commit_end,
                                        reply_requested=True))
        keepalive = _read_until(conn, PrimaryKeepalive)
        assert keepalive.wal_end >= commit_end
        deadline = time.monotonic() + 30
        confirmed = None
        while confirmed != commit_end and time.monotonic() < deadline:
            confirmed = parse_lsn(db.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                "WHERE slot_name = %s", (slot,))[0][0])
            time.sleep(0.05)
        assert confirmed == commit_end


def test_the_loop_slices_xlogdata_exactly_as_the_decoder_frames_it():
    from decoder import PrimaryKeepalive, split_frame

    buf = b"w" + (7).to_bytes(8, "big") + (9).to_bytes(8, "big") + bytes(8) + b"Bpayload"
    assert split_frame(buf) == parse_copy_data(buf).payload == b"Bpayload"
    with pytest.raises(DecodeError):
        split_frame(buf[:20])
    keepalive = b"k" + (9).to_bytes(8, "big") + bytes(8) + b"\x01"
    assert split_frame(keepalive) == parse_copy_data(keepalive)
    assert isinstance(split_frame(keepalive), PrimaryKeepalive)
