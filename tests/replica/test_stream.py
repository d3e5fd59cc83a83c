"""Streaming against the real servers: every kind of change arrives, exactly once, in order."""

from __future__ import annotations

import psycopg
import pytest

from replica import metrics
from tests.replica.conftest import same, wait_for


def _metric(metric, *labels) -> float:
    m = metric.labels(*labels) if labels else metric
    return m._value.get()


def test_changes_of_every_kind_arrive(source_db, replica_db, sidecars):
    source_db.execute("""
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE TABLE items (id bigint PRIMARY KEY, qty posint, price numeric(10,2),
            score float8, name varchar(40) NOT NULL, note text, blob bytea, doc jsonb,
            tags text[], nums int[], at timestamptz, uid uuid, ok bool, feel mood,
            day date, span interval);
        CREATE TABLE events (kind text, payload jsonb, at timestamptz);
        ALTER TABLE events REPLICA IDENTITY FULL;
        CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
        CREATE TABLE keyed (code text NOT NULL, v int);
        CREATE UNIQUE INDEX keyed_code ON keyed (code);
        ALTER TABLE keyed REPLICA IDENTITY USING INDEX keyed_code;
        INSERT INTO items SELECT g, g, g * 1.25, g / 3.0, 'n' || g, NULL, '\\x00ff',
            jsonb_build_object('g', g), ARRAY['a', 'b'], ARRAY[g, NULL], now(), gen_random_uuid(),
            g % 2 = 0, 'ok', current_date, '1 day 2 hours' FROM generate_series(1, 500) g;
        INSERT INTO events SELECT 'k' || (g % 3), '{"x": 1}', '2024-01-01' FROM generate_series(1, 30) g;
    """)
    sc = sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    tables = ["public.items", "public.events", "public.pairs", "public.keyed"]
    wait_for(lambda: same(source_db, replica_db, tables), 30, "the initial copy")
    applied = _metric(metrics.ROWS_APPLIED, "public.items", "update")
    source_db.execute("""
        INSERT INTO items (id, qty, name, note) SELECT g, 1, 'big', repeat(md5(g::text), 200)
            FROM generate_series(1001, 1020) g;                     -- TOASTed values
        UPDATE items SET score = -1 WHERE id > 1000;                -- TOAST unchanged ('u')
        UPDATE items SET id = id + 10000 WHERE id BETWEEN 1001 AND 1005;  -- key change + 'u'
        UPDATE items SET name = 'renamed', feel = 'happy' WHERE id <= 100;
        DELETE FROM items WHERE id BETWEEN 101 AND 150;
        INSERT INTO events VALUES ('k0', '{"x": 1}', '2024-01-01');  -- a duplicate row
        DELETE FROM events WHERE kind = 'k1';
        UPDATE events SET payload = '{"x": 2}' WHERE kind = 'k2';
        INSERT INTO pairs SELECT g, 'b' || g, 'v' FROM generate_series(1, 50) g;
        UPDATE pairs SET b = 'z' || a WHERE a < 10;
        INSERT INTO keyed SELECT 'c' || g, g FROM generate_series(1, 20) g;
        UPDATE keyed SET v = -v, code = code || 'x' WHERE v < 5;
        DELETE FROM keyed WHERE v > 15;
    """)
    with source_db.connect() as conn:  # several changes to one key in one transaction
        with conn.transaction():
            conn.execute("INSERT INTO items (id, qty, name) VALUES (5000, 1, 'a')")
            conn.execute("UPDATE items SET qty = 2 WHERE id = 5000")
            conn.execute("DELETE FROM items WHERE id = 5000")
            conn.execute("INSERT INTO items (id, qty, name) VALUES (5000, 3, 'b')")
            conn.execute("UPDATE items SET note = repeat('x', 5000) WHERE id = 1")
        with conn.transaction():  # never appears
            conn.execute("INSERT INTO items (id, qty, name) VALUES (6000, 1, 'gone')")
            raise psycopg.Rollback()
    wait_for(lambda: same(source_db, replica_db, tables), 30, "the changes")
    assert replica_db.execute("SELECT qty, name FROM items WHERE id = 5000") == [(3, "b")]
    assert replica_db.execute("SELECT count(*) FROM items WHERE id = 6000") == [(0,)]
    assert replica_db.execute("SELECT length(note) FROM items WHERE id = 11001") == [(6400,)]
    assert _metric(metrics.ROWS_APPLIED, "public.items", "update") > applied
    # the target mirrors types, NOT NULL and keys, nothing else
    cols = dict(replica_db.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name ="
        " 'items'"))
    assert cols["feel"] == "text" and cols["qty"] == "integer" and cols["tags"] == "ARRAY"
    assert replica_db.execute("SELECT is_nullable FROM information_schema.columns WHERE"
                              " table_name = 'items' AND column_name = 'name'") == [("NO",)]
    keys = replica_db.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'p' ORDER BY 1")
    assert ("items", "PRIMARY KEY (id)") in keys and ("pairs", "PRIMARY KEY (a, b)") in keys
    assert ("keyed", "PRIMARY KEY (code)") in keys
    sc.stop()


def test_truncate_restart_identity_and_cascade(source_db, replica_db, sidecars):
    source_db.execute("""
        CREATE TABLE parent (id serial PRIMARY KEY, v text);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent(id));
        INSERT INTO parent (v) SELECT 'p' FROM generate_series(1, 10);
        INSERT INTO child SELECT g, g FROM generate_series(1, 10) g;
    """)
    sidecars(source=source_db.dsn, target=replica_db.dsn).wait_streaming()
    tables = ["public.parent", "public.child"]
    wait_for(lambda: same(source_db, replica_db, tables), 30, "the initial copy")
    with source_db.connect() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO parent (v) VALUES ('before')")
            conn.execute("TRUNCATE parent RESTART IDENTITY CASCADE")
            conn.execute("INSERT INTO parent (v) VALUES ('after')")
    wait_for(lambda: same(source_db, replica_db, tables), 30, "the truncate")
    assert replica_db.execute("SELECT id, v FROM parent") == [(1, "after")]
    assert replica_db.execute("SELECT count(*) FROM child") == [(0,)]


@pytest.mark.parametrize("rows", [20_000])
def test_big_transaction_spans_segments(source_db, replica_db, sidecars, rows):
    """One source transaction bigger than a segment: written in parts, committed once."""
    source_db.execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
    sidecars(source=source_db.dsn, target=replica_db.dsn, segment_rows=3000).wait_streaming()
    with source_db.connect() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO big SELECT g, 'a' FROM generate_series(1, %s) g", (rows,))
            conn.execute("UPDATE big SET v = 'b' WHERE id % 2 = 0")
            conn.execute("DELETE FROM big WHERE id % 3 = 0")
    wait_for(lambda: same(source_db, replica_db, ["public.big"]), 60, "the big transaction")
