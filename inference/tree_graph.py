"""Tree ensembles as tensor graphs: default-domain ONNX operators only, so CUDA can run them.

onnxruntime's CUDA provider has no kernels for ``ai.onnx.ml`` (TreeEnsemble*), so the graphs
onnx_export writes run on the CPU whatever the hardware. This module writes a second graph for
tree models from their fitted structure (tree_graph_models.Ensemble) with Gather, MatMul,
comparisons and Where only -- the "tensor graph" -- in one of two formulations:

* ``gemm`` (shallow trees, max depth <= GEMM_MAX_DEPTH): per tree, the split decisions of all
  internal nodes at once, then two batched MatMuls pick the leaf (Hummingbird's GEMM strategy):
  ``S = cmp @ C`` with ``C[i, l] = +1/-1`` when leaf ``l`` lies left/right under node ``i``;
  the reached leaf is the one with ``S == D`` (``D`` = its count of left turns); its value by
  a one-hot MatMul. Work grows with 2^depth, hence only for shallow trees.
* ``traversal`` (deeper trees): all trees walk down together, one unrolled step per level:
  ``idx = left[idx] + (x[feature[idx]] > threshold[idx])`` with the nodes renumbered so that
  every right child sits next to its left one; a leaf points to itself with threshold +inf.

Both compare ``x <= threshold`` in float32 with thresholds made exact for float32 input
(tree_graph_models explains), and send NaN where the native model does -- or skip that work
when the graph's own imputation leaves no NaN. The graph has the interface of the default
graph (input ``features``; ``variable``, or ``label`` + ``probabilities``; the same ``pgml.*``
metadata plus ``pgml.graph = tensor`` and ``pgml.tree_formulation``), so OnnxScorer loads it
unchanged, and it includes the preprocessing (``Where(IsNaN)``, ``Sub``, ``Mul``).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.errors import NotExportable
from inference.onnx_export import stamp
from inference.parity import TREE_RTOL, tree_parity
from inference.tree_graph_models import Ensemble, Tree, ensemble_of

OPSET = 17
GEMM_MAX_DEPTH = 4  # measured: above it the 2^depth leaf matrices cost more than a traversal
FORMULATIONS = ("gemm", "traversal")


# The registry's tree algorithms (algorithms.py); the contract test checks this list against it.
TREE_ALGORITHMS = ("random_forest", "extra_trees", "bagging", "ada_boost",
                   "gradient_boosting_trees", "hist_gradient_boosting", "xgboost",
                   "xgboost_random_forest", "lightgbm")
# Parity of the tensor graph with the native model, relative to max(1, |prediction|); both
# sides see the same float32 features (the graph's input type), so only the float32 sum of
# the leaf values differs from the native float64 one.
RTOL = TREE_RTOL


def checked(pipeline, X_test: np.ndarray, *, task: str, classes: list | None, has_proba: bool,
            error_columns: list[int], feature_names: list[str], ens: Ensemble | None = None,
            native: tuple | None = None) -> tuple[bytes | None, dict]:
    """(tensor graph or None, parity record): built, scored on ``X_test`` and compared.

    The record says ``ok``, ``max_rel_diff`` (regression, probabilities), ``label_mismatches``,
    the formulation, or ``reason`` when there is no graph. A graph that fails parity is dropped.
    ``ens`` and ``native`` (compiled_trees.native_on of ``X_test``): where the caller has them.
    """
    from inference.runtime import OnnxScorer, usable_cores

    n_features = len(feature_names)
    try:
        data = tensor_graph(pipeline, task=task, n_features=n_features, classes=classes,
                            has_proba=has_proba, error_columns=error_columns,
                            feature_names=feature_names, ens=ens)
    except NotExportable as exc:
        return None, {"ok": False, "reason": str(exc)}
    X = np.asarray(X_test, dtype=np.float32).astype(np.float64)
    scorer = OnnxScorer(data, task, n_features)
    if native is None:
        native = (np.asarray(pipeline.predict(X), dtype=np.float64),
                  pipeline.predict_proba(X) if task == "classification" else None)
    native, native_proba = native
    # on every core (pgml.train's fit used them all): the tensor graph is the slow CPU path,
    # ~0.23 s for the 20k-row sample on one; each row's answer is the one-thread answer
    graph = scorer.predict(X, threads=usable_cores())
    if task == "classification":
        record = tree_parity(native_proba, scorer.predict_proba(X), native != graph, native_proba)
    else:
        record = tree_parity(native, graph)
    if not record["ok"]:
        record["reason"] = "tensor graph differs from the native model"
        return None, record
    return data, record


def for_training(result, task: str, feature_names: list[str], X_test: np.ndarray,
                 random_state: int, native: tuple | None = None) -> bytes | None:
    """The tensor graph pgml.train stores beside the default one (tree models only), or None.

    Checked like the default graph, on the same fixed sample of the test split
    (parity.sample_rows); the record travels in the graph's ``pgml.parity`` property. Only
    served models get one (runtime 'onnx': the default graph passed its own parity), and only
    where it can score (``built_at_training``); elsewhere pgml.export_onnx builds it on demand
    (tree_graph_on_demand.py).
    """
    from inference import parity

    if result.runtime != "onnx" or not built_at_training():
        return None
    spec, _ = unwrap(result.estimator)
    rows = parity.sample_rows(len(X_test), random_state)
    X = X_test if rows is None else X_test[rows]
    error_columns = [j for j, c in enumerate((spec or {}).get("columns", []))
                     if c["impute"] == "error"]
    if error_columns:
        X = X[~np.isnan(X[:, error_columns]).any(axis=1)]
        native = None  # answers on the whole sample: not these rows
    pending = getattr(result, "compiled", None)  # training.train built the Ensemble already
    data, record = checked(result.estimator, X, task=task, classes=result.classes,
                           has_proba=task == "classification", error_columns=error_columns,
                           feature_names=feature_names,
                           ens=None if pending is None else pending.ensemble, native=native)
    if data is None:
        return None
    model = onnx.load_from_string(data)
    entry = model.metadata_props.add()
    entry.key, entry.value = "pgml.parity", json.dumps(record)
    return model.SerializeToString()


def built_at_training() -> bool:
    """Whether pgml.train builds the tensor graph: only on a host with a CUDA device, the one
    place it scores (routing.choose_graph: on the CPU the compiled trees and the TreeEnsemble
    graph win at every batch size). Elsewhere it cost 0.12-0.13 s of a 1M-row XGBoost train
    for nothing but pgml.export_onnx(..., 'tensor'), which now builds it on demand."""
    from inference.runtime import cuda_device_present

    return cuda_device_present()


def unwrap(pipeline):
    """(Preprocessor spec or None, the fitted estimator on class indexes) of a pipeline."""
    steps = [s for _, s in pipeline.steps] if hasattr(pipeline, "steps") else [pipeline]
    spec = getattr(steps[0], "spec", None) if len(steps) > 1 else None
    final = steps[-1]
    if type(final).__name__ == "LabelEncodedClassifier":
        final = final.estimator_
    return spec, final


def tensor_graph(pipeline, *, task: str, n_features: int, classes: list | None,
                 has_proba: bool, error_columns: list[int], feature_names: list[str],
                 formulation: str | None = None, ens: Ensemble | None = None) -> bytes:
    """The tensor graph's ONNX bytes; NotExportable when the model is not a tree ensemble.
    ``ens``: the pipeline's Ensemble, where the caller has built it already."""
    spec, final = unwrap(pipeline)
    n_classes = None if task != "classification" else len(classes)
    if ens is None:
        ens = ensemble_of(final, n_features, n_classes)
    if n_classes is not None and ens.post == "identity":
        raise NotExportable(f"{type(final).__name__} gives no class scores")
    formulation = formulation or ("gemm" if ens.max_depth() <= GEMM_MAX_DEPTH else "traversal")
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}")
    b = _Builder()
    x = "features"
    nan_possible = True
    if spec is not None:
        from inference.preprocess import arrays

        fill, offset, factor, _ = arrays(spec)
        x = b.node("Where", [b.node("IsNaN", [x]), b.const(fill, np.float32), x])
        if not (np.all(offset == 0) and np.all(factor == 1)):
            x = b.node("Mul", [b.node("Sub", [x, b.const(offset, np.float32)]),
                               b.const(factor, np.float32)])
        nan_possible = not np.all(np.isfinite(fill))  # 'error' columns: refused before the graph
    per_tree = _gemm(b, ens, x, nan_possible) if formulation == "gemm" else \
        _traversal(b, ens, x, nan_possible)  # [N, T, K]
    outputs = _finish(b, ens, per_tree, task, n_classes)
    graph = helper.make_graph(
        b.nodes, "pgml_tensor_trees",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pgml-replica")
    model.ir_version = min(model.ir_version, 9)
    return stamp(model, task=task, classes=classes, has_proba=has_proba,
                 error_columns=error_columns, feature_names=feature_names,
                 **{"pgml.graph": "tensor", "pgml.tree_formulation": formulation,
                    "pgml.trees": str(len(ens.trees)), "pgml.max_depth": str(ens.max_depth()),
                    "pgml.imputation": "graph"})


class _Builder:
    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, hint: str = "t") -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, values, dtype) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.name(op), **attrs))
        return output


