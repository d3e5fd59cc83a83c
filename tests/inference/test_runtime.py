"""Scoring: the onnxruntime session set-up, input handling, providers, and quietness."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from inference import runtime
from inference.errors import InvalidData, PgmlError
from inference.routing import load_scorer
from inference.runtime import providers
from inference.training import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def xgb_model(diabetes):
    return train("regression", "xgboost", diabetes.X_train, diabetes.y_train, diabetes.X_test,
                 diabetes.y_test, feature_names=diabetes.feature_names,
                 hyperparams={"n_estimators": 20, "max_depth": 4})


@pytest.fixture(scope="module")
def svm_model(iris):
    return train("classification", "svm", iris.X_train, iris.y_train, iris.X_test, iris.y_test,
                 feature_names=iris.feature_names)


def test_session_is_single_threaded_without_spinning(xgb_model):
    scorer = load_scorer("onnx", xgb_model.onnx, xgb_model.native, "regression", 10)
    options = scorer._session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert [o.name for o in scorer._session.get_outputs()][:1] == scorer._predict_out


def test_providers_without_a_gpu_are_cpu_only():
    if runtime._nvidia_gpu_present():
        pytest.skip("this machine has an NVIDIA GPU")
    assert providers() == ["CPUExecutionProvider"]


def test_cuda_is_not_requested_for_ml_domain_graphs(xgb_model, monkeypatch):
    """Tree ensembles are ai.onnx.ml operators, which CUDA cannot run: ask for the CPU only."""
    monkeypatch.setattr(runtime, "providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    scorer = load_scorer("onnx", xgb_model.onnx, xgb_model.native, "regression", 10)
    assert scorer.providers == ["CPUExecutionProvider"]
    assert any(n.domain == "ai.onnx.ml" for n in onnx.load_from_string(xgb_model.onnx).graph.node)


def test_input_shapes_and_types(xgb_model, diabetes):
    scorer = load_scorer("onnx", xgb_model.onnx, xgb_model.native, "regression", 10)
    native = load_scorer("python", None, xgb_model.native, "regression", 10)
    batch = scorer.predict(diabetes.X_test)
    assert batch.shape == (len(diabetes.X_test),) and batch.dtype == np.float64
    for row in (diabetes.X_test[3], diabetes.X_test[3:4], list(diabetes.X_test[3]),
                diabetes.X_test[3].astype(np.float32)):
        assert scorer.predict(row)[0] == pytest.approx(batch[3], rel=1e-6)
        assert native.predict(row)[0] == pytest.approx(batch[3], rel=1e-4)
    ints = np.arange(10)
    assert scorer.predict(ints)[0] == pytest.approx(scorer.predict(ints.astype(float))[0])
    assert scorer.predict(np.ones(10, dtype=bool)).shape == (1,)
    # the reused single-row buffer must not leak one call's row into the next
    first, second = diabetes.X_test[0], diabetes.X_test[1]
    assert scorer.predict(first)[0] == pytest.approx(batch[0])
    assert scorer.predict(second)[0] == pytest.approx(batch[1])


def test_wrong_feature_count_says_expected_and_given(xgb_model):
    for runtime_name in ("onnx", "python"):
        scorer = load_scorer(runtime_name, xgb_model.onnx, xgb_model.native, "regression", 10)
        with pytest.raises(InvalidData, match="expected 10 features, got 3"):
            scorer.predict(np.ones(3))
        with pytest.raises(InvalidData, match="expected 10 features, got 11"):
            scorer.predict(np.ones((2, 11)))


def test_predict_proba(svm_model, iris, xgb_model):
    scorer = load_scorer(svm_model.runtime, svm_model.onnx, svm_model.native, "classification", 4)
    with pytest.raises(PgmlError, match="no probabilities"):
        scorer.predict_proba(iris.X_test)
    labels = scorer.predict(iris.X_test)
    assert set(labels) <= {0.0, 1.0, 2.0}
    reg = load_scorer("onnx", xgb_model.onnx, xgb_model.native, "regression", 10)
    with pytest.raises(PgmlError, match="classification"):
        reg.predict_proba(iris.X_test)


def test_labels_map_back_to_the_original_class_values(iris):
    """Classes 10, 20.5, 30 (not 0..k-1) come back as themselves, ONNX and native alike."""
    values = np.array([10.0, 20.5, 30.0])
    y_train, y_test = values[iris.y_train.astype(int)], values[iris.y_test.astype(int)]
    for algorithm in ("xgboost", "linear", "random_forest"):
        result = train("classification", algorithm, iris.X_train, y_train, iris.X_test, y_test,
                       feature_names=iris.feature_names,
                       hyperparams={"n_estimators": 5} if algorithm != "linear" else {})
        assert result.classes == [10, 20.5, 30]
        for runtime_name in ("onnx", "python"):
            scorer = load_scorer(runtime_name, result.onnx, result.native, "classification", 4)
            labels = scorer.predict(iris.X_test)
            assert set(labels) <= set(values)
            assert np.mean(labels == y_test) > 0.8
            proba = scorer.predict_proba(iris.X_test)
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
            np.testing.assert_array_equal(values[proba.argmax(axis=1)], labels)


def test_load_scorer_errors(xgb_model):
    with pytest.raises(PgmlError, match="unknown runtime 'tensorflow'"):
        load_scorer("tensorflow", xgb_model.onnx, xgb_model.native, "regression", 10)
    with pytest.raises(PgmlError, match="no ONNX bytes"):
        load_scorer("onnx", None, xgb_model.native, "regression", 10)
    with pytest.raises(PgmlError, match="takes 10 features, not 9"):
        load_scorer("onnx", xgb_model.onnx, xgb_model.native, "regression", 9)
    with pytest.raises(PgmlError, match="regression model, not classification"):
        load_scorer("onnx", xgb_model.onnx, xgb_model.native, "classification", 10)


def test_scoring_is_quiet_and_leaves_no_threads(xgb_model, diabetes, capfd):
    before = threading.active_count()
    scorer = load_scorer("onnx", xgb_model.onnx, xgb_model.native, "regression", 10)
    for row in diabetes.X_test[:50]:
        scorer.predict(row)
    scorer.predict(diabetes.X_test)
    del scorer
    assert threading.active_count() == before
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_importing_and_scoring_prints_nothing_in_a_fresh_interpreter(xgb_model, tmp_path):
    """What a fresh PL/Python backend does: import, load, score — not one byte of output."""
    model = tmp_path / "model.onnx"
    model.write_bytes(xgb_model.onnx)
    code = (
        "import numpy as np, inference.routing as r\n"
        f"s = r.load_scorer('onnx', open({str(model)!r}, 'rb').read(), None, 'regression', 10)\n"
        "s.predict(np.zeros(10)); import inference.runtime; inference.runtime.providers()\n"
        "import sys; assert 'sklearn' not in sys.modules, 'scoring ONNX must not load sklearn'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"" and done.stderr == b""
