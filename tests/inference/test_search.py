"""Hyperparameter search: the kept model is scikit-learn's best by the task's key metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.svm import SVC

from inference.errors import InvalidData, InvalidHyperparams, PgmlError
from inference.training import key_metric, train


def _train(data, task="regression", algorithm="ridge", **kw):
    return train(task, algorithm, data.X_train, data.y_train, data.X_test, data.y_test,
                 feature_names=data.feature_names, **kw)


def test_grid_search_keeps_the_best_by_mse(diabetes):
    grid = {"alpha": [0.001, 0.1, 1.0, 10.0]}
    result = _train(diabetes, search="grid", search_params=grid, search_args={"cv": 3},
                    hyperparams={"fit_intercept": True})
    reference = GridSearchCV(Ridge(), grid, scoring="neg_mean_squared_error", cv=3)
    reference.fit(diabetes.X_train, diabetes.y_train)
    assert result.hyperparams == {"fit_intercept": True, "alpha": reference.best_params_["alpha"]}
    res = result.search_results
    json.dumps(res)  # stored as JSONB
    assert res["params"] == [{"alpha": a} for a in grid["alpha"]]
    assert res["best_index"] == int(reference.best_index_)
    np.testing.assert_allclose(res["mean_test_score"], reference.cv_results_["mean_test_score"])
    assert res["scoring"] == "neg_mean_squared_error" and res["cv"] == 3
    np.testing.assert_allclose(
        result.estimator.predict(diabetes.X_test), reference.predict(diabetes.X_test)
    )
    assert result.runtime == "onnx"


def test_random_search_is_deterministic_and_uses_f1(iris):
    params = {"C": [0.01, 0.1, 1.0, 10.0, 100.0], "kernel": ["linear", "rbf"]}
    args = {"n_iter": 4, "cv": 3}
    first = _train(iris, "classification", "svm", search="random", search_params=params,
                   search_args=args, random_state=7)
    again = _train(iris, "classification", "svm", search="random", search_params=params,
                   search_args=args, random_state=7)
    assert first.search_results == {**again.search_results,
                                    "mean_fit_time": first.search_results["mean_fit_time"],
                                    "std_fit_time": first.search_results["std_fit_time"],
                                    "mean_score_time": first.search_results["mean_score_time"],
                                    "refit_time": first.search_results["refit_time"]}
    reference = RandomizedSearchCV(SVC(random_state=7), params, n_iter=4, cv=3,
                                   scoring="f1_weighted", random_state=7)
    reference.fit(iris.X_train, iris.y_train)
    assert first.search_results["params"] == reference.cv_results_["params"]
    assert {k: first.hyperparams[k] for k in params} == reference.best_params_
    assert first.search_results["scoring"] == "f1_weighted"
    assert len(first.search_results["params"]) == 4


def test_search_over_xgboost_and_wrapped_joint(diabetes, linnerud):
    result = _train(diabetes, algorithm="xgboost", search="grid",
                    search_params={"max_depth": [2, 3]}, search_args={"cv": 2},
                    hyperparams={"n_estimators": 5})
    assert result.hyperparams["max_depth"] in (2, 3) and result.runtime == "onnx"
    joint = _train(linnerud, algorithm="huber", joint=True, search="grid",
                   search_params={"epsilon": [1.35, 2.0]}, search_args={"cv": 3})
    assert set(joint.hyperparams) == {"epsilon"}
    assert all(set(p) == {"epsilon"} for p in joint.search_results["params"])


def test_search_errors(diabetes):
    with pytest.raises(PgmlError, match="grid, random"):
        _train(diabetes, search="bayesian", search_params={"alpha": [1.0]})
    with pytest.raises(InvalidHyperparams, match="alfa.*valid names: .*alpha"):
        _train(diabetes, search="grid", search_params={"alfa": [1.0]})
    with pytest.raises(PgmlError, match="non-empty JSON array"):
        _train(diabetes, search="grid", search_params={"alpha": 1.0})
    with pytest.raises(PgmlError, match="search needs search_params"):
        _train(diabetes, search="grid")
    with pytest.raises(PgmlError, match="without search"):
        _train(diabetes, search_params={"alpha": [1.0]})
    with pytest.raises(PgmlError, match="unknown key"):
        _train(diabetes, search="grid", search_params={"alpha": [1.0]}, search_args={"folds": 3})
    with pytest.raises(InvalidHyperparams, match="alpha"):
        _train(diabetes, search="grid", search_params={"alpha": [-1.0]}, search_args={"cv": 2})
    small = type(diabetes)(diabetes.X_train[:3], diabetes.X_test, diabetes.y_train[:3],
                           diabetes.y_test, diabetes.feature_names)
    with pytest.raises(InvalidData, match="fewer than cv=5"):
        _train(small, search="grid", search_params={"alpha": [1.0]})


def test_key_metric():
    assert key_metric("regression") == ("mean_squared_error", False)
    assert key_metric("classification") == ("f1", True)
    assert key_metric(" Classification ") == ("f1", True)
