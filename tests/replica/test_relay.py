"""The copy relay, pure and compiled (issue 14): replica/clone/relay.py's ``gather`` is the
reference, decoder._speedups ``copy_gather`` must relay the very same bytes and surface the
very same errors. Every test runs against both (psycopg's pattern, like tests/decoder)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from decoder import accel
from replica.clone import libpq, relay

# Every type family binary COPY carries differently: fixed width, varlena, arrays (NULL
# elements), NaN/infinity, TOAST-size values (a 3 MB bytea is bigger than the relay's
# chunk and than copy_gather's first allocation; md5 text does not compress).
TABLE = """CREATE TABLE t (
    id bigint PRIMARY KEY, i int, s smallint, n numeric, f float8, r real, b bool,
    txt text, raw bytea, d date, ts timestamptz, iv interval, u uuid, j jsonb,
    ia int[], ta text[], ip inet, big text)"""
ROWS = """INSERT INTO t SELECT g, g * 7, (g % 100)::smallint, g / 3.0, CASE g % 5 WHEN 0
    THEN 'NaN'::float8 WHEN 1 THEN '-Infinity' ELSE g * 1.5 END, g / 7.0, g % 2 = 0,
    CASE WHEN g % 11 = 0 THEN NULL ELSE 'row ' || g || ' é✓' END,
    CASE WHEN g % 13 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
    date '2020-01-01' + g, timestamptz '2024-02-29 12:00+00' + g * interval '1 minute',
    g * interval '1 second', md5(g::text)::uuid, jsonb_build_object('g', g, 'a', ARRAY[g]),
    ARRAY[g, NULL, -g], ARRAY['x' || g, NULL], ('10.0.' || (g % 250) || '.1')::inet,
    CASE WHEN g % 500 = 0 THEN (SELECT string_agg(md5(g::text || k), '') FROM
         generate_series(1, 6000) k) END
    FROM generate_series(1, {n}) g"""
HUGE = ("INSERT INTO t (id, raw) SELECT -1, decode(string_agg(md5(k::text), ''), 'hex')"
        " FROM generate_series(1, 200000) k")  # 3.2 MB


@pytest.fixture(params=["python", "c"])
def impl(request):
    """The relay's pure loop, then the compiled one (skipped where it cannot run); the
    compiled case checks it is really taken - a silent fallback would test nothing."""
    before = accel.IMPLEMENTATION
    if request.param == "c":
        if not accel.available():
            pytest.skip("decoder._speedups is not built (no C compiler at install)")
        if libpq.loaded() is None:
            pytest.skip("psycopg's libpq was not found in this process")
    accel.select(request.param)
    yield request.param
    accel.select(before)


def _dump(conn: psycopg.Connection, table: str) -> bytes:
    """The table's rows as one binary COPY stream, in key order."""
    out = bytearray()
    with conn.cursor().copy(sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT"
                                    " (FORMAT binary)").format(sql.Identifier(table))) as cp:
        for block in cp:
            out += block
    return bytes(out)


def _relay(src: psycopg.Connection, tgt: psycopg.Connection, query: str, table: str,
           chunk_bytes: int) -> list[int]:
    """Relay ``query``'s COPY into ``table`` on the target; the counts the relay yielded."""
    seen: list[int] = []
    with tgt.transaction(), tgt.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(
                sql.Identifier(table))) as cout:
            seen.extend(relay.relay_copy(src, query.encode(), cout, chunk_bytes=chunk_bytes))
    return seen


def test_the_reader_is_the_selected_implementation(impl, source_db):
    with source_db.connect() as src:
        read = relay.reader(src.pgconn)
        compiled = getattr(read, "func", None) is getattr(accel.compiled(), "copy_gather", 0)
        assert compiled == (impl == "c")
        assert accel.relay_gather(libpq.loaded()) is (None if impl == "python" else read.func)


