"""History of protocol-2 streamed transactions: transactions bigger than the walsender's
logical_decoding_work_mem (64kB here) arrive in chunks while they run; their versions are
recorded with the Stream Commit's time and LSN, an aborted subtransaction or transaction
leaves none, a TRUNCATE inside one ends every open version once, and a kill -9 in the middle
of one neither loses nor doubles a version. Checked against the source's own state after
each transaction (the brute-force replay)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from replica.target.pgml_install import install
from tests.replica.conftest import wait_for


def _state(src) -> dict[int, tuple]:
    return {r[0]: r for r in src.execute("SELECT id, v, n FROM t")}


def _after(src, log: list) -> None:
    """The source's state and clock right after a transaction (what as_of must give)."""
    (now,) = src.execute("SELECT clock_timestamp()").fetchone()
    log.append((now, _state(src)))


def _as_of_equals(r, log: list) -> None:
    for when, state in log:
        (name,) = r.execute("SELECT pgml.as_of('public.t', %s)", (when,)).fetchone()
        got = {row[0]: row for row in r.execute(
            sql.SQL("SELECT id, v, n FROM {}").format(sql.SQL(name)))}
        assert got == state, when


@pytest.fixture
def streamed(source_db, replica_db, sidecars, plpython_path):
    install(replica_db.dsn, python_path=plpython_path)
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    source_db.execute("INSERT INTO t VALUES (0, 'seed', 0)")
    return sidecars(source=source_db.dsn, target=replica_db.dsn, protocol=2,
                    decoding_work_mem="64kB", segment_rows=500, history="public.t",
                    batch_max_seconds=0.1).wait_streaming()


@pytest.mark.source_versions
def test_streamed_versions_equal_the_replay(source_db, replica_db, streamed):
    sc = streamed
    log: list = []
    changes = 0
    with source_db.connect() as src:
        src.autocommit = True
        _after(src, log)
        with src.transaction():  # streamed; one rolled-back and one kept subtransaction
            changes += src.execute("INSERT INTO t SELECT g, 'a' || g, g FROM"
                                   " generate_series(1, 3000) g").rowcount
            with src.transaction():
                src.execute("INSERT INTO t SELECT g, 'gone', g FROM"
                            " generate_series(3001, 5000) g")
                src.execute("UPDATE t SET v = 'gone' WHERE id <= 100")
                raise psycopg.Rollback()
            with src.transaction():
                changes += src.execute("UPDATE t SET v = 'kept', n = n + 1"
                                       " WHERE id BETWEEN 101 AND 1500").rowcount
            changes += src.execute("UPDATE t SET n = -n WHERE id <= 50").rowcount
            changes += src.execute("DELETE FROM t WHERE id > 2900").rowcount
        _after(src, log)
        changes += src.execute("UPDATE t SET v = 'small' WHERE id = 7").rowcount
        _after(src, log)
        with src.transaction():  # streamed, then aborted
            src.execute("INSERT INTO t SELECT g, 'aborted', g FROM generate_series(10001, 16000) g")
            src.execute("UPDATE t SET v = 'aborted' WHERE id <= 1000")
            raise psycopg.Rollback()
        with src.transaction():  # streamed again: keys updated twice in one transaction,
            with src.transaction():  # after a first subtransaction rolled back (its stage too)
                src.execute("INSERT INTO t SELECT g, 'gone', g FROM"
                            " generate_series(20001, 23000) g")
                raise psycopg.Rollback()
            changes += src.execute("UPDATE t SET n = n + 1000 WHERE id <= 2000").rowcount
            changes += src.execute("UPDATE t SET v = 'twice' WHERE id <= 10").rowcount
        _after(src, log)
    sc.wait_same(source_db, replica_db, ["public.t"], 90, "the streamed transactions")
    with replica_db.connect() as r:
        r.autocommit = True
        _as_of_equals(r, log)
        got = r.execute("SELECT count(*), count(DISTINCT (_pgml_commit_lsn, _pgml_seq)),"
                        " count(*) FILTER (WHERE v IN ('gone', 'aborted')),"
                        " count(DISTINCT _pgml_commit_lsn) FROM pgml_history.public__t WHERE _pgml_seq >= 0"
                        ).fetchone()
        assert got == (changes, changes, 0, 3)  # one LSN per committed transaction
        # a streamed transaction's versions carry its commit's time: one per LSN, and in
        # LSN order the times do not run backwards
        times = r.execute("SELECT _pgml_commit_lsn, count(DISTINCT _pgml_commit_time),"
                          " min(_pgml_commit_time) FROM pgml_history.public__t WHERE _pgml_seq >= 0"
                          " GROUP BY 1 ORDER BY 1").fetchall()
        assert [n for _, n, _ in times] == [1, 1, 1]
        assert [t for _, _, t in times] == sorted(t for _, _, t in times)


