"""predict_relation's bulk path on a real PL/Python cluster: the binary COPY stream copybin
builds is what PostgreSQL reads back, and the table predict_relation writes -- through COPY
FROM a server file, or through array parameters where COPY is not allowed -- holds per-row
pgml.predict's answers under keys of any type, NULL keys and NULL features included."""

from __future__ import annotations

import datetime
import decimal
import uuid

import numpy as np
import pytest

from inference import copybin


def _sent(values: list[bytes | None]) -> copybin.Fixed | copybin.Varying:
    lengths = np.array([-1 if v is None else len(v) for v in values])
    return copybin.sent_field(lengths, b"".join(v for v in values if v is not None))


def test_copy_stream_reads_back_as_written(replica_db):
    """Fixed and varying fields, NULLs, NaN predictions and float8[] probabilities survive
    COPY FROM STDIN (FORMAT binary) exactly."""
    ids = [1, 2, 3, 4]
    names = [b"a", None, b"", "\u00e9t\u00e9".encode()]
    prediction = np.array([0.5, np.nan, -1e300, 3.0])
    proba = np.array([[0.1, 0.9], [1.0, 0.0], [0.25, 0.75], [np.nan, 0.5]])
    fixed = _sent([i.to_bytes(8, "big", signed=True) for i in ids])
    varying = _sent(names)
    assert isinstance(fixed, copybin.Fixed) and isinstance(varying, copybin.Varying)
    for fields, table, cols in (
            ([fixed, copybin.float8_field(prediction), copybin.float8_array_field(proba)],
             "all_fixed", "id int8, prediction float8, probabilities float8[]"),
            ([fixed, varying, copybin.float8_field(prediction), copybin.float8_array_field(proba)],
             "mixed", "id int8, name text, prediction float8, probabilities float8[]")):
        data = copybin.encode(len(ids), fields)
        with replica_db.connect(autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} ({cols})")
            with conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy:
                copy.write(data)
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()  # noqa: S608
        assert [r[0] for r in rows] == ids
        got_prediction = np.array([r[-2] for r in rows])
        np.testing.assert_array_equal(got_prediction, prediction)
        np.testing.assert_array_equal(np.array([r[-1] for r in rows]), proba)
        if table == "mixed":
            assert [r[1] for r in rows] == [None if v is None else v.decode() for v in names]


def test_copy_stream_of_no_rows_is_header_and_trailer():
    assert copybin.encode(0, [_sent([]), copybin.float8_field(np.empty(0))]) == (
        copybin.HEADER + copybin.TRAILER)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_copy_stream_written_to_a_file_is_the_encoded_stream(n):
    import io

    values = np.arange(n, dtype=np.float64)
    for key in (_sent([i.to_bytes(4, "big") for i in range(n)]),
                _sent([None if i % 2 else b"x" * i for i in range(n)])):
        fields = [key, copybin.float8_field(values), copybin.float8_array_field(
            np.stack([values, -values], axis=1))]
        out = io.BytesIO()
        copybin.write(out, n, fields)
        assert out.getvalue() == copybin.encode(n, fields)


@pytest.fixture(scope="module")
def scored_db(shared_pgml_db):
    db = shared_pgml_db
    with db.connect(autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes'), pgml.load_dataset('iris')")
        conn.execute("SELECT pgml.train('xgb', 'regression', 'pgml.diabetes', 'target',"
                     " 'xgboost', '{\"n_estimators\": 10}')")
        conn.execute("SELECT pgml.train('forest', 'classification', 'pgml.iris', 'target',"
                     " 'random_forest', '{\"n_estimators\": 5}')")
        # keys of several types, NULL keys, NULL features; the features are diabetes'
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'a rather happy mood')")
        conn.execute(
            "CREATE TABLE keyed AS SELECT row_number() OVER () AS n,"
            " (ARRAY['sad', 'a rather happy mood', NULL])[1 + row_number() OVER () % 3]::mood"
            " AS m, row_number() OVER () % 2 = 0 AS flag,"
            " make_interval(days => (row_number() OVER ())::int) AS span,"
            " CASE WHEN row_number() OVER () % 7 = 0 THEN NULL"
            "      ELSE 'k' || repeat('x', (row_number() OVER () % 5)::int) END AS tag,"
            " md5(row_number() OVER ()::text)::uuid AS u, (row_number() OVER () / 3.0)::numeric"
            " AS amount, date '2020-01-01' + (row_number() OVER ())::int AS day,"
            " ARRAY[row_number() OVER (), 1]::int[] AS pair,"
            " age, sex, CASE WHEN row_number() OVER () % 5 = 0 THEN NULL ELSE bmi END AS bmi,"
            " bp, s1, s2, s3, s4, s5, s6 FROM pgml.diabetes")
    return db


