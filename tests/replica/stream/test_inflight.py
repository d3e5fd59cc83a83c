"""Streamed transactions' bookkeeping (protocol 2), against a real target: savepoints per
subtransaction, subtransaction and whole aborts, and the commit with its progress row."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import psycopg

from decoder import Insert, StreamAbort, TupleData
from replica.stream.apply import TargetWriter, apply_change
from replica.stream.batch import Layout
from replica.stream.inflight import StreamedApply
from replica.stream.tables import MirroredTable
from replica.target import progress

SLOT = "inflight_test"


def _row(i: int, v: str) -> TupleData:
    return TupleData("bb", (struct.pack(">i", i), v.encode()))


def _setup(replica_db):
    replica_db.execute("CREATE TABLE public.t (id int4 PRIMARY KEY, v text)")
    with psycopg.connect(replica_db.dsn, autocommit=True) as c:
        progress.ensure(c)
        progress.start(c, SLOT, 100, "sys")
    table = MirroredTable(16500, "public", "t",
                          Layout("public.t", ("id", "v"), ("int4", "text"), (0,)), sync_lsn=0)
    writers: list[TargetWriter] = []

    def new_writer() -> TargetWriter:
        writers.append(TargetWriter(psycopg.connect(replica_db.dsn), SLOT))
        return writers[-1]

    return table, StreamedApply(new_writer, segment_rows=1), writers


def _change(streamed: StreamedApply, table: MirroredTable, xid: int, i: int) -> None:
    msg = Insert(xid, table.relation_id, _row(i, f"v{i}"))
    to = streamed.route(msg, table, decided_lsn=0)
    assert to is not None  # applied as it comes, not kept
    apply_change(msg, *to)


def test_a_subtransaction_abort_rolls_back_to_its_savepoint_and_the_rest_commits(replica_db):
    table, streamed, writers = _setup(replica_db)
    try:
        streamed.start(700)
        _change(streamed, table, 700, 1)
        _change(streamed, table, 701, 2)  # a subtransaction: a savepoint is set first
        txn = streamed.current
        assert txn.savepoints == [701]
        _change(streamed, table, 700, 3)
        streamed.stop()
        streamed.abort(StreamAbort(700, 701))  # subtransaction 701 rolled back on the source
        assert replica_db.execute("SELECT count(*) FROM public.t") == [(0,)]  # not committed
        done = streamed.finish(700)
        streamed.commit(done, 5000, datetime(2026, 1, 1, tzinfo=UTC))
        assert replica_db.execute("SELECT id FROM public.t ORDER BY id") == [(1,)]
        assert replica_db.execute(
            "SELECT end_lsn::text FROM pgml_replica.progress WHERE slot = %s", (SLOT,)) \
            == [("0/1388",)]
        assert streamed.in_flight == {}
    finally:
        streamed.close()
        for w in writers:
            w.close()


def test_a_whole_abort_leaves_nothing_and_its_connection_is_reused(replica_db):
    table, streamed, writers = _setup(replica_db)
    try:
        streamed.start(800)
        _change(streamed, table, 800, 10)
        streamed.stop()
        streamed.abort(StreamAbort(800, 800))
        assert streamed.in_flight == {}
        streamed.start(801)  # the next streamed transaction takes the pooled connection
        assert len(writers) == 1
        _change(streamed, table, 801, 11)
        streamed.stop()
        streamed.commit(streamed.finish(801), 6000, datetime(2026, 1, 1, tzinfo=UTC))
        assert replica_db.execute("SELECT id FROM public.t ORDER BY id") == [(11,)]
    finally:
        streamed.close()
        for w in writers:
            w.close()