def _decide(b: _Builder, xs: str, thr: str, miss: str | None, right: bool) -> str:
    """Bool: go right (``right``) or go left, NaN taking the ``miss`` branch where it can occur."""
    cmp = b.node("Greater" if right else "LessOrEqual", [xs, thr])
    if miss is None:
        return cmp
    # A comparison with NaN is false, so Or-ing in "NaN and its branch" is exact (and ORT has
    # no Where kernel for bool values).
    return b.node("Or", [cmp, b.node("And", [b.node("IsNaN", [xs]), miss])])


# -- GEMM ---------------------------------------------------------------------------------


def _gemm(b: _Builder, ens: Ensemble, x: str, nan_possible: bool) -> str:
    T, K = len(ens.trees), ens.n_outputs
    layouts = [_paths(t) for t in ens.trees]
    n_int = max(1, max(len(inner) for inner, _, _ in layouts))
    n_leaf = max(len(leaves) for _, leaves, _ in layouts)
    feat = np.zeros((T, n_int), dtype=np.int64)
    thr = np.full((T, n_int), np.inf, dtype=np.float32)
    miss = np.ones((T, n_int), dtype=bool)
    C = np.zeros((T, n_int, n_leaf), dtype=np.float32)
    D = np.full((T, 1, n_leaf), -1.0, dtype=np.float32)
    E = np.zeros((T, n_leaf, K), dtype=np.float32)
    for j, (t, (inner, leaves, turns)) in enumerate(zip(ens.trees, layouts, strict=True)):
        feat[j, : len(inner)] = t.feature[inner]
        thr[j, : len(inner)] = t.threshold[inner]
        miss[j, : len(inner)] = t.missing_left[inner]
        position = {node: i for i, node in enumerate(inner)}
        for li, leaf in enumerate(leaves):
            D[j, 0, li] = sum(1 for _, went_left in turns[leaf] if went_left)
            for node, went_left in turns[leaf]:
                C[j, position[node], li] = 1.0 if went_left else -1.0
            E[j, li] = t.value[leaf]
    xs = b.node("Gather", [x, b.const(feat.reshape(-1), np.int64)], axis=1)  # [N, T*I]
    left = _decide(b, xs, b.const(thr.reshape(-1), np.float32),
                   b.const(miss.reshape(-1), bool) if nan_possible else None, right=False)
    left = b.node("Cast", [left], to=TensorProto.FLOAT)
    left = b.node("Reshape", [left, b.const([0, T, n_int], np.int64)])
    left = b.node("Transpose", [left], perm=[1, 0, 2])  # [T, N, I]
    score = b.node("MatMul", [left, b.const(C, np.float32)])  # [T, N, L]
    reached = b.node("Cast", [b.node("Equal", [score, b.const(D, np.float32)])],
                     to=TensorProto.FLOAT)
    values = b.node("MatMul", [reached, b.const(E, np.float32)])  # [T, N, K]
    return b.node("Transpose", [values], perm=[1, 0, 2])  # [N, T, K]


