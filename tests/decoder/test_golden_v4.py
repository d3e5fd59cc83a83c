"""Golden tests for what PostgreSQL 16+ adds to pgoutput, recorded from real 16/17/18 servers.

- protocol 4 with ``streaming 'parallel'``: Stream Abort also carries the abort's LSN and
  time (25 bytes instead of 9), so a parallel apply worker can record where it stopped;
  with ``streaming 'on'`` the same abort stays 9 bytes. (18 also stops streaming a
  transaction that is already known to have aborted.)
- the ``origin`` option (16+): ``'none'`` drops transactions that carry a replication origin
  (changes that arrived by replication), ``'any'`` sends them with an Origin message.

The source versions are fix_pg's (``make test``: 17, ``make test-all``: 16, 17, 18); 15 has
neither feature and is left out.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from decoder import Begin, Commit, Insert, Origin, StreamAbort, StreamCommit, StreamStart

pytestmark = pytest.mark.source_versions(min=16)

SMALL_WORK_MEM = "-c logical_decoding_work_mem=64kB"
ROWS = "SELECT g, repeat('x', 100) FROM generate_series(%s::int, %s::int) g"


def _xid(conn) -> int:
    return int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])


def _streamed_with_aborts(db) -> tuple[int, int, int, datetime]:
    """A streamed transaction with a rolled-back subtransaction, then one that aborts whole.
    Returns (top xid, aborted subxid, aborted top xid, time before the first abort)."""
    with db.connect(autocommit=False) as conn:
        top = _xid(conn)
        before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute("INSERT INTO big " + ROWS, (1, 1500))
        conn.execute("SAVEPOINT s1")
        conn.execute("INSERT INTO big " + ROWS, (1501, 3000))
        sub = int(conn.execute("SELECT transactionid::text FROM pg_locks WHERE pid = "
                               "pg_backend_pid() AND locktype = 'transactionid' AND "
                               "transactionid::text <> %s", (str(top),)).fetchone()[0])
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute("INSERT INTO big " + ROWS, (3001, 4000))
        conn.commit()
    with db.connect(autocommit=False) as conn:
        aborted = _xid(conn)
        conn.execute("INSERT INTO big " + ROWS, (5001, 8000))
        conn.rollback()
    return top, sub, aborted, before


@pytest.mark.parametrize("streaming", ["parallel", "on"])
def test_protocol_4_stream_abort_carries_lsn_and_time_only_when_parallel(
        source_db, source_version, streaming, stream):
    db = source_db
    db.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE big")
    slot, lsn = stream.create_slot(db)
    top, sub, aborted, before = _streamed_with_aborts(db)
    (after,) = db.execute("SELECT clock_timestamp()")[0]
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, proto=4, extra={"streaming": streaming},
                         dsn_options=SMALL_WORK_MEM)

    # 18 no longer streams a transaction already known to have aborted when it outgrows
    # the work memory (it is decoded here after the fact): nothing of it is sent at all.
    whole = {aborted} if source_version < 18 else set()
    assert {s.xid for s in cap.of(StreamStart)} == {top} | whole
    (commit,) = cap.of(StreamCommit)
    assert commit.xid == top
    by_sub = {a.subxid: a for a in cap.of(StreamAbort)}
    assert set(by_sub) == {sub} | whole
    assert by_sub[sub].xid == top and all(by_sub[x].xid == x for x in whole)
    if streaming == "on":
        assert all(a.abort_lsn is None and a.abort_time is None for a in by_sub.values())
        return
    # where each abort happened: the rolled-back subtransaction inside its top-level one,
    # the whole-transaction abort after that one committed
    sub_abort = by_sub[sub]
    assert lsn <= sub_abort.abort_lsn < commit.commit_lsn
    assert sub_abort.abort_time <= commit.commit_time
    for x in whole:
        assert commit.end_lsn <= by_sub[x].abort_lsn
        assert commit.commit_time <= by_sub[x].abort_time
    for a in by_sub.values():
        assert a.abort_time.tzinfo is UTC and before <= a.abort_time <= after
    kept = sorted(m.new_tuple.values(cap.decoder.relation(m.relation_id))[0]
                  for m in cap.of(Insert) if m.xid not in by_sub)
    assert kept == list(range(1, 1501)) + list(range(3001, 4001))


def test_origin_option_filters_or_labels_replicated_changes(source_db, source_version, stream):
    db = source_db
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    slot_any, lsn_any = stream.create_slot(db)
    slot_none, lsn_none = stream.create_slot(db)
    origin = f"upstream_{db.name}"
    db.execute("SELECT pg_replication_origin_create(%s)", (origin,))
    try:
        with db.connect() as conn:  # as a subscriber's apply worker writes
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (origin,))
            with conn.transaction():
                conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
                conn.execute("INSERT INTO t VALUES (1, 'replicated')")
            conn.execute("SELECT pg_replication_origin_session_reset()")
        db.execute("INSERT INTO t VALUES (2, 'local')")
        stream.end_marker(db)
        labelled = stream.capture(db, slot_any, lsn_any, proto=4, extra={"origin": "any"})
        local = stream.capture(db, slot_none, lsn_none, proto=4, extra={"origin": "none"})
    finally:  # (the slots go with the database)
        db.execute("SELECT pg_replication_origin_drop(%s)", (origin,))

    assert labelled.names() == ["Begin", "Origin", "Relation", "Insert", "Commit",
                                "Begin", "Insert", "Commit"]
    (o,) = labelled.of(Origin)
    assert (o.name, o.commit_lsn) == (origin, 0xABCDEF)
    assert labelled.rows(Insert) == [(1, "replicated"), (2, "local")]
    assert local.names() == ["Begin", "Relation", "Insert", "Commit"]
    assert local.rows(Insert) == [(2, "local")]
    # the local transaction is the same one in both streams
    assert local.of(Begin)[0] == labelled.of(Begin)[1]
    assert local.of(Commit)[0] == labelled.of(Commit)[1]
