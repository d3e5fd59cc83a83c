"""pgml.as_of / point_in_time / train(as_of =>) against history rows written by hand with
exact times: the read rules one by one (boundaries, unchanged TOAST chains, delete and
reinsert, truncate, ttl) without a sidecar. tests/replica/test_history.py runs them end to end."""

from __future__ import annotations

import psycopg
import pytest

from replica.history import store

T0 = "2026-01-01 00:00:00+00"


def _at(minute: int) -> str:
    return f"2026-01-01 00:{minute:02d}:00+00"


@pytest.fixture
def hist(pgml_db):
    with psycopg.connect(pgml_db.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE public.acct (id int PRIMARY KEY, tier text, big text)")
        with c.transaction():
            store.ensure(c, "public", "acct", ["id"], None)
        c.execute("UPDATE pgml_history.tables SET started_at = %s", (T0,))
        rows = [  # id, tier, big, minute, lsn, seq, op, unchanged
            (1, "a", "B1", 0, 1, 0, "I", None),
            (2, "a", "B2", 0, 1, 1, "I", None),
            (1, "b", None, 5, 2, 0, "U", ["big"]),   # big unchanged: B1
            (1, "c", None, 7, 3, 0, "U", ["big"]),   # still B1 (a chain of unchanged)
            (2, None, None, 8, 4, 0, "D", None),
            (2, "z", "B9", 9, 5, 0, "I", None),      # deleted and reinserted
            (None, None, None, 20, 6, 0, "T", None),  # truncate ends 1 and 2
            (3, "x", "B3", 21, 7, 0, "I", None),
        ]
        for i, tier, big, minute, lsn, seq, op, unch in rows:
            c.execute("INSERT INTO pgml_history.public__acct (id, tier, big, _pgml_commit_time,"
                      " _pgml_commit_lsn, _pgml_seq, _pgml_op, _pgml_unchanged) VALUES"
                      " (%s, %s, %s, %s, %s::pg_lsn, %s, %s, %s)",
                      (i, tier, big, _at(minute), f"0/{lsn:X}", seq, op, unch))
        yield c


def _as_of(c, minute: int):
    (name,) = c.execute("SELECT pgml.as_of('public.acct', %s)", (_at(minute),)).fetchone()
    return sorted(c.execute(f"SELECT id, tier, big FROM {name}").fetchall())  # noqa: S608


def test_as_of_rules(hist):
    assert _as_of(hist, 0) == [(1, "a", "B1"), (2, "a", "B2")]
    assert _as_of(hist, 5) == [(1, "b", "B1"), (2, "a", "B2")]  # boundary: at commit time
    assert _as_of(hist, 7) == [(1, "c", "B1"), (2, "a", "B2")]
    assert _as_of(hist, 8) == [(1, "c", "B1")]
    assert _as_of(hist, 9) == [(1, "c", "B1"), (2, "z", "B9")]
    assert _as_of(hist, 20) == []
    assert _as_of(hist, 30) == [(3, "x", "B3")]


def test_point_in_time_rules_and_ttl(hist):
    hist.execute("CREATE TABLE spine (id int, at timestamptz, y int)")
    hist.execute("INSERT INTO spine VALUES (1, %s, 1), (1, %s, 2), (2, %s, 3), (2, %s, 4),"
                 " (1, %s, 5), (3, %s, 6), (9, %s, 7), (NULL, %s, 8), (1, NULL, 9)",
                 (_at(4), _at(7), _at(8), _at(10), _at(25), _at(21), _at(3), _at(3)))
    (name,) = hist.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.acct'],"
                           " 'pit')").fetchone()
    assert name == "pit"
    got = hist.execute("SELECT y, acct__tier, acct__big FROM pit ORDER BY y").fetchall()
    assert got == [(1, "a", "B1"), (2, "c", "B1"), (3, None, None), (4, "z", "B9"),
                   (5, None, None), (6, "x", "B3"), (7, None, None), (8, None, None),
                   (9, None, None)]
    hist.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.acct'], 'pit_ttl',"
                 " ttl => interval '90 seconds')")
    got = dict(hist.execute("SELECT y, acct__tier FROM pit_ttl").fetchall())
    # minute 4 reads the version of minute 0: 4 minutes old, past the ttl
    assert (got[1], got[2], got[4], got[6]) == (None, "c", "z", "x")
    hist.execute("INSERT INTO spine VALUES (1, %s, 10)", (_at(12),))  # version of minute 7
    hist.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.acct'], 'pit_ttl2',"
                 " ttl => interval '90 seconds')")
    assert hist.execute("SELECT acct__tier FROM pit_ttl2 WHERE y = 10").fetchone() == (None,)


