"""Train one model: validate, preprocess, fit (or search), measure, export, check parity.

This is what ``pgml.train`` runs inside PL/Python once the SQL side has loaded and split the
data. Everything the model row needs comes back in one TrainResult; nothing is written here,
so a failure leaves nothing half-done. Warnings (convergence and the like) are recorded in
``TrainResult.warnings`` instead of reaching the database client, and Python-level prints
from the libraries are captured the same way.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from inference import algorithms, parity
from inference.errors import InvalidData, InvalidHyperparams, NotExportable, PgmlError
from inference.metrics import classification_metrics, key_metric, regression_metrics
from inference.preprocess import (
    Preprocessor,
    apply_preprocessor,
    as_float_matrix,
    fit_preprocessor,
    is_fitted_spec,
)

__all__ = ["TrainResult", "key_metric", "train"]

MAX_WARNINGS = 20


@dataclass
class TrainResult:
    estimator: object
    hyperparams: dict
    metrics: dict[str, float]
    search_results: dict | None
    onnx: bytes | None
    runtime: str
    parity: dict
    native: bytes
    classes: list | None
    preprocessor: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # compiled_trees.Pending: the C compile started right after the fit (projects.py finishes
    # or cancels it); None where nothing was started
    compiled: object | None = None


def train(
    task: str,
    algorithm: str,
    X_train,
    y_train,
    X_test,
    y_test,
    *,
    feature_names: list[str],
    hyperparams: dict | None = None,
    preprocess: dict | None = None,
    search: str | None = None,
    search_params: dict | None = None,
    search_args: dict | None = None,
    joint: bool = False,
    random_state: int = 0,
    compile_trees: bool = False,
) -> TrainResult:
    """Fit ``algorithm`` on the training split and evaluate it on the test split.

    ``preprocess`` is either the user's per-column options or a spec already fitted by
    fit_preprocessor (used as is, e.g. the one stored with a snapshot). Classifiers are fitted
    on class indexes and wrapped so the native model answers in the original labels.
    ``compile_trees`` (pgml.train): start the compiled trees' compile right after the fit,
    in ``TrainResult.compiled``; the caller finishes or cancels it.
    """
    task = algorithms.normalize_task(task)
    algorithm = algorithms.canonical_name(algorithm)
    algorithms.spec(algorithm, task)  # unknown names fail before any data work
    hyperparams = dict(hyperparams or {})
    feature_names = list(feature_names)
    X_train = as_float_matrix(X_train, feature_names, "training features")
    X_test = as_float_matrix(X_test, feature_names, "test features")
    y_train = _target(y_train, task, joint, "training")
    y_test = _target(y_test, task, joint, "test")
    _check_sizes(X_train, y_train, X_test, y_test)
    classes = None
    y_fit = y_train
    if task == "classification":
        classes = np.unique(y_train)
        if len(classes) < 2:
            raise InvalidData(
                f"classification needs at least two classes; the training split has only "
                f"{classes[0]:g}. Check the y column or train a regression"
            )
        y_fit = np.searchsorted(classes, y_train)

    spec = preprocess if is_fitted_spec(preprocess) else fit_preprocessor(
        X_train, feature_names, preprocess
    )
    Xp_train = apply_preprocessor(spec, X_train)
    device = _device(algorithm, hyperparams)  # XGBoost/LightGBM on a CUDA host: the GPU
    estimator = algorithms.make_estimator(
        algorithm, task, {**hyperparams, **device}, joint=joint, random_state=random_state
    )

    caught: list[str] = []
    with _quiet(caught):
        fitted, best_params, search_results, fit_time = _fit(
            estimator, Xp_train, y_fit, task, search, search_params, search_args,
            random_state, bool(hyperparams or search_params),
        )
        if device:
            from inference.devices import back_to_cpu

            back_to_cpu(fitted)  # the stored model predicts on the CPU, wherever it goes
        pipeline, export_pipeline = _pipelines(spec, fitted, classes)
        labels = None if classes is None else [_plain_label(c) for c in classes]
        pending = _start_compile(pipeline, task, labels, len(feature_names)) \
            if compile_trees else None
        try:
            has_proba = task == "classification" and hasattr(pipeline, "predict_proba")
            start = time.perf_counter()
            y_pred = np.asarray(pipeline.predict(X_test), dtype=np.float64)
            proba = pipeline.predict_proba(X_test) if has_proba else None
            score_time = time.perf_counter() - start
            if task == "regression":
                metrics = regression_metrics(y_test, y_pred)
            else:
                metrics = classification_metrics(y_test, y_pred, proba, classes)
            metrics.update(fit_time=fit_time, score_time=score_time)
            onnx, runtime, check = _export_and_check(
                export_pipeline, pipeline, task, spec, classes, has_proba, feature_names,
                X_test, y_pred, proba, y_train, random_state,
                None if pending is None else pending.ensemble,
            )
            native = pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            if pending is not None:
                pending.cancel()
            raise
    return TrainResult(
        estimator=pipeline,
        hyperparams={**hyperparams, **device, **best_params},
        metrics=metrics,
        search_results=search_results,
        onnx=onnx,
        runtime=runtime,
        parity=check,
        native=native,
        classes=labels,
        preprocessor=spec,
        warnings=caught,
        compiled=pending,
    )


def _start_compile(pipeline, task: str, classes: list | None, n_features: int):
    """Tree models: start the compiled trees' C compile now (compiled_trees.start), so the
    compiler runs on another core while the test split is scored and the ONNX graphs made.
    None where that fails unexpectedly: projects.py then does it all after, as before."""
    from inference import compiled_trees

    try:
        return compiled_trees.start(pipeline, task=task, classes=classes, n_features=n_features)
    except Exception:  # noqa: BLE001 - the later, foreground attempt raises it where it did
        return None


def _device(algorithm: str, hyperparams: dict) -> dict:
    """GPU parameters for the fit where the host and library allow (devices.py), else {}."""
    from inference.devices import training_device
    from inference.runtime import cuda_device_present

    return training_device(algorithm, hyperparams, cuda=cuda_device_present())


def _target(y, task: str, joint: bool, split: str) -> np.ndarray:
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidData(
            f"the {split} target is not numeric; {task} needs numeric labels"
            + (" (map text labels to numbers)" if task == "classification" else "")
        ) from None
    if joint:
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2:
            raise InvalidData(f"the {split} targets must be a 2-D array (rows x targets)")
    else:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.ndim != 1:
            raise InvalidData(
                f"the {split} target must be one column; use joint training for several"
            )
    missing = int(np.isnan(y).sum())
    if missing:
        raise InvalidData(
            f"the {split} target has {missing} NULL value(s); filter them out of the relation"
        )
    if np.isinf(y).any():
        raise InvalidData(f"the {split} target contains infinity")
    return y


def _check_sizes(X_train, y_train, X_test, y_test) -> None:
    if len(X_train) != len(y_train) or len(X_test) != len(y_test):
        raise InvalidData("features and target have different numbers of rows")
    if len(X_train) < 2:
        raise InvalidData(
            f"the training split has {len(X_train)} row(s); at least 2 are needed — "
            "add rows or lower test_size"
        )
    if len(X_test) < 1:
        raise InvalidData("the test split is empty; add rows or raise test_size")
    if X_train.shape[1] == 0:
        raise InvalidData("there are no feature columns")


def _fit(estimator, X, y, task, search, search_params, search_args, random_state, user_params):
    from sklearn.utils._param_validation import InvalidParameterError

    name = type(estimator).__name__
    try:
        with warnings.catch_warnings(record=True) as fit_warnings:
            warnings.simplefilter("always")
            if search:
                from inference.search import run_search

                fitted, best, results = run_search(
                    estimator, X, y, task=task, search=search,
                    search_params=search_params or {}, search_args=search_args,
                    random_state=random_state,
                )
                fit_time = results["refit_time"]
            else:
                if search_params:
                    raise PgmlError(
                        "search_params were given without search; add search => 'grid' or 'random'"
                    )
                start = time.perf_counter()
                fitted, best, results = estimator.fit(X, y), {}, None
                fit_time = time.perf_counter() - start
        _raise_unused_params(fit_warnings, name)
        return fitted, best, results, fit_time
    except PgmlError:
        raise
    except InvalidParameterError as exc:
        raise InvalidHyperparams(f"{name}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        if user_params:
            raise InvalidHyperparams(f"{name} could not be fitted with these hyperparameters: {exc}") from exc
        raise InvalidData(f"{name} could not be fitted on this data: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("xgboost", "lightgbm")):
            raise InvalidHyperparams(f"{name}: {exc}") from exc
        raise


def _raise_unused_params(caught, name: str) -> None:
    """XGBoost accepts any keyword and only warns at fit that it was not used: make it an error."""
    for w in caught:
        text = str(w.message)
        if "are not used" in text and "Parameters:" in text:
            said = " ".join(line.strip() for line in text.splitlines() if "are not used" in line)
            raise InvalidHyperparams(f"{name} rejected the hyperparameters: {said}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _pipelines(spec, fitted, classes):
    """(native pipeline answering in original labels, pipeline for ONNX export on indexes)."""
    from sklearn.pipeline import Pipeline

    prep = Preprocessor(spec).fit(None)
    if classes is None:
        pipeline = Pipeline([("preprocess", prep), ("model", fitted)])
        return pipeline, pipeline
    wrapped = algorithms.LabelEncodedClassifier.from_fitted(fitted, classes.tolist())
    return (
        Pipeline([("preprocess", prep), ("model", wrapped)]),
        Pipeline([("preprocess", prep), ("model", fitted)]),
    )


def _export_and_check(export_pipeline, pipeline, task, spec, classes, has_proba, feature_names,
                      X_test, y_pred, proba, y_train, random_state, ens=None):
    """(ONNX bytes or None, runtime, parity record). ``ens``: the model's Ensemble where
    pgml.train built it (compiled_trees.start): an XGBoost regressor's graph is then written
    from it (onnx_export.ensemble_export) instead of by onnxmltools -- checked the same way."""
    from inference.onnx_export import ensemble_export, export
    from inference.runtime import OnnxScorer

    n_test = len(X_test)
    rows = parity.sample_rows(n_test, random_state)
    if rows is not None:  # a large test split: parity on a fixed random sample (see parity.py)
        X_test, y_pred = X_test[rows], y_pred[rows]
        proba = None if proba is None else proba[rows]

    error_columns = [j for j, c in enumerate(spec["columns"]) if c["impute"] == "error"]
    n_features = len(feature_names)
    try:
        onnx = None
        if ens is not None and task == "regression" and _compares_in_float32(export_pipeline):
            with contextlib.suppress(NotExportable):  # not a plain sum: the converters' graph
                onnx = ensemble_export(ens, spec=spec, task=task, n_features=n_features,
                                       error_columns=error_columns, feature_names=feature_names)
        if onnx is None:
            onnx = export(
                export_pipeline, task=task, n_features=n_features,
                classes=None if classes is None else classes.tolist(), has_proba=has_proba,
                error_columns=error_columns, feature_names=feature_names,
            )
        scorer = OnnxScorer(onnx, task, n_features)
        onnx_pred = scorer.predict(X_test)
    except NotExportable as exc:
        return None, "python", _fallback(str(exc))
    except Exception as exc:  # the graph converted but onnxruntime cannot load or run it
        name = type(export_pipeline.steps[-1][1]).__name__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, "python", _fallback(f"{name}'s ONNX graph does not run in onnxruntime: {first}")
    if task == "regression":
        check = parity.regression_parity(y_pred, onnx_pred, y_train)
    else:
        scores = proba if proba is not None else _decision(pipeline, X_test)
        onnx_proba = scorer.predict_proba(X_test) if has_proba else None
        check = parity.classification_parity(y_pred, onnx_pred, scores, proba, onnx_proba)
    check.update(rows_checked=len(X_test), test_rows=n_test)
    return onnx, ("onnx" if check["ok"] else "python"), check


def _compares_in_float32(pipeline) -> bool:
    """XGBoost models: the booster itself compares float32 features with float32 thresholds,
    so the Ensemble's graph decides exactly as it does on any input. scikit-learn and LightGBM
    compare float64 features; a float32 graph can then differ on a raw value next to a
    threshold (seen: HistGradientBoosting on diabetes, 6.6 on one row), so they keep the
    converters' graphs."""
    return type(pipeline.steps[-1][1]).__module__.startswith("xgboost")


def _decision(pipeline, X):
    return pipeline.decision_function(X) if hasattr(pipeline, "decision_function") else None


def _fallback(reason: str) -> dict:
    return {"ok": False, "max_abs_diff": None, "label_mismatch_fraction": None,
            "tolerance": None, "reason": reason}


@contextlib.contextmanager
def _quiet(sink: list[str]):
    """Record warnings and stray prints instead of letting them reach the backend's stderr."""
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen = []
            for w in caught:
                text = f"{w.category.__name__}: {str(w.message).strip()}"
                if text not in seen:
                    seen.append(text)
            seen += [line for line in out.getvalue().splitlines() if line.strip()]
            sink.extend(seen[:MAX_WARNINGS])


def _plain_label(value):
    value = float(value)
    return int(value) if value.is_integer() else value
