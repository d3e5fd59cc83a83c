"""The recorder's COPY BINARY stream of its versions (NULLs, unchanged TOAST, key changes,
deletes, truncates; compiled and pure builders, each with its recorder: the compiled step,
replica/history/compiled.py, or the pure Recorder) equals encoding each version alone, with
the commit time and LSN of its own transaction. No server: the bytes are parsed back."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoder import Delete, Insert, Update, accel
from decoder.messages import TupleData
from replica.history import recorder as R
from replica.history.compiled import recorder_class
from replica.stream.batch import Layout
from replica.stream.tables import MirroredTable

TW = MirroredTable(7, "public", "t", Layout("public.t", ("id", "v", "n"), ("int", "text", "int"),
                                            (0,)), 0)
_value = st.one_of(st.none(), st.binary(max_size=12))


def _parse(data: bytes) -> list[tuple]:
    assert data[:19] == b"PGCOPY\n\xff\r\n\x00" + bytes(8) and data[-2:] == b"\xff\xff"
    out, p, data = [], 0, data[19:-2]
    while p < len(data):
        (ncols,) = struct.unpack_from(">h", data, p)
        p += 2
        row = []
        for _ in range(ncols):
            (n,) = struct.unpack_from(">i", data, p)
            p += 4
            row.append(None if n < 0 else data[p:p + n])
            p += max(n, 0)
        out.append(tuple(row))
    return out


def _text_array(names: list[str]) -> bytes:
    """text[] in binary: ndim, has nulls, element oid, length, lower bound, then elements."""
    return struct.pack(">iiiii", 1, 0, 25, len(names), 1) + b"".join(
        struct.pack(">i", len(n)) + n.encode() for n in names)


def _alone(txn: tuple[int, datetime], seq: int, op: bytes, raw: tuple,
           unchanged: list[str]) -> tuple:
    """One version as its columns' binary values, built independently of the recorder."""
    lsn, when = txn
    micros = (when - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return (*raw, struct.pack(">q", micros), struct.pack(">q", lsn), struct.pack(">i", seq),
            op, _text_array(unchanged) if unchanged else None)


@pytest.fixture(params=["c", "python"])
def builder(request):
    """Both COPY-row builders and recorders (decoder.accel), compiled ones where built."""
    if request.param == "c" and not accel.available():
        pytest.skip("decoder._speedups not built")
    was = accel.IMPLEMENTATION
    accel.select(request.param)
    yield request.param
    accel.select(was)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # builder: per test
@given(st.lists(st.tuples(st.sampled_from("IUDKT"), st.tuples(_value, _value, _value),
                          st.booleans()), max_size=40), st.integers(0, 5000))
def test_copy_stream_equals_each_version_alone(builder, changes, first_seq):
    rec = recorder_class()(frozenset({"*"}), None)
    assert (type(rec) is R.Recorder) == (builder == "python")
    txn = (0x1_0000_0010, datetime(2026, 12, 4, 10, 0, 0, 123456, tzinfo=UTC))
    rec.begin(*txn)
    rec._seq = seq = first_seq  # past the packed table too (_seq beyond 4096)
    want = []
    for i, (op, raw, toast) in enumerate(changes):
        if i == len(changes) // 2:
            txn = (0x2_0000_0000, datetime(2026, 12, 4, 11, 0, tzinfo=UTC))
            rec.begin(*txn)
            seq = 0
        key = (raw[0] or b"k",)
        new = TupleData("".join("n" if v is None else "b" for v in (key[0], *raw[1:])),
                        (*key, *raw[1:]))
        if op == "T":
            rec.truncate(TW)
            want.append(_alone(txn, seq, b"T", (None, None, None), []))
        elif op == "D":
            rec.change(TW, Delete(None, 7, None, TupleData("bnn", (*key, None, None))))
            want.append(_alone(txn, seq, b"D", (*key, None, None), []))
        elif op == "I":
            rec.change(TW, Insert(None, 7, new))
            want.append(_alone(txn, seq, b"I", new.raw, []))
        else:
            kinds = new.kinds[:2] + ("u" if toast else new.kinds[2])
            img = TupleData(kinds, new.raw[:2] + ((None,) if toast else new.raw[2:]))
            old = TupleData("bnn", (key[0] + b"x", None, None)) if op == "K" else None
            rec.change(TW, Update(None, 7, None, old, img))
            if old is not None:  # a key change ends the old key's version first
                want.append(_alone(txn, seq, b"D", old.raw, []))
                seq += 1
            want.append(_alone(txn, seq, b"U", img.raw, ["n"] if toast else []))
        seq += 1
    got = []
    for _, images in rec._taken():
        parsed = _parse(R.encode(images))
        assert len(parsed) == len(images)
        got += parsed
    assert got == want  # one table: in the order recorded