def test_the_libpq_found_is_the_one_loaded_and_psycopgs_version():
    """The relay's libpq is a copy already in this process (never a second one loaded by
    the lookup) with psycopg's version; an implementation it does not know gets none."""
    lib = libpq.loaded()
    if lib is not None:
        assert lib.PQlibVersion() == psycopg.pq.version()
        if psycopg.pq.__impl__ != "python":  # (ctypes names it by soname, not by path)
            assert os.path.realpath(lib._name) in libpq.mapped()
    before = libpq.mapped()
    assert libpq._find("no-such-impl") is None
    assert libpq.mapped() == before


@pytest.mark.parametrize("chunk_bytes", [1, 5000, 256 * 1024])
def test_every_type_nulls_and_toast_arrive_byte_identical(impl, source_db, replica_db,
                                                          chunk_bytes):
    source_db.execute(TABLE)
    source_db.execute(ROWS.format(n=3000))
    source_db.execute(HUGE)
    replica_db.execute(TABLE)
    with source_db.connect() as src, replica_db.connect() as tgt:
        seen = _relay(src, tgt, "COPY t TO STDOUT (FORMAT binary)", "t", chunk_bytes)
        assert seen[-1] == 3001  # "COPY n": exact, last
        assert seen == sorted(seen) and len(seen) > (2 if chunk_bytes < 256 * 1024 else 1)
        assert _dump(tgt, "t") == _dump(src, "t")


def test_an_empty_table_and_an_empty_range(impl, source_db, replica_db):
    source_db.execute(TABLE)
    replica_db.execute(TABLE)
    with source_db.connect() as src, replica_db.connect() as tgt:
        assert _relay(src, tgt, "COPY t TO STDOUT (FORMAT binary)", "t", 1024) == [0]
        source_db.execute(ROWS.format(n=10))
        assert _relay(src, tgt, "COPY (SELECT * FROM t WHERE id > 100) TO STDOUT"
                                " (FORMAT binary)", "t", 1024) == [0]
        assert tgt.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_notices_mid_copy_reach_the_handler(impl, source_db, replica_db):
    """A NoticeResponse among the CopyData messages: libpq calls psycopg's notice receiver
    from inside PQgetCopyData - in copy_gather with the GIL released (the receiver takes it
    itself) - and every notice reaches the handler, in order, the rows intact."""
    source_db.execute("CREATE TABLE t (id bigint, v text)")
    source_db.execute("""CREATE FUNCTION loud(g bigint) RETURNS bigint LANGUAGE plpgsql AS
        $$ BEGIN IF g % 500 = 0 THEN RAISE NOTICE 'row %', g; END IF; RETURN g; END $$""")
    replica_db.execute("CREATE TABLE t (id bigint, v text)")
    query = ("COPY (SELECT loud(g), repeat('x', (g % 50)::int) FROM generate_series(1, 5000)"
             " g) TO STDOUT (FORMAT binary)")
    with source_db.connect() as src, replica_db.connect() as tgt:
        heard: list[str] = []
        src.add_notice_handler(lambda d: heard.append(d.message_primary))
        assert _relay(src, tgt, query, "t", 4096)[-1] == 5000
        assert heard == [f"row {g}" for g in range(500, 5001, 500)]
        assert tgt.execute("SELECT count(*), sum(id), sum(length(v)) FROM t").fetchone() == \
            src.execute("SELECT 5000, sum(g), sum(g % 50) FROM generate_series(1, 5000) g"
                        ).fetchone()


def _implementations() -> list[str]:
    """The pure relay, and the compiled one where it can run here."""
    return ["python"] + (["c"] if accel.available() and libpq.loaded() is not None else [])


@contextlib.contextmanager
def _selected(name: str) -> Iterator[None]:
    before = accel.IMPLEMENTATION
    accel.select(name)
    try:
        yield
    finally:
        accel.select(before)


def _error_of(src, tgt, query: str) -> tuple[type, str | None, str]:
    with pytest.raises(psycopg.Error) as info:
        _relay(src, tgt, query, "t", 1024)
    exc = info.value
    return type(exc), exc.sqlstate, str(exc).split("\n")[0]


