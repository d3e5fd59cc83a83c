"""Property tests: whatever bytes arrive, the decoder answers with a message or DecodeError.

The corpus is real: one module-scoped capture of every message kind from the source
cluster (text and binary values of every supported type, streaming, two-phase). Random
bytes, every truncation and random bit flips of those messages must never raise anything
but DecodeError - no IndexError, struct.error, UnicodeDecodeError, OverflowError - nor hang
(pytest-timeout bounds each test); and values() of whatever still decodes gives values or
ValueConversionError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from decoder import (
    REGISTRY,
    DecodeError,
    Decoder,
    Delete,
    Insert,
    Message,
    Relation,
    TupleData,
    Update,
    ValueConversionError,
    parse_copy_data,
    to_python,
)
from decoder.types import oids
from tests.decoder.test_values import CASES

PROPERTY = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Sample:
    """One real payload and the decoder state it was decoded in."""

    payload: bytes
    version: int
    stream_xid: int | None
    relation: Relation | None  # for change messages: their Relation


def _record(cap, version: int) -> list[Sample]:
    replay = Decoder(version)
    out = []
    for payload in cap.payloads:
        state = replay.stream_xid
        msg = replay.decode(payload)
        rel = replay.relations.get(getattr(msg, "relation_id", None))
        out.append(Sample(payload, version, state, rel))
    return out


@pytest.fixture(scope="module")
def corpus(pg_source, stream) -> list[Sample]:
    name = f"props_{os.getpid()}"
    pg_source.create_database(name)
    from tests.fix_pg import Database

    db = Database(pg_source, name)
    try:
        columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(f"c{i}"),
                                                             sql.SQL(t))
                                     for i, (t, _, _) in enumerate(CASES))
        db.execute(sql.SQL("CREATE TABLE vals (id int PRIMARY KEY, {})").format(columns))
        db.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        db.execute("CREATE TABLE t (id int PRIMARY KEY, m mood, body text)")
        db.execute("ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL")
        db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
        plain, plain_lsn = stream.create_slot(db)
        twophase, twophase_lsn = stream.create_slot(db, two_phase=True)
        literals = sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t))
                                      for t, v, _ in CASES)
        db.execute(sql.SQL("INSERT INTO vals VALUES (1, {})").format(literals))
        db.execute("INSERT INTO vals (id) VALUES (2)")
        db.execute("INSERT INTO t VALUES (1, 'sad', repeat('abcdefgh', 500))")
        db.execute("UPDATE t SET m = 'happy'")
        db.execute("UPDATE t SET id = 2")
        db.execute("ALTER TABLE t REPLICA IDENTITY FULL")
        db.execute("UPDATE t SET m = 'sad'")
        db.execute("DELETE FROM t")
        db.execute("TRUNCATE t, vals RESTART IDENTITY CASCADE")
        db.execute("SELECT pg_logical_emit_message(false, 'p', 'x')")
        with db.connect(autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t SELECT g, 'sad', repeat('y', 100) "
                         "FROM generate_series(10, 2000) g")
            conn.execute("SAVEPOINT a")
            conn.execute("INSERT INTO t VALUES (5000, 'happy', 'z')")
            conn.execute("ROLLBACK TO SAVEPOINT a")
            conn.execute("SELECT pg_logical_emit_message(true, 'p', 'tx')")
            conn.execute("PREPARE TRANSACTION 'props'")
        db.execute("COMMIT PREPARED 'props'")
        with db.connect(autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (7000, 'sad', 'w')")
            conn.execute("PREPARE TRANSACTION 'props2'")
        db.execute("ROLLBACK PREPARED 'props2'")
        with db.connect(autocommit=False) as conn:  # streamed, then aborted
            conn.execute("INSERT INTO t SELECT g, 'sad', 'v' FROM generate_series(3000, 5000) g")
            conn.rollback()
        db.execute("SELECT pg_replication_origin_create('props_origin')")
        with db.connect(autocommit=True) as conn:
            conn.execute("SELECT pg_replication_origin_session_setup('props_origin')")
            conn.execute("INSERT INTO t VALUES (9000, 'sad', 'o')")
            conn.execute("SELECT pg_replication_origin_session_reset()")
        stream.end_marker(db)
        samples = []
        for binary in (False, True):
            samples += _record(stream.capture(db, plain, plain_lsn, binary=binary), 1)
        samples += _record(stream.capture(db, plain, plain_lsn, proto=2,
                                          extra={"streaming": "on"},
                                          dsn_options="-c logical_decoding_work_mem=64kB"), 2)
        samples += _record(stream.capture(db, twophase, twophase_lsn, proto=3, binary=True,
                                          extra={"streaming": "on", "two_phase": "on"},
                                          dsn_options="-c logical_decoding_work_mem=64kB"), 3)
    finally:
        pg_source.drop_database(name)
        with pg_source.connect() as conn:
            conn.execute("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin"
                         " WHERE roname = 'props_origin'")
    # Keep the corpus varied but small: every distinct tag/state, a few of each.
    seen: dict[tuple, int] = {}
    kept = []
    for s in samples:
        key = (s.payload[:1], s.version, s.stream_xid is not None, s.relation is not None)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= 4:
            kept.append(s)
    return kept


def _decoder_for(sample: Sample) -> Decoder:
    d = Decoder(sample.version)
    d.stream_xid = sample.stream_xid
    return d


def _exercise(sample: Sample, payload: bytes) -> None:
    """Decode and convert; anything but a message/values or DecodeError fails the test."""
    try:
        msg = _decoder_for(sample).decode(payload)
    except DecodeError:
        return
    assert isinstance(msg, Message)
    if sample.relation is None:
        return
    tuples: list[TupleData | None] = []
    if isinstance(msg, Insert | Update):
        tuples.append(msg.new_tuple)
    if isinstance(msg, Update | Delete):
        tuples += [msg.old_tuple, msg.key_tuple]
    for tup in tuples:
        if tup is not None:
            try:
                tup.values(sample.relation)
            except DecodeError:
                pass


def test_corpus_covers_every_message_kind(corpus):
    tags = {s.payload[:1].decode() for s in corpus}
    assert tags == set("BCORYIUDTMSEcAbPKrp")
    assert any(s.stream_xid is not None and s.payload[:1] == b"I" for s in corpus)
    for s in corpus:  # the unmodified corpus decodes and converts cleanly
        _exercise(s, s.payload)
        _decoder_for(s).decode(s.payload)


def test_every_truncation_is_a_decode_error(corpus):
    for s in corpus:
        for cut in range(len(s.payload)):
            with pytest.raises(DecodeError):
                _decoder_for(s).decode(s.payload[:cut])


@PROPERTY
@given(data=st.data())
def test_bit_flips_give_a_message_or_decode_error(corpus, data):
    s = data.draw(st.sampled_from(corpus))
    flips = data.draw(st.lists(st.integers(0, len(s.payload) * 8 - 1), min_size=1, max_size=3))
    buf = bytearray(s.payload)
    for bit in flips:
        buf[bit // 8] ^= 1 << (bit % 8)
    _exercise(s, bytes(buf))


@PROPERTY
@given(data=st.data())
def test_spliced_and_extended_messages(corpus, data):
    """Real prefixes with random tails: lengths and counts that lie about what follows."""
    s = data.draw(st.sampled_from(corpus))
    cut = data.draw(st.integers(0, len(s.payload)))
    _exercise(s, s.payload[:cut] + data.draw(st.binary(max_size=64)))


@PROPERTY
@given(tag=st.sampled_from(list(b"BCORYIUDTMSEcAbPKrpZ\x00")), body=st.binary(max_size=300),
       version=st.integers(1, 4), in_stream=st.booleans())
def test_random_bytes_after_any_tag(tag, body, version, in_stream):
    d = Decoder(version)
    d.stream_xid = 1 if in_stream else None
    try:
        assert isinstance(d.decode(bytes([tag]) + body), Message)
    except DecodeError:
        pass


@PROPERTY
@given(buf=st.binary(max_size=64) | st.builds(lambda t, b: t + b,
                                               st.sampled_from([b"w", b"k"]),
                                               st.binary(max_size=40)))
def test_random_copy_data_frames(buf):
    try:
        parse_copy_data(buf)
    except DecodeError:
        pass


ALL_OIDS = sorted({*oids.ARRAYS, *oids.ARRAYS.values()})


@PROPERTY
@given(oid=st.sampled_from(ALL_OIDS + [0, 99999]), raw=st.binary(max_size=80),
       binary=st.booleans())
def test_to_python_on_random_bytes(oid, raw, binary):
    try:
        to_python(oid, raw, binary)
    except ValueConversionError as exc:
        assert exc.type_oid == oid


@PROPERTY
@given(data=st.data())
def test_to_python_on_flipped_real_values(corpus, data):
    """Flip bits in real column values of every type and convert them alone."""
    values = []
    for s in corpus:
        if s.relation is not None and s.payload[:1] == b"I":
            tup = _decoder_for(s).decode(s.payload).new_tuple
            values += [(col.type_oid, raw, kind == "b") for col, kind, raw
                       in zip(s.relation.columns, tup.kinds, tup.raw, strict=True) if raw]
    oid, raw, binary = data.draw(st.sampled_from(values))
    buf = bytearray(raw)
    bit = data.draw(st.integers(0, len(buf) * 8 - 1))
    buf[bit // 8] ^= 1 << (bit % 8)
    try:
        to_python(oid, bytes(buf), binary)
    except ValueConversionError:
        pass


def test_registry_knows_every_documented_type():
    for oid in ALL_OIDS:
        assert oid in REGISTRY.names
    assert REGISTRY.names[oids.TIMESTAMPTZ] == "timestamptz"
    assert REGISTRY.names[1185] == "timestamptz[]"
