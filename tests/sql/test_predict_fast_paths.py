"""Scoring fast paths through SQL: a batch large enough to be scored on several threads
answers row for row exactly like pgml.predict, under any max_parallel_workers_per_gather;
the model row records which test rows parity checked."""

from __future__ import annotations

import pytest

from inference.runtime import PARALLEL_MIN_ROWS
from tests.sql.helpers import connect, one

ROWS = PARALLEL_MIN_ROWS + 500


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        c.execute("SELECT pgml.load_dataset('diabetes')")
        c.execute("SELECT pgml.train('fast', 'regression', 'pgml.diabetes', 'target', 'xgboost',"
                  " '{\"n_estimators\": 30, \"max_depth\": 6}')")
        c.execute("SELECT setseed(0.5)")
        # distinct rows around the diabetes rows, as a table would hold them
        c.execute("CREATE TABLE many AS SELECT row_number() OVER () AS id, ARRAY[age, sex, bmi,"
                  " bp, s1, s2, s3, s4, s5, s6 + random() / 100]::float8[] AS f"
                  " FROM pgml.diabetes, generate_series(1, %s) LIMIT %s",
                  (ROWS // 442 + 1, ROWS))
        yield c


@pytest.mark.parametrize("workers", [None, "0", "1"])
def test_a_large_predict_batch_equals_predict_row_by_row(conn, workers):
    if workers is not None:
        conn.execute(f"SET max_parallel_workers_per_gather = {workers}")
    try:
        batch = [r[0] for r in conn.execute(
            "SELECT p FROM pgml.predict_batch('fast', (SELECT array_agg(x ORDER BY id, i)"
            " FROM many, unnest(f) WITH ORDINALITY u(x, i))) WITH ORDINALITY AS r(p, n)"
            " ORDER BY n")]
    finally:
        conn.execute("RESET max_parallel_workers_per_gather")
    rows = [r[0] for r in conn.execute("SELECT pgml.predict('fast', f) FROM many ORDER BY id")]
    assert len(batch) == len(rows) == ROWS
    assert batch == rows
    assert len(set(rows)) > 100  # distinct rows, distinct answers: the comparison means something


def test_model_predict_uses_the_same_row_path(conn):
    model_id = one(conn, "SELECT max(id) FROM pgml.models")
    got = conn.execute("SELECT pgml.model_predict(%s, f), pgml.predict('fast', f) FROM many"
                       " WHERE id <= 50", (model_id,)).fetchall()
    assert all(a == b for a, b in got)
    with_null = one(conn, "SELECT pgml.predict('fast', ARRAY[0.01, NULL, 0.02, 0.03, 0.01, 0.0,"
                          " 0.0, 0.0, 0.01, 0.0]::float8[])")
    assert with_null == with_null  # a NULL element is imputed, never NaN


def test_parity_records_the_rows_it_checked(conn):
    parity = one(conn, "SELECT parity FROM pgml.models ORDER BY id DESC LIMIT 1")
    assert parity["ok"] is True
    assert parity["rows_checked"] == parity["test_rows"] == 111  # diabetes: all 111 test rows
