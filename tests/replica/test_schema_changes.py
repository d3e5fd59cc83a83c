"""Relation messages drive the target's schema (DESIGN.md invariant 4); tables added to the
publication later are copied and joined in; a type the apply path cannot carry stops the
sidecar before anything about it is acknowledged (invariant 6)."""

from __future__ import annotations

import pytest

from replica.errors import UnsupportedTypeError
from tests.replica.conftest import same, wait_for


def _cols(db, table: str) -> dict[str, str]:
    return dict(db.execute("SELECT column_name, data_type FROM information_schema.columns"
                           " WHERE table_name = %s", (table,)))


def test_add_drop_retype_rename_while_streaming(source_db, replica_db, sidecars):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, a int NOT NULL, b text);"
                      "INSERT INTO t SELECT g, g, 'b' FROM generate_series(1, 100) g")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    sc.wait_same(source_db, replica_db, ["public.t"], 30, "the copy")

    # ADD COLUMN with a default: the source's existing rows read 7 without a rewrite
    source_db.execute("ALTER TABLE t ADD COLUMN c int DEFAULT 7;"
                      "INSERT INTO t (id, a) VALUES (101, 101)")
    sc.wait_same(source_db, replica_db, ["public.t"], 30, "the added column")
    assert replica_db.execute("SELECT count(*) FROM t WHERE c = 7") == [(101,)]

    source_db.execute("ALTER TABLE t DROP COLUMN b; UPDATE t SET c = 8 WHERE id = 1")
    wait_for(lambda: "b" not in _cols(replica_db, "t")
             and same(source_db, replica_db, ["public.t"]), 30, "the dropped column")

    source_db.execute("ALTER TABLE t ALTER COLUMN a TYPE bigint;"
                      "INSERT INTO t (id, a) VALUES (102, 5000000000)")
    sc.wait_same(source_db, replica_db, ["public.t"], 30, "the retyped column")
    assert _cols(replica_db, "t")["a"] == "bigint"

    source_db.execute("ALTER TABLE t ALTER COLUMN a DROP NOT NULL;"
                      "INSERT INTO t (id, a) VALUES (103, NULL)")
    sc.wait_same(source_db, replica_db, ["public.t"], 30, "NOT NULL dropped")

    # a rename looks like drop + add: the table is copied again instead of losing values
    source_db.execute("ALTER TABLE t RENAME COLUMN c TO d; UPDATE t SET a = 0 WHERE id = 2")
    wait_for(lambda: "d" in _cols(replica_db, "t")
             and same(source_db, replica_db, ["public.t"]), 60, "the renamed column")
    assert replica_db.execute("SELECT d FROM t WHERE id = 1") == [(8,)]


def test_table_added_to_the_publication_later_is_copied_and_joined(source_db, replica_db,
                                                                   sidecars):
    source_db.execute("CREATE TABLE t1 (id int PRIMARY KEY);"
                      "CREATE TABLE t2 (id int PRIMARY KEY, v text);"
                      "INSERT INTO t2 SELECT g, 'old' FROM generate_series(1, 5000) g")
    sidecars(source=source_db.dsn, target=replica_db.dsn, tables="public.t1").wait_streaming()
    source_db.execute("INSERT INTO t1 VALUES (1); UPDATE t2 SET v = 'before' WHERE id < 10")
    wait_for(lambda: replica_db.execute("SELECT count(*) FROM t1") == [(1,)], 30, "t1")
    assert replica_db.execute("SELECT to_regclass('public.t2')") == [(None,)]
    with source_db.connect() as conn:
        conn.execute("ALTER PUBLICATION pgml_replica ADD TABLE t2")
        for i in range(20):  # changes right around the join
            conn.execute("UPDATE t2 SET v = %s WHERE id = %s", (f"new{i}", i + 1))
            conn.execute("INSERT INTO t2 VALUES (%s, 'x')", (10_000 + i,))
            conn.execute("DELETE FROM t2 WHERE id = %s", (100 + i,))
    wait_for(lambda: same(source_db, replica_db, ["public.t1", "public.t2"]), 60,
             "t2 copied and joined")
    source_db.execute("UPDATE t2 SET v = 'after' WHERE id > 4990")
    wait_for(lambda: same(source_db, replica_db, ["public.t2"]), 30, "t2 streaming")


def test_new_table_in_a_schema_publication(source_db, replica_db, sidecars):
    source_db.execute("CREATE TABLE first (id int PRIMARY KEY)")
    sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    assert source_db.execute("SELECT count(*) FROM pg_publication_namespace") == [(1,)]
    source_db.execute("CREATE TABLE later (id int PRIMARY KEY, v text);"
                      "INSERT INTO later SELECT g, 'v' FROM generate_series(1, 100) g")
    wait_for(lambda: same(source_db, replica_db, ["public.later"]), 60, "the new table")