def _paths(t: Tree):
    """(internal nodes, leaves, leaf -> [(ancestor, went left)]) of one tree."""
    inner, leaves, turns = [], [], {}
    stack = [(0, [])]
    while stack:
        i, path = stack.pop()
        if t.left[i] < 0:
            leaves.append(i)
            turns[i] = path
            continue
        inner.append(i)
        stack.append((int(t.right[i]), [*path, (i, False)]))
        stack.append((int(t.left[i]), [*path, (i, True)]))
    return inner, leaves, turns


# -- traversal ----------------------------------------------------------------------------


def _traversal(b: _Builder, ens: Ensemble, x: str, nan_possible: bool) -> str:
    feat, thr, left, miss_right, value, roots = _flatten(ens)
    depth = ens.max_depth()
    c_feat, c_thr = b.const(feat, np.int64), b.const(thr, np.float32)
    c_left = b.const(left, np.int64)
    c_miss = b.const(miss_right, bool) if nan_possible else None
    # Level 0 is the same for every row: its gathers are constants.
    xs = b.node("Gather", [x, b.const(feat[roots], np.int64)], axis=1)  # [N, T]
    miss0 = b.const(miss_right[roots], bool) if nan_possible else None
    go = _decide(b, xs, b.const(thr[roots], np.float32), miss0, right=True)
    idx = b.node("Add", [b.const(left[roots], np.int64),
                         b.node("Cast", [go], to=TensorProto.INT64)])
    for _ in range(1, depth):
        xs = b.node("GatherElements", [x, b.node("Gather", [c_feat, idx])], axis=1)
        miss = b.node("Gather", [c_miss, idx]) if c_miss is not None else None
        go = _decide(b, xs, b.node("Gather", [c_thr, idx]), miss, right=True)
        idx = b.node("Add", [b.node("Gather", [c_left, idx]),
                             b.node("Cast", [go], to=TensorProto.INT64)])
    if depth == 0:
        idx = b.node("Expand", [b.const(roots, np.int64),
                                b.node("Concat", [b.node("Slice", [b.node("Shape", [x]),
                                                                   b.const([0], np.int64),
                                                                   b.const([1], np.int64)]),
                                                  b.const([len(roots)], np.int64)], axis=0)])
    return b.node("Gather", [b.const(value, np.float32), idx])  # [N, T, K]


