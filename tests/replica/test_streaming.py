"""Streamed transactions: bigger than logical_decoding_work_mem, they arrive in chunks while
they run; they are applied as they come and committed at Stream Commit. An aborted one, or an
aborted subtransaction inside one, never appears on the target.

The sidecar negotiates the protocol itself (``auto``), as in production: 2 from a 15 source,
4 (``streaming 'parallel'``, Stream Abort with its abort LSN and time) from 16+, so the
matrix's 17 source exercises protocol 4 end to end."""

from __future__ import annotations

import threading

import psycopg

from replica import metrics
from tests.replica.conftest import wait_for


def negotiated(source_version: int) -> tuple[int, str]:
    """The protocol and ``streaming`` option ``auto`` picks for a source of this major."""
    return (4, "parallel") if source_version >= 16 else (2, "on")


def _streamed_sidecar(sidecars, source_db, replica_db, source_version, **kw):
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn, decoding_work_mem="64kB",
                  segment_rows=500, **kw).wait_streaming()
    protocol, streaming = negotiated(source_version)
    assert (sc.state.protocol, sc.state.stream_options.get("streaming")) == \
        (protocol, streaming)
    return sc


def test_streamed_transactions_commit_abort_and_subtransactions(source_db, replica_db,
                                                                sidecars, source_version):
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text, big text);"
                      "CREATE TABLE small (id serial PRIMARY KEY, v int)")
    sc = _streamed_sidecar(sidecars, source_db, replica_db, source_version)
    tables = ["public.t", "public.small"]
    stop = threading.Event()

    def small_txns() -> None:  # ordinary transactions committing between the chunks
        with source_db.connect() as conn:
            i = 0
            while not stop.is_set():
                conn.execute("INSERT INTO small (v) VALUES (%s)", (i,))
                i += 1

    th = threading.Thread(target=small_txns, daemon=True)
    th.start()
    with source_db.connect() as conn:
        with conn.transaction():  # committed, with a rolled-back and a kept subtransaction
            conn.execute("INSERT INTO t SELECT g, 'a', repeat('x', 300) FROM"
                         " generate_series(1, 5000) g")
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO t SELECT g, 'gone', NULL FROM"
                                 " generate_series(5001, 8000) g")
                    conn.execute("UPDATE t SET v = 'gone' WHERE id <= 100")
                    raise psycopg.Rollback()
            finally:
                pass
            with conn.transaction():
                conn.execute("UPDATE t SET v = 'kept' WHERE id BETWEEN 101 AND 3000")
            conn.execute("DELETE FROM t WHERE id > 4900")
        with conn.transaction():  # aborted after streaming: never appears
            conn.execute("INSERT INTO t SELECT g, 'aborted', repeat('y', 300) FROM"
                         " generate_series(10001, 16000) g")
            raise psycopg.Rollback()
    stop.set()
    th.join(10)
    sc.wait_same(source_db, replica_db, tables, 60, "the streamed transactions")
    assert replica_db.execute("SELECT count(*) FROM t WHERE v IN ('gone', 'aborted')") == [(0,)]
    assert replica_db.execute("SELECT count(*) FROM t WHERE v = 'kept'") == [(2900,)]


def test_streamed_transaction_survives_kill_and_replays(source_db, replica_db, sidecars,
                                                         source_version):
    """A sidecar that stops in the middle of a streamed transaction rolls it back; after a
    restart the whole transaction comes again and is applied once."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sc = _streamed_sidecar(sidecars, source_db, replica_db, source_version)
    applied = metrics.TRANSACTIONS_APPLIED._value.get()
    conn = source_db.connect()
    conn.autocommit = False
    conn.execute("INSERT INTO t SELECT g, repeat('z', 200) FROM generate_series(1, 20000) g")
    # streamed: applied on the target in an open transaction while the source's is open too
    wait_for(lambda: replica_db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgml-replica stream'"
        " AND state = 'idle in transaction' AND datname = current_database()") == [(1,)],
        30, "the streamed transaction to be applied as it runs")
    assert replica_db.execute("SELECT count(*) FROM t") == [(0,)]  # not committed
    sc.stop()  # with the transaction still open on the source
    conn.commit()
    conn.close()
    again = _streamed_sidecar(sidecars, source_db, replica_db, source_version)
    again.wait_same(source_db, replica_db, ["public.t"], 60)
    assert metrics.TRANSACTIONS_APPLIED._value.get() > applied
