"""The compiled-trees contract: every tree algorithm x task of the registry compiles to C that
answers like the native model (relative 1e-5, labels equal off the decision boundary), through
both entry points (one row in the fixed buffer, a batch), with NaN sent where the library sends
it; and where it cannot be compiled the scorer falls back instead of failing.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from inference import algorithms, compiled_scorer, compiled_trees
from inference.runtime import OnnxScorer
from inference.training import train
from tests.inference.conftest import split
from tests.inference.test_tree_graph import DATASETS, _is_tree

pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")
needs_cc = pytest.mark.skipif(compiled_trees.compiler() is None, reason="no C compiler")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "compiled"
    monkeypatch.setenv("PGML_COMPILED_TREES_DIR", str(cache))
    return cache


def _scorer(source: str, model_id: int, task: str, n: int, onnx):
    """As deployed.py loads it: the source's head first, the whole source if need be."""
    return compiled_scorer.load_scorer(source.encode()[:65536], lambda: source.encode(),
                                       model_id, task, n, onnx)


def _cases():
    for task in algorithms.TASKS:
        for name in algorithms.names(task):
            if _is_tree(algorithms.spec(name, task).cls()):
                for dataset in DATASETS[task]:
                    yield pytest.param(name, task, dataset, id=f"{name}-{task}-{dataset}")


def _train(name, task, dataset, **kw):
    s = split(dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return s, train(task, name, s.X_train, s.y_train, s.X_test, s.y_test,
                        feature_names=s.feature_names, random_state=0, **kw)


@needs_cc
@pytest.mark.parametrize(("name", "task", "dataset"), list(_cases()))
def test_compiled_trees_answer_like_the_native_model(name, task, dataset):
    s, result = _train(name, task, dataset)
    n = len(s.feature_names)
    source, record = compiled_trees.checked(result.estimator, s.X_test, task=task,
                                            classes=result.classes, n_features=n, model_id=1)
    if source is None:  # only what the module docstring lists may be refused
        assert name == "ada_boost" and task == "regression", record
        return
    assert record["ok"] and record["max_rel_diff"] <= compiled_trees.RTOL
    assert compiled_scorer.header(source)["parity"] == record
    onnx = OnnxScorer(result.onnx, task, n) if result.onnx else None
    scorer = _scorer(source, 1, task, n, lambda: onnx)
    X = s.X_test.astype(np.float32).astype(np.float64)
    native = result.estimator.predict(X)
    one = np.array([scorer.predict_one(row) for row in X.tolist()])
    batch = scorer.predict(X)
    if task == "regression":
        for ours in (one, batch):
            assert np.max(np.abs(ours - native) / np.maximum(1.0, np.abs(native))) <= 1e-5
    else:
        np.testing.assert_array_equal(one, native)
        np.testing.assert_array_equal(batch, native)
        np.testing.assert_allclose(scorer.predict_proba(X), result.estimator.predict_proba(X),
                                   rtol=0, atol=compiled_trees.RTOL)


@needs_cc
@pytest.mark.parametrize("kind", ["xgboost", "lightgbm", "hist_gradient_boosting",
                                  "random_forest"])
def test_nan_takes_the_native_branch(kind):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    y = X[:, 0] * 3 + np.where(X[:, 1] > 0, 2.0, -1.0)
    X[rng.random(X.shape) < 0.2] = np.nan
    size = {"max_iter": 20} if kind == "hist_gradient_boosting" else {"n_estimators": 20}
    est = algorithms.make_estimator(kind, "regression", size, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X[:400], y[:400])
    source, record = compiled_trees.checked(est, X[400:], task="regression", classes=None,
                                            n_features=5, model_id=2)
    assert record["ok"], record
    scorer = _scorer(source, 2, "regression", 5, lambda: None)
    Xt = X[400:].astype(np.float32).astype(np.float64)
    native = est.predict(Xt)
    # a row with a NULL element (None from PL/Python) takes the numpy path: same answer
    rows = [[None if v != v else v for v in row] for row in Xt.tolist()]
    one = np.array([scorer.predict_one(row) for row in rows])
    assert any(None in row for row in rows)
    assert np.max(np.abs(one - native) / np.maximum(1.0, np.abs(native))) <= 1e-5


@needs_cc
def test_a_wrong_width_says_expected_versus_given(diabetes):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 5})
    source, _ = compiled_trees.checked(result.estimator, diabetes.X_test, task="regression",
                                       classes=None, n_features=10, model_id=3)
    scorer = _scorer(source, 3, "regression", 10, lambda: None)
    from inference.errors import InvalidData

    with pytest.raises(InvalidData, match="expected 10 features, got 3"):
        scorer.predict_one([1.0, 2.0, 3.0])


