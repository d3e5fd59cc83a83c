"""The slot's side of things: an idle slot advances (invariant 5), a slot handed over by a
DBA meets a fresh copy with nothing doubled, and a lost or dropped slot asks for a new
snapshot instead of silently diverging."""

from __future__ import annotations

import pytest

from replica.errors import ResnapshotNeeded
from tests.replica.conftest import lose_slot_wal, wait_for


def _slot(db, column: str):
    rows = db.execute(f"SELECT {column} FROM pg_replication_slots")  # noqa: S608 - constant
    return rows[0][0] if rows else None


def test_idle_slot_keeps_advancing(source_db, replica_db, sidecars):
    source_db.execute("CREATE TABLE published (id int PRIMARY KEY);"
                      "CREATE TABLE elsewhere (id serial, v text)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn,
                  tables="public.published").wait_streaming()
    source_db.execute("INSERT INTO published VALUES (1)")
    wait_for(lambda: replica_db.execute("SELECT count(*) FROM published") == [(1,)], 30)
    applied = replica_db.execute("SELECT end_lsn FROM pgml_replica.progress")[0][0]
    for _ in range(20):  # WAL the slot's tables take no part in
        source_db.execute("INSERT INTO elsewhere (v) SELECT repeat('x', 100) FROM"
                          " generate_series(1, 200)")
    (written,) = source_db.execute("SELECT pg_current_wal_lsn()")[0]
    wait_for(lambda: source_db.execute(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots", (written,)
    ) == [(True,)], 30, "the idle slot to confirm the WAL end")
    # nothing was applied for it: the target's progress did not move
    assert replica_db.execute("SELECT end_lsn FROM pgml_replica.progress")[0][0] == applied
    # and the sidecar reports itself caught up, not lagging behind its keepalives
    wait_for(lambda: sc.state.lag_bytes() == 0 and sc.state.is_ready(30), 30, "caught up")


def test_existing_slot_handed_over_meets_the_copy_exactly(source_db, replica_db, sidecars):
    source_db.execute("""
        CREATE TABLE keyed (id int PRIMARY KEY, v int);
        CREATE TABLE bag (v int);  -- no key: a doubled row would show
        ALTER TABLE bag REPLICA IDENTITY FULL;
        INSERT INTO keyed SELECT g, g FROM generate_series(1, 1000) g;
        INSERT INTO bag SELECT g % 10 FROM generate_series(1, 100) g;
        CREATE PUBLICATION pgml_replica FOR TABLE keyed, bag;
    """)
    source_db.execute("SELECT pg_create_logical_replication_slot('pgml_replica', 'pgoutput')")
    source_db.execute("""
        -- after the slot: in its stream, and in any copy taken from now on
        INSERT INTO keyed SELECT g, g FROM generate_series(1001, 1100) g;
        UPDATE keyed SET v = -v WHERE id <= 50;
        DELETE FROM keyed WHERE id BETWEEN 51 AND 60;
        INSERT INTO bag SELECT 1 FROM generate_series(1, 5);
        DELETE FROM bag WHERE ctid IN (SELECT ctid FROM bag WHERE v = 2 LIMIT 3);
    """)
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    source_db.execute("INSERT INTO bag VALUES (99); UPDATE keyed SET v = 0 WHERE id = 1000")
    sc.wait_same(source_db, replica_db, ["public.keyed", "public.bag"], 30)
    assert _slot(source_db, "slot_name") == "pgml_replica"  # the DBA's slot, still ours


def test_dropped_slot_asks_for_a_resnapshot(source_db, replica_db, sidecars):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    sc.wait_same(source_db, replica_db, ["public.t"])
    sc.stop()
    source_db.execute("SELECT pg_drop_replication_slot('pgml_replica');"
                      "INSERT INTO t VALUES (2)")  # a change no slot kept
    again = sidecars(source=source_db.dsn, target=replica_db.dsn)
    wait_for(lambda: again.error is not None, 30, "the sidecar to refuse")
    assert isinstance(again.error, ResnapshotNeeded)
    assert "--resnapshot" in str(again.error)
    fixed = sidecars(source=source_db.dsn, target=replica_db.dsn, resnapshot=True)
    fixed.wait_streaming().wait_same(source_db, replica_db, ["public.t"])


def test_lost_slot_asks_for_a_resnapshot(source_db, replica_db, sidecars, pg_source):
    """wal_status = lost (max_slot_wal_keep_size invalidated the slot): say so and stop."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    sc.stop()
    lose_slot_wal(source_db, pg_source, lambda: _slot(source_db, "wal_status") == "lost",
                  "wal_status lost")
    again = sidecars(source=source_db.dsn, target=replica_db.dsn)
    wait_for(lambda: again.error is not None, 30, "the sidecar to refuse")
    assert isinstance(again.error, ResnapshotNeeded)
    assert "wal_status = lost" in str(again.error)
    fixed = sidecars(source=source_db.dsn, target=replica_db.dsn, resnapshot=True)
    fixed.wait_streaming().wait_same(source_db, replica_db, ["public.t"], 60)


@pytest.mark.parametrize("chunk_pages", [3])
def test_snapshot_in_ctid_ranges_with_column_list_and_row_filter(source_db, replica_db,
                                                                 sidecars, chunk_pages):
    source_db.execute("""
        CREATE TABLE wide (id int PRIMARY KEY, keep text, secret text, n int);
        INSERT INTO wide SELECT g, 'k' || g, 's', g % 4 FROM generate_series(1, 3000) g;
        CREATE PUBLICATION pgml_replica FOR TABLE wide (id, keep, n) WHERE (n <> 0);
    """)
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, snapshot_workers=3,
                  snapshot_chunk_pages=chunk_pages).wait_streaming()
    assert sc.state.snapshot["public.wide"]["rows"] == 2250
    source_db.execute("INSERT INTO wide VALUES (5000, 'new', 's', 1), (5001, 'no', 's', 0)")
    wait_for(lambda: replica_db.execute("SELECT count(*) FROM wide") == [(2251,)], 30)
    assert "secret" not in {r[0] for r in replica_db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'wide'")}
    assert replica_db.execute("SELECT count(*) FROM wide WHERE n = 0") == [(0,)]
    assert replica_db.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE"
                              " conrelid = 'wide'::regclass") == [("PRIMARY KEY (id)",)]