def _flatten(ens: Ensemble):
    """All trees' nodes in one table, each right child right after its left sibling.

    A leaf's ``left`` is itself and its threshold +inf (never NaN after the go-right test as
    the graph writes it), so extra steps below a shallow leaf stay on it.
    """
    feat, thr, left, miss_right, value, roots = [], [], [], [], [], []
    for t in ens.trees:
        base = len(feat)
        order, new = [0], {0: 0}
        k = 0
        while k < len(order):  # breadth first, children appended as a pair
            i = order[k]
            if t.left[i] >= 0:
                new[int(t.left[i])] = len(order)
                order.append(int(t.left[i]))
                new[int(t.right[i])] = len(order)
                order.append(int(t.right[i]))
            k += 1
        for i in order:
            is_leaf = t.left[i] < 0
            feat.append(0 if is_leaf else int(t.feature[i]))
            thr.append(np.inf if is_leaf else t.threshold[i])
            left.append(base + (new[i] if is_leaf else new[int(t.left[i])]))
            miss_right.append(False if is_leaf else not bool(t.missing_left[i]))
            value.append(t.value[i])
        roots.append(base)
    return (np.asarray(feat, dtype=np.int64), np.asarray(thr, dtype=np.float32),
            np.asarray(left, dtype=np.int64), np.asarray(miss_right, dtype=bool),
            np.asarray(value, dtype=np.float32), np.asarray(roots, dtype=np.int64))


