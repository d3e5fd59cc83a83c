"""The default graph of XGBoost regressors written from their Ensemble (onnx_export.ensemble_export):
what pgml.train stores when it built the Ensemble (compile_trees=True), with and without
scaling and NULL imputation, answers like onnxmltools' graph and passes the same parity; every
other tree regressor of the registry keeps its converter's graph."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from inference import algorithms
from inference.runtime import OnnxScorer
from inference.training import train
from tests.inference.test_tree_graph import _is_tree

pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")

REGRESSORS = sorted(n for n in algorithms.names("regression")
                    if _is_tree(algorithms.spec(n, "regression").cls()))
SMALL = {"n_estimators": 10}


def _train(s, name, compile_trees, preprocess=None, X_train=None):
    hyper = SMALL if "n_estimators" in algorithms.spec(name, "regression").cls()().get_params() \
        else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = train("regression", name, s.X_train if X_train is None else X_train, s.y_train,
                  s.X_test, s.y_test, feature_names=s.feature_names, random_state=0,
                  hyperparams=hyper, preprocess=preprocess, compile_trees=compile_trees)
    if r.compiled is not None:
        r.compiled.cancel()
    return r


def _meta(data: bytes) -> dict:
    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}


@pytest.mark.parametrize("name", REGRESSORS)
def test_tree_regressors_graph_from_the_ensemble_answers_like_the_converters(diabetes, name):
    s = diabetes
    ours, theirs = _train(s, name, True), _train(s, name, False)
    assert theirs.runtime == "onnx" and "pgml.exporter" not in _meta(theirs.onnx)
    if not name.startswith("xgboost"):  # float64 comparisons: the converters' graph
        assert "pgml.exporter" not in _meta(ours.onnx)  # (training._compares_in_float32)
        return
    assert ours.runtime == "onnx" and ours.parity["ok"], ours.parity
    assert _meta(ours.onnx)["pgml.exporter"] == "ensemble"
    X = s.X_test.astype(np.float32).astype(np.float64)
    n = len(s.feature_names)
    a, b = OnnxScorer(ours.onnx, "regression", n), OnnxScorer(theirs.onnx, "regression", n)
    native = ours.estimator.predict(X)
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-5, atol=1e-4)
    assert np.max(np.abs(a.predict(X) - native) / np.maximum(1, np.abs(native))) <= 1e-5


@pytest.mark.parametrize("name", ["xgboost", "xgboost_random_forest"])
def test_nulls_are_folded_into_the_graph_written_from_the_ensemble(diabetes, name):
    s = diabetes
    X_train = s.X_train.copy()
    X_train[::7, 2] = np.nan
    r = _train(s, name, True, preprocess={"bmi": {"impute": "median"}, "age": {"impute": "min"}},
               X_train=X_train)
    assert r.runtime == "onnx" and r.parity["ok"], r.parity
    meta = _meta(r.onnx)
    assert meta["pgml.exporter"] == "ensemble" and meta["pgml.imputation"] == "folded into trees"
    X = s.X_test.astype(np.float32).astype(np.float64)
    X[::3, 2] = np.nan
    X[::5, 0] = np.nan
    native = r.estimator.predict(X)
    got = OnnxScorer(r.onnx, "regression", len(s.feature_names)).predict(X)
    assert np.max(np.abs(got - native) / np.maximum(1, np.abs(native))) <= 1e-5


def test_a_scaled_model_gets_the_same_parity_outcome_as_from_the_converter(diabetes):
    """Scaling runs in float32 in either graph, so where that flips a split next to a
    threshold (diabetes' bmi, standardized) both fail parity alike and the model is served by
    Python -- the Ensemble's graph changes nothing there."""
    s = diabetes
    preprocess = {"bmi": {"scale": "standard"}, "bp": {"scale": "min_max"}}
    ours, theirs = (_train(s, "xgboost", ct, preprocess=preprocess) for ct in (True, False))
    assert ours.runtime == theirs.runtime
    assert ours.parity["ok"] == theirs.parity["ok"]
    np.testing.assert_allclose(ours.parity["max_abs_diff"], theirs.parity["max_abs_diff"],
                               rtol=1e-3)
