"""The net-effect rules of replica.stream.batch against a model: any valid sequence of changes,
absorbed into one run and written the way apply.py writes it, leaves the same table as
applying the changes one by one (DESIGN.md invariants 2 and 3). The changes go in as
messages through ``TableBatch.absorb``, so these run against the compiled netting and the
pure methods (conftest.py's ``impl``); one more test compares the two change by change."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoder import Delete, Insert, Truncate, TupleData, Update, accel
from replica.errors import UnsupportedError
from replica.stream.batch import DELETE, FRESH, UPDATE, Layout, TableBatch, encode

NCOLS = 3  # key, a short value, a TOASTable value


def tup(raw, kinds=None) -> TupleData:
    return TupleData(kinds or "".join("n" if v is None else "b" for v in raw), tuple(raw))


def ins(b: TableBatch, new: TupleData) -> None:
    assert b.absorb(Insert(None, 1, new))


def upd(b: TableBatch, new: TupleData, old: TupleData | None, full: bool) -> bool:
    return b.absorb(Update(None, 1, old if full else None, None if full else old, new))


def dele(b: TableBatch, old: TupleData, full: bool = False) -> None:
    assert b.absorb(Delete(None, 1, old if full else None, None if full else old))


def write(table: dict, b: TableBatch) -> None:
    """What apply.py does with a keyed run, on a dict (key -> full row)."""
    if b.truncated:
        table.clear()
    fresh, deletes, updates, patches, patterns = b.split()
    staged, _ = b.staged()  # the stage's rows, as the split gives them
    assert sorted(staged, key=repr) == sorted(
        [(DELETE, 0, r) for r in deletes] + [(UPDATE, 0, r) for r in updates] + patches, key=repr)
    assert fresh == b.fresh_rows()
    codes = {code: kinds for kinds, code in patterns.items()}
    for raw in deletes:
        assert raw[0] in table, "DELETE of a key absent at run start"
        del table[raw[0]]
    for raw in updates:
        assert raw[0] in table, "UPDATE of a key absent at run start"
        table[raw[0]] = raw
    for op, _, raw in patches:
        assert op >= 10 and raw[0] in table, "PATCH of a key absent at run start"
        kinds = codes[op]
        table[raw[0]] = tuple(o if k == "u" else v
                              for o, v, k in zip(table[raw[0]], raw, kinds, strict=True))
    for raw in fresh:
        assert raw[0] not in table, "FRESH row whose key exists"
        table[raw[0]] = raw
    b.clear()


# A change: ('ins', key, a, big) / ('upd', key, newkey, a, big|None=unchanged TOAST) /
# ('del', key) / ('trunc',). Keys and values are drawn small so they collide often.
keys = st.integers(0, 6).map(lambda i: b"k%d" % i)
vals = st.integers(0, 3).map(lambda i: b"v%d" % i)
bigs = st.one_of(st.none(), st.integers(0, 3).map(lambda i: b"B%d" % i))
ops = st.lists(st.one_of(
    st.tuples(st.just("ins"), keys, vals, bigs),
    st.tuples(st.just("upd"), keys, keys, vals, st.one_of(st.none(), bigs)),
    st.tuples(st.just("del"), keys),
    st.tuples(st.just("trunc"))), max_size=40)
starts = st.dictionaries(keys, st.tuples(vals, bigs), max_size=5)


@settings(max_examples=400, deadline=None)
@given(start=starts, changes=ops, unchanged=st.booleans())
def test_keyed_run_equals_one_by_one(start, changes, unchanged):
    source = {k: (k, a, b) for k, (a, b) in start.items()}
    target = dict(source)
    b = TableBatch(Layout("public.t", ("id", "a", "big"), ("bytea",) * 3, (0,)))
    for op in changes:
        if op[0] == "ins":
            _, k, a, big = op
            if k in source:
                continue
            source[k] = (k, a, big)
            ins(b, tup(source[k]))
        elif op[0] == "upd":
            _, k, nk, a, big = op
            if k not in source or (nk != k and nk in source):
                continue
            old = source.pop(k)
            keep_toast = unchanged and big is None and old[2] is not None
            new = (nk, a, old[2] if keep_toast else big)
            source[nk] = new
            kinds = "bbu" if keep_toast else None
            sent = (nk, a, None) if keep_toast else new
            key_tuple = tup((k, None, None), "bnn") if nk != k else None
            if not upd(b, tup(sent, kinds), key_tuple, False):
                write(target, b)  # the barrier: write the run, move the row on the target
                row = target.pop(k)
                target[nk] = tuple(o if kk == "u" else v
                                   for o, v, kk in zip(row, sent, kinds, strict=True))
        elif op[0] == "del":
            _, k = op
            if k not in source:
                continue
            del source[k]
            dele(b, tup((k, None, None), "bnn"))
        else:
            source.clear()
            assert b.absorb(Truncate(None, (1,), False, False))
    write(target, b)
    assert target == source


@settings(max_examples=300, deadline=None)
@given(start=st.lists(st.tuples(vals, bigs), max_size=5), changes=ops)
def test_multiset_run_equals_one_by_one(start, changes):
    """REPLICA IDENTITY FULL without a key: rows are a multiset; old images are complete."""
    source = Counter((b"x", a, big) for a, big in start)
    target = Counter(source)
    b = TableBatch(Layout("public.t", ("k", "a", "big"), ("bytea",) * 3, ()))
    for op in changes:
        if op[0] == "ins":
            row = (b"x", op[2], op[3])
            source[row] += 1
            ins(b, tup(row))
        elif op[0] in ("upd", "del"):
            present = sorted((r for r, n in source.items() if n > 0), key=repr)
            if not present:
                continue
            old = present[int(op[1][1:]) % len(present)]
            source[old] -= 1
            if op[0] == "del":
                dele(b, tup(old), full=True)
            else:
                keep = op[4] is None and old[2] is not None
                new = (b"x", op[3], old[2] if keep else op[4])
                source[new] += 1
                sent, kinds = ((b"x", op[3], None), "bbu") if keep else (new, None)
                assert upd(b, tup(sent, kinds), tup(old), True)
        else:
            source.clear()
            assert b.absorb(Truncate(None, (1,), False, False))
    if b.truncated:
        target.clear()
    for raw in b.fresh_rows():
        target[raw] += 1
    staged, _ = b.staged()
    for op, n, raw in staged:
        assert op == DELETE and target[raw] >= n
        target[raw] -= n
    assert +target == +source


def test_insert_then_delete_leaves_nothing_and_insert_after_delete_updates():
    b = TableBatch(Layout("public.t", ("id", "v"), ("int4", "text"), (0,)))
    b.insert(tup((b"1", b"a")))
    b.delete(tup((b"1", None), "bn"))
    assert b.empty and b.ops == [1, 0, 1, 0]
    b.delete(tup((b"2", None), "bn"))
    b.insert(tup((b"2", b"b")))
    assert b.entries == {b"2": (UPDATE, (b"2", b"b"), None)}
    b.insert(tup((b"3", b"c")))
    assert b.entries[b"3"][0] == FRESH


def test_unchanged_toast_is_filled_from_the_run_or_left_to_the_target():
    b = TableBatch(Layout("public.t", ("id", "v", "big"), ("int4", "text", "text"), (0,)))
    b.insert(tup((b"1", b"a", b"BIG")))
    assert b.update(tup((b"1", b"b", None), "bbu"), None, False)
    assert b.entries[b"1"] == (FRESH, (b"1", b"b", b"BIG"), None)
    assert b.update(tup((b"2", b"c", None), "bbu"), None, False)  # unknown here: a patch
    staged, patterns = b.staged()
    assert patterns == {"bbu": 10} and staged == [(10, 0, (b"2", b"c", None))]


def test_encode_is_copy_binary():
    data = encode([(b"\x00\x00\x00\x01", None)])
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert data[19:] == b"\x00\x02" + b"\x00\x00\x00\x04\x00\x00\x00\x01" + b"\xff" * 4 \
        + b"\xff\xff"


# -- the compiled netting against the pure methods, change by change ------------------------

cell = st.sampled_from([b"k0", b"k1", b"k2", None])
kinds_of = st.sampled_from("bbbbbnut")  # mostly plain values; NULL, unchanged TOAST, text


@st.composite
def images(draw) -> TupleData:
    kinds = "".join(draw(kinds_of) for _ in range(3))
    raw = tuple(None if k in "nu" else draw(cell) or b"v" for k in kinds)
    return TupleData(kinds, raw)


messages = st.lists(st.one_of(
    st.builds(lambda new: Insert(None, 1, new), images()),
    st.builds(lambda new, old, how: Update(None, 1, old if how == "O" else None,
                                           old if how == "K" else None, new),
              images(), images(), st.sampled_from("OKN")),
    st.builds(lambda old, how: Delete(None, 1, old if how == "O" else None,
                                      old if how == "K" else None),
              images(), st.sampled_from("OK")),
    st.just(Truncate(None, (1,), False, False))), max_size=30)


def outcome(absorb, msg):
    try:
        return absorb(msg)
    except (UnsupportedError, AttributeError) as exc:  # text values, no old row: both raise
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(key_pos=st.sampled_from([(0,), (0, 1), (2, 0), ()]), msgs=messages)
def test_compiled_netting_equals_the_pure_methods(key_pos, msgs):
    """Any messages, also ones the stream never sends: after each, the same return (or the
    same error), the same entries, counts and counters."""
    if accel.IMPLEMENTATION != "c":  # (the autouse impl fixture chose)
        pytest.skip("compares the compiled netting with the pure methods")
    layout = Layout("public.t", ("a", "b", "c"), ("bytea",) * 3, key_pos)
    pure, compiled = TableBatch(layout), TableBatch(layout)
    for msg in msgs:
        assert outcome(compiled.absorb, msg) == outcome(pure.absorb_pure, msg)
        assert (compiled.entries, compiled.counts, compiled.ops, compiled.truncated) == \
            (pure.entries, pure.counts, pure.ops, pure.truncated)
    if key_pos:
        assert compiled.split() == pure.split_pure()


def test_the_compiled_netting_takes_the_plain_changes(impl):
    """What the stream sends most (inserts, deletes, updates without unchanged TOAST) is
    netted in C: ``net`` says True; what it leaves to the methods it says None about."""
    if impl != "c":
        pytest.skip("the compiled netting")
    net = accel.fast.net
    b = TableBatch(Layout("public.t", ("id", "v"), ("int4", "text"), (0,)))
    assert net(b, Insert(None, 1, tup((b"1", b"a"))))
    assert net(b, Update(None, 1, None, None, tup((b"1", b"b"))))
    assert net(b, Delete(None, 1, None, tup((b"2", None), "bn")))
    assert net(b, Update(None, 1, None, None, tup((b"3", None), "bu"))) is None
    assert net(b, Insert(None, 1, tup((b"4", b"x"), "bt"))) is None
    assert net(b, Truncate(None, (1,), False, False)) is None
    assert net(object(), Insert(None, 1, tup((b"1", b"a")))) is None
    assert b.entries == {b"1": (FRESH, (b"1", b"b"), None), b"2": (DELETE, (b"2", None), None)}
    assert b.ops == [1, 1, 1, 0]
