"""Joint (multi-target) regression on linnerud, for every regression algorithm.

Estimators that fit a 2-D target themselves are used as they are; the others go through
MultiOutputRegressor, as PostgresML does. Either way the model must export (except the
documented kernel_ridge fallback), pass parity, and serve (n, 3) predictions equal to the
native ones, with scikit-learn's uniform-average metrics.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.base import clone

from inference import algorithms
from inference.errors import PgmlError
from inference.parity import RTOL
from inference.routing import load_scorer
from inference.training import train
from tests.inference.conftest import split

SMALL = {"n_estimators": 5}
ENSEMBLES = {"ada_boost", "bagging", "extra_trees", "gradient_boosting_trees", "random_forest",
             "xgboost", "xgboost_random_forest", "lightgbm"}


def _hyperparams(algorithm: str) -> dict:
    params = dict(SMALL) if algorithm in ENSEMBLES else {}
    if algorithm == "lightgbm":
        params["min_child_samples"] = 2  # 15 training rows
    return params


@pytest.mark.parametrize("algorithm", algorithms.names("regression"))
def test_joint_regression(algorithm):
    data = split("linnerud")
    hyperparams = _hyperparams(algorithm)
    result = train(
        "regression", algorithm, data.X_train, data.y_train, data.X_test, data.y_test,
        feature_names=data.feature_names, hyperparams=hyperparams, joint=True,
    )
    estimator = algorithms.make_estimator(algorithm, "regression", hyperparams, joint=True,
                                          random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_ref = clone(estimator).fit(data.X_train, data.y_train).predict(data.X_test)
    assert result.metrics["r2"] == pytest.approx(skm.r2_score(data.y_test, y_ref), rel=1e-7)
    assert result.metrics["mean_squared_error"] == pytest.approx(
        skm.mean_squared_error(data.y_test, y_ref), rel=1e-7
    )
    if algorithm == "kernel_ridge":
        assert result.runtime == "python" and result.parity["reason"]
    else:
        assert result.runtime == "onnx", result.parity["reason"]
    scorer = load_scorer(result.runtime, result.onnx, result.native, "regression", 3)
    served = scorer.predict(data.X_test)
    assert served.shape == (len(data.X_test), 3)
    tolerance = RTOL * max(np.std(data.y_train), np.abs(y_ref).max())
    np.testing.assert_allclose(served, y_ref, rtol=0, atol=tolerance)
    assert scorer.predict(data.X_test[0]).shape == (1, 3)


def test_joint_uses_native_multi_output_where_scikit_learn_declares_it():
    """The registry's ``joint`` flag agrees with scikit-learn's own multi-output tag."""
    for name in algorithms.names("regression"):
        entry = algorithms.spec(name, "regression")
        cls = entry.cls()
        if not cls.__module__.startswith("sklearn"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tagged = cls(**entry.defaults).__sklearn_tags__().target_tags.multi_output
        assert (entry.joint == "native") == tagged, name


def test_joint_is_regression_only(iris):
    with pytest.raises(PgmlError, match="regression only"):
        train("classification", "linear", iris.X_train, iris.y_train, iris.X_test, iris.y_test,
              feature_names=iris.feature_names, joint=True)


def test_single_target_refuses_two_columns(linnerud):
    with pytest.raises(PgmlError, match="joint"):
        train("regression", "linear", linnerud.X_train, linnerud.y_train, linnerud.X_test,
              linnerud.y_test, feature_names=linnerud.feature_names)
