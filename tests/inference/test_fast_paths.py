"""The scoring fast paths must answer exactly like the general path they shortcut.

``Scorer.predict_one`` (what pgml.predict calls per row) packs PL/Python's list into a bound
buffer; large batches are cut into parts scored on several threads; parity on a large test
split checks a fixed sample. Each is compared here with the plain computation on real models.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from inference import parity, runtime
from inference.errors import InvalidData
from inference.routing import load_scorer
from inference.training import train

CASES = [
    ("regression", "xgboost", "diabetes", {"n_estimators": 20, "max_depth": 4}),
    ("regression", "linear", "diabetes", {}),
    ("regression", "random_forest", "diabetes", {"n_estimators": 5}),
    ("regression", "lightgbm", "diabetes", {"n_estimators": 10}),
    ("regression", "kernel_ridge", "diabetes", {}),  # native runtime: the base class's path
    ("classification", "xgboost", "iris", {"n_estimators": 5}),
    ("classification", "linear", "breast_cancer", {}),
    ("classification", "svm", "iris", {}),
]


def _fit(request, task, algorithm, dataset, hyperparams, **kw):
    data = request.getfixturevalue(dataset)
    return data, train(task, algorithm, data.X_train, data.y_train, data.X_test, data.y_test,
                       feature_names=data.feature_names, hyperparams=hyperparams, **kw)


@pytest.mark.parametrize(("task", "algorithm", "dataset", "hyperparams"), CASES,
                         ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_predict_one_answers_exactly_like_the_general_path(request, task, algorithm, dataset,
                                                           hyperparams):
    data, result = _fit(request, task, algorithm, dataset, hyperparams)
    n = data.X_test.shape[1]
    scorer = load_scorer(result.runtime, result.onnx, result.native, task, n)
    if result.runtime == "onnx":
        assert scorer._pack is not None, "the fast path should be set up for this model"
    for row in data.X_test:
        got = scorer.predict_one(row.tolist())
        assert isinstance(got, float)
        assert got == float(scorer.predict(row)[0])
    if scorer.classes is not None:
        assert {scorer.predict_one(r.tolist()) for r in data.X_test} <= set(scorer.classes)


def test_predict_one_takes_what_plpython_passes(request):
    data, result = _fit(request, "regression", "xgboost", "diabetes", {"n_estimators": 10})
    scorer = load_scorer("onnx", result.onnx, result.native, "regression", 10)
    row = data.X_test[0].tolist()
    with_null = row[:3] + [None] + row[4:]  # a NULL element: imputed like NaN
    assert scorer.predict_one(with_null) == float(scorer.predict(np.array(with_null, dtype=float))[0])
    assert not np.isnan(scorer.predict_one(with_null))
    ints, bools = list(range(10)), [True, False] * 5
    assert scorer.predict_one(ints) == float(scorer.predict(np.arange(10.0))[0])
    assert scorer.predict_one(bools) == float(scorer.predict(np.array(bools, dtype=float))[0])
    for bad, given in ((row[:3], 3), (row + [1.0], 11), ([row[:5], row[5:]], 5)):
        with pytest.raises(InvalidData, match=f"expected 10 features, got {given}"):
            scorer.predict_one(bad)
    # the buffer a failed pack may have half-written must not leak into the next answer
    assert scorer.predict_one(row) == float(scorer.predict(data.X_test[0])[0])


def test_impute_error_columns_keep_the_checked_path(request):
    data, result = _fit(request, "regression", "xgboost", "diabetes", {"n_estimators": 5},
                        preprocess={"bmi": {"impute": "error"}})
    scorer = load_scorer("onnx", result.onnx, result.native, "regression", 10)
    assert scorer._pack is None
    row = data.X_test[0].tolist()
    assert scorer.predict_one(row) == float(scorer.predict(data.X_test[0])[0])
    with pytest.raises(InvalidData, match="feature #3 is NULL"):
        scorer.predict_one(row[:2] + [None] + row[3:])


def test_joint_models_have_no_single_value_fast_path(linnerud):
    result = train("regression", "linear", linnerud.X_train, linnerud.y_train, linnerud.X_test,
                   linnerud.y_test, feature_names=linnerud.feature_names, joint=True)
    scorer = load_scorer("onnx", result.onnx, result.native, "regression", 3)
    assert scorer._pack is None
    assert scorer.predict(linnerud.X_test[0]).shape == (1, 3)


def test_a_large_batch_on_several_threads_equals_one_thread_bit_for_bit(request):
    data, result = _fit(request, "regression", "xgboost", "diabetes",
                        {"n_estimators": 30, "max_depth": 6})
    scorer = load_scorer("onnx", result.onnx, result.native, "regression", 10)
    rng = np.random.default_rng(7)
    n = runtime.PARALLEL_MIN_ROWS + 7  # uneven parts
    X = data.X_train[rng.integers(0, len(data.X_train), n)] + rng.normal(0, 0.01, (n, 10))
    before = threading.active_count()
    one_thread = scorer.predict(X, threads=1)
    for threads in (2, 3):
        np.testing.assert_array_equal(scorer.predict(X, threads=threads), one_thread)
    assert threading.active_count() == before  # helper threads are joined, none left behind
    for i in rng.choice(n, 200, replace=False):
        assert scorer.predict_one(X[i].tolist()) == one_thread[i]


def test_parity_checks_a_fixed_sample_of_a_large_test_split(request, monkeypatch):
    assert parity.sample_rows(parity.MAX_ROWS, 0) is None
    rows = parity.sample_rows(parity.MAX_ROWS * 3, 0)
    assert len(rows) == parity.MAX_ROWS == len(np.unique(rows))
    assert np.all(np.diff(rows) > 0) and rows[-1] < parity.MAX_ROWS * 3
    np.testing.assert_array_equal(rows, parity.sample_rows(parity.MAX_ROWS * 3, 0))

    monkeypatch.setattr(parity, "MAX_ROWS", 40)
    data, result = _fit(request, "regression", "xgboost", "diabetes", {"n_estimators": 5})
    assert result.parity["ok"] and result.runtime == "onnx"
    assert result.parity["rows_checked"] == 40
    assert result.parity["test_rows"] == len(data.X_test)
    data, result = _fit(request, "classification", "linear", "iris", {})
    assert result.parity["ok"] and result.parity["rows_checked"] == 38 == len(data.X_test)
