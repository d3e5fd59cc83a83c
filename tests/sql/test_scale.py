"""Scoring at scale from SQL: pgml.export_onnx, pgml.predict_relation, the tensor graph stored
by pgml.train, and runtime_info's graph report -- on real PL/Python clusters."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import psycopg
import pytest

from inference.runtime import cuda_device_present
from tests.sql.helpers import connect, one


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        c.execute("SELECT pgml.load_dataset('iris'), pgml.load_dataset('diabetes')")
        c.execute("ALTER TABLE pgml.diabetes ADD COLUMN id bigserial")
        c.execute("ALTER TABLE pgml.iris ADD COLUMN id int GENERATED ALWAYS AS IDENTITY")
        c.execute("CREATE VIEW pgml.diabetes_f AS SELECT age, sex, bmi, bp, s1, s2, s3, s4, s5,"
                  " s6, target FROM pgml.diabetes")
        c.execute("CREATE VIEW pgml.iris_f AS SELECT sepal_length, sepal_width, petal_length,"
                  " petal_width, target FROM pgml.iris")
        c.execute("SELECT pgml.train('xgb', 'regression', 'pgml.diabetes_f', 'target', 'xgboost',"
                  " '{\"n_estimators\": 20}')")
        c.execute("SELECT pgml.train('forest', 'classification', 'pgml.iris_f', 'target',"
                  " 'random_forest', '{\"n_estimators\": 10}')")
        c.execute("SELECT pgml.train('lin', 'regression', 'pgml.diabetes_f', 'target')")
        yield c


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def test_export_onnx_returns_both_graphs_of_a_tree_model(conn):
    default = one(conn, "SELECT pgml.export_onnx('xgb')")
    tensor = one(conn, "SELECT pgml.export_onnx('xgb', 'tensor')")
    assert any(n.domain == "ai.onnx.ml" for n in onnx.load_from_string(default).graph.node)
    model = onnx.load_from_string(tensor)
    assert {n.domain for n in model.graph.node} == {""}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pgml.graph"] == "tensor" and '"ok": true' in meta["pgml.parity"]
    X = np.asarray(conn.execute("SELECT age, sex, bmi, bp, s1, s2, s3, s4, s5, s6"
                                " FROM pgml.diabetes LIMIT 50").fetchall(), dtype=np.float32)
    a = _session(default).run(None, {"features": X})[0].ravel()
    b = _session(tensor).run(None, {"features": X})[0].ravel()
    np.testing.assert_allclose(a, b, rtol=1e-5)
    stored = [one(conn, "SELECT pgml.predict('xgb', %s::float8[])", (x.tolist(),)) for x in X[:5]]
    np.testing.assert_allclose(stored, a[:5], rtol=1e-6)


@pytest.mark.skipif(cuda_device_present(), reason="this host has a CUDA device")
def test_without_cuda_the_tensor_graph_is_built_on_export_and_checked(conn):
    """pgml.train builds the tensor graph only where it scores (a CUDA device); here
    pgml.export_onnx builds it from the stored model and checks it on rows made from the trees'
    thresholds, at the same 1e-5 bar (tree_graph_on_demand.py)."""
    assert one(conn, "SELECT count(*) FROM pgml.files WHERE path = 'tensor.onnx'") == 0
    tensor = one(conn, "SELECT pgml.export_onnx('forest', 'tensor')")
    model = onnx.load_from_string(tensor)
    assert {n.domain for n in model.graph.node} == {""}
    record = json.loads({p.key: p.value for p in model.metadata_props}["pgml.parity"])
    assert record["ok"] and record["built"] == "on demand" and record["rows_checked"] == 20000
    X = np.asarray(conn.execute("SELECT sepal_length, sepal_width, petal_length, petal_width"
                                " FROM pgml.iris").fetchall(), dtype=np.float32)
    default = _session(one(conn, "SELECT pgml.export_onnx('forest')")).run(None, {"features": X})
    ours = _session(tensor).run(None, {"features": X})
    np.testing.assert_array_equal(ours[0], default[0])
    np.testing.assert_allclose(ours[1], default[1], atol=1e-5)


def test_export_onnx_refuses_what_does_not_exist(conn):
    assert one(conn, "SELECT length(pgml.export_onnx('lin'))") > 0
    with pytest.raises(psycopg.Error, match="no tensor ONNX graph; only tree models"):
        conn.execute("SELECT pgml.export_onnx('lin', 'tensor')")
    with pytest.raises(psycopg.Error, match="graph 'gpu' is not one of default, tensor"):
        conn.execute("SELECT pgml.export_onnx('xgb', 'gpu')")


def test_predict_relation_regression_equals_predict(conn):
    n = one(conn, "SELECT pgml.predict_relation('xgb', 'pgml.diabetes', ARRAY['id'], 'scored')")
    assert n == one(conn, "SELECT count(*) FROM pgml.diabetes") == 442
    cols = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'scored'::regclass AND attnum > 0"
        " ORDER BY attnum")]
    assert cols == ["id", "prediction"]
    rows = conn.execute(
        "SELECT s.prediction, pgml.predict('xgb', ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5,"
        " s6]) FROM scored s JOIN pgml.diabetes d USING (id)").fetchall()
    assert len(rows) == 442
    # predict_relation scores with the ONNX graph, pgml.predict with the compiled trees where a
    # C compiler is (float32 vs double sums): both within parity's 1e-5 of the native model
    assert all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in rows)


def test_predict_relation_classification_writes_probabilities(conn):
    n = one(conn, "SELECT pgml.predict_relation('forest', 'pgml.iris', '{id,target}',"
                  " 'public.\"Iris Scored\"')")
    assert n == 150
    rows = conn.execute(
        'SELECT s.prediction, s.probabilities, pgml.predict(\'forest\', ARRAY[sepal_length,'
        ' sepal_width, petal_length, petal_width]), pgml.predict_proba(\'forest\','
        ' ARRAY[sepal_length, sepal_width, petal_length, petal_width])'
        ' FROM "Iris Scored" s JOIN pgml.iris i USING (id)').fetchall()
    assert len(rows) == 150
    for label, proba, one_label, one_proba in rows:
        assert label == one_label
        np.testing.assert_allclose(proba, one_proba, atol=1e-6)


def test_predict_relation_empty_relation_and_null_features(conn):
    conn.execute("CREATE TABLE few AS SELECT * FROM pgml.diabetes WHERE false")
    assert one(conn, "SELECT pgml.predict_relation('xgb', 'few', '{}', 'few_scored')") == 0
    assert one(conn, "SELECT count(*) FROM few_scored") == 0
    conn.execute("INSERT INTO few SELECT * FROM pgml.diabetes LIMIT 3")
    conn.execute("UPDATE few SET bmi = NULL")
    assert one(conn, "SELECT pgml.predict_relation('xgb', 'few', '{id}', 'few2')") == 3
    got = conn.execute("SELECT prediction FROM few2 ORDER BY id").fetchall()
    want = conn.execute("SELECT pgml.predict('xgb', ARRAY[age, sex, bmi, bp, s1, s2, s3, s4,"
                        " s5, s6]) FROM few ORDER BY id").fetchall()
    assert len(got) == len(want) == 3  # ONNX graph vs compiled trees: parity's 1e-5
    assert all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for (a,), (b,) in zip(got, want, strict=True))


def test_predict_relation_errors_leave_nothing(conn):
    with pytest.raises(psycopg.Error, match="key column 'nope' does not exist"):
        conn.execute("SELECT pgml.predict_relation('xgb', 'pgml.diabetes', '{nope}', 'x1')")
    with pytest.raises(psycopg.Error, match="does not exist"):
        conn.execute("SELECT pgml.predict_relation('xgb', 'no_such_table', '{}', 'x2')")
    with pytest.raises(psycopg.Error, match="already exists"):
        conn.execute("SELECT pgml.predict_relation('xgb', 'pgml.diabetes', '{}', 'pgml.diabetes')")
    assert one(conn, "SELECT count(*) FROM pg_class WHERE relname IN ('x1', 'x2')") == 0
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT pgml.predict_relation('xgb', 'pgml.diabetes', '{id}', 'rolled')")
    assert one(conn, "SELECT to_regclass('rolled')") is None
    assert conn.notices == []


def test_runtime_info_names_the_graphs_without_a_gpu(conn):
    info = one(conn, "SELECT pgml.runtime_info('xgb')")
    project = info["project"]
    # compiled trees where a C compiler is (tests/sql/test_compiled_predict.py), else the
    # default graph -- no CUDA device here, so no tensor graph for large batches either way
    compiled = bool(info["compiled_trees"]["compiler"])
    assert project["graph"] == ("compiled" if compiled else "default")
    big = project["batch_graph"]["batch_10000_rows_and_more"]
    assert big["graph"] == ("compiled" if compiled else "default")
    assert big["providers"] == (["CompiledTrees"] if compiled else ["CPUExecutionProvider"])
    assert info["requested_providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize(("project", "task", "y"), [("xgb_big_r", "regression", "target"),
                                                     ("xgb_big_c", "classification", "cls")])
def test_predict_relation_scores_large_batches_natively_like_the_graph(conn, project, task, y):
    """XGBoost batches of >= NATIVE_MIN_ROWS go through the compiled trees where a C compiler
    is (the library pgml.predict uses), else through XGBoost's own predictor, checked against
    the graph first (tests/inference/test_bulk.py also takes that path with compiled trees
    off); the rows written agree with pgml.predict (float32 graph)."""
    conn.execute("CREATE TABLE IF NOT EXISTS big AS SELECT row_number() OVER () AS id,"
                 " age + g * 1e-7 AS age, sex,"
                 " bmi, bp, s1, s2, s3, s4, s5, s6, target, (target > 140)::int AS cls"
                 " FROM pgml.diabetes, generate_series(1, 60) g")
    view = f"big_{task}"
    drop = "cls" if task == "regression" else "target"
    conn.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT age, sex, bmi, bp, s1, s2, s3, s4,"  # noqa: S608
                 f" s5, s6, {y} FROM big")
    conn.execute(f"SELECT pgml.train('{project}', '{task}', '{view}', '{y}', 'xgboost',"  # noqa: S608
                 " '{\"n_estimators\": 20}')")
    n = one(conn, f"SELECT pgml.predict_relation('{project}', 'big', '{{id,{drop}}}',"  # noqa: S608
            f" '{project}_out')")
    assert n == 442 * 60
    info = one(conn, "SELECT pgml.runtime_info(%s)", (project,))
    scored = info["last_predict_relation"]["scored_by"]
    compiled = bool(info["compiled_trees"]["compiler"])
    assert scored == "compiled" if compiled else scored.startswith("native XGB"), info
    conn.execute("SET pgml.native_bulk = off")  # the session's way back to the graph
    try:
        assert one(conn, f"SELECT pgml.predict_relation('{project}', 'big', '{{id}}',"  # noqa: S608
                   f" '{project}_onnx')") == n
        info = one(conn, "SELECT pgml.runtime_info(%s)", (project,))
        # off the native path: the served scorer -- compiled trees where a C compiler is
        served = "compiled" if info["compiled_trees"]["compiler"] else "onnx"
        assert info["last_predict_relation"]["scored_by"] == served
    finally:
        conn.execute("RESET pgml.native_bulk")
    rows = conn.execute(
        f"SELECT s.prediction, pgml.predict('{project}', ARRAY[age, sex, bmi, bp, s1, s2, s3,"  # noqa: S608
        f" s4, s5, s6]) FROM {project}_out s JOIN big USING (id) WHERE id % 97 = 0").fetchall()
    got, want = np.array(rows).T
    if task == "regression":
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())
    else:
        assert np.mean(got != want) <= 0.01