def test_a_source_error_mid_copy_surfaces_the_same_and_loads_nothing(source_db, replica_db):
    """Division by zero at row 3000 (rows before it already relayed): both implementations
    raise the same error, and the target keeps none of the rows."""
    source_db.execute("CREATE TABLE t (id bigint, v float8)")
    replica_db.execute("CREATE TABLE t (id bigint, v float8)")
    query = ("COPY (SELECT g, 1.0 / (g - 3000) FROM generate_series(1, 5000) g) TO STDOUT"
             " (FORMAT binary)")
    errors = {}
    for name in _implementations():
        with _selected(name), source_db.connect() as src, replica_db.connect() as tgt:
            errors[name] = _error_of(src, tgt, query)
            assert tgt.execute("SELECT count(*) FROM t").fetchone() == (0,)
            assert src.execute("SELECT 1").fetchone() == (1,)  # usable after it
    assert errors["python"][0] is psycopg.errors.DivisionByZero
    assert len(set(errors.values())) == 1, errors


def test_a_source_backend_terminated_mid_copy_surfaces_the_same(source_db, replica_db):
    """The source's backend dies while the COPY is sending (pg_terminate_backend from a
    second session once rows have arrived): the same error class either way."""
    source_db.execute("CREATE TABLE t (id bigint, v text)")
    replica_db.execute("CREATE TABLE t (id bigint, v text)")
    query = ("COPY (SELECT g, CASE WHEN g = 2000 THEN pg_sleep(30)::text ELSE 'v' END"
             " FROM generate_series(1, 4000) g) TO STDOUT (FORMAT binary)")
    kinds = {}
    for name in _implementations():
        with _selected(name), source_db.connect() as src, replica_db.connect() as tgt:
            pid = src.info.backend_pid
            killer = threading.Thread(target=_terminate_when_sleeping, args=(source_db, pid))
            killer.start()
            try:
                kinds[name] = _error_of(src, tgt, query)[:2]  # (the message names the pid)
            finally:
                killer.join()
            assert tgt.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert kinds["python"][0] is not None
    assert len(set(kinds.values())) == 1, kinds


def _terminate_when_sleeping(db, pid: int) -> None:
    for _ in range(300):
        if db.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                      (pid,)) == [("PgSleep",)]:
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            return
        threading.Event().wait(0.1)


_values = st.tuples(
    st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
    st.one_of(st.none(), st.floats(allow_nan=True)),
    st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",),
                                               blacklist_characters="\x00"), max_size=300)),
    st.one_of(st.none(), st.binary(max_size=20000)))


@settings(max_examples=15, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(_values, max_size=60), chunk_bytes=st.integers(1, 70000))
def test_random_rows_relay_the_same_both_ways(source_db, replica_db, rows, chunk_bytes):
    """Random rows (NULLs, NaN, any text, binary up to 20 kB) and any chunk size: the pure
    and the compiled relay load byte-identical tables, equal to the source's."""
    ddl = "CREATE TABLE IF NOT EXISTS {} (id int, a bigint, f float8, s text, b bytea)"
    source_db.execute(sql.SQL(ddl).format(sql.Identifier("r")))
    source_db.execute("TRUNCATE r")
    with source_db.connect() as c, c.cursor().copy("COPY r FROM STDIN") as cp:
        for i, row in enumerate(rows):
            cp.write_row((i, *row))
    impls = _implementations()
    for name in impls:
        replica_db.execute(sql.SQL(ddl).format(sql.Identifier(f"r_{name}")))
    with source_db.connect() as src, replica_db.connect() as tgt:
        for name in impls:
            with _selected(name):
                seen = _relay(src, tgt, "COPY r TO STDOUT (FORMAT binary)", f"r_{name}",
                              chunk_bytes)
            assert seen[-1] == len(rows)
        want = _dump(src, "r")
        for name in impls:
            assert _dump(tgt, f"r_{name}") == want

