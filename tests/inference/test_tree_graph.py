"""The tensor graph contract: every tree algorithm x task of the registry becomes a graph of
default-domain ONNX operators that answers like the native model on held-out rows.

Independent of the converter's own list: the tree algorithms are found here by the estimator
class the registry builds (its module and name), so a tree model added to the registry without
a converter fails this test.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from inference import algorithms, tree_graph
from inference.errors import NotExportable
from inference.runtime import OnnxScorer
from inference.training import train
from tests.inference.conftest import split

pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")

DATASETS = {"regression": ("diabetes",), "classification": ("iris", "breast_cancer")}


def _is_tree(cls: type) -> bool:
    name, module = cls.__name__, cls.__module__
    return (module.startswith(("xgboost", "lightgbm"))
            or (module.startswith("sklearn.ensemble") and name not in (
                "StackingRegressor", "StackingClassifier", "VotingRegressor", "VotingClassifier",
                "IsolationForest")))


def _cases():
    for task in algorithms.TASKS:
        for name in algorithms.names(task):
            if _is_tree(algorithms.spec(name, task).cls()):
                for dataset in DATASETS[task]:
                    for formulation in tree_graph.FORMULATIONS:
                        yield pytest.param(name, task, dataset, formulation,
                                           id=f"{name}-{task}-{dataset}-{formulation}")


def test_the_converter_covers_every_tree_algorithm_of_the_registry():
    found = {name for task in algorithms.TASKS for name in algorithms.names(task)
             if _is_tree(algorithms.spec(name, task).cls())}
    assert found == set(tree_graph.TREE_ALGORITHMS)


@pytest.fixture(scope="module")
def trained():
    cache = {}

    def get(name, task, dataset):
        if (name, task, dataset) not in cache:
            s = split(dataset)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name, task, dataset] = train(
                    task, name, s.X_train, s.y_train, s.X_test, s.y_test,
                    feature_names=s.feature_names, random_state=0)
        return cache[name, task, dataset]
    return get


@pytest.mark.parametrize(("name", "task", "dataset", "formulation"), list(_cases()))
def test_tensor_graph_answers_like_the_native_model(trained, name, task, dataset, formulation):
    result = trained(name, task, dataset)
    s = split(dataset)
    n = len(s.feature_names)
    data = tree_graph.tensor_graph(
        result.estimator, task=task, n_features=n, classes=result.classes,
        has_proba=task == "classification", error_columns=[], feature_names=s.feature_names,
        formulation=formulation)
    model = onnx.load_from_string(data)
    assert {node.domain for node in model.graph.node} == {""}, "only default-domain operators"
    assert {o.domain for o in model.opset_import} == {""}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pgml.graph"] == "tensor" and meta["pgml.tree_formulation"] == formulation

    X = s.X_test.astype(np.float32).astype(np.float64)  # what the graph sees: float32 features
    scorer = OnnxScorer(data, task, n)
    native, graph = result.estimator.predict(X), scorer.predict(X)
    if task == "regression":
        rel = np.abs(native - graph) / np.maximum(1.0, np.abs(native))
        assert rel.max() <= tree_graph.RTOL
    else:
        np.testing.assert_array_equal(graph, native)
        np.testing.assert_allclose(scorer.predict_proba(X), result.estimator.predict_proba(X),
                                   rtol=0, atol=tree_graph.RTOL)


@pytest.mark.parametrize("formulation", tree_graph.FORMULATIONS)
@pytest.mark.parametrize("kind", ["xgboost", "lightgbm", "hist_gradient_boosting",
                                  "random_forest"])
def test_nan_takes_the_native_branch_without_imputation(kind, formulation):
    """A bare estimator (no Preprocessor in front) sees NaN: each split's missing direction."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    y = X[:, 0] * 3 + np.where(X[:, 1] > 0, 2.0, -1.0)
    X[rng.random(X.shape) < 0.2] = np.nan
    size = {"max_iter": 20} if kind == "hist_gradient_boosting" else {"n_estimators": 20}
    est = algorithms.make_estimator(kind, "regression", size, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X[:400], y[:400])
    names = [f"f{j}" for j in range(5)]
    data = tree_graph.tensor_graph(est, task="regression", n_features=5, classes=None,
                                   has_proba=False, error_columns=[], feature_names=names,
                                   formulation=formulation)
    Xt = X[400:].astype(np.float32).astype(np.float64)
    graph = OnnxScorer(data, "regression", 5).predict(Xt)
    native = est.predict(Xt)
    assert np.isnan(Xt).any()
    assert np.max(np.abs(graph - native) / np.maximum(1.0, np.abs(native))) <= tree_graph.RTOL