def test_unsupported_type_stops_before_acknowledging(source_db, replica_db, sidecars):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    source_db.execute("INSERT INTO t VALUES (1, 'ok')")
    wait_for(lambda: replica_db.execute("SELECT count(*) FROM t") == [(1,)], 30, "row 1")
    (before,) = replica_db.execute("SELECT end_lsn FROM pgml_replica.progress")[0]
    source_db.execute("CREATE TYPE pair AS (x int, y text);"
                      "ALTER TABLE t ADD COLUMN p pair;"
                      "INSERT INTO t VALUES (2, 'bad', ROW(1, 'a'))")
    wait_for(lambda: sc.error is not None, 30, "the sidecar to stop")
    assert isinstance(sc.error, UnsupportedTypeError)
    assert "public.t" in str(sc.error) and "column p" in str(sc.error)
    assert "pair" in str(sc.error)
    sc.thread.join(10)
    assert sc.state.phase == "failed"
    assert replica_db.execute("SELECT count(*) FROM t") == [(1,)]
    assert replica_db.execute("SELECT end_lsn FROM pgml_replica.progress")[0] == (before,)
    (insert_lsn,) = source_db.execute("SELECT pg_current_wal_lsn()")[0]
    assert source_db.execute("SELECT confirmed_flush_lsn < %s::pg_lsn FROM "
                             "pg_replication_slots", (insert_lsn,)) == [(True,)]


@pytest.mark.parametrize("ddl, column, type_name", [
    ("CREATE TYPE pt AS (x int); CREATE TABLE t (id int PRIMARY KEY, c pt)", "c", "pt"),
    ("CREATE TYPE e AS ENUM ('a'); CREATE TABLE t (id int PRIMARY KEY, c e[])", "c", "e[]"),
])
def test_unsupported_types_fail_the_preflight(source_db, replica_db, ddl, column, type_name):
    from replica.errors import PreflightError
    from replica.source.preflight import preflight

    source_db.execute(ddl)
    with source_db.connect() as conn, pytest.raises(PreflightError) as err:
        preflight(conn, publication="p", slot="s", tables=[("public", "t")])
    assert f"table public.t, column {column}: type {type_name} is not supported" in str(err.value)


def test_a_null_the_target_refuses_relaxes_its_not_null_and_replays(source_db, replica_db,
                                                                    sidecars):
    """The target mirrors NOT NULL; if it ever holds one the source no longer has (the
    catalog read can race the commit), the sidecar drops it there and replays the batch."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    source_db.execute("INSERT INTO t VALUES (1, 'a')")
    sc.wait_same(source_db, replica_db, ["public.t"])
    replica_db.execute("ALTER TABLE t ALTER COLUMN v SET NOT NULL")  # a stale mirror
    source_db.execute("INSERT INTO t VALUES (2, NULL), (3, 'c')")
    sc.wait_same(source_db, replica_db, ["public.t"], 60, "the replay")
    assert replica_db.execute("SELECT is_nullable FROM information_schema.columns WHERE"
                              " table_name = 't' AND column_name = 'v'") == [("YES",)]


def test_schema_change_inside_a_streamed_transaction(source_db, replica_db, sidecars,
                                                     source_version):
    """With the protocol the source negotiates: 2 on 15, 4 (streaming 'parallel') on 16+."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn,
                  decoding_work_mem="64kB", segment_rows=500).wait_streaming()
    assert sc.state.protocol == (4 if source_version >= 16 else 2)
    with source_db.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(1, 3000) g")
        conn.execute("CREATE TYPE color AS ENUM ('red', 'blue')")
        conn.execute("ALTER TABLE t ADD COLUMN c color DEFAULT 'red',"
                     " ALTER COLUMN v DROP NOT NULL")
        conn.execute("INSERT INTO t SELECT g, NULL, 'blue' FROM generate_series(3001, 6000) g")
        conn.execute("UPDATE t SET v = 'b' WHERE id % 10 = 0")
    sc.wait_same(source_db, replica_db, ["public.t"], 60, "the streamed DDL")
    assert replica_db.execute("SELECT c, count(*) FROM t GROUP BY c ORDER BY c") == \
        [("blue", 3000), ("red", 3000)]


def test_a_view_on_the_target_blocks_a_dropped_column_with_a_clear_error(
        source_db, replica_db, sidecars):
    """ML users build views on mirrored tables; the sidecar never drops them silently."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b int)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    source_db.execute("INSERT INTO t VALUES (1, 1, 1)")
    sc.wait_same(source_db, replica_db, ["public.t"])
    replica_db.execute("CREATE VIEW features AS SELECT id, b FROM t")
    source_db.execute("ALTER TABLE t DROP COLUMN b; INSERT INTO t VALUES (2, 2)")
    wait_for(lambda: sc.error is not None, 30, "the sidecar to stop")
    assert "column b of public.t" in str(sc.error) and "features" in str(sc.error)
    assert replica_db.execute("SELECT count(*) FROM t") == [(1,)]