@needs_cc
def test_batches_of_any_size_are_compiled_on_the_cpu_and_answer_like_rows(diabetes):
    """No CUDA device: the ONNX scorer is never loaded; a large batch split across threads
    answers row for row exactly like predict_one."""
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 5})
    source, _ = compiled_trees.checked(result.estimator, diabetes.X_test, task="regression",
                                       classes=None, n_features=10, model_id=4)
    loads = []

    def onnx():
        loads.append(1)
        return OnnxScorer(result.onnx, "regression", 10)

    scorer = _scorer(source, 4, "regression", 10, onnx)
    rng = np.random.default_rng(0)
    big = diabetes.X_test[rng.integers(0, len(diabetes.X_test), 25_000)]
    big = big + rng.normal(size=big.shape) * 1e-3
    for threads in (1, 3):
        out = scorer.predict(big, threads=threads)
        assert out.tolist() == [scorer.predict_one(row) for row in big.tolist()]
    assert loads == [] and scorer.graph_for(len(big)) == "compiled" and not scorer.cuda
    assert scorer.graph == "compiled" and scorer.runtime == "onnx"


@needs_cc
def test_with_a_gpu_large_batches_go_to_the_onnx_scorer(diabetes):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 5})
    source, _ = compiled_trees.checked(result.estimator, diabetes.X_test, task="regression",
                                       classes=None, n_features=10, model_id=11)

    class Routed(OnnxScorer):  # what routing.RoutedScorer answers on a CUDA host
        cuda = True
        last_graph = "tensor"

    scorer = _scorer(source, 11, "regression", 10,
                     lambda: Routed(result.onnx, "regression", 10))
    scorer._cuda = True  # runtime.cuda_device_present() on a GPU host
    big = np.tile(diabetes.X_test, (compiled_scorer.GPU_MIN_ROWS // len(diabetes.X_test) + 1, 1))
    np.testing.assert_allclose(scorer.predict(big), result.estimator.predict(big), rtol=1e-5)
    assert scorer.graph_for(len(big)) == "tensor" and scorer.graph_for(10) == "compiled"


def test_no_compiler_means_no_source_and_a_reason(monkeypatch, diabetes):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 5})
    monkeypatch.setattr(compiled_trees, "compiler", lambda: None)  # as imported there
    source, record = compiled_trees.checked(result.estimator, diabetes.X_test,
                                            task="regression", classes=None, n_features=10,
                                            model_id=5)
    assert source is None and record == {"ok": False, "reason": "no C compiler on this host"}


@needs_cc
def test_a_cache_directory_others_can_write_is_refused(tmp_path, monkeypatch, diabetes):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 5})
    source = compiled_trees.c_source(result.estimator, task="regression", n_features=10,
                                     classes=None)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("PGML_COMPILED_TREES_DIR", str(shared))
    assert compiled_scorer.cache_dir() is None
    assert compiled_scorer.load(source, 6) is None  # routing then keeps the ONNX graph


@needs_cc
def test_a_load_with_a_cold_cache_builds_from_the_whole_source(_private_cache, diabetes):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 5})
    source = compiled_trees.c_source(result.estimator, task="regression", n_features=10,
                                     classes=None)
    reads = []

    def whole():
        reads.append(1)
        return source.encode()

    head = source.encode()[:4096]
    first = compiled_scorer.load_scorer(head, whole, 9, "regression", 10, None)
    again = compiled_scorer.load_scorer(head, whole, 9, "regression", 10, None)
    assert reads == [1], "the second load finds the library by the header alone"
    short = compiled_scorer.load_scorer(head[:50], whole, 9, "regression", 10, None)
    assert reads == [1, 1] and short is not None  # a header past the head: the whole source
    row = diabetes.X_test[0].tolist()
    assert first.predict_one(row) == again.predict_one(row)
    tampered = source.replace("THR[] = {", "THR[] = { -1.0f, ", 1)
    assert compiled_scorer.load(tampered, 10) is None  # the body no longer matches its header