def test_truncate_inside_a_streamed_transaction_ends_every_version_once(
        source_db, replica_db, streamed):
    sc = streamed
    log: list = []
    with source_db.connect() as src:
        src.autocommit = True
        src.execute("INSERT INTO t SELECT g, 'before', g FROM generate_series(1, 50) g")
        _after(src, log)
        with src.transaction():  # streamed: rows, TRUNCATE, rows
            src.execute("INSERT INTO t SELECT g, 'x', g FROM generate_series(100, 3000) g")
            src.execute("TRUNCATE t")
            src.execute("INSERT INTO t SELECT g, 'after', g FROM generate_series(1, 2500) g")
        _after(src, log)
        sc.wait_same(source_db, replica_db, ["public.t"], 90, "the streamed TRUNCATE")
        src.execute("DELETE FROM t WHERE id > 20")
        _after(src, log)
    sc.wait_same(source_db, replica_db, ["public.t"], 90, "the DELETE")
    with replica_db.connect() as r:
        r.autocommit = True
        # while the sidecar re-copies a truncated table (stream/relations.py: new storage),
        # the instant right after the TRUNCATE's transaction lies in the re-copy window
        # (docs/history.md, "Re-copies"); without a re-copy every instant must be right
        (seeds,) = r.execute("SELECT count(*) FROM pgml_history.public__t WHERE _pgml_op = 'T'"
                             " AND _pgml_seq = -2").fetchone()
        _as_of_equals(r, log if seeds == 1 else [log[0], log[2]])
        # the streamed transaction's TRUNCATE is one marker (a re-copy's own marker has
        # seq -2), and no version of the transaction is doubled
        (marks,) = r.execute("SELECT count(*) FROM pgml_history.public__t WHERE _pgml_op = 'T'"
                             " AND _pgml_seq >= 0").fetchone()
        assert marks == 1
        (dup,) = r.execute("SELECT count(*) FROM (SELECT 1 FROM pgml_history.public__t WHERE _pgml_seq >= 0"
                           " GROUP BY _pgml_commit_lsn, _pgml_seq HAVING count(*) > 1) d"
                           ).fetchone()
        assert dup == 0


def test_kill_9_in_a_streamed_transaction(source_db, replica_db, sidecars, tmp_path,
                                          plpython_path):
    """kill -9 while a streamed transaction is applied (open on the target and on the
    source): after a restart it comes again and its versions are recorded once."""
    install(replica_db.dsn, python_path=plpython_path)
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    source_db.execute("INSERT INTO t VALUES (0, 'seed', 0)")
    log_file = tmp_path / "sidecar.log"
    args = ("--source", source_db.dsn, "--target", replica_db.dsn, "--tables", "public.t",
            "--history", "public.t", "--protocol", "2", "--decoding-work-mem", "64kB",
            "--segment-rows", "500")
    sc = sidecars("process", *args, log=log_file)
    wait_for(lambda: replica_db.execute(
        "SELECT to_regclass('pgml_history.public__t') IS NOT NULL")[0][0], 60, "the seed")
    conn = source_db.connect()
    conn.autocommit = False
    conn.execute("INSERT INTO t SELECT g, repeat('z', 100), g FROM generate_series(1, 20000) g")
    conn.execute("UPDATE t SET n = -n WHERE id BETWEEN 1 AND 5000")
    wait_for(lambda: replica_db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgml-replica stream'"
        " AND state = 'idle in transaction' AND datname = current_database()") == [(1,)],
        60, "the streamed transaction to be applied as it runs")
    sc.kill()
    conn.commit()
    conn.close()
    sc.start()
    wait_for(lambda: replica_db.execute("SELECT count(*) FROM t") == [(20001,)]
             or not sc.alive(), 120, "the transaction to be applied after the restart")
    assert sc.alive(), log_file.read_text()[-3000:]
    got = replica_db.execute("SELECT count(*), count(DISTINCT (_pgml_commit_lsn, _pgml_seq)),"
                             " count(DISTINCT _pgml_commit_lsn) FROM pgml_history.public__t"
                             " WHERE _pgml_seq >= 0")
    assert got == [(25000, 25000, 1)]
    assert sc.terminate() == 0, log_file.read_text()[-3000:]


def test_truncate_applied_while_a_streamed_transaction_runs(source_db, replica_db, streamed):
    """The TRUNCATE reaches the target while its transaction is still open on the source
    (no re-copy follows: stream/relations.py): every instant reads right, and the
    transaction's versions before the TRUNCATE end at it, once."""
    sc = streamed
    log: list = []
    with source_db.connect() as src:
        src.autocommit = True
        src.execute("INSERT INTO t SELECT g, 'before', g FROM generate_series(1, 50) g")
        _after(src, log)
        with src.transaction():
            src.execute("INSERT INTO t SELECT g, 'x', g FROM generate_series(100, 3000) g")
            src.execute("TRUNCATE t")
            src.execute("INSERT INTO t SELECT g, 'after', g FROM generate_series(1, 2500) g")
            wait_for(lambda: replica_db.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'public.t'::regclass"
                " AND granted AND mode = 'AccessExclusiveLock'") == [(1,)], 60,
                "the TRUNCATE applied in the streamed target transaction")
        _after(src, log)
        src.execute("UPDATE t SET n = -n WHERE id <= 10")
        _after(src, log)
    sc.wait_same(source_db, replica_db, ["public.t"], 90, "the streamed TRUNCATE")
    with replica_db.connect() as r:
        r.autocommit = True
        (seeds,) = r.execute("SELECT count(*) FROM pgml_history.public__t WHERE _pgml_op = 'T'"
                             " AND _pgml_seq = -2").fetchone()
        assert seeds == 1, "copied again after a TRUNCATE the stream applied"
        _as_of_equals(r, log)
        marks = r.execute("SELECT count(*), count(DISTINCT _pgml_commit_lsn) FROM"
                          " pgml_history.public__t WHERE _pgml_op = 'T' AND _pgml_seq >= 0"
                          ).fetchone()
        assert marks == (1, 1)
        (ended,) = r.execute(  # inserted before the TRUNCATE in the same transaction
            "SELECT count(*) FROM pgml_history.public__t h WHERE _pgml_op = 'I' AND v = 'x'"
            " AND _pgml_seq < (SELECT _pgml_seq FROM pgml_history.public__t WHERE"
            " _pgml_op = 'T' AND _pgml_seq >= 0 AND _pgml_commit_lsn = h._pgml_commit_lsn)"
            ).fetchone()
        assert ended == 2901
