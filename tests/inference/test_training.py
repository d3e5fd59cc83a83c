"""Training: clear errors, determinism, quietness, and the registry's contract."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from inference import algorithms
from inference.errors import InvalidData, InvalidHyperparams, PgmlError, UnknownAlgorithm
from inference.training import train


def _train(data, task="regression", algorithm="linear", **kw):
    return train(task, algorithm, data.X_train, data.y_train, data.X_test, data.y_test,
                 feature_names=data.feature_names, **kw)


# --- the registry -------------------------------------------------------------------------

def test_unknown_algorithm_lists_the_valid_names():
    with pytest.raises(UnknownAlgorithm) as info:
        algorithms.make_estimator("deep_forest", "regression", {})
    message = str(info.value)
    assert "'deep_forest'" in message
    assert ", ".join(algorithms.names("regression")) in message


def test_algorithm_task_pair_that_does_not_exist():
    with pytest.raises(UnknownAlgorithm, match="regression only.*valid names: ada_boost"):
        algorithms.make_estimator("lasso", "classification", {})
    with pytest.raises(UnknownAlgorithm, match="classification only"):
        algorithms.make_estimator("perceptron", "regression", {})


def test_tasks_and_aliases():
    assert algorithms.normalize_task(" Regression ") == "regression"
    assert algorithms.normalize_task("Clustering") == "clustering"  # PostgresML 2.x's tasks
    assert algorithms.normalize_task("decomposition") == "decomposition"
    with pytest.raises(PgmlError, match="'text-generation' is not supported.*regression, "
                                        "classification, clustering, decomposition"):
        algorithms.normalize_task("text-generation")
    assert algorithms.names("clustering") == ["affinity_propagation", "birch", "dbscan",
                                              "kmeans", "mean_shift", "mini_batch_kmeans",
                                              "optics", "spectral"]
    omp = algorithms.make_estimator("orthoganl_matching_pursuit", "regression", {})
    assert type(omp).__name__ == "OrthogonalMatchingPursuit"
    assert type(algorithms.make_estimator("linear", "classification", {})).__name__ == "LogisticRegression"
    assert type(algorithms.make_estimator("Linear", "regression", {})).__name__ == "LinearRegression"


def test_random_state_set_only_where_taken_and_not_given():
    forest = algorithms.make_estimator("random_forest", "regression", {}, random_state=3)
    assert forest.random_state == 3
    given = algorithms.make_estimator("random_forest", "regression", {"random_state": 9},
                                      random_state=3)
    assert given.random_state == 9
    assert "random_state" not in algorithms.make_estimator("linear", "regression", {},
                                                           random_state=3).get_params()


def test_passive_aggressive_takes_postgresml_c():
    est = algorithms.make_estimator("passive_aggressive", "classification", {"C": 0.5})
    assert est.eta0 == 0.5 and est.learning_rate == "pa1" and est.loss == "hinge"


def test_bad_hyperparameter_name_carries_the_estimators_message():
    with pytest.raises(InvalidHyperparams, match="unexpected keyword argument 'alpah'.*valid names: .*alpha"):
        algorithms.make_estimator("ridge", "regression", {"alpah": 1.0})
    with pytest.raises(InvalidHyperparams, match="LightGBM: Unknown parameter: nope"):
        algorithms.make_estimator("lightgbm", "regression", {"nope": 1})
    # LightGBM's own aliases are real parameters
    algorithms.make_estimator("lightgbm", "regression", {"num_leaves": 7, "min_data_in_leaf": 3})


def test_bad_hyperparameters_at_fit(diabetes):
    with pytest.raises(InvalidHyperparams, match=r"Parameters: \{ \"nope\" \} are not used"):
        _train(diabetes, algorithm="xgboost", hyperparams={"nope": 1, "n_estimators": 2})
    with pytest.raises(InvalidHyperparams, match="'alpha' parameter of Ridge must be"):
        _train(diabetes, algorithm="ridge", hyperparams={"alpha": -1})
    with pytest.raises(InvalidHyperparams, match="penalty"):
        _train(diabetes, "classification", "linear", hyperparams={"penalty": "l7"})


# --- data errors --------------------------------------------------------------------------

def test_data_errors(diabetes, iris):
    names = diabetes.feature_names
    X, y = diabetes.X_train, diabetes.y_train
    with pytest.raises(InvalidData, match="training split has 0 row"):
        train("regression", "linear", X[:0], y[:0], diabetes.X_test, diabetes.y_test,
              feature_names=names)
    with pytest.raises(InvalidData, match="test split is empty"):
        train("regression", "linear", X, y, X[:0], y[:0], feature_names=names)
    y_nan = y.copy()
    y_nan[[3, 7]] = np.nan
    with pytest.raises(InvalidData, match="training target has 2 NULL"):
        train("regression", "linear", X, y_nan, diabetes.X_test, diabetes.y_test, feature_names=names)
    with pytest.raises(InvalidData, match="two classes.*only 1"):
        train("classification", "linear", iris.X_train, np.ones(len(iris.y_train)), iris.X_test,
              iris.y_test, feature_names=iris.feature_names)
    with pytest.raises(InvalidData, match="target is not numeric"):
        train("classification", "linear", iris.X_train, ["a"] * len(iris.y_train), iris.X_test,
              iris.y_test, feature_names=iris.feature_names)
    text = X.astype(object)
    text[4, 2] = "obese"
    with pytest.raises(InvalidData, match="'bmi' is not numeric"):
        train("regression", "linear", text, y, diabetes.X_test, diabetes.y_test, feature_names=names)
    with pytest.raises(InvalidData, match="different numbers of rows"):
        train("regression", "linear", X, y[:-1], diabetes.X_test, diabetes.y_test, feature_names=names)
    with pytest.raises(InvalidData, match="10 columns but 3 feature names"):
        train("regression", "linear", X, y, diabetes.X_test, diabetes.y_test, feature_names=["a", "b", "c"])


def test_unknown_algorithm_fails_before_data_work(diabetes):
    with pytest.raises(UnknownAlgorithm):
        train("regression", "nope", [[object()]], [1.0], [[1.0]], [1.0], feature_names=["x"])


# --- behaviour ----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["random_forest", "xgboost", "lightgbm", "stochastic_gradient_descent"])
def test_deterministic_given_random_state(algorithm, breast_cancer):
    params = {"n_estimators": 10} if algorithm != "stochastic_gradient_descent" else {}
    first = _train(breast_cancer, "classification", algorithm, hyperparams=params, random_state=5)
    again = _train(breast_cancer, "classification", algorithm, hyperparams=params, random_state=5)
    proba = first.estimator.predict_proba if hasattr(first.estimator, "predict_proba") else None
    if proba is not None:
        np.testing.assert_array_equal(proba(breast_cancer.X_test),
                                      again.estimator.predict_proba(breast_cancer.X_test))
    np.testing.assert_array_equal(first.estimator.predict(breast_cancer.X_test),
                                  again.estimator.predict(breast_cancer.X_test))
    assert first.onnx == again.onnx
    assert {k: v for k, v in first.metrics.items() if not k.endswith("_time")} == \
        {k: v for k, v in again.metrics.items() if not k.endswith("_time")}


def test_result_is_storable(breast_cancer):
    result = _train(breast_cancer, "classification", "xgboost", hyperparams={"n_estimators": 5})
    json.dumps(result.metrics)
    json.dumps(result.parity)
    json.dumps(result.hyperparams)
    json.dumps(result.preprocessor)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values())
    assert {"f1", "precision", "recall", "accuracy", "roc_auc", "log_loss", "fit_time",
            "score_time"} <= set(result.metrics)
    assert result.hyperparams == {"n_estimators": 5}
    assert result.classes == [0, 1]


def test_metrics_leave_out_what_is_undefined(iris):
    """A test split with a class the model never saw: no roc_auc/log_loss, never NaN."""
    keep = iris.y_train != 2
    result = train("classification", "linear", iris.X_train[keep], iris.y_train[keep],
                   iris.X_test, iris.y_test, feature_names=iris.feature_names)
    assert "roc_auc" not in result.metrics and "log_loss" not in result.metrics
    assert result.metrics["accuracy"] < 1.0


def test_warnings_are_recorded_not_printed(breast_cancer, capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # anything escaping train() would fail the test
        result = _train(breast_cancer, "classification", "linear", hyperparams={"max_iter": 5})
    assert any("ConvergenceWarning" in w for w in result.warnings)
    lgbm = _train(breast_cancer, "classification", "lightgbm",
                  hyperparams={"n_estimators": 3, "verbosity": 1})
    assert lgbm.runtime == "onnx"
    out, err = capfd.readouterr()
    assert out == "" and err == ""
