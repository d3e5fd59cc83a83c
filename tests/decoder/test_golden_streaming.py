"""Golden tests for protocol 2 (streaming of large transactions) and protocol 3 (two-phase).

A transaction streams once it outgrows ``logical_decoding_work_mem``; it is set to 64kB on
the replication connection (``options=-c logical_decoding_work_mem=64kB`` in the DSN, the
walsender's own session), so a few thousand rows are enough.
"""

from __future__ import annotations

from psycopg import sql

from decoder import (
    BeginPrepare,
    CommitPrepared,
    Insert,
    LogicalMessage,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
)

SMALL_WORK_MEM = "-c logical_decoding_work_mem=64kB"
ROWS = "SELECT g, repeat('x', 100) FROM generate_series(%s::int, %s::int) g"


def _xid(conn) -> int:
    return int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])


def _held_xids(conn) -> set[int]:
    """The xids this session's transaction holds: the top-level one and live subxacts."""
    rows = conn.execute("SELECT transactionid::text FROM pg_locks WHERE pid = "
                        "pg_backend_pid() AND locktype = 'transactionid'").fetchall()
    return {int(r[0]) for r in rows}


def _blocks(cap) -> list[list]:
    """The messages between each StreamStart and its StreamStop."""
    blocks, current = [], None
    for m in cap.messages:
        if isinstance(m, StreamStart):
            current = [m]
        elif isinstance(m, StreamStop):
            blocks.append(current[1:])
            current = None
        elif current is not None:
            current.append(m)
    return blocks


def test_streamed_transaction_with_an_aborted_subtransaction(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE big")
    slot, lsn = stream.create_slot(db)
    with db.connect(autocommit=False) as conn:
        top = _xid(conn)
        conn.execute("INSERT INTO big " + ROWS, (1, 1500))
        conn.execute("SELECT pg_logical_emit_message(true, 'in-stream', 'x')")
        conn.execute("SAVEPOINT s1")
        conn.execute("INSERT INTO big " + ROWS, (1501, 3000))
        (sub,) = _held_xids(conn) - {top}
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute("RELEASE SAVEPOINT s1")
        conn.execute("SAVEPOINT s2")
        conn.execute("INSERT INTO big " + ROWS, (3001, 4000))
        (kept_sub,) = _held_xids(conn) - {top}
        conn.execute("RELEASE SAVEPOINT s2")
        conn.commit()
    with db.connect(autocommit=False) as conn:  # a big transaction that aborts entirely
        aborted = _xid(conn)
        conn.execute("INSERT INTO big " + ROWS, (5001, 8000))
        conn.rollback()
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, proto=2, binary=binary, extra={"streaming": "on"},
                         dsn_options=SMALL_WORK_MEM)

    starts = cap.of(StreamStart)
    assert len(starts) >= 2 and len(cap.of(StreamStop)) == len(starts)
    assert starts[0] == StreamStart(top, True)
    assert all(not s.first_segment for s in starts if s.xid == top and s is not starts[0])
    assert {s.xid for s in starts} == {top, aborted}
    # Inside a block every change carries its (sub)transaction's xid.
    inside = [m for block in _blocks(cap) for m in block]
    assert {m.xid for m in inside if isinstance(m, Insert)} == {top, sub, kept_sub, aborted}
    assert all(m.xid in (top, sub, kept_sub, aborted) for m in inside
               if isinstance(m, Relation | LogicalMessage))
    msg = [m for m in inside if isinstance(m, LogicalMessage)]
    assert [(m.xid, m.prefix, m.transactional) for m in msg] == [(top, "in-stream", True)]

    aborts = cap.of(StreamAbort)
    assert StreamAbort(top, sub) in aborts
    assert StreamAbort(aborted, aborted) in aborts
    assert all(a.subxid != kept_sub for a in aborts)
    assert all(a.abort_lsn is None and a.abort_time is None for a in aborts)
    (commit,) = cap.of(StreamCommit)
    assert commit.xid == top and commit.end_lsn > commit.commit_lsn
    assert commit.commit_time.tzinfo is not None
    assert cap.messages.index(StreamAbort(top, sub)) < cap.messages.index(commit)

    # Applying the stream as a subscriber would: drop the aborted (sub)transactions.
    rel = cap.decoder.relations[cap.of(Relation)[0].relation_id]
    dropped = {a.subxid for a in aborts}
    kept = sorted(m.new_tuple.values(rel)[0] for m in inside
                  if isinstance(m, Insert) and m.xid not in dropped)
    assert kept == list(range(1, 1501)) + list(range(3001, 4001))
    assert cap.decoder.in_stream is False


