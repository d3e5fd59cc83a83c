"""Scoring: an onnxruntime session (or the native estimator) behind one small interface.

This is the hot path of ``pgml.predict``: a PL/Python call per row. The ONNX scorer therefore
does its set-up once and per row does as little as Python allows: ``predict_one`` packs the
row's values (PL/Python hands over a list) straight into a preallocated float32 buffer with one
``struct`` call, runs the session through an IOBinding whose input and output are those
preallocated buffers (no feed dict, no OrtValue or output array created per call), and reads the
one result back through a memoryview. Measured inside a backend on the 2-core dev box, for a
100-tree XGBoost model on distinct rows: 5.1 us per row against 7.7 us for the general numpy
path, of which onnxruntime's per-call floor is ~1.3 us and the trees ~3 us (docs/pgml.md).

Sessions use one intra-op and one inter-op thread with spinning off: a database backend is one
process per connection, so threads would only fight each other and spin on idle cores. The one
exception is a large batch (``predict(X, threads=n)`` with at least PARALLEL_MIN_ROWS rows): it
is cut into ``n`` contiguous parts scored at once on the same session, the calling thread taking
one part and short-lived helper threads the others (onnxruntime releases the GIL while it runs).
The helpers are joined before ``predict`` returns, so no thread outlives the call; and every
part runs through the same single-thread kernel, so each row's answer is bit for bit the one
``predict_one`` gives (onnxruntime's own intra-op threads sum a tree ensemble in a different
order and differ in the last float32 bit).

Importing this module imports numpy and onnxruntime only; scikit-learn is loaded solely when
a native (pickled) model is scored.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import struct
import threading

import numpy as np

from inference.errors import InvalidData, PgmlError
from inference.rows import feature_rows

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ML_DOMAIN = "ai.onnx.ml"
# Below this many rows a batch runs on the single-thread session: waking other threads costs
# more than it saves on small batches, and a backend should stay one busy core where it can.
PARALLEL_MIN_ROWS = 10_000
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


def probe_providers(wanted: list[str]) -> list[str]:
    """The providers a plain (ai.onnx-only) session gets when it asks for ``wanted``.

    What pgml.runtime_info reports next to ``providers()``: asking is not getting (a broken
    CUDA set-up falls back to the CPU quietly), so a one-node graph is opened to find out.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=wanted)
    return session.get_providers()


def cuda_device_present() -> bool:
    """Whether this host has an NVIDIA device and driver (training's GPU test: devices.py)."""
    return _nvidia_gpu_present()


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

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """``threads``: how many threads a large batch may use (the ONNX runtime's only)."""
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_one(self, values) -> float:
        """The prediction for one row given as a sequence of numbers (None for NULL)."""
        return float(self.predict(np.array(values, dtype=np.float64))[0])

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
        return feature_rows(X, self.n_features)


