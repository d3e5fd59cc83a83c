"""The compiled per-version step (decoder._speedups.HistoryStep, replica/history/compiled.py)
records exactly what the pure Recorder.change does, version by version, on generated
changes: inserts, updates with unchanged TOAST ('u'), key changes (by key or old image),
deletes by key or old image, truncates, a key-less table, a table without history, a table
re-shaped under the same relation id, a change the pure code rejects, and spills to the
writer (busy or free). No server: the recorders' buffers are compared."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoder import Delete, Insert, Update, accel
from decoder.messages import TupleData
from replica.history import recorder as R
from replica.stream.batch import Layout
from replica.stream.tables import MirroredTable

pytestmark = pytest.mark.skipif(not accel.available(), reason="decoder._speedups not built")

KEYED = MirroredTable(7, "public", "t", Layout("public.t", ("id", "v", "n"),
                                                ("int", "text", "int"), (0,)), 0)
TWO_KEYS = MirroredTable(8, "public", "k", Layout("public.k", ("a", "b", "t"),
                                                  ("int", "int", "text"), (0, 1)), 0)
KEYLESS = MirroredTable(9, "public", "bag", Layout("public.bag", ("x", "y"),
                                                   ("int", "text"), ()), 0)
OFF = MirroredTable(10, "public", "off", Layout("public.off", ("id", "v"),
                                                ("int", "text"), (0,)), 0)
RESHAPED = MirroredTable(7, "public", "t", Layout("public.t", ("id", "v", "n", "extra"),
                                                  ("int", "text", "int", "text"), (0,)), 0)
TABLES = (KEYED, TWO_KEYS, KEYLESS, OFF, RESHAPED)
WANTED = frozenset({"public.t", "public.k", "public.bag"})

_value = st.one_of(st.none(), st.sampled_from([b"", b"a", b"k1", b"k2"]), st.binary(max_size=9))
_change = st.tuples(
    st.integers(0, len(TABLES) - 1),
    st.sampled_from("IUKODdXTWB"),  # insert, update, key change (key / old), delete (old /
    # key), a delete the pure code rejects, truncate, writer busy/free, begin
    st.lists(_value, min_size=4, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),  # which columns are sent as 'u'
)


class _Hands:
    """The target writer as the recorder sees it: what ``spill`` hands over (``submit``)."""

    def __init__(self) -> None:
        self.given: list = []

    def submit(self, run, call) -> None:
        self.given.append((run, call))


def _image(tw: MirroredTable, values: list, toast: list[bool] | None = None) -> TupleData:
    n = len(tw.layout.columns)
    raw = tuple(None if toast and toast[i] else values[i] for i in range(n))
    kinds = "".join("u" if toast and toast[i] else "n" if raw[i] is None else "b"
                    for i in range(n))
    return TupleData(kinds, raw)


def _message(tw: MirroredTable, op: str, values: list, toast: list[bool]):
    rid = tw.relation_id
    new = _image(tw, values, toast if op in "UKO" else None)
    if op == "I":
        return Insert(None, rid, new)
    if op == "U":
        return Update(None, rid, None, None, new)
    moved = [v + b"'" if v is not None else b"m" for v in values]
    if op == "K":
        return Update(None, rid, None, _image(tw, moved), new)
    if op == "O":  # REPLICA IDENTITY FULL: the whole old row (its key may be the same)
        return Update(None, rid, _image(tw, values if toast[3] else moved), None, new)
    if op == "D":
        return Delete(None, rid, _image(tw, values), None)
    if op == "d":
        return Delete(None, rid, None, _image(tw, values))
    return Delete(None, rid, None, None)  # "X": neither image (the pure code raises)


def _state(rec: R.Recorder) -> tuple:
    return rec._seq, rec._buffered, rec._time, rec._lsn, list(rec._free)


def _run(rec: R.Recorder, changes, hands: _Hands) -> list:
    """Feed ``changes``; what each step did (an exception's type, the state after) and, at
    the end, every version still buffered and every one handed to the writer."""
    out: list = []
    rec.attach(hands)  # type: ignore[arg-type]  # the writer's side of spill is submit()
    rec.take = lambda: rec._taken()  # type: ignore[method-assign]  # the rows, not a call
    when = datetime(2026, 12, 4, 10, tzinfo=UTC)
    rec.begin(0x1_0000_0000, when)
    for i, (table, op, values, toast) in enumerate(changes):
        tw = TABLES[table]
        try:
            if op == "T":
                rec.truncate(tw)
            elif op == "W":
                rec._free = [not rec._free[0]]
            elif op == "B":
                rec.begin(0x1_0000_0000 + i, when + timedelta(microseconds=i))
            else:
                rec.change(tw, _message(tw, op, values, toast))
        except Exception as exc:  # noqa: BLE001 - compared: the same type on both sides
            out.append(type(exc).__name__)
        out.append(_state(rec))
    out.append([(t.tw, images) for t, images in rec._taken()])
    out.append([(run, [(t.tw, images) for t, images in call]) for run, call in hands.given])
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_change, max_size=60), st.sampled_from([0, 4090, 2**31 - 3]))
def test_compiled_step_records_what_the_pure_one_does(monkeypatch_spill, changes, first_seq):
    from replica.history.compiled import CompiledRecorder
    got = []
    for make in (R.Recorder, CompiledRecorder):
        was = accel.IMPLEMENTATION
        accel.select("c" if make is CompiledRecorder else "python")
        try:
            rec = make(WANTED, None)
            assert type(rec.change).__name__ == (
                "builtin_function_or_method" if make is CompiledRecorder else "method")
            rec._seq = first_seq  # past the packed table, and up to int4's end (the pure
            got.append(_run(rec, changes, _Hands()))  # code raises past it)
        finally:
            accel.select(was)
    assert got[0] == got[1]


@pytest.fixture(scope="module")
def monkeypatch_spill():
    """SPILL at 3 versions, so that generated changes spill (both recorders read it)."""
    was, R.SPILL = R.SPILL, 3
    yield
    R.SPILL = was


def test_recorder_for_picks_the_compiled_step_with_the_compiled_path():
    from replica.history.compiled import CompiledRecorder
    opts = type("Settings", (), {"history": "public.t", "history_retention": "7d"})()
    was = accel.IMPLEMENTATION
    try:
        accel.select("c")
        rec = R.recorder_for(opts)
        assert type(rec) is CompiledRecorder and rec.retention == timedelta(days=7)
        assert type(rec.streamed()).__name__ == "CompiledStagedRecorder"
        accel.select("python")
        assert type(R.recorder_for(opts)) is R.Recorder
    finally:
        accel.select(was)
