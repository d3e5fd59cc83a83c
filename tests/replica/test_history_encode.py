"""The recorder's two encodings of a version - row by row (NULLs, unchanged TOAST, key
changes, deletes, truncates) and in bulk, column by column (every value present) - give the
same COPY BINARY rows as encoding each version alone. No server: the bytes are parsed back."""

from __future__ import annotations

import struct
from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from decoder import Delete, Insert, Update
from decoder.messages import TupleData
from replica.history import recorder as R
from replica.stream.batch import Layout
from replica.stream.tables import MirroredTable

TW = MirroredTable(7, "public", "t", Layout("public.t", ("id", "v", "n"), ("int", "text", "int"),
                                            (0,)), 0)
_value = st.one_of(st.none(), st.binary(max_size=12))


def _parse(data: bytes) -> list[tuple]:
    out, p = [], 0
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


def _alone(prefix: bytes, seq: int, op: bytes, raw: tuple, unchanged: list[str]) -> tuple:
    """One version as its columns' binary values, built independently of the recorder."""
    (t, lsn) = struct.unpack(">xxxxqxxxxq", prefix)
    return (*raw, struct.pack(">q", t), struct.pack(">q", lsn), struct.pack(">i", seq), op,
            R._text_array(unchanged)[4:] if unchanged else None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("IUDKT"), st.tuples(_value, _value, _value),
                          st.booleans()), max_size=40))
def test_bulk_and_row_encodings_equal_each_version_alone(changes):
    rec = R.Recorder(frozenset({"*"}), None)
    rec.begin(0x1_0000_0010, datetime(2026, 12, 4, 10, 0, tzinfo=UTC))
    want, seq = [], 0
    for i, (op, raw, toast) in enumerate(changes):
        if i == len(changes) // 2:
            rec.begin(0x2_0000_0000, datetime(2026, 12, 4, 11, 0, tzinfo=UTC))
            seq = 0
        key = (raw[0] or b"k",)
        new = TupleData("".join("n" if v is None else "b" for v in (key[0], *raw[1:])),
                        (*key, *raw[1:]))
        if op == "T":
            rec.truncate(TW)
            want.append(_alone(rec._prefix, seq, b"T", (None, None, None), []))
        elif op == "D":
            rec.change(TW, Delete(None, 7, None, TupleData("bnn", (*key, None, None))))
            want.append(_alone(rec._prefix, seq, b"D", (*key, None, None), []))
        elif op == "I":
            rec.change(TW, Insert(None, 7, new))
            want.append(_alone(rec._prefix, seq, b"I", new.raw, []))
        else:
            kinds = new.kinds[:2] + ("u" if toast else new.kinds[2])
            img = TupleData(kinds, new.raw[:2] + ((None,) if toast else new.raw[2:]))
            old = TupleData("bnn", (key[0] + b"x", None, None)) if op == "K" else None
            rec.change(TW, Update(None, 7, None, old, img))
            if old is not None:  # a key change ends the old key's version first
                want.append(_alone(rec._prefix, seq, b"D", old.raw, []))
                seq += 1
            want.append(_alone(rec._prefix, seq, b"U", img.raw, ["n"] if toast else []))
        seq += 1
    got = []
    for t, rows, bulk in rec._taken():
        chunks, n = R.encode(t.head, rows, bulk)
        parsed = _parse(b"".join(chunks))
        assert len(parsed) == n
        got += parsed
    assert Counter(got) == Counter(want)