def test_two_phase_prepare_commit_and_rollback(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    slot, lsn = stream.create_slot(db, two_phase=True)
    xids = {}
    for gid, rows in (("gid-commit", (1, 2)), ("gid-rollback", (3, 4))):
        with db.connect(autocommit=True) as conn:
            conn.execute("BEGIN")
            xids[gid] = _xid(conn)
            conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g",
                         rows)
            conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
    db.execute("COMMIT PREPARED 'gid-commit'")
    db.execute("ROLLBACK PREPARED 'gid-rollback'")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, proto=3, binary=binary, extra={"two_phase": "on"})

    assert cap.names() == [
        "BeginPrepare", "Relation", "Insert", "Insert", "Prepare",
        "BeginPrepare", "Insert", "Insert", "Prepare",
        "CommitPrepared", "RollbackPrepared"]
    bp1, bp2 = cap.of(BeginPrepare)
    p1, p2 = cap.of(Prepare)
    (cp,) = cap.of(CommitPrepared)
    (rp,) = cap.of(RollbackPrepared)
    assert (bp1.gid, bp1.xid, p1.gid, p1.xid) == ("gid-commit", xids["gid-commit"],
                                                   "gid-commit", xids["gid-commit"])
    assert (bp2.gid, p2.xid) == ("gid-rollback", xids["gid-rollback"])
    assert bp1.prepare_lsn == p1.prepare_lsn and bp1.end_lsn == p1.end_lsn
    assert bp1.prepare_time == p1.prepare_time and p1.flags == 0
    assert p1.end_lsn > p1.prepare_lsn
    assert (cp.gid, cp.xid, cp.flags) == ("gid-commit", xids["gid-commit"], 0)
    assert cp.commit_lsn >= p2.end_lsn and cp.end_lsn > cp.commit_lsn
    assert cp.commit_time >= p1.prepare_time
    assert (rp.gid, rp.xid) == ("gid-rollback", xids["gid-rollback"])
    assert rp.prepare_end_lsn == p2.end_lsn and rp.prepare_time == p2.prepare_time
    assert rp.rollback_end_lsn > cp.end_lsn and rp.rollback_time >= rp.prepare_time
    rel = cap.of(Relation)[0]
    assert [m.new_tuple.values(rel) for m in cap.of(Insert)] == [
        (1, "v1"), (2, "v2"), (3, "v3"), (4, "v4")]


def test_streamed_two_phase_transaction_ends_with_stream_prepare(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE big")
    slot, lsn = stream.create_slot(db, two_phase=True)
    with db.connect(autocommit=True) as conn:
        conn.execute("BEGIN")
        xid = _xid(conn)
        conn.execute("INSERT INTO big " + ROWS, (1, 2000))
        conn.execute("PREPARE TRANSACTION 'big-gid'")
    db.execute("COMMIT PREPARED 'big-gid'")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, proto=3, binary=binary,
                         extra={"two_phase": "on", "streaming": "on"}, dsn_options=SMALL_WORK_MEM)
    names = cap.names()
    assert names[0] == "StreamStart" and names[-2:] == ["StreamPrepare", "CommitPrepared"]
    assert "BeginPrepare" not in names and "Prepare" not in names
    (sp,) = cap.of(StreamPrepare)
    (cp,) = cap.of(CommitPrepared)
    assert (sp.xid, sp.gid, sp.flags) == (xid, "big-gid", 0)
    assert sp.end_lsn > sp.prepare_lsn and cp.commit_lsn >= sp.end_lsn
    assert (cp.xid, cp.gid) == (xid, "big-gid")
    inserts = cap.of(Insert)
    assert len(inserts) == 2000 and {m.xid for m in inserts} == {xid}
