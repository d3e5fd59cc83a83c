"""The compiled hot path (decoder._speedups) against the pure-Python reference, directly.

Every other decoder test runs once per implementation (conftest.py's ``impl``); these
compare the two on the same input in one test: well-formed change messages of generated
shapes, every truncation and random bytes (same message or the same DecodeError text), and
the COPY BINARY / binary array encodings byte for byte.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoder import DecodeError, Decoder, Delete, Insert, TupleData, Update, accel, copyfmt

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)

pytestmark = pytest.mark.skipif(not accel.available(),
                                reason="decoder._speedups is not built (no C compiler)")

column = st.one_of(
    st.tuples(st.sampled_from("tb"), st.binary(max_size=40)),
    st.tuples(st.sampled_from("nu"), st.none()),
)
tuple_data = st.lists(column, max_size=12)


def encode_tuple(cols) -> bytes:
    out = struct.pack(">H", len(cols))
    for kind, raw in cols:
        out += kind.encode()
        if raw is not None:
            out += struct.pack(">i", len(raw)) + raw
    return out


def decode_both(payload: bytes, stream_xid: int | None = None):
    """(result, error text) per implementation."""
    results = []
    for name in ("python", "c"):
        accel.select(name)
        d = Decoder(2)
        d.stream_xid = stream_xid
        try:
            results.append((d.decode(payload), None))
        except DecodeError as exc:
            results.append((None, str(exc)))
    return results


@pytest.fixture(autouse=True)
def _restore():
    before = accel.IMPLEMENTATION
    yield
    accel.select(before)


def change_body(kind: str, marker: str, old, new) -> bytes:
    """An Insert/Update/Delete message after its relation id: tuples with their markers."""
    if kind == "I":
        return b"N" + encode_tuple(new)
    if kind == "U":
        return (marker.encode() + encode_tuple(old) if marker else b"") + b"N" + encode_tuple(new)
    return (marker or "K").encode() + encode_tuple(old)


@SETTINGS
@given(kind=st.sampled_from("IUD"), marker=st.sampled_from(["", "K", "O"]), old=tuple_data,
       new=tuple_data, relid=st.integers(0, 2**32 - 1), xid=st.none() | st.integers(0, 2**32 - 1))
def test_well_formed_changes_decode_alike(kind, marker, old, new, relid, xid):
    head = kind.encode() + (b"" if xid is None else struct.pack(">I", xid))
    head += struct.pack(">I", relid)
    body = change_body(kind, marker, old, new)
    payload = head + body
    (py, py_err), (c, c_err) = decode_both(payload, xid)
    assert py_err is None and c_err is None
    assert c == py and type(c) is type(py)
    assert type(py) is {"I": Insert, "U": Update, "D": Delete}[kind]
    tup = py.new_tuple if kind != "D" else (py.old_tuple or py.key_tuple)
    assert isinstance(tup, TupleData)
    # and every truncation: the same DecodeError from both
    for cut in range(len(payload)):
        (a, a_err), (b, b_err) = decode_both(payload[:cut], xid)
        assert (a, a_err) == (b, b_err)


@SETTINGS
@given(tag=st.sampled_from(b"IUD"), rest=st.binary(max_size=60), xid=st.none() | st.just(7))
def test_random_bytes_give_the_same_answer(tag, rest, xid):
    (a, a_err), (b, b_err) = decode_both(bytes([tag]) + rest, xid)
    assert a == b and a_err == b_err


def test_many_kinds_strings_are_not_confused():
    """The compiled side caches recent kinds strings: 40 shapes in turn, each right."""
    accel.select("c")
    d = Decoder(1)
    for i in range(40):
        kinds = "".join("bn"[(i >> j) & 1] for j in range(6))
        cols = [(k, b"x" if k == "b" else None) for k in kinds]
        msg = d.decode(b"I" + struct.pack(">I", 1) + b"N" + encode_tuple(cols))
        assert msg.new_tuple.kinds == kinds


images = st.lists(st.none() | st.binary(max_size=30), min_size=1, max_size=8).map(tuple)


@SETTINGS
@given(rows=st.lists(images, max_size=20), ops=st.lists(st.tuples(
    st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1), images), max_size=20))
def test_copy_streams_are_byte_for_byte_equal(rows, ops):
    fast = accel._load()
    assert fast is not None
    assert fast.copy_rows(rows, False) == copyfmt.copy_rows(rows)
    assert fast.copy_rows(ops, True) == copyfmt.copy_rows(ops, extra=True)


@SETTINGS
@given(oid=st.integers(0, 2**32 - 1), values=st.lists(st.none() | st.binary(max_size=30)))
def test_binary_arrays_are_byte_for_byte_equal(oid, values):
    fast = accel._load()
    assert fast is not None
    assert fast.binary_array(oid, tuple(values)) == copyfmt.binary_array(oid, tuple(values))


def test_bad_values_are_type_errors_in_both():
    fast = accel._load()
    assert fast is not None
    for enc in (copyfmt.copy_rows, fast.copy_rows):
        with pytest.raises(TypeError):
            enc([(b"a", 5)], False)
    for arr in (copyfmt.binary_array, fast.binary_array):
        with pytest.raises(TypeError):
            arr(23, ("x",))


def test_select_and_describe():
    accel.select("python")
    assert accel.fast is None and accel.describe().startswith("python")
    accel.select("c")
    assert accel.fast is not None and accel.describe() == "c (decoder._speedups)"
    with pytest.raises(ValueError, match="'c' or 'python'"):
        accel.select("cython")


@SETTINGS
@given(rows=st.integers(0, 12).flatmap(lambda n: st.lists(
    st.lists(st.none() | st.binary(max_size=12), min_size=4, max_size=4).map(tuple),
    max_size=n)), positions=st.lists(st.integers(0, 3), max_size=4))
def test_column_arrays_are_byte_for_byte_equal(rows, positions):
    fast = accel._load()
    assert fast is not None
    oids = [20 + i for i in range(len(positions))]
    assert fast.column_arrays(rows, positions, oids) == copyfmt.column_arrays(rows, positions,
                                                                              oids)
    for images, error in (([(b"a",), (b"a", b"b")], ValueError), ([(b"a",)], IndexError)):
        for impl in (fast.column_arrays, copyfmt.column_arrays):
            with pytest.raises(error):
                impl(images, [0, 1] if error is IndexError else [0], [23] * (
                    2 if error is IndexError else 1))


@SETTINGS
@given(kind=st.sampled_from("IUD"), marker=st.sampled_from(["", "K", "O"]), old=tuple_data,
       new=tuple_data, xid=st.none() | st.integers(0, 2**32 - 1),
       header=st.binary(min_size=24, max_size=24), view=st.booleans())
def test_frame_change_reads_the_change_inside_a_frame_as_decode_does(kind, marker, old, new,
                                                                    xid, header, view):
    """frame_change takes the whole CopyData (any buffer: libpq's memoryview or bytes) and
    gives what split_frame + Decoder.decode give for its payload."""
    head = kind.encode() + (b"" if xid is None else struct.pack(">I", xid)) + b"\0\0\0\5"
    body = change_body(kind, marker, old, new)
    payload = head + body
    frame = b"w" + header + payload
    fast = accel.compiled()
    got = fast.frame_change(memoryview(frame) if view else frame, xid)
    d = Decoder(2)
    d.stream_xid = xid
    assert got == d.decode(payload) and type(got) is type(d.decode(payload))
    for cut in range(len(frame)):  # truncated: never a wrong message, None or the same one
        part = fast.frame_change(memoryview(frame[:cut]) if view else frame[:cut], xid)
        assert part is None


def test_frame_change_leaves_everything_else_to_the_pure_path():
    fast = accel.compiled()
    keepalive = b"k" + b"\0" * 16 + b"\1"
    begin = b"w" + b"\0" * 24 + b"B" + b"\0" * 20
    assert fast.frame_change(keepalive, None) is None
    assert fast.frame_change(memoryview(begin), None) is None
    assert fast.frame_change(b"", None) is None
    with pytest.raises(TypeError):
        fast.frame_change("w" * 40, None)
