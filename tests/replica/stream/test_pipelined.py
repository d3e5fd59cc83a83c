"""A light load's batches - few rows, keyed tables - are written and committed in one
pipeline (stream/pipelined.py): the target must end up equal to the source, whatever mix a
batch holds (inserts, full-row updates, deletes, an update of a key the target lacks, a
composite key), and a run the pipeline cannot take (no key, a type without an array type,
unchanged TOAST values) goes the ordinary way in the same transaction."""

from __future__ import annotations

import time

from replica.stream import pipelined
from tests.faults.compare import wait_equal
from tests.replica.conftest import ThreadSidecar


def _count_pipelines(monkeypatch) -> dict[str, int]:
    """Count the batches committed through the pipeline (calls["piped"])."""
    calls = {"piped": 0}
    commit = pipelined.commit

    def counted(writer, runs, end_lsn, commit_time):
        calls["piped"] += 1
        return commit(writer, runs, end_lsn, commit_time)

    monkeypatch.setattr(pipelined, "commit", counted)
    return calls


def _ten_rows_copied(source_db, replica_db) -> ThreadSidecar:
    """A sidecar streaming table k (id int8 key, a float8) whose ten rows are on the target."""
    source_db.execute("CREATE TABLE k (id int8 PRIMARY KEY, a float8);"
                      " INSERT INTO k SELECT g, 0 FROM generate_series(1, 10) g")
    sc = ThreadSidecar(source=source_db.dsn, target=replica_db.dsn).start()
    try:
        sc.wait_streaming()
        wait_equal(sc, source_db, replica_db, ["public.k"], 60, "the copy")
    except BaseException:
        sc.stop()
        raise
    return sc


TABLES = ["public.k", "public.pair", "public.bag", "public.toast", "public.arr"]
DDL = """
CREATE TABLE k (id int8 PRIMARY KEY, a float8, t text, ts timestamptz);
CREATE TABLE pair (x int4, y text, v numeric, PRIMARY KEY (x, y));
CREATE TABLE bag (v int4); ALTER TABLE bag REPLICA IDENTITY FULL;
CREATE TABLE toast (id int4 PRIMARY KEY, big text, n int4);
CREATE TABLE arr (id int4 PRIMARY KEY, tags int4[]);
INSERT INTO toast SELECT g, repeat(md5(g::text), 400), 0 FROM generate_series(1, 5) g;
"""


def test_small_batches_commit_in_one_pipeline_and_the_target_equals_the_source(
        source_db, replica_db, monkeypatch):
    calls = _count_pipelines(monkeypatch)
    source_db.execute(DDL)
    sc = ThreadSidecar(source=source_db.dsn, target=replica_db.dsn).start()
    try:
        sc.wait_streaming()
        with source_db.connect() as c:
            for i in range(40):
                with c.transaction():
                    lo = i * 10
                    c.execute("INSERT INTO k SELECT g, g * 0.5, md5(g::text), now()"
                              " FROM generate_series(%s::int8, %s::int8) g", (lo, lo + 9))
                    c.execute("UPDATE k SET a = a + 1, t = 'u' WHERE id BETWEEN %s AND %s",
                              (lo - 15, lo - 11))
                    c.execute("DELETE FROM k WHERE id IN (%s, %s)", (lo - 20, lo - 19))
                    c.execute("INSERT INTO pair VALUES (%s, 'a', 1.5), (%s, 'b', 2.5)",
                              (i, i))
                    c.execute("UPDATE pair SET v = v * 2 WHERE x = %s AND y = 'a'", (i - 1,))
                    c.execute("DELETE FROM pair WHERE x = %s AND y = 'b'", (i - 2,))
                if i % 10 == 0:  # runs a pipeline cannot take, beside ones it can
                    c.execute("INSERT INTO bag VALUES (%s)", (i,))
                    c.execute("UPDATE toast SET n = n + 1 WHERE id = %s", (i % 5 + 1,))
                    c.execute("INSERT INTO arr VALUES (%s, ARRAY[%s, 2])", (i, i))
                    c.execute("INSERT INTO k VALUES (%s, 0, 'x', now())", (100_000 + i,))
                time.sleep(0.02)  # a light load: batches of a transaction or a few
            # an update of a row inserted and deleted in one transaction before it: the
            # target never had it (the key the replace must not find)
            with c.transaction():
                c.execute("INSERT INTO k VALUES (-1, 0, 'gone', now())")
                c.execute("DELETE FROM k WHERE id = -1")
            c.execute("UPDATE k SET t = 'after' WHERE id BETWEEN 0 AND 3")
        wait_equal(sc, source_db, replica_db, TABLES, 90, "the target to equal the source")
    finally:
        sc.stop()
    assert calls["piped"] >= 1  # the light load's batches went that way (under load
    # the stream merges transactions into fewer batches: not how many)
    assert replica_db.execute("SELECT count(*) FROM toast WHERE length(big) = 12800"
                              )[0][0] == 5  # unchanged TOAST kept (the ordinary way)


