"""Which scorer scores a stored model: its ONNX graph, the pickled estimator for models ONNX
cannot express, and - with a CUDA device - the tensor graph for large batches. (Tree models'
compiled trees, which score rows ahead of all of these, load from compiled_scorer.py without
this module: deployed.loaded tries them first.)

Why apart from runtime.py: runtime.py is the per-row hot path (one onnxruntime session, its
buffers); the choice between graphs and runtimes is made once per model load here.
"""

from __future__ import annotations

import pickle

import numpy as np

from inference import runtime as sessions
from inference.errors import PgmlError
from inference.runtime import CPU, CUDA, OnnxScorer, Scorer

# Batches from this many rows go to the tensor graph on CUDA (choose_graph). Not measured on a
# device yet (none was lent to the task that wrote it): benchmarks/gpu.py measures the
# crossover; 10,000 rows is where a launch-bound GPU call is safely amortised.
GPU_MIN_ROWS = 10_000



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
        spec = getattr(self._model[0], "spec", None) if hasattr(self._model, "steps") else None
        self.feature_names = None if spec is None else [c["name"] for c in spec["columns"]]
        self.graph = "native"
        width = getattr(self._model, "n_features_in_", n_features)
        if width != n_features:
            raise PgmlError(f"the native model takes {width} features, not {n_features}")

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        out = np.asarray(self._model.predict(self._rows(X).astype(np.float64)), dtype=np.float64)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out.reshape(-1)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._proba_allowed()
        return np.asarray(self._model.predict_proba(self._rows(X).astype(np.float64)), dtype=np.float64)


def choose_graph(n_rows: int, cuda: bool, has_tensor: bool) -> str:
    """Which graph scores a batch of ``n_rows``: 'default' (TreeEnsemble / skl2onnx, CPU) or
    'tensor' (tree_graph's default-domain graph, on CUDA).

    Measured (docs/benchmarks.md, scoring): on the CPU the TreeEnsemble graph is 4-10x faster
    than either tensor formulation at every batch size from 1 row to 100k rows, so without a
    GPU the default graph scores everything. With CUDA, the tensor graph takes batches of at
    least GPU_MIN_ROWS rows; single rows and small batches stay on the CPU, where a GPU call's
    fixed cost (launches, copies) would dominate.
    """
    return "tensor" if cuda and has_tensor and n_rows >= GPU_MIN_ROWS else "default"


class RoutedScorer(Scorer):
    """The default graph on the CPU plus the tensor graph on CUDA, chosen per call by size.

    ``predict_one`` is always the default graph's fast path; ``predict``/``predict_proba``
    route by ``choose_graph``; ``last_graph`` says which graph scored the latest batch.
    """

    runtime = "onnx"

    def __init__(self, default: OnnxScorer, tensor: OnnxScorer):
        self.default, self.tensor = default, tensor
        self.task, self.n_features = default.task, default.n_features
        self.classes, self.has_proba = default.classes, default.has_proba
        self.feature_names = default.feature_names
        self.cuda = CUDA in tensor.providers
        self.providers = list(dict.fromkeys(tensor.providers + default.providers))
        self.graph = "routed"
        self.last_graph = "default"
        self.predict_one = default.predict_one

    def _pick(self, X) -> OnnxScorer:
        n = len(X) if getattr(X, "ndim", 1) == 2 else 1
        self.last_graph = choose_graph(n, self.cuda, True)
        return self.tensor if self.last_graph == "tensor" else self.default

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        return self._pick(X).predict(X, threads)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._pick(X).predict_proba(X)


def load_scorer(
    runtime: str, onnx: bytes | None, native: bytes | None, task: str, n_features: int,
    tensor: bytes | None = None,
) -> Scorer:
    """A Scorer for a stored model: ONNX when the model's runtime is 'onnx', else native.

    With a tensor graph (tree models) and a CUDA device, a RoutedScorer that sends large
    batches to the tensor graph on the GPU; without a device the tensor graph is not loaded.
    """
    if runtime == "onnx":
        if not onnx:
            raise PgmlError("the model's runtime is onnx but it has no ONNX bytes; retrain it")
        default = OnnxScorer(onnx, task, n_features)
        if tensor and CUDA in sessions.providers():  # at call time: tests patch it
            routed = OnnxScorer(tensor, task, n_features, wanted=[CUDA, CPU])
            if CUDA in routed.providers:  # asked is not got: a broken CUDA set-up stays on CPU
                return RoutedScorer(default, routed)
        return default
    if runtime == "python":
        if not native:
            raise PgmlError("the model's runtime is python but it has no native model; retrain it")
        return NativeScorer(native, task, n_features)
    raise PgmlError(f"unknown runtime {runtime!r}; expected 'onnx' or 'python'")
