"""Messages built byte by byte from the PostgreSQL docs' layouts (no server needed).

Covers what a PostgreSQL 15 server cannot send - protocol 4's Stream Abort with abort LSN
and time (PG16+, streaming = parallel) - and the decoder's strictness: version gating, the
streamed-block state machine, and DecodeError's message type and offset.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest

from decoder import (
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    DecodeError,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
)

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
T0_US = int((T0 - datetime(2000, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
T1 = T0 + timedelta(seconds=1)
T1_US = T0_US + 1_000_000


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def tup(*cols: tuple[str, bytes | None]) -> bytes:
    out = struct.pack(">H", len(cols))
    for kind, value in cols:
        out += kind.encode()
        if kind in "tb":
            out += struct.pack(">i", len(value)) + value
    return out


ROW = tup(("t", b"1"), ("n", None), ("u", None), ("b", b"\x00\x01"))
ROW_T = TupleData("tnub", (b"1", None, None, b"\x00\x01"))
RELATION = (b"R" + struct.pack(">I", 16384) + s("public") + s("t") + b"d" +
            struct.pack(">h", 2) + b"\x01" + s("id") + struct.pack(">Ii", 23, -1) +
            b"\x00" + s("v") + struct.pack(">Ii", 1043, 14))

# (protocol version, bytes, expected message) for every message outside a streamed block
OUTSIDE = [
    (1, b"B" + struct.pack(">QqI", 0x10, T0_US, 7), Begin(0x10, T0, 7)),
    (1, b"C" + struct.pack(">BQQq", 0, 0x10, 0x20, T0_US), Commit(0, 0x10, 0x20, T0)),
    (1, b"O" + struct.pack(">Q", 0x1_0000_0005) + s("node-a"), Origin(0x1_0000_0005, "node-a")),
    (1, b"Y" + struct.pack(">I", 90000) + s("app") + s("mood"), Type(None, 90000, "app", "mood")),
    (1, b"I" + struct.pack(">I", 16384) + b"N" + ROW, Insert(None, 16384, ROW_T)),
    (1, b"U" + struct.pack(">I", 16384) + b"N" + ROW, Update(None, 16384, None, None, ROW_T)),
    (1, b"U" + struct.pack(">I", 16384) + b"K" + ROW + b"N" + ROW,
     Update(None, 16384, None, ROW_T, ROW_T)),
    (1, b"U" + struct.pack(">I", 16384) + b"O" + ROW + b"N" + ROW,
     Update(None, 16384, ROW_T, None, ROW_T)),
    (1, b"D" + struct.pack(">I", 16384) + b"K" + ROW, Delete(None, 16384, None, ROW_T)),
    (1, b"D" + struct.pack(">I", 16384) + b"O" + ROW, Delete(None, 16384, ROW_T, None)),
    (1, b"T" + struct.pack(">iB", 2, 3) + struct.pack(">II", 1, 2),
     Truncate(None, (1, 2), True, True)),
    (1, b"T" + struct.pack(">iB", 0, 0), Truncate(None, (), False, False)),
    (1, b"M" + struct.pack(">BQ", 1, 0x30) + s("p") + struct.pack(">i", 3) + b"a\0b",
     LogicalMessage(None, True, 0x30, "p", b"a\0b")),
    (2, b"S" + struct.pack(">IB", 9, 1), StreamStart(9, True)),
    (2, b"c" + struct.pack(">IBQQq", 9, 0, 0x40, 0x50, T0_US),
     StreamCommit(9, 0, 0x40, 0x50, T0)),
    (2, b"A" + struct.pack(">II", 9, 10), StreamAbort(9, 10)),
    (4, b"A" + struct.pack(">II", 9, 10), StreamAbort(9, 10)),
    (4, b"A" + struct.pack(">IIQq", 9, 9, 0x60, T1_US), StreamAbort(9, 9, 0x60, T1)),
    (3, b"b" + struct.pack(">QQqI", 0x10, 0x20, T0_US, 7) + s("g1"),
     BeginPrepare(0x10, 0x20, T0, 7, "g1")),
    (3, b"P" + struct.pack(">BQQqI", 0, 0x10, 0x20, T0_US, 7) + s("g1"),
     Prepare(0, 0x10, 0x20, T0, 7, "g1")),
    (3, b"K" + struct.pack(">BQQqI", 0, 0x30, 0x40, T1_US, 7) + s("g1"),
     CommitPrepared(0, 0x30, 0x40, T1, 7, "g1")),
    (3, b"r" + struct.pack(">BQQqqI", 0, 0x20, 0x40, T0_US, T1_US, 7) + s("g1"),
     RollbackPrepared(0, 0x20, 0x40, T0, T1, 7, "g1")),
    (3, b"p" + struct.pack(">BQQqI", 0, 0x10, 0x20, T0_US, 7) + s("g2"),
     StreamPrepare(0, 0x10, 0x20, T0, 7, "g2")),
]


@pytest.mark.parametrize("version, payload, expected", OUTSIDE,
                         ids=[f"{type(e).__name__}-v{v}" for v, _, e in OUTSIDE])
def test_each_layout_decodes_to_its_message(version, payload, expected):
    assert Decoder(version).decode(payload) == expected


def test_relation_layout_and_registry():
    d = Decoder()
    rel = d.decode(RELATION)
    assert isinstance(rel, Relation)
    assert (rel.xid, rel.relation_id, rel.namespace, rel.name, rel.replica_identity) == (
        None, 16384, "public", "t", "d")
    assert [(c.flags, c.is_key, c.name, c.type_oid, c.type_modifier) for c in rel.columns] == [
        (1, True, "id", 23, -1), (0, False, "v", 1043, 14)]
    assert d.relation(16384) is rel
    with pytest.raises(DecodeError, match="no Relation message seen for relation 5"):
        d.relation(5)


def test_changes_inside_a_streamed_block_carry_an_xid():
    d = Decoder(2)
    d.decode(b"S" + struct.pack(">IB", 100, 1))
    assert d.in_stream and d.stream_xid == 100
    xid = struct.pack(">I", 101)
    rel = d.decode(b"R" + xid + RELATION[1:])
    assert rel.xid == 101 and rel.name == "t"
    assert d.decode(b"Y" + xid + struct.pack(">I", 90000) + s("app") + s("mood")) == Type(
        101, 90000, "app", "mood")
    assert d.decode(b"I" + xid + struct.pack(">I", 16384) + b"N" + ROW) == Insert(
        101, 16384, ROW_T)
    assert d.decode(b"U" + xid + struct.pack(">I", 16384) + b"K" + ROW + b"N" + ROW) == Update(
        101, 16384, None, ROW_T, ROW_T)
    assert d.decode(b"D" + xid + struct.pack(">I", 16384) + b"O" + ROW) == Delete(
        101, 16384, ROW_T, None)
    assert d.decode(b"T" + xid + struct.pack(">iBI", 1, 1, 16384)) == Truncate(
        101, (16384,), True, False)
    assert d.decode(b"M" + xid + struct.pack(">BQ", 1, 5) + s("p") + struct.pack(">i", 0)
                    ) == LogicalMessage(101, True, 5, "p", b"")
    # Origin may follow Stream Start (sent without an xid).
    assert d.decode(b"O" + struct.pack(">Q", 0) + s("o")) == Origin(0, "o")
    assert d.decode(b"E") == StreamStop()
    assert not d.in_stream
    # Outside the block the same Insert bytes would be misread, so the decoder is strict.
    assert d.decode(b"I" + struct.pack(">I", 16384) + b"N" + ROW).xid is None


@pytest.mark.parametrize("version, payload, needs", [
    (1, b"S" + struct.pack(">IB", 1, 1), 2),
    (1, b"E", 2),
    (1, b"A" + struct.pack(">II", 1, 1), 2),
    (2, b"b" + struct.pack(">QQqI", 1, 2, 3, 4) + s("g"), 3),
    (2, b"p" + struct.pack(">BQQqI", 0, 1, 2, 3, 4) + s("g"), 3),
])
def test_messages_newer_than_the_protocol_version_are_rejected(version, payload, needs):
    with pytest.raises(DecodeError, match=f"needs protocol version {needs}"):
        Decoder(version).decode(payload)


def test_abort_lsn_and_time_only_exist_in_protocol_4():
    with pytest.raises(DecodeError, match="expected 9 bytes, got 25") as err:
        Decoder(3).decode(b"A" + struct.pack(">IIQq", 9, 9, 0x60, T1_US))
    assert err.value.message_type == "Stream Abort" and err.value.offset == 9


def test_streamed_block_state_machine():
    d = Decoder(2)
    with pytest.raises(DecodeError, match="Stream Stop without a Stream Start"):
        d.decode(b"E")
    d.decode(b"S" + struct.pack(">IB", 1, 1))
    for payload in (b"S" + struct.pack(">IB", 2, 1),
                    b"B" + struct.pack(">QqI", 1, 0, 1),
                    b"c" + struct.pack(">IBQQq", 1, 0, 1, 2, 0)):
        with pytest.raises(DecodeError, match="cannot appear inside a streamed block"):
            d.decode(payload)
    assert d.stream_xid == 1  # failed messages leave the state alone
    d.reset()
    assert not d.in_stream and d.relations == {}


@pytest.mark.parametrize("payload, mtype, offset, text", [
    (b"", "pgoutput", 0, "empty message"),
    (b"Z", "pgoutput", 0, "unknown message tag"),
    (b"B" + b"\0" * 19, "Begin", 20, "expected 21 bytes, got 20"),
    (b"I\0\0", "Insert", 1, "relation id needs 4 bytes, 2 left"),
    (b"I" + struct.pack(">I", 1) + b"X", "Insert", 5, "expected 'N'"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 2) + b"t" +
     struct.pack(">i", 1) + b"x", "Insert", 14, "ends before column 2 of 2"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"t" +
     struct.pack(">i", 5) + b"x", "Insert", 9, "column 1 length 5 does not fit"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"t" +
     struct.pack(">i", -3), "Insert", 9, "length -3"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"q", "Insert", 8,
     "unknown kind b'q'"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 0) + b"!", "Insert", 8,
     "1 unexpected bytes after the message"),
    (b"D" + struct.pack(">I", 1) + b"N", "Delete", 5, "expected 'K' or 'O'"),
    (b"R" + struct.pack(">I", 1) + b"public", "Relation", 5, "namespace has no terminating"),
    (b"R" + struct.pack(">I", 1) + b"\xff\0", "Relation", 5, "not valid UTF-8"),
    (RELATION[:-3], "Relation", RELATION.index(b"v\0") + 2, "column 2 type needs 8 bytes"),
    (b"R" + struct.pack(">I", 1) + s("a") + s("b") + b"x" + struct.pack(">h", 0),
     "Relation", 9, "unknown replica identity 'x'"),
    (b"T" + struct.pack(">iB", 2, 0) + struct.pack(">I", 1), "Truncate", 1,
     "2 relation ids do not match"),
    (b"M" + struct.pack(">BQ", 0, 1) + s("p") + struct.pack(">i", 9) + b"ab", "Message", 12,
     "content length 9 does not match"),
    (b"K" + struct.pack(">BQQqI", 0, 1, 2, 3, 4) + b"gid", "Commit Prepared", 30,
     "gid has no terminating NUL"),
    (b"C" + struct.pack(">BQQq", 0, 1, 2, 2**62), "Commit", 18,
     "outside Python's datetime range"),
])
def test_malformed_input_names_message_and_offset(payload, mtype, offset, text):
    with pytest.raises(DecodeError) as err:
        Decoder(3).decode(payload)
    assert (err.value.message_type, err.value.offset) == (mtype, offset)
    assert text in str(err.value) and f"at byte {offset}" in str(err.value)


def test_decoder_accepts_any_bytes_like_payload():
    payload = b"I" + struct.pack(">I", 16384) + b"N" + ROW
    for buf in (bytearray(payload), memoryview(payload)):
        assert Decoder().decode(buf) == Insert(None, 16384, ROW_T)


def test_bad_protocol_version_is_refused():
    with pytest.raises(ValueError, match="1-4"):
        Decoder(5)


def test_decoder_is_standalone():
    """No I/O layer underneath: importing the decoder pulls in neither psycopg nor sockets."""
    import subprocess
    import sys

    code = ("import sys, decoder; bad = {'psycopg', 'socket', 'select'} & set(sys.modules); "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"