def test_point_in_time_same_through_plpy_and_from_parquet(hist):
    """The three read paths give the same rows: server files (superuser), plpy (a role that
    may not use server files), and the compacted Parquet segment."""
    hist.execute("CREATE TABLE spine (id int, at timestamptz, y int)")
    hist.execute("INSERT INTO spine SELECT 1 + g %% 4, %s::timestamptz + g * interval '13 s',"
                 " g FROM generate_series(0, 150) g", (T0,))
    hist.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.acct'], 'pit_files')")
    rows = "SELECT y, acct__tier, acct__big FROM {} ORDER BY y"
    want = hist.execute(rows.format("pit_files")).fetchall()
    assert {r[1] for r in want} == {None, "a", "b", "c", "z", "x"}
    hist.execute("CREATE ROLE pit_reader")
    try:
        hist.execute("GRANT USAGE ON SCHEMA pgml, pgml_history TO pit_reader;"
                     " GRANT SELECT ON ALL TABLES IN SCHEMA pgml_history TO pit_reader;"
                     " GRANT SELECT ON spine TO pit_reader; GRANT CREATE ON SCHEMA public"
                     " TO pit_reader")
        hist.execute("SET ROLE pit_reader")
        hist.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.acct'], 'pit_plpy')")
        assert hist.execute(rows.format("pit_plpy")).fetchall() == want
        hist.execute("RESET ROLE")
        hist.execute("DROP TABLE pit_plpy")
    finally:
        hist.execute("RESET ROLE")
        hist.execute("DROP OWNED BY pit_reader; DROP ROLE pit_reader")
    hist.execute("SELECT pgml.history_compact('public.acct', interval '0')")
    assert hist.execute("SELECT count(*) FROM pgml_history.public__acct").fetchone() == (0,)
    hist.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.acct'], 'pit_seg')")
    assert hist.execute(rows.format("pit_seg")).fetchall() == want
    assert _as_of(hist, 7) == [(1, "c", "B1"), (2, "a", "B2")]


def test_history_threads_give_the_same_rows_and_bad_values_say_so(hist):
    """DuckDB's threads (pgml.history_threads, default a parallel query's share) change
    nothing in what point_in_time returns, and a bad setting is named with the fix."""
    hist.execute("CREATE TABLE spine (id int, at timestamptz, y int)")
    hist.execute("INSERT INTO spine SELECT 1 + g %% 4, %s::timestamptz + g * interval '7 s',"
                 " g FROM generate_series(0, 400) g", (T0,))
    got = {}
    for threads in ("1", "4", None):
        if threads:
            hist.execute("SELECT set_config('pgml.history_threads', %s, false)", (threads,))
        else:
            hist.execute("RESET pgml.history_threads")
        name = f"pit_t{threads or 'default'}"
        hist.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.acct'], %s)",
                     (name,))
        got[threads] = hist.execute(
            f"SELECT y, acct__tier, acct__big FROM {name} ORDER BY y").fetchall()  # noqa: S608
    assert len(got[None]) == 401 and {r[1] for r in got[None]} >= {"a", "c", "z", "x"}
    assert got["1"] == got["4"] == got[None]
    hist.execute("SET pgml.history_threads = 'many'")
    with pytest.raises(psycopg.Error, match="pgml.history_threads = 'many'.*RESET"):
        hist.execute("SELECT pgml.as_of('public.acct', now())")
    hist.execute("RESET pgml.history_threads")


def test_clear_errors(hist):
    with pytest.raises(psycopg.Error, match="before the history of public.acct starts"):
        hist.execute("SELECT pgml.as_of('public.acct', '2025-12-31')")
    with pytest.raises(psycopg.Error, match="start the sidecar with --history public.nope"):
        hist.execute("SELECT pgml.as_of('nope', now())")
    hist.execute("CREATE TABLE sp (other int, at timestamptz)")
    with pytest.raises(psycopg.Error, match="no column id"):
        hist.execute("SELECT pgml.point_in_time('sp', 'at', ARRAY['public.acct'])")
    hist.execute("CREATE TABLE taken (x int)")
    with pytest.raises(psycopg.Error, match="already exists"):
        hist.execute("SELECT pgml.as_of('public.acct', now(), 'taken')")


def test_train_as_of_trains_on_the_past(hist):
    hist.execute("CREATE TABLE public.pts (id int PRIMARY KEY, x float8, y float8)")
    with hist.transaction():
        store.ensure(hist, "public", "pts", ["id"], None)
    hist.execute("UPDATE pgml_history.tables SET started_at = %s", (T0,))
    for i in range(40):  # y = 2x before minute 10; y = -x after (the present)
        for minute, y in ((1, 2.0 * i), (10, -1.0 * i)):
            hist.execute("INSERT INTO pgml_history.public__pts (id, x, y, _pgml_commit_time,"
                         " _pgml_commit_lsn, _pgml_seq, _pgml_op) VALUES (%s, %s, %s, %s,"
                         " %s::pg_lsn, %s, 'U')", (i, float(i), y, _at(minute),
                                                  f"0/{minute:X}", i))
    row = hist.execute("SELECT * FROM pgml.train('past', 'regression', 'public.pts', 'y',"
                       " as_of => %s)", (_at(5),)).fetchone()
    assert row[0] == "past"
    (rel,) = hist.execute("SELECT s.relation_name FROM pgml.models m JOIN pgml.snapshots s"
                          " ON s.id = m.snapshot_id JOIN pgml.projects p ON p.id = m.project_id"
                          " WHERE p.name = 'past'").fetchone()
    assert "pts_as_of_20260101T000500" in rel
    (pred,) = hist.execute("SELECT pgml.predict('past', ARRAY[10.0, 10.0])").fetchone()
    assert pred > 0  # learned y = 2x (the past), not y = -x
