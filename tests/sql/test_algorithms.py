"""Every algorithm trains and predicts through SQL: diabetes for regression, iris and
breast_cancer for classification. Metrics must equal scikit-learn's computed here on the same
split and seed; the ONNX parity result is recorded; pgml.predict answers like the estimator.

The default run covers every regression algorithm on diabetes and every classification
algorithm on iris (multiclass); breast_cancer (binary) runs a representative subset, and all
of it under ``-m slow``. One database and one backend serve the whole module, so the Python
stack is imported once; each test uses its own project.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference import algorithms
from inference.parity import target_scale
from tests.sql.helpers import connect, latest_model, one, reference, split, y_column

BINARY_SUBSET = {"linear", "xgboost", "gaussian_process"}
# Exported graphs that onnxruntime cannot run, or that scikit-learn cannot export: the model
# must fall back to the native runtime, visibly (runtime 'python' with a reason).
FALLBACK = {("regression", "kernel_ridge"), ("classification", "gaussian_process")}

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

CASES = [("diabetes", "regression", a) for a in algorithms.names("regression")]
CASES += [("iris", "classification", a) for a in algorithms.names("classification")]
CASES += [pytest.param("breast_cancer", "classification", a,
                       marks=() if a in BINARY_SUBSET else pytest.mark.slow)
          for a in algorithms.names("classification")]


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        for name in ("diabetes", "iris", "breast_cancer"):
            c.execute("SELECT pgml.load_dataset(%s)", (name,))
        yield c


@pytest.mark.parametrize(("dataset", "task", "algorithm"), CASES)
def test_algorithm_trains_and_predicts_via_sql(conn, dataset, task, algorithm):
    project = f"{dataset}_{algorithm}"
    row = conn.execute("SELECT * FROM pgml.train(%s, %s, %s, %s, %s)",
                       (project, task, f"pgml.{dataset}", y_column(dataset), algorithm)).fetchone()
    assert row == (project, task, algorithm, True)
    model = latest_model(conn, project)
    estimator, expected = reference(dataset, task, algorithm)
    for key, value in expected.items():
        assert model["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

    parity = model["parity"]
    assert set(parity) >= {"ok", "max_abs_diff", "label_mismatch_fraction", "tolerance", "reason"}
    if (task, algorithm) in FALLBACK and dataset != "breast_cancer":
        assert model["runtime"] == "python" and parity["reason"]
    if model["runtime"] == "onnx":
        assert parity["ok"] is True and parity["reason"] is None
        assert one(conn, "SELECT count(*) FROM pgml.files WHERE model_id = %s AND path ="
                   " 'model.onnx'", (model["id"],)) == 1
    else:
        assert parity["ok"] is False and parity["reason"]

    s = split(dataset)
    rows = s.X_test[:12]
    got = np.array([one(conn, "SELECT pgml.predict(%s, %s::float8[])", (project, r.tolist()))
                    for r in rows])
    want = np.asarray(estimator.predict(rows), dtype=np.float64).ravel()  # CatBoost: (n, 1)
    if task == "regression":
        assert np.max(np.abs(got - want)) <= 1e-3 * target_scale(s.y_train)
    else:  # float32 may flip a row sitting on a class boundary, nothing more
        assert np.mean(got == want) >= 11 / 12
    assert not conn.notices