# -- outputs ------------------------------------------------------------------------------


def _finish(b: _Builder, ens: Ensemble, per_tree: str, task: str, n_classes: int | None):
    K = ens.n_outputs
    if ens.post == "median":
        out = _weighted_median(b, ens, per_tree)
        return [_output(b, out, "variable", TensorProto.FLOAT, [None, 1])]
    raw = b.node("ReduceSum", [per_tree, b.const([1], np.int64)], keepdims=0)  # [N, K]
    if np.any(ens.base != 0):
        raw = b.node("Add", [raw, b.const(ens.base, np.float32)])
    if ens.post_scale != 1.0:
        raw = b.node("Mul", [raw, b.const([ens.post_scale], np.float32)])
    if task != "classification":
        if ens.post == "exp":
            raw = b.node("Exp", [raw])
        elif ens.post == "sigmoid":
            raw = b.node("Sigmoid", [raw])
        return [_output(b, raw, "variable", TensorProto.FLOAT, [None, K])]
    if ens.post == "sigmoid":
        p = b.node("Sigmoid", [raw])
        proba = b.node("Concat", [b.node("Sub", [b.const([1.0], np.float32), p]), p], axis=1)
        label = b.node("Cast", [b.node("Greater", [raw, b.const([0.0], np.float32)])],
                       to=TensorProto.INT64)
        label = b.node("Reshape", [label, b.const([-1], np.int64)])
    else:
        proba = b.node("Softmax", [raw], axis=1) if ens.post == "softmax" else raw
        label = b.node("ArgMax", [raw], axis=1, keepdims=0)
    return [_output(b, label, "label", TensorProto.INT64, [None]),
            _output(b, proba, "probabilities", TensorProto.FLOAT, [None, n_classes])]


def _weighted_median(b: _Builder, ens: Ensemble, per_tree: str) -> str:
    """AdaBoostRegressor: the answer of the tree where the weight CDF first reaches half.

    As scikit-learn: sort the trees' answers, cumulate their weights in that order (float64),
    take the first position whose cumulative weight is >= half the total.
    """
    T = len(ens.trees)
    preds = b.node("Squeeze", [per_tree, b.const([2], np.int64)])  # [N, T]
    order = b.name("order")
    b.nodes.append(helper.make_node("TopK", [preds, b.const([T], np.int64)],
                                    [b.name("sorted"), order], name=b.name("TopK"),
                                    axis=1, largest=0, sorted=1))
    weights = b.node("Gather", [b.const(ens.weights, np.float64), order])  # [N, T]
    cdf = b.node("CumSum", [weights, b.const(1, np.int64)])
    total = b.node("Gather", [cdf, b.const([T - 1], np.int64)], axis=1)  # [N, 1]
    half = b.node("Mul", [total, b.const([0.5], np.float64)])
    above = b.node("Cast", [b.node("GreaterOrEqual", [cdf, half])], to=TensorProto.FLOAT)
    first = b.node("ArgMax", [above], axis=1, keepdims=1)  # [N, 1]
    tree = b.node("GatherElements", [order, first], axis=1)
    return b.node("GatherElements", [preds, tree], axis=1)  # [N, 1]


def _output(b: _Builder, value: str, name: str, dtype, shape):
    b.node("Identity", [value], name)
    return helper.make_tensor_value_info(name, dtype, shape)
