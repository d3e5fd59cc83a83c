"""Full-row updates written as a delete of their keys and a COPY of the new images.

A run's full-row updates replace their rows whole (apply.py ``_write_arrays``): the end state
must be what ``UPDATE ... FROM`` gave - every column new, the other operations of the run in
place, partial updates (unchanged TOAST) untouched by it, and an update of a key the target
does not hold still leaves nothing (the UPDATE matched no row), whether the run is small
(new rows through the stage) or big (COPY straight into the table)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import psycopg
import pytest

from decoder import Delete, Insert, TupleData, Update
from replica.stream.apply import TargetWriter, apply_change
from replica.stream.batch import Layout
from replica.stream.runs import SMALL_RUN
from replica.stream.tables import MirroredTable
from replica.target import progress

SLOT = "replace_test"
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def _row(key: tuple[int, ...], v: str | None, n: float) -> TupleData:
    keys = tuple(struct.pack(">i", k) for k in key)
    if v is None:  # an unchanged TOAST value: the target keeps its own
        return TupleData("b" * len(key) + "ub", (*keys, None, struct.pack(">d", n)))
    return TupleData("b" * len(key) + "bb", (*keys, v.encode(), struct.pack(">d", n)))


def _key(key: tuple[int, ...]) -> TupleData:
    return TupleData("b" * len(key) + "nn", (*(struct.pack(">i", k) for k in key), None, None))


def _table(replica_db, composite: bool, rows: int) -> MirroredTable:
    keys = ("id", "k2") if composite else ("id",)
    if composite:
        replica_db.execute("CREATE TABLE public.r (id int4, k2 int4, v text, n float8,"
                           " PRIMARY KEY (id, k2))")
        replica_db.execute("INSERT INTO public.r SELECT g, g, 'old' || g, g"
                           " FROM generate_series(1, %s) g", (rows,))
    else:
        replica_db.execute("CREATE TABLE public.r (id int4 PRIMARY KEY, v text, n float8)")
        replica_db.execute("INSERT INTO public.r SELECT g, 'old' || g, g"
                           " FROM generate_series(1, %s) g", (rows,))
    with psycopg.connect(replica_db.dsn, autocommit=True) as c:
        progress.ensure(c)
        progress.start(c, SLOT, 100, "sys")
    layout = Layout("public.r", (*keys, "v", "n"), ("int4",) * len(keys) + ("text", "float8"),
                    tuple(range(len(keys))))
    return MirroredTable(16700, "public", "r", layout, sync_lsn=0)


@pytest.mark.parametrize("composite", [False, True], ids=["one key", "composite key"])
@pytest.mark.parametrize("updated", [3, SMALL_RUN + 200], ids=["small run", "big run"])
@pytest.mark.parametrize("ghost", [False, True], ids=["all there", "one absent"])
def test_full_row_updates_replace_rows_and_an_absent_key_stays_absent(replica_db, composite,
                                                                     updated, ghost):
    rows = updated + 10
    table = _table(replica_db, composite, rows)
    k = (lambda i: (i, i)) if composite else (lambda i: (i,))
    writer = TargetWriter(psycopg.connect(replica_db.dsn), SLOT)
    try:
        changes = [Update(None, 16700, None, None, _row(k(i), f"new{i}", -i))
                   for i in range(1, updated + 1)]
        changes += [
            Delete(None, 16700, None, _key(k(rows))),  # a delete in the same statement
            Insert(None, 16700, _row(k(rows + 1), "fresh", 0.5)),  # a new row beside them
            Update(None, 16700, None, None, _row(k(rows - 1), None, 99.0)),  # a patch
        ]
        if ghost:  # an update of a key the target does not hold
            changes.append(Update(None, 16700, None, None, _row(k(rows + 50), "ghost", 1.0)))
        for msg in changes:
            apply_change(msg, table, table.batch, writer)
        writer.flush(table)
        writer.commit(5000, WHEN)
        got = {r[:-2]: r[-2:] for r in replica_db.execute("SELECT * FROM public.r")}
        assert len(got) == rows  # one deleted, one new, the absent key not made up
        assert all(got[k(i)] == (f"new{i}", -i) for i in range(1, updated + 1))
        assert k(rows) not in got and k(rows + 50) not in got
        assert got[k(rows + 1)] == ("fresh", 0.5)
        assert got[k(rows - 1)] == (f"old{rows - 1}", 99.0)  # its TOAST value kept
        assert got[k(rows - 2)] == (f"old{rows - 2}", rows - 2)  # untouched
    finally:
        writer.close()
