"""A TRUNCATE gives the table new storage files on the source, the same signal as a rewrite
the WAL cannot carry (stream/relations.py ``_rewritten``) - but the stream carries the
TRUNCATE itself, so it must not cost a copy of the table. A rewrite by a column's DDL in
the truncating transaction, or one by a later transaction that the sidecar only reads about
after it committed, is still copied again (and the values are right)."""

from __future__ import annotations

import pytest

from tests.faults.compare import wait_equal
from tests.replica.conftest import wait_for

TABLES = ["public.t", "public.other"]


def _sync(replica_db) -> tuple:
    """(sync LSN, recorded storage) of t: a new sync LSN is a new copy."""
    return replica_db.execute("SELECT sync_lsn::text, filenode FROM pgml_replica.tables"
                              " WHERE schema_name = 'public' AND table_name = 't'")[0]


def _filenode(source_db) -> str:
    return str(source_db.execute("SELECT relfilenode FROM pg_class WHERE oid = 't'::regclass"
                                 )[0][0])


@pytest.mark.source_versions  # the order of pgoutput's messages is the source's
def test_a_streamed_truncate_is_not_copied_again(source_db, replica_db, sidecars):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, b int);"
                      "INSERT INTO t SELECT g, g FROM generate_series(1, 200) g;"
                      "CREATE TABLE other (id int PRIMARY KEY)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    wait_equal(sc, source_db, replica_db, TABLES, 30, "the copy")
    copied = _sync(replica_db)
    source_db.execute("TRUNCATE t")  # alone
    source_db.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 50) g")
    # read before the next truncate commits: a Relation message read only after a later
    # transaction replaced the table's catalog row is copied again (as the last case shows)
    wait_equal(sc, source_db, replica_db, TABLES, 60, "the first truncate")
    source_db.execute("BEGIN; INSERT INTO other VALUES (1); TRUNCATE t;"  # with rows after
                      " INSERT INTO t SELECT g, -g FROM generate_series(1, 70) g; COMMIT")
    source_db.execute("INSERT INTO other VALUES (2)")
    wait_equal(sc, source_db, replica_db, TABLES, 60, "the truncates")
    sync_lsn, filenode = _sync(replica_db)
    assert sync_lsn == copied[0], "t was copied again after a TRUNCATE the stream carried"
    assert filenode == _filenode(source_db)  # the truncate's storage, recorded

    # a column rewritten in the truncating transaction, after rows the stream carried
    source_db.execute("BEGIN; TRUNCATE t; INSERT INTO t SELECT g, g FROM generate_series(1, 30)"
                      " g; ALTER TABLE t ALTER COLUMN b TYPE int USING b * 10;"
                      " INSERT INTO other VALUES (3); COMMIT")
    source_db.execute("INSERT INTO t VALUES (1000, 1)")
    wait_equal(sc, source_db, replica_db, TABLES, 60, "the USING rewrite after a truncate")
    assert replica_db.execute("SELECT b FROM t WHERE id = 2") == [(20,)]
    again = _sync(replica_db)
    assert again[0] != copied[0]

    # read only after a later transaction rewrote it: the storage now is not the truncate's
    sc.stop()
    source_db.execute("TRUNCATE t; INSERT INTO t SELECT g, g FROM generate_series(1, 40) g")
    source_db.execute("ALTER TABLE t ALTER COLUMN b TYPE int USING b * 100")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    source_db.execute("INSERT INTO t VALUES (1001, 1)")
    wait_equal(sc, source_db, replica_db, TABLES, 60, "a rewrite after the truncate")
    assert replica_db.execute("SELECT b FROM t WHERE id = 2") == [(200,)]
    assert _sync(replica_db)[0] != again[0]


@pytest.mark.source_versions
def test_a_truncate_in_a_streamed_transaction_is_not_copied_again(source_db, replica_db,
                                                                   sidecars):
    """Protocol 2+: a transaction bigger than logical_decoding_work_mem arrives while it
    runs, its Relation message before the source's catalog shows the new files; they are
    recorded at the table's next Relation message, after the commit. (One decoded only
    after it committed, whose changes the sidecar keeps until its commit, is still copied
    again: not handled.)"""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, b int);"
                      "INSERT INTO t SELECT g, g FROM generate_series(1, 200) g;"
                      "CREATE TABLE other (id int PRIMARY KEY)")
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, decoding_work_mem="64kB",
                  segment_rows=500).wait_streaming()
    wait_equal(sc, source_db, replica_db, TABLES, 30, "the copy")
    copied = _sync(replica_db)
    with source_db.connect(autocommit=False) as conn:  # streamed while it runs
        conn.execute("INSERT INTO other SELECT g FROM generate_series(1, 20000) g")
        conn.execute("TRUNCATE t")
        conn.execute("INSERT INTO t SELECT g, -g FROM generate_series(1, 20000) g")
        # its TRUNCATE applied on the target, in the streamed target transaction, while it
        # is still open on the source (the target's ACCESS EXCLUSIVE lock on t says so)
        wait_for(lambda: replica_db.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass AND granted"
            " AND mode = 'AccessExclusiveLock'") == [(1,)], 60, "the truncate streamed")
        conn.commit()
    source_db.execute("INSERT INTO t VALUES (100000, 1)")
    wait_equal(sc, source_db, replica_db, TABLES, 60, "the streamed truncate")
    sync_lsn, filenode = _sync(replica_db)
    assert sync_lsn == copied[0], "t was copied again after a TRUNCATE the stream carried"
    assert filenode == _filenode(source_db)
