"""pgml.train: call forms, reuse of a project's settings and snapshot, snapshots, metrics equal
to scikit-learn's, deterministic retrains, sampling, preprocessing, search, joint models."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

from tests.sql.helpers import connect, latest_model, one, split, table_values

REG_METRICS = ("r2", "mean_squared_error", "mean_absolute_error", "explained_variance")
CLS_METRICS = ("f1", "precision", "recall", "accuracy")


def test_positional_call_in_the_seed_order(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        row = conn.execute("SELECT * FROM pgml.train('Diabetes', 'regression', 'pgml.diabetes',"
                           " 'target', 'ridge', '{\"alpha\": 0.5}')").fetchone()
        assert row == ("Diabetes", "regression", "ridge", True)
        model = latest_model(conn, "Diabetes")
        assert model["hyperparams"]["alpha"] == 0.5
        s = split("diabetes")
        pred = Ridge(alpha=0.5).fit(s.X_train, s.y_train).predict(s.X_test)
        assert model["metrics"]["mean_squared_error"] == pytest.approx(
            skm.mean_squared_error(s.y_test, pred), rel=1e-9)
        assert not conn.notices


def test_named_calls_reuse_the_projects_task_relation_y_and_snapshot(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        first = conn.execute(
            "SELECT * FROM pgml.train(project_name => 'Iris', task => 'classification',"
            " relation_name => 'pgml.iris', y_column_name => 'target')").fetchone()
        assert first == ("Iris", "classification", "linear", True)
        again = conn.execute("SELECT * FROM pgml.train('Iris', algorithm => 'xgboost',"
                             " hyperparams => '{\"n_estimators\": 5}')").fetchone()
        assert again[:3] == ("Iris", "classification", "xgboost")
        snapshots = conn.execute("SELECT snapshot_id FROM pgml.models ORDER BY id").fetchall()
        assert snapshots[0] == snapshots[1]
        assert one(conn, "SELECT count(*) FROM pgml.snapshots") == 1
        # a relation given again takes a new snapshot; the y column still comes from the project
        conn.execute("SELECT * FROM pgml.train('Iris', relation_name => 'pgml.iris')")
        assert one(conn, "SELECT count(*) FROM pgml.snapshots") == 2
        assert one(conn, "SELECT y_column_name FROM pgml.snapshots ORDER BY id DESC LIMIT 1") \
            == ["target"]


def test_task_spellings(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        row = conn.execute("SELECT * FROM pgml.train('r', 'Regression', 'pgml.iris', 'target')"
                           ).fetchone()
        assert row[1] == "regression"
        row = conn.execute("SELECT * FROM pgml.train('c', ' CLASSIFICATION', 'pgml.iris',"
                           " 'target')").fetchone()
        assert row[1] == "classification"
        assert one(conn, "SELECT array_agg(task ORDER BY name) FROM pgml.projects") == [
            "classification", "regression"]


def test_metrics_are_scikit_learns_on_the_same_split_and_stored_as_numbers(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes'), pgml.load_dataset('iris')")
        conn.execute("SELECT pgml.train('reg', 'regression', 'pgml.diabetes', 'target')")
        conn.execute("SELECT pgml.train('cls', 'classification', 'pgml.iris', 'target')")
        reg, cls = latest_model(conn, "reg"), latest_model(conn, "cls")
        types = conn.execute("SELECT DISTINCT jsonb_typeof(v) FROM pgml.models,"
                             " jsonb_each(metrics) AS e(k, v)").fetchall()
        assert types == [("number",)]
    s = split("diabetes")
    pred = LinearRegression().fit(s.X_train, s.y_train).predict(s.X_test)
    expected = {"r2": skm.r2_score(s.y_test, pred),
                "mean_squared_error": skm.mean_squared_error(s.y_test, pred),
                "mean_absolute_error": skm.mean_absolute_error(s.y_test, pred),
                "explained_variance": skm.explained_variance_score(s.y_test, pred)}
    for key in REG_METRICS:
        assert reg["metrics"][key] == pytest.approx(expected[key], rel=1e-9), key
    assert reg["metrics"]["fit_time"] >= 0 and reg["metrics"]["score_time"] >= 0
    s = split("iris")
    est = LogisticRegression(random_state=0).fit(s.X_train, s.y_train)
    pred, proba = est.predict(s.X_test), est.predict_proba(s.X_test)
    assert cls["metrics"]["f1"] == pytest.approx(
        skm.f1_score(s.y_test, pred, average="weighted"), rel=1e-9)
    assert cls["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(s.y_test, pred))
    assert cls["metrics"]["log_loss"] == pytest.approx(skm.log_loss(s.y_test, proba), rel=1e-6)
    assert cls["metrics"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(s.y_test, proba, multi_class="ovr"), rel=1e-6)
    assert cls["runtime"] == reg["runtime"] == "onnx"
    assert cls["parity"]["ok"] and reg["parity"]["ok"]
    assert reg["parity"]["max_abs_diff"] <= reg["parity"]["tolerance"]


def test_snapshot_is_a_materialized_copy_with_statistics(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        rel, y, snap_id, table = conn.execute(
            "SELECT * FROM pgml.snapshot('pgml.diabetes', 'target', 0.2, 'last')").fetchone()
        assert (rel, y, table) == ("pgml.diabetes", "target", f"pgml.snapshot_{snap_id}")
        conn.execute("DELETE FROM pgml.diabetes WHERE age > 0")  # the copy does not change
        assert one(conn, f"SELECT count(*) FROM {table}") == 442  # noqa: S608 - our own name
        snap = conn.execute("SELECT status, num_rows, test_size, test_sampling, analysis, columns"
                            " FROM pgml.snapshots WHERE id = %s", (snap_id,)).fetchone()
    status, num_rows, test_size, sampling, analysis, columns = snap
    assert (status, num_rows, sampling) == ("snapshot", 442, "last")
    assert test_size == pytest.approx(0.2)
    bunch = load_diabetes()  # FLOAT4 in the table, as PostgresML stores it
    bmi = bunch.data[:, list(bunch.feature_names).index("bmi")].astype(np.float32).astype(float)
    assert analysis["bmi"]["mean"] == pytest.approx(bmi.mean(), abs=1e-12)
    assert analysis["bmi"]["median"] == pytest.approx(np.median(bmi))
    assert analysis["bmi"]["stddev"] == pytest.approx(bmi.std())
    assert analysis["target"]["min"] == np.float32(bunch.target.min())
    assert analysis["bmi"]["missing"] == 0
    assert [c["name"] for c in columns] == list(bunch.feature_names) + ["target"]
    assert [c["label"] for c in columns] == [False] * 10 + [True]


def test_retraining_from_a_snapshot_is_deterministic(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT pgml.train('rf', 'regression', 'pgml.diabetes', 'target',"
                     " 'random_forest', '{\"n_estimators\": 20}', materialize_snapshot => true)")
        first = latest_model(conn, "rf")
        conn.execute("TRUNCATE pgml.diabetes")  # the snapshot's copy, not the table, is retrained on
        conn.execute("SELECT pgml.train('rf', algorithm => 'random_forest',"
                     " hyperparams => '{\"n_estimators\": 20}')")
        second = latest_model(conn, "rf")
    assert first["snapshot_id"] == second["snapshot_id"]
    for key in REG_METRICS:
        assert first["metrics"][key] == second["metrics"][key]


@pytest.mark.parametrize("sampling", ["first", "last"])
def test_ordered_sampling_tests_on_the_first_or_last_rows(pgml_db, sampling):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT pgml.train('s', 'regression', 'pgml.diabetes', 'target',"
                     " test_size => 0.2, test_sampling => %s)", (sampling,))
        stored = latest_model(conn, "s")["metrics"]
    X, y = table_values("diabetes")
    n_test = math.ceil(0.2 * len(X))
    if sampling == "first":
        train, test = slice(n_test, None), slice(0, n_test)
    else:
        train, test = slice(0, len(X) - n_test), slice(len(X) - n_test, None)
    pred = LinearRegression().fit(X[train], y[train]).predict(X[test])
    assert stored["r2"] == pytest.approx(skm.r2_score(y[test], pred), rel=1e-9)


def test_preprocess_is_stored_and_reapplied_at_predict(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("CREATE TABLE holes AS SELECT * FROM pgml.diabetes")
        conn.execute("UPDATE holes SET bmi = NULL WHERE age < 0")  # some NULL features
        conn.execute(
            "SELECT pgml.train('pre', 'regression', 'holes', 'target', preprocess =>"
            " '{\"bmi\": {\"impute\": \"median\", \"scale\": \"standard\"}}')")
        model = latest_model(conn, "pre")
        spec = {c["name"]: c for c in model["preprocess"]["columns"]}
        assert spec["bmi"]["impute"] == "median" and spec["bmi"]["scale"] == "standard"
        assert spec["age"]["impute"] == "mean" and spec["age"]["scale"] == "preserve"
        fill = spec["bmi"]["fill"]
        row = [0.03, 0.05, None, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.01]
        filled = [fill if v is None else v for v in row]
        with_null = one(conn, "SELECT pgml.predict('pre', %s::float8[])", (row,))
        with_fill = one(conn, "SELECT pgml.predict('pre', %s::float8[])", (filled,))
        assert with_null == pytest.approx(with_fill, rel=1e-6)
        analysis = one(conn, "SELECT analysis FROM pgml.snapshots")
        assert analysis["bmi"]["missing"] > 0


def test_grid_and_random_search_keep_the_best_candidate(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT pgml.train('g', 'regression', 'pgml.diabetes', 'target', 'ridge',"
                     " search => 'grid', search_params => '{\"alpha\": [0.01, 1.0, 100.0]}',"
                     " search_args => '{\"cv\": 3}')")
        grid = latest_model(conn, "g")
        conn.execute("SELECT pgml.train('g', algorithm => 'ridge', search => 'random',"
                     " search_params => '{\"alpha\": [0.01, 0.1, 1.0, 10.0]}',"
                     " search_args => '{\"n_iter\": 2, \"cv\": 3}')")
        rand = latest_model(conn, "g")
    results = grid["search_results"]
    assert len(results["params"]) == 3
    best = results["params"][results["best_index"]]
    assert grid["hyperparams"]["alpha"] == best["alpha"]
    assert len(rand["search_results"]["params"]) == 2
    assert rand["hyperparams"]["alpha"] in (0.01, 0.1, 1.0, 10.0)


def test_train_joint_and_predict_joint_on_linnerud(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('linnerud')")
        row = conn.execute("SELECT * FROM pgml.train_joint('fit', 'regression', 'pgml.linnerud',"
                           " ARRAY['weight', 'waist', 'pulse'])").fetchone()
        assert row == ("fit", "regression", "linear", True)
        out = one(conn, "SELECT pgml.predict_joint('fit', ARRAY[5, 162, 60]::float8[])")
        assert len(out) == 3
        with pytest.raises(Exception, match="joint"):
            conn.execute("SELECT pgml.predict('fit', ARRAY[5, 162, 60]::float8[])")


def test_automatic_deploy_false_trains_without_deploying(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        row = conn.execute("SELECT * FROM pgml.train('nd', 'classification', 'pgml.iris',"
                           " 'target', automatic_deploy => false)").fetchone()
        assert row[3] is False
        assert one(conn, "SELECT count(*) FROM pgml.deployments") == 0
        assert one(conn, "SELECT count(*) FROM pgml.models") == 1


def test_worse_model_is_not_deployed_automatically(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT pgml.train('w', 'regression', 'pgml.diabetes', 'target')")
        # lasso with a huge alpha predicts the mean: a worse mean_squared_error
        row = conn.execute("SELECT * FROM pgml.train('w', algorithm => 'lasso',"
                           " hyperparams => '{\"alpha\": 1000}')").fetchone()
        assert row[3] is False
        assert one(conn, "SELECT algorithm FROM pgml.deployed_models") == "linear"


def test_iris_labels_predict_as_numbers(pgml_db):
    with connect(pgml_db) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        conn.execute("SELECT pgml.train('iris', 'classification', 'pgml.iris', 'target')")
        X, y = load_iris(return_X_y=True)
        got = [one(conn, "SELECT pgml.predict('iris', %s::float8[])", (x.tolist(),))
               for x in X[::15]]
    assert set(got) <= {0.0, 1.0, 2.0}
    assert np.mean(np.array(got) == y[::15]) >= 0.9