@needs_cc
def test_the_library_is_built_once_and_keyed_by_source_not_header(_private_cache, diabetes):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 5})
    plain = compiled_trees.c_source(result.estimator, task="regression", n_features=10,
                                    classes=None)
    stamped = compiled_trees.c_source(result.estimator, task="regression", n_features=10,
                                      classes=None, parity_record={"ok": True})
    first = compiled_scorer.build(plain, 7)
    assert compiled_scorer.build(stamped, 7) == first
    assert sorted(os.listdir(_private_cache)) == [os.path.basename(first)]
    assert oct(os.stat(_private_cache).st_mode & 0o777) == "0o700"


def test_models_that_are_not_trees_have_no_compiled_form(diabetes):
    _, result = _train("linear", "regression", "diabetes")
    source, record = compiled_trees.checked(result.estimator, diabetes.X_test,
                                            task="regression", classes=None, n_features=10,
                                            model_id=8)
    assert source is None and "not a tree model" in record["reason"]


@needs_cc
def test_a_build_prunes_the_cache_to_its_most_recent_libraries(_private_cache, monkeypatch,
                                                               diabetes):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 2})
    source = compiled_trees.c_source(result.estimator, task="regression", n_features=10,
                                     classes=None)
    _private_cache.mkdir(mode=0o700, exist_ok=True)
    for k in range(5):
        old = _private_cache / f"{100 + k}-old.so"
        old.write_bytes(b"")
        os.utime(old, (k, k))
    monkeypatch.setattr(compiled_scorer, "MAX_LIBRARIES", 3)
    built = compiled_scorer.build(source, 12)
    assert sorted(os.listdir(_private_cache)) == ["103-old.so", "104-old.so",
                                                   os.path.basename(built)]


@needs_cc
@pytest.mark.parametrize(("name", "task", "dataset"), [
    ("xgboost", "regression", "diabetes"), ("random_forest", "classification", "iris")])
def test_a_compile_started_at_the_fit_gives_what_the_foreground_path_gives(
        _private_cache, name, task, dataset):
    """pgml.train starts the compile right after the fit (training.train(compile_trees=True))
    and checks it later under the model's id: same source, same parity record, the library in
    the cache under that id and no temporary file left."""
    s, result = _train(name, task, dataset, hyperparams={"n_estimators": 10},
                       compile_trees=True)
    n = len(s.feature_names)
    assert isinstance(result.compiled, compiled_trees.Pending)
    assert result.compiled.build is not None and result.compiled.ensemble is not None
    early, early_record = compiled_trees.for_training(result, task, s.feature_names,
                                                      s.X_test, 0, model_id=21)
    late, late_record = compiled_trees.checked(result.estimator, s.X_test, task=task,
                                               classes=result.classes, n_features=n,
                                               model_id=22)
    assert early_record["ok"] and early_record == late_record
    assert early.decode() == late
    names = sorted(os.listdir(_private_cache))
    assert [f.split("-")[0] for f in names] == ["21", "22"], names  # nothing else left


@needs_cc
def test_a_failing_compiler_started_early_still_drops_the_compiled_trees(
        _private_cache, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 3},
                       compile_trees=True)
    source, record = compiled_trees.for_training(result, "regression", [f"x{i}" for i in
                                                 range(10)], split("diabetes").X_test, 0, 23)
    assert source is None and not record["ok"] and "compiler failed" in record["reason"]
    assert os.listdir(_private_cache) == []


@needs_cc
def test_a_cancelled_early_compile_leaves_no_files(_private_cache):
    _, result = _train("xgboost", "regression", "diabetes", hyperparams={"n_estimators": 3},
                       compile_trees=True)
    result.compiled.cancel()
    assert result.compiled.build.proc.poll() is not None
    assert os.listdir(_private_cache) == []
