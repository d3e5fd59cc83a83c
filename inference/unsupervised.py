"""Train an unsupervised model: PostgresML 2.x's tasks clustering and decomposition.

Same shape as ``training.train`` (validate, preprocess, fit, measure, export, check parity,
one TrainResult, nothing written), without a label:

* **clustering** -- kmeans, mini_batch_kmeans, affinity_propagation, birch, mean_shift,
  spectral, dbscan, optics. ``pgml.predict`` returns the cluster number. Estimators with a
  ``predict`` of their own (k-means, mini-batch k-means, affinity propagation, Birch, mean
  shift) use it. DBSCAN, OPTICS and spectral clustering only label the rows they were fitted on
  (PostgresML refuses to train them for that reason); here a new row gets the cluster of its
  nearest training row (``NearestCluster``: a 1-nearest-neighbour classifier over the training
  rows and their labels; DBSCAN's noise stays -1) -- written down in docs/pgml.md.
  Metrics on the test split: silhouette, calinski_harabasz, davies_bouldin (left out when
  undefined, e.g. one cluster); key metric silhouette, higher is better.
* **decomposition** -- pca. ``pgml.decompose`` returns the components of a vector.
  Metrics: cumulative_explained_variance (the key metric, higher is better; the one
  PostgresML's example sorts by) and explained_variance (per component).

ONNX: k-means, mini-batch k-means and PCA convert with skl2onnx; the nearest-cluster models
export their 1-nearest-neighbour classifier. Birch, affinity propagation and mean shift have
no converter and are scored natively (``algorithms.NATIVE_ONLY`` lists them).
"""

from __future__ import annotations

import pickle
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from inference import algorithms, parity
from inference.errors import InvalidData, NotExportable
from inference.preprocess import Preprocessor, apply_preprocessor, as_float_matrix, fit_preprocessor
from inference.training import TrainResult, _fallback, _fit, _quiet

TRANSDUCTIVE = ("dbscan", "optics", "spectral")


class NearestCluster(ClassifierMixin, BaseEstimator):
    """A clustering that labels only its training rows, extended to new rows: each gets the
    label of its nearest training row. The class path is part of the stored model format."""

    def __init__(self, clusterer=None):
        self.clusterer = clusterer

    def fit(self, X, y=None):
        from sklearn.base import clone
        from sklearn.neighbors import KNeighborsClassifier

        self.clusterer_ = clone(self.clusterer)
        self.labels_ = np.asarray(self.clusterer_.fit_predict(X))
        self.nearest_ = KNeighborsClassifier(n_neighbors=1).fit(X, self.labels_)
        return self

    def predict(self, X):
        return self.nearest_.predict(X)


class Components(BaseEstimator):
    """A fitted decomposition whose ``predict`` is its ``transform`` (what the scorer calls)."""

    def __init__(self, decomposer=None):
        self.decomposer = decomposer

    def fit(self, X=None, y=None):
        return self  # wraps an already fitted decomposition

    def predict(self, X):
        return self.decomposer.transform(X)

    def __sklearn_is_fitted__(self) -> bool:
        return True