KEYS = "n, tag, u, amount, day, pair, m, flag, span"
NATIVE_ROWS = 20_000  # inference.bulk.NATIVE_MIN_ROWS (bulk imports plpy: not importable here)
FEATURES = "age, sex, bmi, bp, s1, s2, s3, s4, s5, s6"


@pytest.mark.parametrize("bulk_copy", ["on", "off"])
def test_predict_relation_keys_of_any_type_match_per_row_predict(scored_db, bulk_copy):
    with scored_db.connect(autocommit=True) as conn:
        conn.execute("SELECT set_config('pgml.bulk_copy', %s, false)", (bulk_copy,))
        target = f"scored_{bulk_copy}"
        n = conn.execute(f"SELECT pgml.predict_relation('xgb', 'keyed', '{{{KEYS}}}', %s)",
                         (target,)).fetchone()[0]
        assert n == 442
        types = conn.execute(
            "SELECT array_agg(format_type(atttypid, atttypmod) ORDER BY attnum) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0", (target,)).fetchone()[0]
        assert types == ["bigint", "text", "uuid", "numeric", "date", "integer[]", "mood",
                         "boolean", "interval", "double precision"]
        rows = conn.execute(
            f"SELECT {', '.join(f's.{k}' for k in KEYS.split(', '))}, s.prediction,"  # noqa: S608 - constants
            f" pgml.predict('xgb', ARRAY[{FEATURES}]) FROM {target} s JOIN keyed k USING (n)"
            " ORDER BY s.n").fetchall()
        want = conn.execute(f"SELECT {KEYS} FROM keyed ORDER BY n").fetchall()  # noqa: S608
        conn.execute("SELECT pgml.predict_relation('xgb', 'keyed', '{n}', %s)",
                     (target + "_again",))
        last = conn.execute("SELECT pgml.runtime_info('xgb')").fetchone()[0][
            "last_predict_relation"]
    assert last["written_by"] == {"on": "copy", "off": "arrays"}[bulk_copy]
    assert last["rows"] == 442 and {"read", "score", "write", "total"} <= set(last["seconds"])
    assert [r[:9] for r in rows] == want
    # per-row pgml.predict may score through compiled trees (routing.py), bulk through the
    # ONNX graph: both passed parity with the native model at training (relative 1e-5)
    np.testing.assert_allclose([r[9] for r in rows], [r[10] for r in rows], rtol=1e-5)
    assert sum(r[1] is None for r in rows) == 442 // 7 and sum(r[6] is None for r in rows) > 0
    assert isinstance(rows[0][2], uuid.UUID) and isinstance(rows[0][3], decimal.Decimal)
    assert isinstance(rows[0][4], datetime.date)


@pytest.mark.parametrize("bulk_copy", ["on", "off"])
def test_predict_relation_probabilities_match_per_row(scored_db, bulk_copy):
    with scored_db.connect(autocommit=True) as conn:
        conn.execute("SELECT set_config('pgml.bulk_copy', %s, false)", (bulk_copy,))
        target = f"iris_{bulk_copy}"
        conn.execute("CREATE TABLE IF NOT EXISTS iris_keyed AS SELECT row_number() OVER () AS id,"
                     " * FROM pgml.iris")
        n = conn.execute("SELECT pgml.predict_relation('forest', 'iris_keyed', '{id}', %s)",
                         (target,)).fetchone()[0]
        assert n == 150
        rows = conn.execute(
            f"SELECT s.prediction, s.probabilities, pgml.predict('forest', f), "  # noqa: S608 - constants
            f" pgml.predict_proba('forest', f) FROM {target} s JOIN (SELECT id, ARRAY[sepal_length,"
            " sepal_width, petal_length, petal_width] AS f FROM iris_keyed) k USING (id)"
        ).fetchall()
    assert len(rows) == 150
    for label, proba, one_label, one_proba in rows:
        assert label == one_label
        np.testing.assert_allclose(proba, one_proba, atol=1e-6)


