"""A fresh replica's start-up path (issue 14): every worker gets a share of a big table, the
copy's target side is prepared while the slot is created, and each step is logged."""

from __future__ import annotations

import logging

import pytest

from replica.clone.snapshot import KEY_SORT_MAX_KB, Snapshot, key_sort_memory, plan
from replica.errors import ReplicaError
from replica.source.catalog import ColumnDef, TableDef
from replica.source.publication import publication_defs
from replica.state import SidecarState
from replica.target import progress
from tests.replica.conftest import wait_for


def _table(pages: int, relkind: str = "r") -> TableDef:
    return TableDef("public", f"t{pages}", 1, (ColumnDef("id", "bigint"),), ("id",), "d",
                    pages=pages, est_rows=pages * 80, relkind=relkind)


def test_plan_gives_every_worker_a_share_of_a_big_table():
    big, small = _table(5000), _table(1000)
    ranges = plan([small, big], chunk_pages=8192, workers=2)
    assert [(c.table.name, c.lo, c.hi) for c in ranges] == [
        ("t5000", None, 2500), ("t5000", 2500, None), ("t1000", None, None)]
    assert [(c.lo, c.hi) for c in plan([big], chunk_pages=8192, workers=1)] == [(None, None)]
    assert len(plan([_table(5000, "p")], chunk_pages=8192, workers=4)) == 1  # no ctid
    # chunk_pages still bounds a range when it is the smaller one
    assert [(c.lo, c.hi) for c in plan([big], chunk_pages=2000, workers=2)] == [
        (None, 2000), (2000, 4000), (4000, None)]


def _copy_sessions(db) -> list[tuple]:
    return db.execute("SELECT pid FROM pg_stat_activity WHERE application_name ="
                      " 'pgml-replica copy' AND datname = current_database()")


def test_a_copy_prepared_early_but_never_run_leaves_no_session(source_db, replica_db):
    """The slot's creation failed after the target side was prepared: close() ends what
    prepare_early opened, on both servers."""
    source_db.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text);"
                      " CREATE PUBLICATION early_pub FOR TABLE t")
    with source_db.connect() as c:
        tables = publication_defs(c, "early_pub")
    with replica_db.connect() as c:
        progress.ensure(c)  # what Bootstrap.prepare does before any copy
    snap = Snapshot(source_db.dsn, replica_db.dsn, slot="early", state=SidecarState(),
                    workers=1)
    snap.prepare_early(tables)
    wait_for(lambda: snap._early_error or _copy_sessions(source_db)
             and _copy_sessions(replica_db), 30, "the early copy sessions")
    assert snap._early_error is None
    snap.close()
    wait_for(lambda: not _copy_sessions(source_db) and not _copy_sessions(replica_db), 30,
             "the early copy sessions to end")
    assert replica_db.execute("SELECT count(*) FROM t") == [(0,)]  # prepared: created


def test_a_target_lost_while_prepared_early_is_the_copy_error(source_db, replica_db,
                                                              pg_replica):
    source_db.execute("CREATE TABLE t (id bigint PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t")
    with source_db.connect() as c:
        tables = publication_defs(c, "p")
    gone = pg_replica.dsn("no_such_database_here")
    snap = Snapshot(source_db.dsn, gone, slot="early", state=SidecarState(), workers=1)
    snap.prepare_early(tables)
    with pytest.raises(ReplicaError):
        snap.run(tables, "00000003-00000002-1", 0)
    assert not _copy_sessions(source_db)


def test_fresh_start_logs_each_step_and_copies_with_the_key(source_db, replica_db, sidecars,
                                                            caplog):
    """Two workers share the table (prepared early, in parallel), the key is built after
    the load, the rows are the source's; the step lines come in start-up order."""
    source_db.execute("""
        CREATE TABLE bench (id bigint PRIMARY KEY, a float8, b float8, t text, ts timestamptz);
        INSERT INTO bench SELECT g, random(), random(), md5(g::text), now()
          FROM generate_series(1, 20000) g;
        ANALYZE bench;
    """)
    caplog.set_level(logging.INFO, logger="pgml_replica.steps")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, snapshot_workers=2,
                  snapshot_chunk_pages=64)
    sc.wait_streaming(60)
    sc.wait_same(source_db, replica_db, ["public.bench"])
    assert replica_db.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE"
                              " conrelid = 'bench'::regclass") == [("PRIMARY KEY (id)",)]
    said = [r.getMessage().split()[1] for r in caplog.records
            if r.name == "pgml_replica.steps"]
    order = [s for s in said if s in ("catalog_read", "slot_created", "copy_connected",
                                      "chunk_copied", "synced")]
    assert order[0] == "catalog_read" and order[1] == "slot_created"
    assert order[-1] == "synced" and "chunk_copied" in order
    assert said.count("chunk_copied") > 2 and said.count("copy_connected") == 2
    assert said.index("keyed") < said.index("synced")
    assert said.index("copy_target_prepared") > said.index("catalog_read")


def test_the_key_build_sorts_in_memory_for_its_transaction_only(replica_db):
    """4M rows ask for ~375 MB (a bigint key sorted in 254 MB in trace_sort); never below
    the server's own setting, never above the cap, and gone after the key's transaction."""
    def mwm(c) -> int:
        return c.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))"
                         ).fetchone()[0] // 1024

    with replica_db.connect() as c:
        own = mwm(c)
        with c.transaction():
            key_sort_memory(c, 4_000_000)
            assert mwm(c) == 4_000_000 * 96 // 1024
        assert mwm(c) == own
        with c.transaction():
            key_sort_memory(c, 10)  # a small table keeps the server's setting
            assert mwm(c) == own
        with c.transaction():
            key_sort_memory(c, 10**9)
            assert mwm(c) == KEY_SORT_MAX_KB


def _frozen(db, table: str) -> tuple[int, int]:
    """(frozen rows, rows), read off the heap pages (HEAP_XMIN_FROZEN: both xmin hint bits)."""
    return db.execute(
        "SELECT count(*) FILTER (WHERE t_infomask & 768 = 768), count(*)"
        " FROM generate_series(0, pg_relation_size(%s::regclass) / 8192 - 1) p,"
        " heap_page_items(get_raw_page(%s, p::int)) WHERE t_xmin IS NOT NULL",
        (table, table))[0]


def test_a_table_copied_by_one_session_is_written_frozen(source_db, replica_db, sidecars):
    """A whole table in one COPY is COPY FREEZE (truncated in the copy's own transaction);
    ranges of a split table are not (other sessions write into it); later changes apply."""
    source_db.execute("""
        CREATE TABLE whole (id bigint PRIMARY KEY, v text);
        CREATE TABLE split (id bigint PRIMARY KEY, v text);
        INSERT INTO whole SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
        INSERT INTO split SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
        ANALYZE whole; ANALYZE split;
    """)
    if not replica_db.execute("SELECT 1 FROM pg_available_extensions"
                              " WHERE name = 'pageinspect'"):
        pytest.skip("pageinspect (contrib) is not installed")
    replica_db.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, snapshot_workers=2,
                  snapshot_chunk_pages=64)
    sc.wait_streaming(60)
    sc.wait_same(source_db, replica_db, ["public.whole", "public.split"])
    assert _frozen(replica_db, "whole") == (3000, 3000)
    assert _frozen(replica_db, "split") == (0, 20000)
    source_db.execute("UPDATE whole SET v = 'changed' WHERE id <= 10")
    sc.wait_same(source_db, replica_db, ["public.whole"])
    assert replica_db.execute("SELECT count(*) FROM whole WHERE v = 'changed'") == [(10,)]