def train(task: str, algorithm: str, X_train, X_test, *, feature_names: list[str],
          hyperparams: dict | None = None, preprocess: dict | None = None,
          random_state: int = 0) -> TrainResult:
    task = algorithms.normalize_task(task)
    algorithm = algorithms.canonical_name(algorithm)
    algorithms.spec(algorithm, task)
    hyperparams = dict(hyperparams or {})
    X_train = as_float_matrix(X_train, feature_names, "training features")
    X_test = as_float_matrix(X_test, feature_names, "test features")
    if len(X_train) < 2:
        raise InvalidData(f"the training split has {len(X_train)} row(s); at least 2 are needed")
    spec = preprocess if isinstance(preprocess, dict) and preprocess.get("kind") else \
        fit_preprocessor(X_train, feature_names, preprocess)
    Xp_train = apply_preprocessor(spec, X_train)
    estimator = algorithms.make_estimator(algorithm, task, hyperparams, random_state=random_state)
    if algorithm in TRANSDUCTIVE:
        estimator = NearestCluster(estimator)
    caught: list[str] = []
    from sklearn.pipeline import Pipeline

    with _quiet(caught):
        fitted, _, _, fit_time = _fit(estimator, Xp_train, None, task, None, {}, {},
                                      random_state, bool(hyperparams))
        prep = Preprocessor(spec).fit(None)
        if task == "decomposition":
            native = Pipeline([("preprocess", prep), ("model", Components(fitted))])
            export_model = fitted
        else:
            native = Pipeline([("preprocess", prep), ("model", fitted)])
            export_model = fitted.nearest_ if isinstance(fitted, NearestCluster) else fitted
        start = time.perf_counter()
        out = np.asarray(native.predict(X_test), dtype=np.float64)
        score_time = time.perf_counter() - start
        metrics = _metrics(task, fitted, apply_preprocessor(spec, X_test), out)
        metrics.update(fit_time=fit_time, score_time=score_time)
        onnx, runtime, check = _export(Pipeline([("preprocess", prep), ("model", export_model)]),
                                       task, feature_names, spec, X_test, out, random_state)
    return TrainResult(
        estimator=native, hyperparams=hyperparams, metrics=metrics, search_results=None,
        onnx=onnx, runtime=runtime, parity=check,
        native=pickle.dumps(native, protocol=pickle.HIGHEST_PROTOCOL), classes=None,
        preprocessor=spec, warnings=caught)


def _metrics(task: str, fitted, X_test: np.ndarray, out: np.ndarray) -> dict:
    from sklearn import metrics as skm

    if task == "decomposition":
        ratio = np.asarray(fitted.explained_variance_ratio_, dtype=np.float64)
        return {"cumulative_explained_variance": float(ratio.sum()),
                "explained_variance": ratio.tolist()}
    result = {}
    labels = out.astype(np.int64)
    if 2 <= len(np.unique(labels)) < len(labels):
        for name, fn in (("silhouette", skm.silhouette_score),
                         ("calinski_harabasz", skm.calinski_harabasz_score),
                         ("davies_bouldin", skm.davies_bouldin_score)):
            value = float(fn(X_test, labels))
            if np.isfinite(value):
                result[name] = value
    result["num_clusters"] = int(len(np.unique(labels)))
    return result


def _export(pipeline, task, feature_names, spec, X_test, native_out, random_state):
    from inference.onnx_export import export
    from inference.runtime import OnnxScorer

    if algorithms.native_only(type(pipeline.steps[-1][1]).__name__):
        return None, "python", _fallback(
            f"{type(pipeline.steps[-1][1]).__name__} has no ONNX converter; scored natively")
    rows = parity.sample_rows(len(X_test), random_state)
    if rows is not None:
        X_test, native_out = X_test[rows], native_out[rows]
    errors = [j for j, c in enumerate(spec["columns"]) if c["impute"] == "error"]
    try:
        onnx = export(pipeline, task=task, n_features=len(feature_names), classes=None,
                      has_proba=False, error_columns=errors, feature_names=feature_names)
        got = OnnxScorer(onnx, task, len(feature_names)).predict(X_test)
    except NotExportable as exc:
        return None, "python", _fallback(str(exc))
    except Exception as exc:  # converted but does not run
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, "python", _fallback(f"the ONNX graph does not run in onnxruntime: {first}")
    if task == "decomposition":
        check = parity.regression_parity(native_out.ravel(), np.asarray(got).ravel(),
                                          native_out.ravel())
    else:
        check = parity.classification_parity(native_out, np.asarray(got), None, None, None)
    check.update(rows_checked=len(X_test), test_rows=len(X_test))
    return onnx, ("onnx" if check["ok"] else "python"), check
