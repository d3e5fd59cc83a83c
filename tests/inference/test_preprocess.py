"""Per-column imputation and scaling: scikit-learn's numbers, the same inside the ONNX graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

from inference.errors import InvalidData, PgmlError
from inference.preprocess import IMPUTE, SCALE, apply_preprocessor, fit_preprocessor
from inference.routing import load_scorer
from inference.training import train

NAMES = ["a", "b", "c"]
X = np.array(
    [[1.0, 10.0, -3.0], [np.nan, 20.0, 5.0], [3.0, np.nan, 5.0], [4.0, 40.0, np.nan],
     [4.0, 15.0, 2.0], [np.nan, 35.0, 8.0]]
)


def _imputed_by_sklearn(impute: str) -> np.ndarray:
    strategy = {"mean": "mean", "median": "median", "mode": "most_frequent", "zero": "constant"}
    if impute in strategy:
        return SimpleImputer(strategy=strategy[impute], fill_value=0.0).fit_transform(X)
    fill = {"min": np.nanmin, "max": np.nanmax}[impute](X, axis=0)
    return np.where(np.isnan(X), fill, X)


@pytest.mark.parametrize("impute", [i for i in IMPUTE if i != "error"])
def test_impute_matches_scikit_learn(impute):
    spec = fit_preprocessor(X, NAMES, {n: {"impute": impute} for n in NAMES})
    np.testing.assert_allclose(apply_preprocessor(spec, X), _imputed_by_sklearn(impute))
    assert json.loads(json.dumps(spec)) == spec  # stored as JSON with the snapshot


SCALERS = {"standard": StandardScaler, "min_max": MinMaxScaler, "max_abs": MaxAbsScaler,
           "robust": RobustScaler}


@pytest.mark.parametrize("scale", SCALE)
def test_scale_matches_scikit_learn(scale):
    spec = fit_preprocessor(X, NAMES, {n: {"scale": scale} for n in NAMES})
    imputed = _imputed_by_sklearn("mean")
    expected = imputed if scale == "preserve" else SCALERS[scale]().fit_transform(imputed)
    np.testing.assert_allclose(apply_preprocessor(spec, X), expected, atol=1e-12)


def test_defaults_are_mean_and_preserve():
    spec = fit_preprocessor(X, NAMES, {})
    assert [(c["impute"], c["scale"]) for c in spec["columns"]] == [("mean", "preserve")] * 3
    assert spec["columns"][0]["fill"] == pytest.approx(np.nanmean(X[:, 0]))


def test_constant_column_scales_by_one():
    const = np.array([[2.0, 1.0], [2.0, 2.0], [2.0, 3.0]])
    spec = fit_preprocessor(const, ["k", "v"], {"k": {"scale": "standard"}})
    np.testing.assert_allclose(apply_preprocessor(spec, const)[:, 0], 0.0)


def test_mode_ties_pick_the_smallest():
    data = np.array([[3.0], [1.0], [3.0], [1.0], [np.nan]])
    spec = fit_preprocessor(data, ["x"], {"x": {"impute": "mode"}})
    assert spec["columns"][0]["fill"] == 1.0


def test_impute_error():
    with pytest.raises(InvalidData, match="'a' has 2 NULL.*impute is 'error'"):
        fit_preprocessor(X, NAMES, {"a": {"impute": "error"}})
    clean = np.nan_to_num(X, nan=1.0)
    spec = fit_preprocessor(clean, NAMES, {"a": {"impute": "error"}})
    assert apply_preprocessor(spec, clean).shape == clean.shape
    with pytest.raises(InvalidData, match="'a' is NULL"):
        apply_preprocessor(spec, np.array([[np.nan, 1.0, 1.0]]))
    np.testing.assert_allclose(apply_preprocessor(spec, np.array([[1.0, np.nan, 1.0]]))[0, 1],
                               np.mean(clean[:, 1]))


def test_option_errors():
    with pytest.raises(PgmlError, match="unknown column.*'zz'.*a, b, c"):
        fit_preprocessor(X, NAMES, {"zz": {"impute": "mean"}})
    with pytest.raises(PgmlError, match="impute 'avg'.*mean, median"):
        fit_preprocessor(X, NAMES, {"a": {"impute": "avg"}})
    with pytest.raises(PgmlError, match="scale 'log'.*standard"):
        fit_preprocessor(X, NAMES, {"a": {"scale": "log"}})
    with pytest.raises(PgmlError, match="unknown option"):
        fit_preprocessor(X, NAMES, {"a": {"clip": True}})
    with pytest.raises(PgmlError, match="encode"):
        fit_preprocessor(X, NAMES, {"a": {"encode": "one_hot"}})
    all_null = np.array([[np.nan, 1.0], [np.nan, 2.0]])
    with pytest.raises(InvalidData, match="'x' has no non-NULL values.*'zero'"):
        fit_preprocessor(all_null, ["x", "y"], {})
    assert fit_preprocessor(all_null, ["x", "y"], {"x": {"impute": "zero"}})["columns"][0]["fill"] == 0


def test_non_numeric_and_infinite_features_name_the_column():
    text = np.array([[1.0, "x"], [2.0, "y"]], dtype=object)
    with pytest.raises(InvalidData, match="'name' is not numeric"):
        fit_preprocessor(text, ["id", "name"], {})
    with pytest.raises(InvalidData, match="'b' contains infinity"):
        fit_preprocessor(np.array([[1.0, np.inf]]), ["a", "b"], {})
    nulls = np.array([[1.0, None], [2.0, 3.0]], dtype=object)
    assert fit_preprocessor(nulls, ["a", "b"], {})["columns"][1]["fill"] == 3.0


def _train_with_nulls(algorithm: str, preprocess: dict, rng_seed: int = 0):
    rng = np.random.default_rng(rng_seed)
    X = rng.normal(size=(200, 3)) * [1.0, 50.0, 0.01] + [0.0, 100.0, 5.0]
    y = X @ [2.0, 0.05, 300.0] + rng.normal(scale=0.1, size=200)
    X[rng.random(X.shape) < 0.15] = np.nan
    hyperparams = {"linear": {}, "hist_gradient_boosting": {"max_iter": 20}}.get(
        algorithm, {"n_estimators": 20})
    return train("regression", algorithm, X[:150], y[:150], X[150:], y[150:],
                 feature_names=NAMES, preprocess=preprocess, hyperparams=hyperparams), X[150:]


@pytest.mark.parametrize("algorithm", ["linear", "xgboost", "random_forest", "lightgbm",
                                       "hist_gradient_boosting", "ada_boost"])
@pytest.mark.parametrize("scale", ["preserve", "robust"])
def test_nulls_are_imputed_inside_the_onnx_graph(algorithm, scale):
    preprocess = {"a": {"impute": "median", "scale": scale}, "b": {"impute": "max"},
                  "c": {"impute": "mode", "scale": scale}}
    result, X_test = _train_with_nulls(algorithm, preprocess)
    assert result.runtime == "onnx", result.parity["reason"]
    assert np.isnan(X_test).any(axis=1).sum() > 10  # the test split itself has NULLs
    scorer = load_scorer("onnx", result.onnx, result.native, "regression", 3)
    np.testing.assert_allclose(scorer.predict(X_test), result.estimator.predict(X_test),
                               rtol=1e-5, atol=1e-3)
    for row in X_test[np.isnan(X_test).any(axis=1)][:5]:
        assert scorer.predict(row)[0] == pytest.approx(result.estimator.predict(row[None])[0],
                                                       rel=1e-5, abs=1e-3)
    ops = {n.op_type for n in onnx.load_from_string(result.onnx).graph.node}
    folded = algorithm != "linear" and scale == "preserve"
    assert ("IsNaN" in ops) is not folded  # trees take the imputed branch themselves


def test_impute_error_column_is_refused_by_the_scorer():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 3))
    y = X.sum(axis=1)
    result = train("regression", "xgboost", X[:60], y[:60], X[60:], y[60:], feature_names=NAMES,
                   preprocess={"b": {"impute": "error"}}, hyperparams={"n_estimators": 5})
    for runtime in ("onnx", "python"):
        scorer = load_scorer(runtime, result.onnx, result.native, "regression", 3)
        with pytest.raises(InvalidData, match="NULL"):
            scorer.predict(np.array([0.1, np.nan, 0.2]))
        assert np.isfinite(scorer.predict(np.array([np.nan, 0.1, 0.2]))).all()


def test_a_fitted_spec_is_used_as_is(diabetes):
    spec = fit_preprocessor(diabetes.X_train, diabetes.feature_names,
                            {"bmi": {"scale": "standard"}})
    result = train("regression", "ridge", diabetes.X_train, diabetes.y_train, diabetes.X_test,
                   diabetes.y_test, feature_names=diabetes.feature_names, preprocess=spec)
    assert result.preprocessor == spec


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=hnp.arrays(np.float64, (40, 3), elements=st.one_of(
        st.floats(-1e3, 1e3, allow_nan=False), st.just(np.nan))),
    impute=st.sampled_from([i for i in IMPUTE if i != "error"]),
    scale=st.sampled_from(SCALE),
)
def test_onnx_preprocessing_equals_numpy(data, impute, scale):
    """Whatever the options and the NULL pattern, the graph's preprocessing is the spec's."""
    data[0] = [1.0, 2.0, 3.0]  # every column has a value in training
    y = np.nan_to_num(data).sum(axis=1)
    options = {n: {"impute": impute, "scale": scale} for n in NAMES}
    result = train("regression", "linear", data[:30], y[:30], data[30:], y[30:],
                   feature_names=NAMES, preprocess=options)
    assert result.runtime == "onnx", result.parity["reason"]
    scorer = load_scorer("onnx", result.onnx, result.native, "regression", 3)
    scale_y = max(np.abs(result.estimator.predict(data)).max(), 1.0)
    np.testing.assert_allclose(scorer.predict(data), result.estimator.predict(data),
                               rtol=0, atol=1e-3 * scale_y)
