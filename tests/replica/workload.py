"""A random mixed workload for the equivalence tests: many types, tables with and without
keys, inserts, updates (also of keys), deletes, truncates, TOASTed values that stay
unchanged, aborted transactions and rolled-back savepoints."""

from __future__ import annotations

import random

import psycopg

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE w_pk (id bigint PRIMARY KEY, i int, n numeric, f float8, t text, b bytea,
    j jsonb, a int[], ts timestamptz, u uuid, flag bool, m mood);
CREATE TABLE w_full (k int, t text, j jsonb, ts timestamptz);
ALTER TABLE w_full REPLICA IDENTITY FULL;
CREATE TABLE w_comp (a int, b text, v text, f float8, PRIMARY KEY (a, b));
CREATE TABLE w_idx (code text NOT NULL, v bigint, big text);
CREATE UNIQUE INDEX w_idx_code ON w_idx (code);
ALTER TABLE w_idx REPLICA IDENTITY USING INDEX w_idx_code;
"""
TABLES = ["public.w_pk", "public.w_full", "public.w_comp", "public.w_idx"]


def big(rng: random.Random) -> str:
    """More than 2 kB of incompressible text: stored out of line (TOAST)."""
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(3000))


def _pk_values(rng: random.Random, id_: int) -> tuple:
    return (id_, rng.randint(-1000, 1000), f"{rng.uniform(-1e6, 1e6):.4f}",
            rng.choice([rng.uniform(-1e9, 1e9), None, 0.0]),
            rng.choice([None, "", "short text", big(rng)]),
            rng.choice([None, bytes(rng.randrange(256) for _ in range(8))]),
            psycopg.types.json.Jsonb({"k": rng.randint(0, 9), "s": [1, "two", None]}),
            rng.choice([None, [rng.randint(0, 9) for _ in range(3)], []]),
            rng.choice(["2024-02-29 12:00:00+00", "1999-12-31 23:59:59.123456+05", None]),
            rng.choice([None, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
            rng.choice([True, False, None]), rng.choice(["sad", "ok", "happy", None]))


class Workload:
    """One step = one source transaction of a few random changes (some roll back)."""

    def __init__(self, conn: psycopg.Connection, seed: int) -> None:
        self.conn = conn
        self.rng = random.Random(seed)
        self.next_id = 1
        self.changes = 0

    def setup(self, rows: int = 300) -> None:
        self.conn.execute(SCHEMA)
        for _ in range(rows // 10):
            self.step(inserts_only=True)

    def step(self, inserts_only: bool = False) -> None:
        rng, conn = self.rng, self.conn
        with conn.transaction():
            for _ in range(rng.randint(1, 6)):
                choice = "insert" if inserts_only else rng.choices(
                    ["insert", "update", "update_key", "update_toast", "delete", "full",
                     "comp", "idx", "savepoint", "truncate", "bulk"],
                    [30, 20, 5, 8, 10, 12, 8, 6, 2, 0.3, 0.5])[0]
                getattr(self, "_" + choice)(rng, conn)
            if not inserts_only and rng.random() < 0.05:
                raise psycopg.Rollback()  # an aborted transaction never reaches the target

    def _insert(self, rng, conn) -> None:
        for _ in range(rng.randint(1, 10)):
            conn.execute("INSERT INTO w_pk VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                         _pk_values(rng, self.next_id))
            self.next_id += 1
            self.changes += 1

    def _update(self, rng, conn) -> None:
        cur = conn.execute("UPDATE w_pk SET i = i + 1, f = %s, m = %s WHERE id %% 7 = %s",
                           (rng.uniform(-5, 5), rng.choice(["ok", None]), rng.randrange(7)))
        self.changes += cur.rowcount

    def _update_key(self, rng, conn) -> None:
        cur = conn.execute("UPDATE w_pk SET id = id + 1000000 WHERE id IN (SELECT id FROM w_pk"
                           " WHERE id < 1000000 ORDER BY random() LIMIT 3)")
        self.changes += cur.rowcount

    def _update_toast(self, rng, conn) -> None:
        """Touch rows with TOASTed text without changing it: pgoutput sends 'u'."""
        cur = conn.execute("UPDATE w_pk SET n = n + 1 WHERE length(t) > 2000 AND id IN"
                           " (SELECT id FROM w_pk ORDER BY random() LIMIT 5)")
        self.changes += cur.rowcount

    def _delete(self, rng, conn) -> None:
        cur = conn.execute("DELETE FROM w_pk WHERE id IN (SELECT id FROM w_pk ORDER BY"
                           " random() LIMIT %s)", (rng.randint(1, 4),))
        self.changes += cur.rowcount

    def _full(self, rng, conn) -> None:
        k = rng.randint(0, 5)
        op = rng.choice(["ins", "ins", "dup", "upd", "del"])
        if op == "ins":
            conn.execute("INSERT INTO w_full VALUES (%s, %s, %s, %s)",
                         (k, rng.choice(["x", None, big(rng)]),
                          psycopg.types.json.Jsonb([k]), "2024-01-01 00:00:00+00"))
        elif op == "dup":  # identical rows: the target must keep the right number of them
            conn.execute("INSERT INTO w_full SELECT * FROM w_full WHERE k = %s LIMIT 2", (k,))
        elif op == "upd":
            conn.execute("UPDATE w_full SET j = j || '[1]' WHERE ctid = (SELECT ctid FROM"
                         " w_full WHERE k = %s LIMIT 1)", (k,))
        else:
            conn.execute("DELETE FROM w_full WHERE ctid = (SELECT ctid FROM w_full WHERE k ="
                         " %s LIMIT 1)", (k,))
        self.changes += 1

    def _comp(self, rng, conn) -> None:
        a, b = rng.randint(0, 30), rng.choice("abc")
        if rng.random() < 0.3:  # a change of one part of a composite key
            cur = conn.execute(
                "UPDATE w_comp SET b = b || 'x' WHERE a = %s AND NOT EXISTS (SELECT FROM"
                " w_comp c WHERE c.a = w_comp.a AND c.b = w_comp.b || 'x')", (a,))
        else:
            cur = conn.execute(
                "INSERT INTO w_comp VALUES (%s, %s, %s, %s) ON CONFLICT (a, b) DO UPDATE"
                " SET v = excluded.v", (a, b, big(rng) if rng.random() < 0.2 else "v",
                                        rng.random()))
        self.changes += cur.rowcount

    def _idx(self, rng, conn) -> None:
        code = f"c{rng.randint(0, 40)}"
        op = rng.choice(["ins", "upd", "del"])
        if op == "ins":
            conn.execute("INSERT INTO w_idx VALUES (%s, %s, %s) ON CONFLICT (code) DO NOTHING",
                         (code, rng.randint(0, 10**12), rng.choice([None, big(rng)])))
        elif op == "upd":
            conn.execute("UPDATE w_idx SET v = v + 1, code = code || 'u' WHERE code = %s AND"
                         " NOT EXISTS (SELECT FROM w_idx i WHERE i.code = %s || 'u')",
                         (code, code))
        else:
            conn.execute("DELETE FROM w_idx WHERE code = %s", (code,))
        self.changes += 1

    def _savepoint(self, rng, conn) -> None:
        try:
            with conn.transaction():
                conn.execute("INSERT INTO w_pk (id, i) VALUES (%s, -1)", (self.next_id,))
                conn.execute("DELETE FROM w_comp WHERE a = %s", (rng.randint(0, 30),))
                raise psycopg.Rollback()
        finally:
            self.next_id += 1

    def _bulk(self, rng, conn) -> None:
        """Big enough to be streamed (protocol 2) with a small logical_decoding_work_mem,
        with a subtransaction that rolls back in the middle of it."""
        first = self.next_id
        self.next_id += 400
        conn.execute("INSERT INTO w_pk (id, i, t, m) SELECT g, g, repeat('b', 200), 'ok' FROM"
                     " generate_series(%s::bigint, %s::bigint) g", (first, first + 299))
        try:
            with conn.transaction():
                conn.execute("INSERT INTO w_pk (id, i) SELECT g, -g FROM"
                             " generate_series(%s::bigint, %s::bigint) g", (first + 300, first + 399))
                conn.execute("UPDATE w_pk SET i = 0 WHERE id BETWEEN %s AND %s",
                             (first, first + 50))
                raise psycopg.Rollback()
        finally:
            pass
        cur = conn.execute("UPDATE w_pk SET f = 1.5 WHERE id BETWEEN %s AND %s",
                           (first + 100, first + 199))
        self.changes += 300 + cur.rowcount

    def _truncate(self, rng, conn) -> None:
        conn.execute(rng.choice(["TRUNCATE w_comp", "TRUNCATE w_full",
                                 "TRUNCATE w_comp, w_idx RESTART IDENTITY"]))
        self.changes += 1
