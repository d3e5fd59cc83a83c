"""Scoring: every array type, predict_proba, predict_batch, model_predict, NULL features,
the per-statement deployment lookup, runtime_info, and silence towards the client."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from sklearn.datasets import load_iris

from tests.sql.helpers import connect, one

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    """Iris (classification) and diabetes (regression) projects, one backend for the module."""
    with connect(shared_pgml_db) as c:
        c.execute("SELECT pgml.load_dataset('iris'), pgml.load_dataset('diabetes')")
        c.execute("SELECT pgml.train('iris', 'classification', 'pgml.iris', 'target')")
        c.execute("SELECT pgml.train('diabetes', 'regression', 'pgml.diabetes', 'target',"
                  " 'xgboost', '{\"n_estimators\": 20}')")
        yield c


@pytest.mark.parametrize("sql_type", ["float8", "real", "integer", "bigint", "smallint",
                                      "numeric", "boolean"])
def test_every_array_type_predicts_like_float8(conn, sql_type):
    values = [1, 0, 1, 1]  # exact in every type, booleans included
    literal = "ARRAY[true, false, true, true]" if sql_type == "boolean" else \
        f"ARRAY{values}::{sql_type}[]"
    got = one(conn, f"SELECT pgml.predict('iris', {literal})")  # noqa: S608 - fixed type names
    assert got == one(conn, "SELECT pgml.predict('iris', %s::float8[])", (values,))
    assert isinstance(got, float)


def test_numeric_array_literal_resolves(conn):
    """ARRAY[5.1, 3.5, ...] is numeric[]: it must not be ambiguous between the overloads."""
    assert one(conn, "SELECT pgml.predict('iris', ARRAY[5.1, 3.5, 1.4, 0.2])") == 0.0
    assert one(conn, "SELECT pgml.predict('iris', ARRAY[6.7, 3.0, 5.2, 2.3])") == 2.0


def test_predict_proba_matches_predict(conn):
    for row in (SETOSA, VIRGINICA):
        proba = one(conn, "SELECT pgml.predict_proba('iris', %s::float8[])", (row,))
        label = one(conn, "SELECT pgml.predict('iris', %s::float8[])", (row,))
        assert len(proba) == 3 and sum(proba) == pytest.approx(1, abs=1e-5)
        assert float(np.argmax(proba)) == label  # iris classes are 0, 1, 2 in column order
    with pytest.raises(psycopg.Error, match="classification"):
        conn.execute("SELECT pgml.predict_proba('diabetes', %s::float8[])", ([0.0] * 10,))


def test_predict_batch_equals_row_by_row(conn):
    X = load_iris().data[::7]
    flat = X.reshape(-1).tolist()
    batch = [r[0] for r in conn.execute("SELECT * FROM pgml.predict_batch('iris', %s::float8[])",
                                        (flat,))]
    rows = [one(conn, "SELECT pgml.predict('iris', %s::float8[])", (x.tolist(),)) for x in X]
    assert batch == rows
    ordered = conn.execute("SELECT p, n FROM pgml.predict_batch('iris', %s::float8[])"
                           " WITH ORDINALITY AS r(p, n)", (flat,)).fetchall()
    assert [p for p, _ in ordered] == rows
    assert conn.execute("SELECT * FROM pgml.predict_batch('iris', '{}'::float8[])"
                        ).fetchall() == []


def test_predict_batch_reads_null_elements_as_missing(conn):
    with_null = [5.1, None, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]
    batch = [r[0] for r in conn.execute("SELECT * FROM pgml.predict_batch('iris', %s::float8[])",
                                        (with_null,))]
    assert batch == [one(conn, "SELECT pgml.predict('iris', %s::float8[])", (with_null[:4],)),
                     one(conn, "SELECT pgml.predict('iris', %s::float8[])", (with_null[4:],))]
    with pytest.raises(psycopg.errors.DataException, match="not a whole number of rows of 4"):
        conn.execute("SELECT * FROM pgml.predict_batch('iris', ARRAY[1, 2, 3]::float8[])")


def test_null_feature_is_imputed_with_the_training_mean(conn):
    fill = one(conn, "SELECT (m.preprocess->'columns'->0->>'fill')::float8 FROM pgml.models m"
                     " JOIN pgml.projects p ON p.id = m.project_id WHERE p.name = 'iris'")
    assert fill == pytest.approx(np.mean(load_iris().data[:, 0]), rel=0.05)  # a training mean
    for row in (SETOSA, VIRGINICA):
        with_null = one(conn, "SELECT pgml.predict('iris', %s::float8[])", ([None] + row[1:],))
        filled = one(conn, "SELECT pgml.predict('iris', %s::float8[])", ([fill] + row[1:],))
        assert with_null == filled
    assert one(conn, "SELECT pgml.predict('iris', NULL::float8[])") is None  # STRICT


def test_model_predict_scores_a_given_model(conn):
    conn.execute("SELECT pgml.train('iris', algorithm => 'svm', automatic_deploy => false)")
    svm_id = one(conn, "SELECT max(id) FROM pgml.models")
    X = load_iris().data[::10]
    by_model = [one(conn, "SELECT pgml.model_predict(%s, %s::float8[])", (svm_id, x.tolist()))
                for x in X]
    assert set(by_model) <= {0.0, 1.0, 2.0}
    with pytest.raises(psycopg.errors.UndefinedObject, match="model 999999 does not exist"):
        conn.execute("SELECT pgml.model_predict(999999, ARRAY[1, 2, 3, 4]::float8[])")


def test_wrong_feature_count_says_expected_and_given(conn):
    with pytest.raises(psycopg.errors.DataException, match="expected 4 features, got 3"):
        conn.execute("SELECT pgml.predict('iris', ARRAY[1, 2, 3]::float8[])")
    with pytest.raises(psycopg.errors.DataException, match="expected 10 features, got 4"):
        conn.execute("SELECT pgml.predict('diabetes', %s::float8[])", (SETOSA,))


def test_unknown_project_and_project_without_deployment(conn):
    with pytest.raises(psycopg.errors.UndefinedObject, match="project 'nobody' does not exist"):
        conn.execute("SELECT pgml.predict('nobody', ARRAY[1, 2]::float8[])")
    conn.execute("SELECT pgml.train('quiet', 'classification', 'pgml.iris', 'target',"
                 " automatic_deploy => false)")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no deployed model"):
        conn.execute("SELECT pgml.predict('quiet', %s::float8[])", (SETOSA,))


def test_the_wrapper_is_inlined_so_the_lookup_key_is_per_statement(conn):
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN VERBOSE SELECT pgml.predict('iris', f) FROM (VALUES (%s::float8[])) v(f)",
        (SETOSA,)))
    assert "pgml._predict('iris'::text" in plan and "statement_timestamp()" in plan


def test_one_deployment_lookup_per_statement_not_per_row(conn):
    """pg_stat_xact_user_tables counts this transaction's scans of pgml.deployments."""
    scans = ("SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables"
             " WHERE relid = 'pgml.deployments'::regclass")
    with conn.transaction():
        before = one(conn, scans)
        total = one(conn, "SELECT count(pgml.predict('iris', ARRAY[sepal_length, sepal_width,"
                          " petal_length, petal_width])) FROM pgml.iris")
        after_one = one(conn, scans)
        conn.execute("SELECT pgml.predict('iris', %s::float8[])", (SETOSA,))
        after_two = one(conn, scans)
    assert total == 150
    assert after_one - before == 1  # 150 predictions, one lookup
    assert after_two - after_one == 1  # the next statement looks again


def test_runtime_info_reports_real_providers_and_nothing_reaches_the_client(conn):
    conn.notices.clear()
    one(conn, "SELECT pgml.predict('diabetes', %s::float8[])", ([0.01] * 10,))
    info = one(conn, "SELECT pgml.runtime_info('diabetes')")
    assert info["requested_providers"][-1] == "CPUExecutionProvider"
    assert info["probe_session_providers"][-1] == "CPUExecutionProvider"
    assert info["project"]["runtime"] == "onnx"
    # a tree model scores with its compiled trees where a C compiler is (docs/inference.md)
    assert info["project"]["providers"][-1] == (
        "CompiledTrees" if info["compiled_trees"]["compiler"] else "CPUExecutionProvider")
    assert any(s["model_id"] == info["project"]["model_id"] for s in info["sessions"])
    if "CUDAExecutionProvider" not in info["requested_providers"]:  # no GPU on this machine
        assert info["probe_session_providers"] == ["CPUExecutionProvider"]
    assert conn.notices == []
