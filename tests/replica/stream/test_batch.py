"""The net-effect rules of replica.stream.batch against a model: any valid sequence of changes,
absorbed into one run and written the way apply.py writes it, leaves the same table as
applying the changes one by one (DESIGN.md invariants 2 and 3)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from decoder import TupleData
from replica.stream.batch import DELETE, FRESH, UPDATE, Layout, TableBatch, encode

NCOLS = 3  # key, a short value, a TOASTable value


def tup(raw, kinds=None) -> TupleData:
    return TupleData(kinds or "".join("n" if v is None else "b" for v in raw), tuple(raw))


def write(table: dict, b: TableBatch) -> None:
    """What apply.py does with a keyed run, on a dict (key -> full row)."""
    if b.truncated:
        table.clear()
    staged, patterns = b.staged()
    codes = {code: kinds for kinds, code in patterns.items()}
    for op, _, raw in staged:
        if op == DELETE:
            assert raw[0] in table, "DELETE of a key absent at run start"
            del table[raw[0]]
    for op, _, raw in staged:
        if op == UPDATE:
            assert raw[0] in table, "UPDATE of a key absent at run start"
            table[raw[0]] = raw
        elif op >= 10:
            assert raw[0] in table, "PATCH of a key absent at run start"
            kinds = codes[op]
            table[raw[0]] = tuple(o if k == "u" else v
                                  for o, v, k in zip(table[raw[0]], raw, kinds, strict=True))
    for raw in b.fresh_rows():
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
            b.insert(tup(source[k]))
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
            if not b.update(tup(sent, kinds), key_tuple, False):
                write(target, b)  # the barrier: write the run, move the row on the target
                row = target.pop(k)
                target[nk] = tuple(o if kk == "u" else v
                                   for o, v, kk in zip(row, sent, kinds, strict=True))
        elif op[0] == "del":
            _, k = op
            if k not in source:
                continue
            del source[k]
            b.delete(tup((k, None, None), "bnn"))
        else:
            source.clear()
            b.truncate()
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
            b.insert(tup(row))
        elif op[0] in ("upd", "del"):
            present = sorted((r for r, n in source.items() if n > 0), key=repr)
            if not present:
                continue
            old = present[int(op[1][1:]) % len(present)]
            source[old] -= 1
            if op[0] == "del":
                b.delete(tup(old))
            else:
                keep = op[4] is None and old[2] is not None
                new = (b"x", op[3], old[2] if keep else op[4])
                source[new] += 1
                sent, kinds = ((b"x", op[3], None), "bbu") if keep else (new, None)
                assert b.update(tup(sent, kinds), tup(old), True)
        else:
            source.clear()
            b.truncate()
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
