"""Fitted tree models into one neutral form: ``Ensemble`` (trees of flat arrays + how to finish).

tree_graph.py turns an Ensemble into an ONNX graph of default-domain operators; this module is
the only place that knows each library's tree layout:

* scikit-learn: ``tree_`` arrays (DecisionTree*, RandomForest*, ExtraTrees*, Bagging* with its
  feature subsets, AdaBoost* (classifier: SAMME votes; regressor: weighted median),
  GradientBoosting* (``_raw_predict_init`` + learning rate), HistGradientBoosting*
  (``_predictors`` node records, ``_baseline_prediction``)), MultiOutputRegressor around any
  of them;
* XGBoost: the booster's own JSON model (``save_raw('json')``) -- thresholds and leaf values
  exactly as the booster stores them (float32);
* LightGBM: ``booster_.dump_model()``.

Comparisons. Every split becomes ``x <= threshold`` on float32 input, with the threshold a
float32 chosen so the float32 comparison decides exactly as the native library does:
scikit-learn and LightGBM compare ``x <= t`` against a float64 threshold, which for a float32
``x`` is the same as ``x <= t'`` with ``t'`` the largest float32 not above ``t``; XGBoost
compares ``x < t`` in float32, which is ``x <= nextafter(t, -inf)``. Missing values (NaN) take
the branch the library sends them to (``missing_left``).

The base score is what the trees' sum starts from (per output); ``post`` says how the sum
becomes the answer: ``identity``, ``exp``, ``sigmoid`` (binary: [1-p, p]), ``softmax``,
``proba`` (the sum already is the class probabilities) or ``median`` (AdaBoostRegressor's
weighted median of the trees' answers, with per-tree ``weights``).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field

import numpy as np

from inference.errors import NotExportable

F32 = np.float32


@dataclass
class Tree:
    """One tree as flat arrays; node 0 is the root; a leaf has left == right == -1."""

    feature: np.ndarray  # int64 [M]
    threshold: np.ndarray  # float32 [M]: go left when x <= threshold
    left: np.ndarray  # int64 [M]
    right: np.ndarray  # int64 [M]
    missing_left: np.ndarray  # bool [M]: where NaN goes
    value: np.ndarray  # float64 [M, K]: the leaf's contribution to each output

    def depth(self) -> int:
        """Edges on the longest root-to-leaf path; walked once per tree (a tree's arrays are
        not changed after it is built), as the tensor graph and the C source ask it often."""
        found = self.__dict__.get("_depth")
        if found is not None:
            return found
        deepest, stack = 0, [(0, 0)]
        left, right = self.left.tolist(), self.right.tolist()
        while stack:
            i, d = stack.pop()
            if left[i] >= 0:
                stack.extend(((left[i], d + 1), (right[i], d + 1)))
            else:
                deepest = max(deepest, d)
        self.__dict__["_depth"] = deepest
        return deepest


@dataclass
class Ensemble:
    trees: list[Tree]
    n_outputs: int
    base: np.ndarray  # float64 [K]
    post: str = "identity"
    post_scale: float = 1.0  # multiplies the sum before post (softmax temperature, sigmoid's)
    weights: np.ndarray | None = None  # per tree, for post == "median"
    notes: dict = field(default_factory=dict)

    def max_depth(self) -> int:
        return max((t.depth() for t in self.trees), default=0)

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """Leaf index per row and tree [N, T] (numpy reference of the graph's traversal)."""
        X = np.asarray(X, dtype=F32)
        out = np.empty((len(X), len(self.trees)), dtype=np.int64)
        rows = np.arange(len(X))
        for j, t in enumerate(self.trees):
            idx = np.zeros(len(X), dtype=np.int64)
            for _ in range(t.depth()):
                x = X[rows, t.feature[idx]]
                go_left = np.where(np.isnan(x), t.missing_left[idx], x <= t.threshold[idx])
                nxt = np.where(go_left, t.left[idx], t.right[idx])
                idx = np.where(nxt >= 0, nxt, idx)
            out[:, j] = idx
        return out

    def raw(self, X: np.ndarray) -> np.ndarray:
        """base + sum of the trees' leaf values, float64 [N, K] (before ``post``)."""
        leaves = self.leaves(X)
        total = np.tile(self.base, (len(leaves), 1))
        for j, t in enumerate(self.trees):
            total += t.value[leaves[:, j]]
        return total


def _round_down(t: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold: x32 <= t64 iff x32 <= this."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, then stepped back below
        t32 = t.astype(F32)
    above = t32.astype(np.float64) > t
    t32[above] = np.nextafter(t32[above], F32(-np.inf))
    return t32


# -- scikit-learn ----------------------------------------------------------------------------


def _sk_tree(est, values: np.ndarray, features: np.ndarray | None = None) -> Tree:
    """A scikit-learn ``tree_`` with the given per-node values [M, K]."""
    t = est.tree_
    left = t.children_left.astype(np.int64)
    feature = np.where(left >= 0, t.feature, 0).astype(np.int64)
    if features is not None:
        feature = np.asarray(features, dtype=np.int64)[feature]
    missing = getattr(t, "missing_go_to_left", None)
    if missing is None:
        missing = np.zeros(len(left), dtype=bool)
    # scikit-learn sends NaN to the child with more samples when training saw none; the
    # fitted missing_go_to_left records that decision per node.
    return Tree(feature, _round_down(np.where(left >= 0, t.threshold, np.inf)), left,
                t.children_right.astype(np.int64), np.asarray(missing, dtype=bool),
                np.asarray(values, dtype=np.float64))


def _sk_proba_values(est, n_classes: int) -> np.ndarray:
    """Leaf class probabilities [M, n_classes], classes placed by the tree's ``classes_``."""
    v = est.tree_.value[:, 0, :].astype(np.float64)
    v = v / np.maximum(v.sum(axis=1, keepdims=True), 1e-300)
    out = np.zeros((len(v), n_classes))
    cols = np.asarray(getattr(est, "classes_", np.arange(v.shape[1])), dtype=np.int64)
    out[:, cols] = v
    return out


def _forest(model, n_classes: int | None, features_of=None) -> Ensemble:
    """Average of trees (RandomForest, ExtraTrees, Bagging): regression values or probabilities."""
    estimators = list(model.estimators_)
    trees = []
    for i, est in enumerate(estimators):
        feats = None if features_of is None else features_of[i]
        if not hasattr(est, "tree_"):
            raise NotExportable(f"{type(est).__name__} inside {type(model).__name__} is not a tree")
        if n_classes is None:
            vals = est.tree_.value[:, :, 0].astype(np.float64)
        else:
            vals = _sk_proba_values(est, n_classes)
        trees.append(_sk_tree(est, vals / len(estimators), feats))
    k = n_classes if n_classes is not None else trees[0].value.shape[1]
    return Ensemble(trees, k, np.zeros(k), "identity" if n_classes is None else "proba")


def _gradient_boosting(model, n_features: int, classifier: bool) -> Ensemble:
    base = np.asarray(model._raw_predict_init(np.zeros((1, n_features))), dtype=np.float64)[0]
    lr = float(model.learning_rate)
    k = model.estimators_.shape[1]
    trees = []
    for stage in model.estimators_:
        for j, est in enumerate(stage):
            vals = np.zeros((est.tree_.node_count, k))
            vals[:, j] = est.tree_.value[:, 0, 0] * lr
            trees.append(_sk_tree(est, vals))
    if not classifier:
        return Ensemble(trees, k, base)
    return Ensemble(trees, k, base, "sigmoid" if k == 1 else "softmax")


def _hist_gradient_boosting(model, classifier: bool) -> Ensemble:
    if getattr(model, "_preprocessor", None) is not None or getattr(model, "is_categorical_", None) is not None:
        raise NotExportable("HistGradientBoosting with categorical features has no tensor graph")
    base = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    k = len(base)
    trees = []
    for iteration in model._predictors:
        for j, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise NotExportable("HistGradientBoosting categorical splits have no tensor graph")
            leaf = nodes["is_leaf"].astype(bool)
            left = np.where(leaf, -1, nodes["left"].astype(np.int64))
            right = np.where(leaf, -1, nodes["right"].astype(np.int64))
            vals = np.zeros((len(nodes), k))
            vals[:, j] = nodes["value"]
            trees.append(Tree(np.where(leaf, 0, nodes["feature_idx"].astype(np.int64)),
                              _round_down(np.where(leaf, np.inf, nodes["num_threshold"])),
                              left, right, nodes["missing_go_to_left"].astype(bool), vals))
    if not classifier:
        return Ensemble(trees, k, base)
    return Ensemble(trees, k, base, "sigmoid" if k == 1 else "softmax")


def _ada_boost(model, n_classes: int | None) -> Ensemble:
    estimators = list(model.estimators_)
    weights = np.asarray(model.estimator_weights_[: len(estimators)], dtype=np.float64)
    if n_classes is None:  # weighted median of the trees' answers
        trees = [_sk_tree(e, e.tree_.value[:, :, 0].astype(np.float64)) for e in estimators]
        return Ensemble(trees, 1, np.zeros(1), "median", weights=weights)
    total = float(np.sum(model.estimator_weights_))
    trees = []
    for est, w in zip(estimators, weights, strict=True):
        proba = _sk_proba_values(est, n_classes)
        # SAMME: +w for the tree's class, -w/(K-1) for the others, over the total weight.
        votes = np.full_like(proba, -w / (n_classes - 1) / total)
        votes[np.arange(len(proba)), proba.argmax(axis=1)] = w / total
        trees.append(_sk_tree(est, votes))
    return Ensemble(trees, n_classes, np.zeros(n_classes), "softmax",
                    post_scale=1.0 / (n_classes - 1))


# -- XGBoost ----------------------------------------------------------------------------------

_XGB_POST = {"reg:squarederror": "identity", "reg:squaredlogerror": "identity",
             "reg:absoluteerror": "identity", "reg:pseudohubererror": "identity",
             "reg:quantileerror": "identity", "reg:logistic": "sigmoid",
             "count:poisson": "exp", "reg:gamma": "exp", "reg:tweedie": "exp",
             "binary:logistic": "sigmoid", "multi:softprob": "softmax",
             "multi:softmax": "softmax"}


_XGB_JSON: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def xgboost_json(booster) -> dict:
    """The booster's own JSON model, parsed once per fitted booster (``save_raw('json')`` and
    its parse take ~0.15-0.3 s for 100 trees): pgml.train reads it for the Ensemble (tensor
    graph and compiled trees) and onnx_export for its tree -> output table. Read only."""
    found = _XGB_JSON.get(booster)
    if found is None:
        found = json.loads(bytes(booster.save_raw("json")))
        _XGB_JSON[booster] = found
    return found


def _xgboost(model, n_features: int) -> Ensemble:
    booster = model.get_booster()
    doc = xgboost_json(booster)
    learner = doc["learner"]
    gb = learner["gradient_booster"]
    if gb.get("name") != "gbtree":
        raise NotExportable(f"XGBoost booster {gb.get('name')!r} has no tensor graph (gbtree only)")
    objective = learner["objective"]["name"]
    if objective not in _XGB_POST:
        raise NotExportable(f"XGBoost objective {objective!r} has no tensor graph")
    trees_doc = gb["model"]["trees"]
    info = [int(i) for i in gb["model"]["tree_info"]]
    params = learner["learner_model_param"]
    k = max(int(params.get("num_class", "0")), int(params.get("num_target", "1")), 1)
    trees = []
    for tree, out in zip(trees_doc, info, strict=True):
        if any(int(s) != 0 for s in tree.get("split_type", [])):
            raise NotExportable("XGBoost categorical splits have no tensor graph")
        left = np.asarray(tree["left_children"], dtype=np.int64)
        cond = np.asarray(tree["split_conditions"], dtype=F32)
        leaf = left < 0
        thr = np.where(leaf, F32(np.inf), np.nextafter(cond, F32(-np.inf)))  # x < t in float32
        vals = np.zeros((len(left), k))
        vals[leaf, out] = cond[leaf]
        trees.append(Tree(np.where(leaf, 0, tree["split_indices"]).astype(np.int64),
                          thr.astype(F32), left,
                          np.asarray(tree["right_children"], dtype=np.int64),
                          np.asarray(tree["default_left"], dtype=bool), vals))
    ens = Ensemble(trees, k, np.zeros(k), _XGB_POST[objective])
    # The base margin (base_score through the objective's link, or an estimated intercept) is
    # read off the booster itself: its margin on a probe row minus the trees' sum there.
    import xgboost as xgb

    probe = np.zeros((1, n_features), dtype=F32)
    margin = booster.predict(xgb.DMatrix(probe), output_margin=True)
    ens.base = np.asarray(margin, dtype=np.float64).reshape(-1)[:k] - ens.raw(probe)[0]
    if objective.startswith("multi:"):
        ens.post = "softmax"
    elif objective == "binary:logistic":
        ens.post = "sigmoid"
    return ens


# -- LightGBM ---------------------------------------------------------------------------------


def _lightgbm(model) -> Ensemble:
    dump = model.booster_.dump_model()
    objective = str(dump.get("objective", "regression")).split()
    name = objective[0]
    per_iter = int(dump.get("num_tree_per_iteration", 1))
    k = per_iter
    trees = [_lgb_tree(info["tree_structure"], i % per_iter, k)
             for i, info in enumerate(dump["tree_info"])]
    if dump.get("average_output"):
        n_iter = max(len(trees) // per_iter, 1)
        for t in trees:
            t.value /= n_iter
    scale = 1.0
    for part in objective[1:]:
        if part.startswith("sigmoid:"):
            scale = float(part.split(":", 1)[1])
    if name == "binary":
        post = "sigmoid"
    elif name in ("multiclass", "softmax"):
        post = "softmax"
    elif name in ("poisson", "gamma", "tweedie"):
        post = "exp"
    elif name in ("regression", "regression_l1", "huber", "fair", "quantile", "mape", "l2", "l1"):
        post = "identity"
    else:
        raise NotExportable(f"LightGBM objective {name!r} has no tensor graph")
    return Ensemble(trees, k, np.zeros(k), post, post_scale=scale)


def _lgb_tree(root: dict, out: int, k: int) -> Tree:
    feature, threshold, left, right, missing, value = [], [], [], [], [], []

    def add(node: dict) -> int:
        i = len(feature)
        feature.append(0)
        threshold.append(np.inf)
        left.append(-1)
        right.append(-1)
        missing.append(True)
        value.append(0.0)
        if "leaf_value" in node:
            value[i] = float(node["leaf_value"])
            return i
        if node.get("decision_type", "<=") != "<=":
            raise NotExportable("LightGBM categorical splits have no tensor graph")
        kind = node.get("missing_type", "None")
        if kind == "Zero":
            raise NotExportable("LightGBM zero-as-missing splits have no tensor graph")
        t = float(node["threshold"])
        feature[i] = int(node["split_feature"])
        threshold[i] = t
        # NaN: 'NaN' -> the default branch; 'None' -> LightGBM compares 0.0 instead.
        missing[i] = bool(node.get("default_left", True)) if kind == "NaN" else 0.0 <= t
        left[i] = add(node["left_child"])
        right[i] = add(node["right_child"])
        return i

    add(root)
    vals = np.zeros((len(feature), k))
    vals[:, out] = value
    return Tree(np.asarray(feature, dtype=np.int64), _round_down(np.asarray(threshold)),
                np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64),
                np.asarray(missing, dtype=bool), vals)


# -- dispatch ---------------------------------------------------------------------------------


def ensemble_of(model, n_features: int, n_classes: int | None) -> Ensemble:
    """The Ensemble of a fitted estimator fitted on class indexes (``n_classes`` for classifiers).

    NotExportable names the estimator when it has no tensor form (not a tree model, or a tree
    feature outside what the graph expresses: categorical splits, dart, unusual objectives).
    """
    name = type(model).__name__
    module = type(model).__module__
    classifier = n_classes is not None
    if name == "MultiOutputRegressor":
        parts = [ensemble_of(e, n_features, None) for e in model.estimators_]
        if any(p.post != "identity" or p.n_outputs != 1 for p in parts):
            raise NotExportable("joint model: only identity-output tree ensembles combine")
        trees = []
        for j, p in enumerate(parts):
            for t in p.trees:
                vals = np.zeros((len(t.left), len(parts)))
                vals[:, j] = t.value[:, 0]
                trees.append(Tree(t.feature, t.threshold, t.left, t.right, t.missing_left, vals))
        return Ensemble(trees, len(parts), np.array([p.base[0] for p in parts]))
    if module.startswith("xgboost"):
        return _xgboost(model, n_features)
    if module.startswith("lightgbm"):
        return _lightgbm(model)
    if name in ("DecisionTreeRegressor", "ExtraTreeRegressor"):
        vals = model.tree_.value[:, :, 0].astype(np.float64)
        return Ensemble([_sk_tree(model, vals)], vals.shape[1], np.zeros(vals.shape[1]))
    if name in ("DecisionTreeClassifier", "ExtraTreeClassifier"):
        return Ensemble([_sk_tree(model, _sk_proba_values(model, n_classes))], n_classes,
                        np.zeros(n_classes), "proba")
    if name in ("RandomForestRegressor", "ExtraTreesRegressor", "RandomForestClassifier",
                "ExtraTreesClassifier"):
        return _forest(model, n_classes)
    if name in ("BaggingRegressor", "BaggingClassifier"):
        if classifier and not all(hasattr(e, "predict_proba") for e in model.estimators_):
            raise NotExportable("Bagging of estimators without probabilities has no tensor graph")
        return _forest(model, n_classes, model.estimators_features_)
    if name in ("GradientBoostingRegressor", "GradientBoostingClassifier"):
        return _gradient_boosting(model, n_features, classifier)
    if name in ("HistGradientBoostingRegressor", "HistGradientBoostingClassifier"):
        return _hist_gradient_boosting(model, classifier)
    if name in ("AdaBoostRegressor", "AdaBoostClassifier"):
        if not all(hasattr(e, "tree_") for e in model.estimators_):
            raise NotExportable("AdaBoost of non-tree estimators has no tensor graph")
        return _ada_boost(model, n_classes)
    raise NotExportable(f"{name} is not a tree model; it has no tensor graph")
