"""The estimator contract, generated for every algorithm name x task (scikit-learn style).

Each case trains through ``inference.training.train`` and then checks, independently of the
library's own registry:
* the metrics equal scikit-learn's, computed here on the same split with the estimator that
  PostgresML maps the name to (``REFERENCE`` below, written out by hand from PostgresML);
* the model was exported to ONNX and passed parity — or, for the documented exceptions, fell
  back to the native runtime with the reason recorded;
* a Scorer loaded from the stored bytes answers like the native estimator on the test split;
* the pickled native model answers exactly like the fitted one.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn import ensemble, gaussian_process, kernel_ridge, linear_model, svm
from sklearn import metrics as skm
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from inference import algorithms
from inference.parity import RTOL
from inference.routing import load_scorer
from inference.training import train
from tests.inference.conftest import split

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
cb = pytest.importorskip("catboost")

# PostgresML's _ALGORITHM_MAP (pgml-extension/src/bindings/sklearn/sklearn.py), by hand.
REFERENCE = {
    ("linear", "regression"): linear_model.LinearRegression,
    ("linear", "classification"): linear_model.LogisticRegression,
    ("ridge", "regression"): linear_model.Ridge,
    ("ridge", "classification"): linear_model.RidgeClassifier,
    ("lasso", "regression"): linear_model.Lasso,
    ("elastic_net", "regression"): linear_model.ElasticNet,
    ("least_angle", "regression"): linear_model.Lars,
    ("lasso_least_angle", "regression"): linear_model.LassoLars,
    ("orthogonal_matching_pursuit", "regression"): linear_model.OrthogonalMatchingPursuit,
    ("bayesian_ridge", "regression"): linear_model.BayesianRidge,
    ("automatic_relevance_determination", "regression"): linear_model.ARDRegression,
    ("stochastic_gradient_descent", "regression"): linear_model.SGDRegressor,
    ("stochastic_gradient_descent", "classification"): linear_model.SGDClassifier,
    ("perceptron", "classification"): linear_model.Perceptron,
    ("passive_aggressive", "regression"): linear_model.PassiveAggressiveRegressor,
    ("passive_aggressive", "classification"): linear_model.PassiveAggressiveClassifier,
    ("ransac", "regression"): linear_model.RANSACRegressor,
    ("theil_sen", "regression"): linear_model.TheilSenRegressor,
    ("huber", "regression"): linear_model.HuberRegressor,
    ("quantile", "regression"): linear_model.QuantileRegressor,
    ("kernel_ridge", "regression"): kernel_ridge.KernelRidge,
    ("gaussian_process", "regression"): gaussian_process.GaussianProcessRegressor,
    ("gaussian_process", "classification"): gaussian_process.GaussianProcessClassifier,
    ("svm", "regression"): svm.SVR,
    ("svm", "classification"): svm.SVC,
    ("nu_svm", "regression"): svm.NuSVR,
    ("nu_svm", "classification"): svm.NuSVC,
    ("linear_svm", "regression"): svm.LinearSVR,
    ("linear_svm", "classification"): svm.LinearSVC,
    ("ada_boost", "regression"): ensemble.AdaBoostRegressor,
    ("ada_boost", "classification"): ensemble.AdaBoostClassifier,
    ("bagging", "regression"): ensemble.BaggingRegressor,
    ("bagging", "classification"): ensemble.BaggingClassifier,
    ("extra_trees", "regression"): ensemble.ExtraTreesRegressor,
    ("extra_trees", "classification"): ensemble.ExtraTreesClassifier,
    ("gradient_boosting_trees", "regression"): ensemble.GradientBoostingRegressor,
    ("gradient_boosting_trees", "classification"): ensemble.GradientBoostingClassifier,
    ("hist_gradient_boosting", "regression"): ensemble.HistGradientBoostingRegressor,
    ("hist_gradient_boosting", "classification"): ensemble.HistGradientBoostingClassifier,
    ("random_forest", "regression"): ensemble.RandomForestRegressor,
    ("random_forest", "classification"): ensemble.RandomForestClassifier,
    ("xgboost", "regression"): xgb.XGBRegressor,
    ("xgboost", "classification"): xgb.XGBClassifier,
    ("xgboost_random_forest", "regression"): xgb.XGBRFRegressor,
    ("xgboost_random_forest", "classification"): xgb.XGBRFClassifier,
    ("lightgbm", "regression"): lgb.LGBMRegressor,
    ("lightgbm", "classification"): lgb.LGBMClassifier,
    ("catboost", "regression"): cb.CatBoostRegressor,
    ("catboost", "classification"): cb.CatBoostClassifier,
}

# Documented fallbacks (docs/inference.md): no converter, or a graph onnxruntime cannot run.
NATIVE_ONLY = {("kernel_ridge", "regression"), ("gaussian_process", "classification")}

ENSEMBLES = {"ada_boost", "bagging", "extra_trees", "gradient_boosting_trees", "random_forest",
             "xgboost", "xgboost_random_forest", "lightgbm", "catboost"}


def test_registry_matches_postgresml():
    """Every name of the issue exists exactly where PostgresML has the estimator."""
    for task in algorithms.TASKS:
        expected = sorted(name for name, t in REFERENCE if t == task)
        assert algorithms.names(task) == expected


def _hyperparams(algorithm: str) -> dict:
    """Small models keep the suite fast; the same values go to the reference estimator."""
    if algorithm in ENSEMBLES:
        return {"n_estimators": 10}
    if algorithm == "theil_sen":
        return {"max_subpopulation": 200}
    return {}


def _reference(algorithm: str, task: str, hyperparams: dict, scale: bool):
    cls = REFERENCE[(algorithm, task)]
    params = dict(hyperparams)
    if cls.__module__.startswith("catboost"):  # no _get_param_names; quiet, no files
        params.update(random_state=0, verbose=False, allow_writing_files=False)
    elif "random_state" in cls._get_param_names():
        params["random_state"] = 0
    if cls.__module__.startswith("lightgbm"):
        params["verbosity"] = -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PassiveAggressive*: deprecated in 1.8
        estimator = cls(**params)
    return make_pipeline(StandardScaler(), estimator) if scale else estimator


CASES = [
    (algorithm, task, dataset)
    for task, datasets in (("regression", ["diabetes"]), ("classification", ["iris", "breast_cancer"]))
    for algorithm in algorithms.names(task)
    for dataset in datasets
]


@pytest.mark.parametrize(("algorithm", "task", "dataset"), CASES)
def test_train_export_parity_predict(algorithm, task, dataset):
    data = split(dataset)
    hyperparams = _hyperparams(algorithm)
    # A Gaussian process on raw diabetes features (all within +-0.2) collapses to a constant;
    # standardising gives it something to learn and exercises scaling inside the graph.
    scale = algorithm == "gaussian_process" and task == "regression"
    if scale:
        hyperparams = {"normalize_y": True}
    preprocess = {n: {"scale": "standard"} for n in data.feature_names} if scale else None

    result = train(
        task, algorithm, data.X_train, data.y_train, data.X_test, data.y_test,
        feature_names=data.feature_names, hyperparams=hyperparams, preprocess=preprocess,
    )

    # 1. metrics equal scikit-learn's on the same split and seed
    reference = _reference(algorithm, task, hyperparams, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.fit(data.X_train, data.y_train)
        y_ref = np.ravel(reference.predict(data.X_test))  # CatBoostClassifier: (n, 1)
        proba_ref = reference.predict_proba(data.X_test) if hasattr(reference, "predict_proba") else None
    expected = _metrics(task, data.y_test, y_ref, proba_ref, np.unique(data.y_train))
    metrics = {k: v for k, v in result.metrics.items() if k not in ("fit_time", "score_time")}
    assert metrics == pytest.approx(expected, rel=1e-7, abs=1e-10)
    assert result.metrics["fit_time"] > 0 and result.metrics["score_time"] > 0

    # 2. ONNX export + parity, or a recorded fallback
    if (algorithm, task) in NATIVE_ONLY:
        assert result.runtime == "python"
        assert not result.parity["ok"] and result.parity["reason"]
    else:
        assert result.runtime == "onnx", result.parity["reason"]
        assert result.parity["ok"] and result.parity["reason"] is None
        assert result.onnx

    # 3. the Scorer serving the stored model answers like the native estimator
    n_features = len(data.feature_names)
    scorer = load_scorer(result.runtime, result.onnx, result.native, task, n_features)
    native = result.estimator.predict(data.X_test)
    served = scorer.predict(data.X_test)
    assert served.dtype == np.float64 and served.shape == (len(data.X_test),)
    if task == "regression":
        tolerance = RTOL * max(np.std(data.y_train), np.mean(np.abs(data.y_train)))
        np.testing.assert_allclose(served, native, rtol=0, atol=tolerance)
    else:
        assert np.mean(served != native) <= 0.01 or (served != native).sum() <= 1
        assert set(np.unique(served)) <= set(np.unique(data.y_train))
        assert result.classes == sorted(int(c) for c in np.unique(data.y_train))
        if proba_ref is not None:
            proba = scorer.predict_proba(data.X_test)
            assert proba.shape == (len(data.X_test), len(result.classes))
            np.testing.assert_allclose(proba, result.estimator.predict_proba(data.X_test), atol=1e-3)
    one = scorer.predict(data.X_test[0])
    assert one.shape == (1,) and one[0] == pytest.approx(served[0])

    # 4. the stored native model is the fitted one
    restored = pickle.loads(result.native)
    np.testing.assert_array_equal(restored.predict(data.X_test), native)


def _metrics(task, y_true, y_pred, proba, classes) -> dict:
    if task == "regression":
        return {
            "r2": skm.r2_score(y_true, y_pred),
            "mean_squared_error": skm.mean_squared_error(y_true, y_pred),
            "mean_absolute_error": skm.mean_absolute_error(y_true, y_pred),
            "explained_variance": skm.explained_variance_score(y_true, y_pred),
        }
    out = {
        "f1": skm.f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "precision": skm.precision_score(y_true, y_pred, average="weighted", zero_division=0),
        "recall": skm.recall_score(y_true, y_pred, average="weighted", zero_division=0),
        "accuracy": skm.accuracy_score(y_true, y_pred),
    }
    if proba is not None:
        if len(classes) == 2:
            out["roc_auc"] = skm.roc_auc_score(y_true, proba[:, 1])
        else:
            out["roc_auc"] = skm.roc_auc_score(y_true, proba, multi_class="ovr")
        out["log_loss"] = skm.log_loss(y_true, proba, labels=classes)
    return out