class OnnxScorer(Scorer):
    runtime = "onnx"

    def __init__(self, onnx_bytes: bytes, task: str, n_features: int,
                 wanted: list[str] | None = None):
        import onnxruntime as ort

        onnx_bytes = bytes(onnx_bytes)
        wanted = list(wanted or providers())
        if ML_DOMAIN.encode() in onnx_bytes:  # the opset import of an ai.onnx.ml graph
            wanted = [CPU]  # CUDA has no ai.onnx.ml kernels: the work would run on the CPU anyway
        options = _session_options()
        if CUDA in wanted:
            options.log_severity_level = 4  # a CUDA set-up that fails falls back quietly...
        self._session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=wanted)
        # The metadata through the session, not the onnx package: importing onnx costs a
        # brand-new backend hundreds of milliseconds on its first predict (#1175).
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.task = task
        self.n_features = n_features
        classes = json.loads(meta.get("pgml.classes", "null"))
        self.classes = None if classes is None else np.asarray(classes, dtype=np.float64)
        self.has_proba = meta.get("pgml.has_proba") == "true"
        self.feature_names = json.loads(meta.get("pgml.feature_names", "null"))
        self.graph = meta.get("pgml.graph", "default")
        self._error_cols = np.asarray(json.loads(meta.get("pgml.error_columns", "[]")), dtype=np.int64)
        if meta.get("pgml.task", task) != task:
            raise PgmlError(f"the ONNX model is a {meta['pgml.task']} model, not {task}")
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
        self._run = _raw(self._session).run
        self._row = np.empty((1, n_features), dtype=np.float32)
        self._row_shape = (n_features,)
        self._has_error_cols = bool(self._error_cols.size)
        self._feed = {self._input: self._row}
        self._run_options = ort.RunOptions()
        self._pack = None  # predict_one's fast path, where this model allows it
        if not self._has_error_cols:
            self._bind_one_row(ort)

    def _bind_one_row(self, ort) -> None:
        """Set up predict_one: input and output bound once to preallocated buffers.

        Only for graphs whose first output is one number per row (regression with one target,
        or a class index); joint models and unusual output types keep the general path. The
        fast path is checked against the general one on a row before it is trusted.
        """
        out = self._session.get_outputs()[0]
        dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                 "tensor(int64)": np.int64}.get(out.type)
        per_row = list(out.shape)[1:]  # symbolic dimensions are names or None: != 1 too
        if dtype is None or any(d != 1 for d in per_row):
            return
        result = np.zeros([1] * (1 + len(per_row)), dtype=dtype)
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input, ort.OrtValue.ortvalue_from_numpy(self._row))
        binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy(result))
        raw = getattr(binding, "_iobinding", None)
        session = _raw(self._session)
        if raw is not None and hasattr(session, "run_with_iobinding"):
            run, bound = session.run_with_iobinding, raw
        else:  # pragma: no cover - onnxruntime without the private layer
            run, bound = self._session.run_with_iobinding, binding
        self._keep = (result, binding)  # the buffers and binding must live as long as the scorer
        self._in_bytes = memoryview(self._row).cast("B")
        self._out = memoryview(result).cast("B").cast(np.dtype(dtype).char)
        self._labels = None if self.classes is None else self.classes.tolist()
        self._bound_run, self._binding = run, bound
        self._pack = struct.Struct(f"{self.n_features}f").pack_into
        probes = np.linspace(-1.0, 1.0, self.n_features), np.linspace(2.0, -2.0, self.n_features)
        for probe in probes:
            try:
                fast, general = self.predict_one(probe.tolist()), float(self.predict(probe)[0])
            except Exception:  # noqa: BLE001 - any failure means: keep the general path
                fast, general = 0.0, 1.0
            if not (fast == general or (fast != fast and general != general)):  # NaN == NaN here
                self._pack = None
                return

    def predict_one(self, values) -> float:
        pack = self._pack
        if pack is not None:
            try:
                pack(self._in_bytes, 0, *values)
            except (struct.error, TypeError):
                pass  # a NULL element, a wrong count, nested lists: the general path says what
            else:
                self._bound_run(self._binding, self._run_options)
                value = self._out[0]
                return self._labels[value] if self._labels is not None else float(value)
        return float(self.predict(np.array(values, dtype=np.float64))[0])

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """Scores ``X``; a batch of at least PARALLEL_MIN_ROWS rows uses ``threads`` threads."""
        if type(X) is np.ndarray and X.shape == self._row_shape:
            self._row[0] = X  # single row: copied (and cast) into the reused float32 buffer
            feed = self._feed
            run = self._run
        else:
            rows = np.ascontiguousarray(self._rows(X), dtype=np.float32)
            feed = {self._input: rows}
            run = self._run
            if threads > 1 and len(rows) >= PARALLEL_MIN_ROWS:
                run = functools.partial(self._run_split, threads=min(threads, usable_cores()))
        if self._has_error_cols:
            self._check_error_columns(feed[self._input])
        out = run(self._predict_out, feed, self._run_options)[0]
        if self.classes is not None:
            return self.classes[out.ravel()]
        if out.ndim == 1 or out.shape[1] == 1:
            return out.ravel().astype(np.float64)
        return out.astype(np.float64)

    def _run_split(self, names, feed, options, threads: int):
        """``self._run`` on ``threads`` parts of the rows at once (see the module docstring)."""
        parts = np.array_split(feed[self._input], threads)
        results: list = [None] * len(parts)
        errors: list[BaseException] = []

        def score(i: int) -> None:
            try:
                results[i] = self._run(names, {self._input: parts[i]}, options)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)

        helpers = [threading.Thread(target=score, args=(i,), daemon=True)
                   for i in range(1, len(parts))]
        for helper in helpers:
            helper.start()
        score(0)
        for helper in helpers:
            helper.join()
        if errors:
            raise errors[0]
        return [np.concatenate([r[k] for r in results]) for k in range(len(names))]

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


def _raw(session):
    """The session's binding layer (skips the Python wrapper's per-call checks) where present."""
    return getattr(session, "_sess", session)


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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
