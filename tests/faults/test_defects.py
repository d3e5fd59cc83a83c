"""Defects an outside fault run found (issue 10), each a test that failed before its fix:
a deadlock PostgreSQL cannot see, DDL the WAL does not carry, OID-valued types, partitioned
tables across restarts, and preflight naming every unsupported column at once."""

from __future__ import annotations

import pytest

from tests.replica.conftest import ProcessSidecar, same, wait_for


def _problems(source_db, tables):
    from replica.errors import PreflightError
    from replica.source.preflight import preflight

    with source_db.connect() as conn:
        with pytest.raises(PreflightError) as info:
            preflight(conn, publication="pgml_replica", slot="pgml_replica", tables=tables)
    return info.value.problems


def test_preflight_names_every_unsupported_column_and_oid_valued_types(source_db):
    source_db.execute("CREATE TYPE pair AS (a int, b int);"
                      "CREATE TABLE odd (id int PRIMARY KEY, c regclass, t regtype[],"
                      " ok text, p pair);"
                      "CREATE TABLE fine (id int PRIMARY KEY, r regrole)")
    problems = _problems(source_db, [("public", "odd"), ("public", "fine")])
    text = "\n".join(problems)
    for column, type_name in (("c", "regclass"), ("t", "regtype[]"), ("p", "pair"),
                              ("r", "regrole")):
        assert f"column {column}: type {type_name} is not supported" in text, text
    assert "column ok" not in text
    assert "OID of the source's catalog" in text
    assert len(problems) == 4  # one line per column, not one per table


def test_streamed_transaction_and_full_identity_delete_do_not_deadlock(source_db, replica_db,
                                                                       sidecars):
    """A streamed transaction deletes one of two identical rows of a REPLICA IDENTITY FULL
    table (its own target transaction holds that row until its Stream Commit); a transaction
    committing earlier deletes the other. The apply of the earlier one must not wait for the
    streamed one, which can only commit once the stream reads on."""
    source_db.execute("CREATE TABLE f (a int, b text); ALTER TABLE f REPLICA IDENTITY FULL;"
                      "INSERT INTO f VALUES (1, 'x'), (1, 'x'), (2, 'y');"
                      "CREATE TABLE big (id int PRIMARY KEY, pad text)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, decoding_work_mem="64kB",
                  lock_timeout=600).wait_streaming()
    sc.wait_same(source_db, replica_db, ["public.f"], 30, "the copy")
    with source_db.connect(autocommit=False) as big, source_db.connect() as small:
        big.execute("SAVEPOINT s1")  # a subtransaction: the switch back writes its delete
        big.execute("DELETE FROM f WHERE ctid = (SELECT min(ctid) FROM f WHERE a = 1)")
        big.execute("RELEASE SAVEPOINT s1")
        big.execute("INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, 5000) g")
        # the streamed transaction's first chunk is applied: it holds its row on the target
        wait_for(lambda: replica_db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
            " 'pgml-replica stream' AND backend_xid IS NOT NULL") == [(1,)], 30,
            "the streamed chunk on the target")
        small.execute("DELETE FROM f WHERE ctid = (SELECT max(ctid) FROM f WHERE a = 1)")
        small.execute("INSERT INTO f VALUES (3, 'z')")
        wait_for(lambda: replica_db.execute("SELECT count(*) FROM f WHERE a = 3") == [(1,)],
                 30, "the earlier transaction applied while the streamed one is open")
        big.commit()
    sc.wait_same(source_db, replica_db, ["public.f", "public.big"], 30, "both applied")