def test_predict_relation_without_file_privileges_takes_the_array_path(scored_db):
    """A role that may not read server files gets the same table through array parameters."""
    with scored_db.connect(autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS bulk_plain")
        conn.execute("CREATE ROLE bulk_plain")
        conn.execute("GRANT ALL ON SCHEMA public, pgml TO bulk_plain")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA pgml TO bulk_plain")
        conn.execute("GRANT SELECT ON keyed TO bulk_plain")
        conn.execute("SET ROLE bulk_plain")
        try:
            assert conn.execute("SELECT pg_has_role(current_user, 'pg_read_server_files',"
                                " 'USAGE')").fetchone()[0] is False
            n = conn.execute("SELECT pgml.predict_relation('xgb', 'keyed', '{n}', 'plain_out')"
                             ).fetchone()[0]
            got = conn.execute("SELECT n, prediction FROM plain_out ORDER BY n").fetchall()
        finally:
            conn.execute("RESET ROLE")
        want = conn.execute(f"SELECT n, pgml.predict('xgb', ARRAY[{FEATURES}]) FROM keyed"  # noqa: S608
                            " ORDER BY n").fetchall()
    assert n == 442 and [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-5)


def test_predict_batch_of_many_rows_agrees_with_the_graph(scored_db):
    """From bulk.NATIVE_MIN_ROWS rows an XGBoost predict_batch scores through the model's own
    predictor (after the parity check on the batch's first rows); its answers stay within
    parity of the ONNX graph's (``SET pgml.native_bulk = off``) for every row."""
    rng = np.random.default_rng(3)
    with scored_db.connect(autocommit=True) as conn:
        base = np.array(conn.execute(f"SELECT {FEATURES} FROM pgml.diabetes").fetchall(),  # noqa: S608
                        dtype=np.float64)
        rows = base[rng.integers(0, len(base), NATIVE_ROWS + 500)]
        rows += rng.normal(0, 0.002, rows.shape)
        query = "SELECT array_agg(p ORDER BY n) FROM pgml.predict_batch('xgb', %s) WITH ORDINALITY b(p, n)"
        native = np.array(conn.execute(query, (rows.ravel().tolist(),)).fetchone()[0])
        conn.execute("SET pgml.native_bulk = off")
        graph = np.array(conn.execute(query, (rows.ravel().tolist(),)).fetchone()[0])
        conn.execute("RESET pgml.native_bulk")
        sample = [conn.execute("SELECT pgml.predict('xgb', %s::float8[])", (r.tolist(),))
                  .fetchone()[0] for r in rows[::1000]]
    assert len(native) == len(graph) == len(rows)
    scale = np.abs(graph).max()
    np.testing.assert_allclose(native, graph, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(native[::1000], sample, rtol=0, atol=1e-5 * scale)


def _scored_against_per_row(conn, relation: str, target: str, keys: str = KEYS) -> tuple:
    """(rows of ``target`` joined to ``relation`` by n with per-row pgml.predict, the
    relation's key rows): both ordered by n."""
    got = conn.execute(
        f"SELECT {', '.join(f's.{k}' for k in keys.split(', '))}, s.prediction,"  # noqa: S608 - constants
        f" pgml.predict('xgb', ARRAY[{FEATURES}]) FROM {target} s JOIN {relation} k USING (n)"
        " ORDER BY s.n").fetchall()
    want = conn.execute(f"SELECT {keys} FROM {relation} ORDER BY n").fetchall()  # noqa: S608
    return got, want


@pytest.fixture(scope="module")
def sparse_db(scored_db):
    """keyed spread over many heap blocks (fillfactor 10: a few rows per block), its key n
    NOT NULL (a fixed-width key read without lengths), never analyzed."""
    with scored_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE sparse WITH (fillfactor = 10) AS SELECT * FROM keyed")
        conn.execute("ALTER TABLE sparse ALTER n SET NOT NULL")
    return scored_db


@pytest.mark.parametrize("workers", ["2", "0"])
@pytest.mark.parametrize("bulk_copy", ["on", "off"])
def test_predict_relation_in_many_chunks_matches_per_row_predict(sparse_db, bulk_copy, workers):
    """Chunks of ~40 rows (about ten blocks each), read through one cursor, scored by the
    worker thread (or, with max_parallel_workers_per_gather = 0, in turn): every row once,
    keys of every type byte for byte, predictions as per-row pgml.predict."""
    with sparse_db.connect(autocommit=True) as conn:
        conn.execute("SELECT set_config('pgml.bulk_copy', %s, false),"
                      " set_config('pgml.bulk_chunk_rows', '40', false),"
                      " set_config('max_parallel_workers_per_gather', %s, false)",
                      (bulk_copy, workers))
        target = f"sparse_{bulk_copy}_{workers}"
        n = conn.execute(f"SELECT pgml.predict_relation('xgb', 'sparse', '{{{KEYS}}}', %s)",
                         (target,)).fetchone()[0]
        last = conn.execute("SELECT pgml.runtime_info('xgb')").fetchone()[0][
            "last_predict_relation"]
        blocks = conn.execute("SELECT pg_relation_size('sparse') / 8192").fetchone()[0]
        got, want = _scored_against_per_row(conn, "sparse", target)
        conn.execute("RESET pgml.bulk_chunk_rows")
        conn.execute("RESET max_parallel_workers_per_gather")
    assert n == 442 and last["rows"] == 442
    assert blocks > 40 and last["chunks"] > 5
    assert [r[:9] for r in got] == want
    if last["scored_by"] == "compiled":  # the same library as per-row pgml.predict
        assert [r[9] for r in got] == [r[10] for r in got]
    np.testing.assert_allclose([r[9] for r in got], [r[10] for r in got], rtol=1e-5)


def test_predict_relation_sees_its_own_transaction_across_chunks(sparse_db):
    """The cursor's one snapshot is the caller's: rows its transaction deleted are not
    scored, rows it inserted (uncommitted, in blocks of their own) are, each once."""
    with sparse_db.connect(autocommit=False) as conn:
        conn.execute("SET pgml.bulk_chunk_rows = 25")
        conn.execute("DELETE FROM sparse WHERE n % 3 = 0")
        conn.execute("INSERT INTO sparse SELECT n + 10000, m, flag, span, tag, u, amount, day,"
                     " pair, age, sex, bmi, bp, s1, s2, s3, s4, s5, s6 FROM keyed WHERE n <= 50")
        visible = conn.execute("SELECT count(*) FROM sparse").fetchone()[0]
        n = conn.execute("SELECT pgml.predict_relation('xgb', 'sparse', '{n}', 'sparse_tx')"
                         ).fetchone()[0]
        got, want = _scored_against_per_row(conn, "sparse", "sparse_tx", "n")
        conn.rollback()
    assert n == visible == 442 - 442 // 3 + 50
    assert [r[:1] for r in got] == want
    np.testing.assert_allclose([r[1] for r in got], [r[2] for r in got], rtol=1e-5)


def test_predict_relation_reads_a_view_as_one_chunk(sparse_db):
    with sparse_db.connect(autocommit=True) as conn:
        conn.execute("SET pgml.bulk_chunk_rows = 25")
        conn.execute("CREATE VIEW sparse_view AS SELECT * FROM sparse WHERE n % 2 = 0")
        n = conn.execute("SELECT pgml.predict_relation('xgb', 'sparse_view', '{n}', 'view_out')"
                         ).fetchone()[0]
        last = conn.execute("SELECT pgml.runtime_info('xgb')").fetchone()[0][
            "last_predict_relation"]
        got, want = _scored_against_per_row(conn, "sparse_view", "view_out", "n")
        conn.execute("RESET pgml.bulk_chunk_rows")
    assert n == 221 and last["chunks"] == 1
    assert [r[:1] for r in got] == want
    np.testing.assert_allclose([r[1] for r in got], [r[2] for r in got], rtol=1e-5)


def test_predict_relation_of_an_empty_table_creates_the_table(sparse_db):
    with sparse_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE empty_iris AS SELECT row_number() OVER () AS id, * FROM"
                     " pgml.iris WHERE false")
        n = conn.execute("SELECT pgml.predict_relation('forest', 'empty_iris', '{id}',"
                         " 'empty_out')").fetchone()[0]
        columns = conn.execute("SELECT array_agg(attname::text ORDER BY attnum) FROM"
                               " pg_attribute WHERE attrelid = 'empty_out'::regclass AND"
                               " attnum > 0").fetchone()[0]
    assert n == 0 and columns == ["id", "prediction", "probabilities"]


def test_predict_relation_probabilities_in_many_chunks(sparse_db):
    with sparse_db.connect(autocommit=True) as conn:
        conn.execute("SET pgml.bulk_chunk_rows = 10")
        conn.execute("CREATE TABLE iris_sparse WITH (fillfactor = 10) AS SELECT"
                     " row_number() OVER () AS id, * FROM pgml.iris")
        n = conn.execute("SELECT pgml.predict_relation('forest', 'iris_sparse', '{id}',"
                         " 'iris_sparse_out')").fetchone()[0]
        chunks = conn.execute("SELECT pgml.runtime_info('forest')").fetchone()[0][
            "last_predict_relation"]["chunks"]
        rows = conn.execute(
            "SELECT s.prediction, s.probabilities, pgml.predict('forest', f),"
            " pgml.predict_proba('forest', f) FROM iris_sparse_out s JOIN (SELECT id,"
            " ARRAY[sepal_length, sepal_width, petal_length, petal_width] AS f FROM iris_sparse)"
            " k USING (id)").fetchall()
        conn.execute("RESET pgml.bulk_chunk_rows")
    assert n == len(rows) == 150 and chunks > 3
    for label, proba, one_label, one_proba in rows:
        assert label == one_label
        np.testing.assert_allclose(proba, one_proba, atol=1e-6)


def test_native_scoring_in_many_chunks_agrees_with_per_row_predict(sparse_db):
    """Without compiled trees, a relation above bulk.NATIVE_MIN_ROWS in chunks below it: the
    native predictor, chosen on the first chunk from the relation's estimated size, scores
    every chunk."""
    with sparse_db.connect(autocommit=True) as conn:
        conn.execute("SET pgml.compiled_trees = off")  # a new backend: nothing cached yet
        conn.execute("SET pgml.bulk_chunk_rows = 4000")
        conn.execute("SELECT setseed(0.5)")
        conn.execute(f"CREATE TABLE many AS SELECT row_number() OVER () AS n, {', '.join(f'{c} + 0.002 * (random() - 0.5) AS {c}' for c in FEATURES.split(', '))}"  # noqa: S608,E501 - constants
                     f" FROM pgml.diabetes, generate_series(1, {NATIVE_ROWS // 442 + 10})")
        n = conn.execute("SELECT pgml.predict_relation('xgb', 'many', '{n}', 'many_out')"
                         ).fetchone()[0]
        last = conn.execute("SELECT pgml.runtime_info('xgb')").fetchone()[0][
            "last_predict_relation"]
        got, want = _scored_against_per_row(conn, "many", "many_out", "n")
        conn.execute("RESET pgml.bulk_chunk_rows")
    assert n == len(got) == len(want) > NATIVE_ROWS
    assert last["scored_by"].startswith("native") and last["chunks"] > 4
    assert [r[:1] for r in got] == want
    scale = max(abs(r[2]) for r in got)
    np.testing.assert_allclose([r[1] for r in got], [r[2] for r in got], rtol=0,
                               atol=1e-5 * scale)