def test_a_pipelined_update_of_a_key_the_target_lacks_leaves_it_absent(source_db, replica_db):
    """The pipeline's UPDATE matches an update's new image on its key: a row missing on the
    target (deleted there by hand) stays missing, as on the ordinary path (runs.RunWriter);
    the rest of the same batch is applied."""
    sc = _ten_rows_copied(source_db, replica_db)
    try:
        replica_db.execute("DELETE FROM k WHERE id = 5")
        with source_db.connect() as c, c.transaction():
            c.execute("UPDATE k SET a = 1 WHERE id IN (4, 5, 6)")
            c.execute("INSERT INTO k VALUES (11, 1)")
        deadline = time.monotonic() + 60
        while not replica_db.execute("SELECT count(*) FROM k WHERE id = 11")[0][0]:
            assert time.monotonic() < deadline, "the batch never arrived"
            time.sleep(0.05)
        assert replica_db.execute("SELECT id, a FROM k WHERE id BETWEEN 4 AND 6 ORDER BY id"
                                  ) == [(4, 1.0), (6, 1.0)]
    finally:
        sc.stop()


TRIGGERS = """
CREATE TABLE events (n bigserial, op text, ids int8[]);
CREATE FUNCTION log_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO events (op, ids) SELECT TG_OP, array_agg(id ORDER BY id) FROM old_rows;
    ELSE
        INSERT INTO events (op, ids) SELECT TG_OP, array_agg(id ORDER BY id) FROM new_rows;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER k_ins AFTER INSERT ON k REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_event();
CREATE TRIGGER k_upd AFTER UPDATE ON k REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_event();
CREATE TRIGGER k_del AFTER DELETE ON k REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_event();
ALTER TABLE k ENABLE ALWAYS TRIGGER k_ins, ENABLE ALWAYS TRIGGER k_upd,
    ENABLE ALWAYS TRIGGER k_del;
"""


def test_a_pipelined_update_fires_the_targets_update_triggers(source_db, replica_db,
                                                              monkeypatch):
    """A materialized exposure (sql/30_expose.sql) rescores rows in statement-level AFTER
    triggers on the mirrored table: the pipeline must write a full-row update as an UPDATE.
    Written as one DELETE-then-INSERT statement (a data-modifying CTE) the exposure's DELETE
    and INSERT triggers ran in an order the plan decided, and it could lose the rows' new
    predictions (tests/writeback/test_end_to_end.py did). Fails with that form: the events
    are then a DELETE and an INSERT of the updated keys."""
    calls = _count_pipelines(monkeypatch)
    sc = _ten_rows_copied(source_db, replica_db)
    try:
        replica_db.execute(TRIGGERS)
        with source_db.connect() as c, c.transaction():
            c.execute("UPDATE k SET a = 1 WHERE id IN (4, 5)")
            c.execute("DELETE FROM k WHERE id = 7")
            c.execute("INSERT INTO k VALUES (11, 1)")
        wait_equal(sc, source_db, replica_db, ["public.k"], 60, "the batch")
    finally:
        sc.stop()
    assert calls["piped"] >= 1
    events = replica_db.execute("SELECT op, ids FROM events WHERE ids IS NOT NULL ORDER BY n")
    assert ("UPDATE", [4, 5]) in events
    assert all(op == "UPDATE" for op, ids in events if {4, 5} & set(ids)), events
    assert ("DELETE", [7]) in events and ("INSERT", [11]) in events