def test_joint_tree_models_predict_every_target():
    s = split("linnerud")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train("regression", "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                       feature_names=s.feature_names, joint=True, random_state=0)
    data = tree_graph.tensor_graph(result.estimator, task="regression", n_features=3,
                                   classes=None, has_proba=False, error_columns=[],
                                   feature_names=s.feature_names)
    graph = OnnxScorer(data, "regression", 3).predict(s.X_test)
    native = result.estimator.predict(s.X_test.astype(np.float32).astype(np.float64))
    assert graph.shape == native.shape == (len(s.X_test), 3)
    assert np.max(np.abs(graph - native) / np.maximum(1.0, np.abs(native))) <= tree_graph.RTOL


def test_checked_records_parity_and_refuses_non_tree_models(diabetes):
    s = diabetes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = train("regression", "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                     feature_names=s.feature_names, random_state=0)
        linear = train("regression", "linear", s.X_train, s.y_train, s.X_test, s.y_test,
                       feature_names=s.feature_names, random_state=0)
    kwargs = {"task": "regression", "classes": None, "has_proba": False, "error_columns": [],
              "feature_names": s.feature_names}
    data, record = tree_graph.checked(tree.estimator, s.X_test, **kwargs)
    assert data is not None and record["ok"] and record["rows_checked"] == len(s.X_test)
    data, record = tree_graph.checked(linear.estimator, s.X_test, **kwargs)
    assert data is None and not record["ok"] and "not a tree model" in record["reason"]
    with pytest.raises(NotExportable):
        tree_graph.tensor_graph(linear.estimator, n_features=len(s.feature_names), **kwargs)


def _xgboost_with_its_ensemble(s, task: str, n_estimators: int):
    """An XGBoost model fitted as pgml.train fits it, its Ensemble built and the compile
    it started cancelled (these tests need the Ensemble, not the library)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = train(task, "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                  feature_names=s.feature_names, random_state=0, compile_trees=True,
                  hyperparams={"n_estimators": n_estimators})
    r.compiled.cancel()
    return r


def test_the_ensemble_pgml_train_built_once_gives_the_same_graph_and_record(iris):
    """pgml.train builds the model's Ensemble once (compiled_trees.start) and computes the
    native answers on the parity sample once; the graph and its record are those the tensor
    graph makes on its own."""
    from inference.compiled_trees import native_on

    s = iris
    r = _xgboost_with_its_ensemble(s, "classification", 10)
    kwargs = {"task": "classification", "classes": r.classes, "has_proba": True,
              "error_columns": [], "feature_names": s.feature_names}
    alone = tree_graph.checked(r.estimator, s.X_test, **kwargs)
    shared = tree_graph.checked(r.estimator, s.X_test, ens=r.compiled.ensemble,
                                native=native_on(r.estimator, s.X_test, "classification"),
                                **kwargs)
    assert alone[1]["ok"] and alone[1] == shared[1]
    assert alone[0] == shared[0]


def test_depth_chooses_the_formulation(diabetes):
    s = diabetes
    chosen = {}
    for depth in (3, 8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = train("regression", "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                      feature_names=s.feature_names, random_state=0,
                      hyperparams={"max_depth": depth, "n_estimators": 10})
        data = tree_graph.tensor_graph(r.estimator, task="regression",
                                       n_features=len(s.feature_names), classes=None,
                                       has_proba=False, error_columns=[],
                                       feature_names=s.feature_names)
        meta = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        chosen[depth] = meta["pgml.tree_formulation"]
    assert chosen == {3: "gemm", 8: "traversal"}


# -- the runtime's choice (no GPU on the machines these tests run on) -----------------------


def test_choose_graph_sends_only_large_batches_to_the_gpu():
    from inference.routing import GPU_MIN_ROWS, choose_graph

    assert choose_graph(1, cuda=True, has_tensor=True) == "default"
    assert choose_graph(GPU_MIN_ROWS - 1, cuda=True, has_tensor=True) == "default"
    assert choose_graph(GPU_MIN_ROWS, cuda=True, has_tensor=True) == "tensor"
    assert choose_graph(10**7, cuda=False, has_tensor=True) == "default"  # CPU: measured slower
    assert choose_graph(10**7, cuda=True, has_tensor=False) == "default"


def _xgb_graphs(diabetes):
    s = diabetes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = train("regression", "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                  feature_names=s.feature_names, random_state=0,
                  hyperparams={"n_estimators": 10})
    tensor = tree_graph.tensor_graph(r.estimator, task="regression",
                                     n_features=len(s.feature_names), classes=None,
                                     has_proba=False, error_columns=[],
                                     feature_names=s.feature_names)
    return r, tensor


def test_without_a_cuda_device_the_tensor_graph_is_not_loaded(diabetes, monkeypatch):
    from inference import routing, runtime

    r, tensor = _xgb_graphs(diabetes)
    n = len(diabetes.feature_names)
    assert runtime.providers() == [runtime.CPU]  # no /dev/nvidia* here
    scorer = routing.load_scorer("onnx", r.onnx, None, "regression", n, tensor=tensor)
    assert type(scorer) is runtime.OnnxScorer and scorer.graph == "default"
    # CUDA offered (onnxruntime-gpu always lists it) but the session cannot get it: a broken
    # or absent device must leave the default graph in charge, not a tensor graph on the CPU.
    monkeypatch.setattr(runtime, "providers", lambda: [runtime.CUDA, runtime.CPU])
    scorer = routing.load_scorer("onnx", r.onnx, None, "regression", n, tensor=tensor)
    assert type(scorer) is runtime.OnnxScorer and scorer.providers == [runtime.CPU]


def test_routed_scorer_routes_by_batch_size(diabetes):
    from inference import routing, runtime

    r, tensor = _xgb_graphs(diabetes)
    n = len(diabetes.feature_names)
    routed = routing.RoutedScorer(runtime.OnnxScorer(r.onnx, "regression", n),
                                  runtime.OnnxScorer(tensor, "regression", n))
    routed.cuda = True  # as if the tensor session had got CUDA
    X = np.repeat(diabetes.X_test, -(-routing.GPU_MIN_ROWS // len(diabetes.X_test)), axis=0)
    small = routed.predict(X[:5])
    assert routed.last_graph == "default"
    big = routed.predict(X[: routing.GPU_MIN_ROWS])
    assert routed.last_graph == "tensor"
    np.testing.assert_allclose(big[:5], small, rtol=tree_graph.RTOL)
    assert routed.predict_one(X[0].tolist()) == small[0]


@pytest.mark.parametrize(("name", "task", "dataset"), sorted(
    {c.values[:3] for c in _cases()}))
def test_the_on_demand_rows_pass_parity_for_every_tree_algorithm(trained, name, task, dataset):
    """pgml.export_onnx(..., 'tensor') on a host without CUDA builds the graph from the stored
    model and checks it on rows made from the trees' thresholds (tree_graph_on_demand): they
    hold every tree algorithm of the registry to the same 1e-5 bar as the test split does,
    NaN included."""
    from inference.tree_graph_models import ensemble_of
    from inference.tree_graph_on_demand import parity_rows

    result = trained(name, task, dataset)
    n = len(split(dataset).feature_names)
    spec, final = tree_graph.unwrap(result.estimator)
    ens = ensemble_of(final, n, None if task != "classification" else len(result.classes))
    X = parity_rows(ens, spec, n, [], n=2000)  # 20,000 in export_onnx; fewer keep this fast
    assert np.isnan(X).any(axis=0).all() and max(len(np.unique(c)) for c in X.T) > 3
    data, record = tree_graph.checked(
        result.estimator, X, task=task, classes=result.classes,
        has_proba=task == "classification", error_columns=[],
        feature_names=split(dataset).feature_names, ens=ens)
    assert record["ok"], record
    assert data is not None and record["rows_checked"] == len(X)


def test_parity_rows_sit_on_every_threshold_and_between_them(diabetes):
    """With the identity preprocessing the rows hold each split's threshold and its float32
    neighbours (the comparison at the exact boundary), and a value in every interval."""
    from inference.tree_graph_models import ensemble_of
    from inference.tree_graph_on_demand import parity_rows

    s = diabetes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = train("regression", "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                  feature_names=s.feature_names, random_state=0,
                  hyperparams={"n_estimators": 5, "max_depth": 3})
    spec, final = tree_graph.unwrap(r.estimator)
    ens = ensemble_of(final, len(s.feature_names), None)
    X = parity_rows(ens, spec, len(s.feature_names), [1])
    assert not np.isnan(X[:, 1]).any()  # an 'error' column gets no NaN
    t = ens.trees[0]
    j, cut = int(t.feature[0]), np.float32(t.threshold[0])
    seen = set(X[:, j].tolist())
    assert {float(cut), float(np.nextafter(cut, np.float32(np.inf))),
            float(np.nextafter(cut, np.float32(-np.inf)))} <= seen


def test_pgml_train_builds_the_tensor_graph_only_where_a_cuda_device_can_run_it(diabetes,
                                                                               monkeypatch):
    """tree_graph.built_at_training: on a CUDA host for_training builds and checks the graph
    as before; without one it returns None (export_onnx builds it on demand)."""
    from inference import runtime

    s = diabetes
    r = _xgboost_with_its_ensemble(s, "regression", 5)
    monkeypatch.setattr(runtime, "cuda_device_present", lambda: False)
    assert tree_graph.for_training(r, "regression", s.feature_names, s.X_test, 0) is None
    monkeypatch.setattr(runtime, "cuda_device_present", lambda: True)
    data = tree_graph.for_training(r, "regression", s.feature_names, s.X_test, 0)
    meta = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert '"ok": true' in meta["pgml.parity"] and meta["pgml.graph"] == "tensor"
