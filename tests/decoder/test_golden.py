"""Golden tests: every message PostgreSQL 15's pgoutput emits, from a real server.

Each test drives the source cluster through ``ReplicationConnection`` (a real
START_REPLICATION stream over psycopg's pq layer) and asserts the decoded fields, in text
and in binary mode (the ``binary`` fixture).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from decoder import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
    parse_lsn,
)

KIND = {False: "t", True: "b"}


def _oid(db, regclass: str) -> int:
    return db.execute("SELECT %s::regclass::oid", (regclass,))[0][0]


def test_insert_update_delete_with_default_identity(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name varchar(10), price numeric(10,2),"
               " note text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE items")
    slot, lsn = stream.create_slot(db)
    with db.connect(autocommit=False) as conn:
        xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        started = conn.execute("SELECT now()").fetchone()[0]
        conn.execute("INSERT INTO items VALUES (1, 'apple', 1.50, NULL), (2, 'pear', 2, 'x')")
        conn.commit()
    db.execute("UPDATE items SET price = 3.25 WHERE id = 1")
    db.execute("DELETE FROM items WHERE id = 2")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)

    assert cap.names() == ["Begin", "Relation", "Insert", "Insert", "Commit",
                           "Begin", "Update", "Commit", "Begin", "Delete", "Commit"]
    begin, commit = cap.messages[0], cap.messages[4]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.xid == xid
    assert begin.final_lsn == commit.commit_lsn and commit.end_lsn > commit.commit_lsn
    assert begin.commit_time == commit.commit_time
    assert begin.commit_time.tzinfo is UTC and started <= begin.commit_time
    assert begin.commit_time <= datetime.now(UTC)
    assert commit.flags == 0
    assert cap.of(Begin)[1].final_lsn >= commit.end_lsn  # transactions in commit order

    rel = cap.messages[1]
    assert isinstance(rel, Relation)
    assert (rel.xid, rel.relation_id, rel.namespace, rel.name, rel.replica_identity) == (
        None, _oid(db, "items"), "public", "items", "d")
    assert [(c.name, c.type_oid, c.type_modifier, c.is_key) for c in rel.columns] == [
        ("id", 23, -1, True), ("name", 1043, 14, False),
        ("price", 1700, (10 << 16 | 2) + 4, False), ("note", 25, -1, False)]
    assert cap.decoder.relation(rel.relation_id) is rel

    inserts = cap.of(Insert)
    assert all(m.xid is None and m.relation_id == rel.relation_id for m in inserts)
    k = KIND[binary]
    assert inserts[0].new_tuple.kinds == k * 3 + "n"
    assert inserts[0].new_tuple.raw[3] is None
    if not binary:
        assert inserts[0].new_tuple.raw[:3] == (b"1", b"apple", b"1.50")
    assert cap.rows(Insert) == [(1, "apple", Decimal("1.50"), None),
                                (2, "pear", Decimal("2.00"), "x")]

    (update,) = cap.of(Update)
    assert update.old_tuple is None and update.key_tuple is None
    assert update.new_tuple.values(rel) == (1, "apple", Decimal("3.25"), None)

    (delete,) = cap.of(Delete)
    assert delete.old_tuple is None
    assert delete.key_tuple.kinds == k + "nnn"
    assert delete.key_tuple.values(rel) == (2, None, None, None)


def test_key_changing_update_sends_the_old_key(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE t (a int, b text, c int, PRIMARY KEY (a, b))")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    slot, lsn = stream.create_slot(db)
    db.execute("INSERT INTO t VALUES (1, 'one', 10)")
    db.execute("UPDATE t SET c = 11")  # key unchanged: no old key
    db.execute("UPDATE t SET b = 'uno'")  # key changed: 'K' with the old key
    db.execute("UPDATE t SET a = 2, c = 12")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    rel = cap.of(Relation)[0]
    assert [c.is_key for c in rel.columns] == [True, True, False]
    u1, u2, u3 = cap.of(Update)
    assert u1.key_tuple is None and u1.old_tuple is None
    assert u2.old_tuple is None and u2.key_tuple.kinds == KIND[binary] * 2 + "n"
    assert u2.key_tuple.values(rel) == (1, "one", None)
    assert u2.new_tuple.values(rel) == (1, "uno", 11)
    assert u3.key_tuple.values(rel) == (1, "uno", None)
    assert u3.new_tuple.values(rel) == (2, "uno", 12)


def test_replica_identity_full_sends_the_old_row(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE f (id int, v text, w float8)")
    db.execute("ALTER TABLE f REPLICA IDENTITY FULL")
    db.execute("CREATE PUBLICATION pub FOR TABLE f")
    slot, lsn = stream.create_slot(db)
    db.execute("INSERT INTO f VALUES (1, 'a', 0.5), (2, NULL, -1e300)")
    db.execute("UPDATE f SET v = 'b' WHERE id = 1")
    db.execute("DELETE FROM f WHERE id = 2")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    rel = cap.of(Relation)[0]
    assert rel.replica_identity == "f"
    assert all(c.is_key for c in rel.columns)
    (update,) = cap.of(Update)
    assert update.key_tuple is None
    assert update.old_tuple.values(rel) == (1, "a", 0.5)
    assert update.new_tuple.values(rel) == (1, "b", 0.5)
    (delete,) = cap.of(Delete)
    assert delete.key_tuple is None
    assert delete.old_tuple.kinds == KIND[binary] + "n" + KIND[binary]
    assert delete.old_tuple.values(rel) == (2, None, -1e300)


def test_replica_identity_using_index(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE u (id int PRIMARY KEY, code text NOT NULL, qty int)")
    db.execute("CREATE UNIQUE INDEX u_code ON u (code)")
    db.execute("ALTER TABLE u REPLICA IDENTITY USING INDEX u_code")
    db.execute("CREATE PUBLICATION pub FOR TABLE u")
    slot, lsn = stream.create_slot(db)
    db.execute("INSERT INTO u VALUES (1, 'A-1', 5)")
    db.execute("UPDATE u SET qty = 6")  # identity unchanged
    db.execute("UPDATE u SET id = 7")  # the primary key is not the identity: still no K
    db.execute("UPDATE u SET code = 'A-2'")
    db.execute("DELETE FROM u")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    rel = cap.of(Relation)[0]
    assert rel.replica_identity == "i"
    assert [(c.name, c.is_key) for c in rel.columns] == [
        ("id", False), ("code", True), ("qty", False)]
    u1, u2, u3 = cap.of(Update)
    assert u1.key_tuple is None and u2.key_tuple is None
    assert u3.key_tuple.kinds == "n" + KIND[binary] + "n"
    assert u3.key_tuple.values(rel) == (None, "A-1", None)
    assert u3.new_tuple.values(rel) == (7, "A-2", 6)
    (delete,) = cap.of(Delete)
    assert delete.key_tuple.values(rel) == (None, "A-2", None)


def test_unchanged_toast_value_is_a_sentinel(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    db.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")  # no compression
    db.execute("CREATE PUBLICATION pub FOR TABLE docs")
    slot, lsn = stream.create_slot(db)
    big = "".join(chr(0x41 + i % 26) for i in range(5000))
    db.execute("INSERT INTO docs VALUES (1, %s, 0)", (big,))
    db.execute("UPDATE docs SET n = 1")  # body unchanged and stored out of line
    db.execute("UPDATE docs SET body = body || '!', n = 2")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    rel = cap.of(Relation)[0]
    (insert,) = cap.of(Insert)
    assert insert.new_tuple.values(rel) == (1, big, 0)
    u1, u2 = cap.of(Update)
    k = KIND[binary]
    assert u1.new_tuple.kinds == k + "u" + k
    assert u1.new_tuple.raw[1] is None
    values = u1.new_tuple.values(rel)
    assert values == (1, UNCHANGED_TOAST, 1)
    assert values[1] is not None and repr(values[1]) == "UNCHANGED_TOAST"
    assert u2.new_tuple.values(rel) == (1, big + "!", 2)


def test_truncate_cascade_and_restart_identity(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE parent (id serial PRIMARY KEY)")
    db.execute("CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent)")
    db.execute("CREATE TABLE solo (id bigserial PRIMARY KEY)")
    db.execute("CREATE PUBLICATION pub FOR TABLE parent, child, solo")
    slot, lsn = stream.create_slot(db)
    db.execute("INSERT INTO parent DEFAULT VALUES")
    db.execute("INSERT INTO child VALUES (1, 1)")
    db.execute("TRUNCATE parent CASCADE")
    db.execute("TRUNCATE solo RESTART IDENTITY")
    db.execute("TRUNCATE parent, solo RESTART IDENTITY CASCADE")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    parent, child, solo = _oid(db, "parent"), _oid(db, "child"), _oid(db, "solo")
    t1, t2, t3 = cap.of(Truncate)
    assert t1.xid is None
    assert (set(t1.relation_ids), t1.cascade, t1.restart_identity) == (
        {parent, child}, True, False)
    assert (t2.relation_ids, t2.cascade, t2.restart_identity) == ((solo,), False, True)
    assert (set(t3.relation_ids), t3.cascade, t3.restart_identity) == (
        {parent, child, solo}, True, True)
    assert {r.relation_id for r in cap.of(Relation)} == {parent, child, solo}


def test_logical_messages_transactional_and_not(source_db, binary, stream):
    db = source_db
    db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    slot, lsn = stream.create_slot(db)
    content = bytes(range(256))
    with db.connect(autocommit=False) as conn:
        xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        tx_lsn = conn.execute("SELECT pg_logical_emit_message(true, 'app/tx', %s::bytea)",
                              (content,)).fetchone()[0]
        now_lsn = conn.execute("SELECT pg_logical_emit_message(false, 'app/now', 'héllo')"
                               ).fetchone()[0]
        conn.commit()
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    # The non-transactional message is sent at once, before the transaction that emitted
    # it commits; the transactional one inside that transaction's Begin/Commit.
    assert cap.names() == ["LogicalMessage", "Begin", "LogicalMessage", "Commit"]
    now, begin, tx, _ = cap.messages
    assert isinstance(now, LogicalMessage) and isinstance(tx, LogicalMessage)
    assert (now.xid, now.transactional, now.prefix, now.content) == (
        None, False, "app/now", "héllo".encode())
    assert now.lsn == parse_lsn(str(now_lsn))
    assert begin.xid == xid
    assert (tx.xid, tx.transactional, tx.prefix, tx.content) == (None, True, "app/tx", content)
    assert tx.lsn == parse_lsn(str(tx_lsn))


def test_custom_enum_type_is_announced_by_a_type_message(source_db, binary, stream):
    db = source_db
    db.execute("CREATE SCHEMA app")
    db.execute("CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy')")
    db.execute("CREATE TABLE app.people (id int PRIMARY KEY, mood app.mood, "
               "history app.mood[])")
    db.execute("CREATE PUBLICATION pub FOR TABLE app.people")
    slot, lsn = stream.create_slot(db)
    db.execute("INSERT INTO app.people VALUES (1, 'happy', '{sad,ok}')")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    mood, mood_array = (db.execute("SELECT 'app.mood'::regtype::oid, "
                                   "'app.mood[]'::regtype::oid")[0])
    assert cap.names() == ["Begin", "Type", "Type", "Relation", "Insert", "Commit"]
    types = {t.type_oid: t for t in cap.of(Type)}
    assert types[mood] == Type(None, mood, "app", "mood")
    assert types[mood_array] == Type(None, mood_array, "app", "_mood")
    assert cap.decoder.types[mood].name == "mood"
    rel = cap.of(Relation)[0]
    assert (rel.namespace, rel.name) == ("app", "people")
    assert [c.type_oid for c in rel.columns] == [23, mood, mood_array]
    # Unknown OIDs come back unconverted: str in text mode, bytes in binary mode.
    (row,) = cap.rows(Insert)
    assert row[:2] == ((1, "happy") if not binary else (1, b"happy"))
    assert row[2] == "{sad,ok}" if not binary else isinstance(row[2], bytes)


def test_origin_message_follows_begin(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    slot, lsn = stream.create_slot(db)
    origin = f"golden_origin_{db.name}"
    db.execute("SELECT pg_replication_origin_create(%s)", (origin,))
    try:
        with db.connect(autocommit=True) as conn:
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (origin,))
            with conn.transaction():
                conn.execute("SELECT pg_replication_origin_xact_setup('1/ABCDEF', now())")
                conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("SELECT pg_replication_origin_session_reset()")
        stream.end_marker(db)
        cap = stream.capture(db, slot, lsn, binary=binary)
    finally:
        db.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
    assert cap.names() == ["Begin", "Origin", "Relation", "Insert", "Commit"]
    assert cap.messages[1] == Origin(parse_lsn("1/ABCDEF"), origin)


def test_relation_message_is_resent_after_ddl(source_db, binary, stream):
    db = source_db
    db.execute("CREATE TABLE t (id int PRIMARY KEY, a int)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    slot, lsn = stream.create_slot(db)
    db.execute("INSERT INTO t VALUES (1, 1)")
    db.execute("ALTER TABLE t ADD COLUMN b text DEFAULT 'new', ALTER COLUMN a TYPE bigint")
    db.execute("INSERT INTO t VALUES (2, 2)")
    stream.end_marker(db)
    cap = stream.capture(db, slot, lsn, binary=binary)
    r1, r2 = cap.of(Relation)
    assert r1.relation_id == r2.relation_id
    assert [(c.name, c.type_oid) for c in r1.columns] == [("id", 23), ("a", 23)]
    assert [(c.name, c.type_oid) for c in r2.columns] == [("id", 23), ("a", 20), ("b", 25)]
    assert cap.decoder.relation(r1.relation_id) is r2
    i1, i2 = cap.of(Insert)
    assert i1.new_tuple.values(r1) == (1, 1)
    assert i2.new_tuple.values(r2) == (2, 2, "new")