def test_sigterm_stops_a_sidecar_waiting_on_a_target_lock(source_db, replica_db, tmp_path):
    """A wait on the target that never ends by itself (here: a lock held by someone else)
    becomes an error after lock_timeout; SIGTERM then stops the process with exit 0."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    sc = ProcessSidecar("--source", source_db.dsn, "--target", replica_db.dsn,
                        env={"PGML_REPLICA_LOCK_TIMEOUT": "2"}, log=tmp_path / "log").start()
    try:
        wait_for(lambda: replica_db.execute("SELECT count(*) FROM pgml_replica.tables"
                                            " WHERE table_name = 't'") == [(1,)]
                 if replica_db.execute("SELECT to_regclass('pgml_replica.tables')") != [(None,)]
                 else False, 60, "the copy")
        with replica_db.connect(autocommit=False) as holder:
            holder.execute("LOCK TABLE t IN SHARE MODE")
            source_db.execute("INSERT INTO t VALUES (1)")
            wait_for(lambda: replica_db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND application_name LIKE 'pgml-replica%'") != [(0,)], 30,
                "the sidecar waiting for the lock")
            assert sc.terminate(timeout=60) == 0
            holder.rollback()
    finally:
        if sc.alive():
            sc.kill()
    assert "lock_timeout" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("via_root", [False, True], ids=["leaves", "via_root"])
def test_partitioned_table_restarts_and_takes_new_partitions(source_db, replica_db, sidecars,
                                                             via_root):
    source_db.execute(
        "CREATE TABLE m (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);"
        "CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100);"
        "CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (100) TO (200);"
        "INSERT INTO m SELECT g, g % 200, 'a' FROM generate_series(1, 400) g")
    if via_root:
        source_db.execute("CREATE PUBLICATION pgml_replica FOR TABLE m"
                          " WITH (publish_via_partition_root = true)")

    def tables():
        if via_root:
            return ["public.m"]
        return [f"public.{t}" for (t,) in source_db.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree('m') WHERE isleaf")]

    for run in range(3):  # the second start used to fail: "m is already member of ..."
        sc = sidecars(source=source_db.dsn, target=replica_db.dsn,
                      tables="public.m").wait_streaming()
        source_db.execute("UPDATE m SET v = %s WHERE id %% 7 = %s", (f"r{run}", run))
        if run == 1:  # a new, empty partition, then one attached with rows in it
            source_db.execute(
                "CREATE TABLE m3 PARTITION OF m FOR VALUES FROM (200) TO (300);"
                "INSERT INTO m SELECT g, 200 + g % 100, 'new' FROM generate_series(1, 50) g;"
                "CREATE TABLE m4 (LIKE m INCLUDING ALL);"
                "INSERT INTO m4 SELECT g, 300 + g % 100, 'attached'"
                " FROM generate_series(1, 30) g;"
                "ALTER TABLE m ATTACH PARTITION m4 FOR VALUES FROM (300) TO (400);"
                "UPDATE m SET v = 'after' WHERE id = 1")
        sc.wait_same(source_db, replica_db, tables(), 60, f"run {run}")
        sc.stop()
    assert same(source_db, replica_db, tables())


def test_ddl_the_wal_does_not_carry_is_recopied(source_db, replica_db, sidecars):
    """ADD COLUMN ... DEFAULT <volatile> and ALTER TYPE ... USING rewrite the table on the
    source without a row in the WAL; the sidecar notices the rewrite and copies it again."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, b int);"
                      "INSERT INTO t SELECT g, g FROM generate_series(1, 200) g;"
                      "CREATE TABLE other (id int PRIMARY KEY)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    sc.wait_same(source_db, replica_db, ["public.t"], 30, "the copy")
    source_db.execute("ALTER TABLE t ADD COLUMN r float8 NOT NULL DEFAULT random();"
                      "INSERT INTO t (id, b) VALUES (1001, 1)")
    sc.wait_same(source_db, replica_db, ["public.t"], 60, "the volatile default re-copied")
    source_db.execute("ALTER TABLE t ALTER COLUMN b TYPE int USING b * 10;"
                      "UPDATE t SET b = -1 WHERE id = 1001")
    sc.wait_same(source_db, replica_db, ["public.t"], 60, "the USING conversion re-copied")
    source_db.execute("INSERT INTO other VALUES (1); INSERT INTO t (id, b) VALUES (1002, 2)")
    sc.wait_same(source_db, replica_db, ["public.t", "public.other"], 30, "streaming on")
    assert replica_db.execute("SELECT b FROM t WHERE id = 2") == [(20,)]


