"""Scoring: an onnxruntime session (or the native estimator) behind one small interface.

This is the hot path of ``pgml.predict``: a PL/Python call per row. The ONNX scorer therefore
does its set-up once — input name, output names, a reusable float32 row buffer, the class
table — and per call only copies the row into the buffer and runs the session. Sessions use
one intra-op and one inter-op thread with spinning off: a database backend is one process
per connection, so threads would only fight each other and spin on idle cores.

Importing this module imports numpy and onnxruntime only; scikit-learn is loaded solely when
a native (pickled) model is scored.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import pickle

import numpy as np

from inference.errors import InvalidData, PgmlError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ML_DOMAIN = "ai.onnx.ml"


@functools.cache
def providers() -> list[str]:
    """The execution providers worth asking for on this machine.

    onnxruntime-gpu lists CUDA as available even on machines without a GPU, and asking for it
    there makes every session log a failure; so CUDA is asked for only when an NVIDIA device
    node and driver are really present. Cached: the answer cannot change within a process.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    if CUDA in ort.get_available_providers() and _nvidia_gpu_present():
        return [CUDA, CPU]
    return [CPU]


def _nvidia_gpu_present() -> bool:
    devices = [p for p in glob.glob("/dev/nvidia*") if os.path.basename(p)[6:].isdigit()]
    return bool(devices) and os.path.exists("/proc/driver/nvidia/version")


class Scorer:
    """A loaded model ready to score rows.

    ``predict`` returns shape (n,) float64 — the class label as a number for classification —
    or (n, k) for a joint (multi-target) model; ``predict_proba`` (n, n_classes) float64.
    A single row may be passed as a 1-D array of ``n_features`` values.
    """

    runtime: str
    providers: list[str]
    n_features: int
    task: str
    classes: np.ndarray | None
    has_proba: bool

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _proba_allowed(self) -> None:
        if self.task != "classification":
            raise PgmlError("predict_proba needs a classification model; this one is regression")
        if not self.has_proba:
            raise PgmlError(
                "this classifier has no probabilities (e.g. svm without probability=true, "
                "ridge, perceptron, hinge-loss sgd); use predict, or retrain with an algorithm "
                "or hyperparameters that give probabilities"
            )

    def _rows(self, X) -> np.ndarray:
        """``X`` as a 2-D array of the right width; InvalidData says expected vs given."""
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            given = X.shape[-1] if X.ndim else 0
            raise InvalidData(f"expected {self.n_features} features, got {given}")
        return X


class OnnxScorer(Scorer):
    runtime = "onnx"

    def __init__(self, onnx_bytes: bytes, task: str, n_features: int):
        import onnx
        import onnxruntime as ort

        model = onnx.load_from_string(bytes(onnx_bytes))
        meta = {p.key: p.value for p in model.metadata_props}
        self.task = task
        self.n_features = n_features
        classes = json.loads(meta.get("pgml.classes", "null"))
        self.classes = None if classes is None else np.asarray(classes, dtype=np.float64)
        self.has_proba = meta.get("pgml.has_proba") == "true"
        self._error_cols = np.asarray(json.loads(meta.get("pgml.error_columns", "[]")), dtype=np.int64)
        if meta.get("pgml.task", task) != task:
            raise PgmlError(f"the ONNX model is a {meta['pgml.task']} model, not {task}")
        wanted = providers()
        if any(node.domain == ML_DOMAIN for node in model.graph.node):
            wanted = [CPU]  # CUDA has no ai.onnx.ml kernels: the work would run on the CPU anyway
        options = _session_options()
        if CUDA in wanted:
            options.log_severity_level = 4  # a CUDA set-up that fails falls back quietly...
        self._session = ort.InferenceSession(
            bytes(onnx_bytes), sess_options=options, providers=wanted
        )
        self.providers = self._session.get_providers()  # ...and this says what it really got
        inputs = self._session.get_inputs()
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != n_features:
            raise PgmlError(f"the ONNX model takes {width} features, not {n_features}")
        self._input = inputs[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        self._predict_out = outputs[:1]
        self._proba_out = outputs[1:2]
        # The binding's run skips InferenceSession.run's per-call feed validation (about a
        # third of a single-row call); shapes are checked here instead. Same signature.
        self._run = getattr(self._session, "_sess", self._session).run
        self._row = np.empty((1, n_features), dtype=np.float32)
        self._row_shape = (n_features,)
        self._has_error_cols = bool(self._error_cols.size)
        self._feed = {self._input: self._row}
        self._run_options = ort.RunOptions()

    def predict(self, X: np.ndarray) -> np.ndarray:
        if type(X) is np.ndarray and X.shape == self._row_shape:
            self._row[0] = X  # single row: copied (and cast) into the reused float32 buffer
            feed = self._feed
        else:
            feed = {self._input: np.ascontiguousarray(self._rows(X), dtype=np.float32)}
        if self._has_error_cols:
            self._check_error_columns(feed[self._input])
        out = self._run(self._predict_out, feed, self._run_options)[0]
        if self.classes is not None:
            return self.classes[out.ravel()]
        if out.ndim == 1 or out.shape[1] == 1:
            return out.ravel().astype(np.float64)
        return out.astype(np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._proba_allowed()
        feed = {self._input: np.ascontiguousarray(self._rows(X), dtype=np.float32)}
        if self._has_error_cols:
            self._check_error_columns(feed[self._input])
        return self._run(self._proba_out, feed, self._run_options)[0].astype(np.float64)

    def _check_error_columns(self, X: np.ndarray) -> None:
        missing = np.isnan(X[:, self._error_cols]).any(axis=0)
        if missing.any():
            j = int(self._error_cols[np.argmax(missing)])
            raise InvalidData(
                f"feature #{j + 1} is NULL and its preprocess impute is 'error'; pass a value for it"
            )


class NativeScorer(Scorer):
    """The pickled scikit-learn Pipeline, for models ONNX cannot express (runtime 'python')."""

    runtime = "python"
    providers = ["python"]

    def __init__(self, native: bytes, task: str, n_features: int):
        self._model = pickle.loads(bytes(native))  # noqa: S301 - written by train() into pgml.models
        self.task = task
        self.n_features = n_features
        final = self._model[-1] if hasattr(self._model, "steps") else self._model
        classes = getattr(final, "classes_", None) if task == "classification" else None
        self.classes = None if classes is None else np.asarray(classes, dtype=np.float64)
        self.has_proba = task == "classification" and hasattr(self._model, "predict_proba")
        width = getattr(self._model, "n_features_in_", n_features)
        if width != n_features:
            raise PgmlError(f"the native model takes {width} features, not {n_features}")

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(self._model.predict(self._rows(X).astype(np.float64)), dtype=np.float64)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out.reshape(-1)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._proba_allowed()
        return np.asarray(self._model.predict_proba(self._rows(X).astype(np.float64)), dtype=np.float64)


def load_scorer(
    runtime: str, onnx: bytes | None, native: bytes | None, task: str, n_features: int
) -> Scorer:
    """A Scorer for a stored model: ONNX when the model's runtime is 'onnx', else native."""
    if runtime == "onnx":
        if not onnx:
            raise PgmlError("the model's runtime is onnx but it has no ONNX bytes; retrain it")
        return OnnxScorer(onnx, task, n_features)
    if runtime == "python":
        if not native:
            raise PgmlError("the model's runtime is python but it has no native model; retrain it")
        return NativeScorer(native, task, n_features)
    raise PgmlError(f"unknown runtime {runtime!r}; expected 'onnx' or 'python'")


def _session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: a backend must not write to the client's stderr
    return so
