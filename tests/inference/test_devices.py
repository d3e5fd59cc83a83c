"""Where a fit runs (inference/devices.py): the GPU only with a CUDA device and a library that
can use it, the user's device always winning; decided and recorded the same way on a CPU host."""

from __future__ import annotations

import warnings

import pytest

from inference import devices, runtime
from inference.training import train

CUDA_BUILDS = {"xgboost": "cuda", "lightgbm": "gpu"}.get


@pytest.mark.parametrize(("algorithm", "hyperparams", "cuda", "supports", "expected"), [
    ("xgboost", {}, True, CUDA_BUILDS, {"device": "cuda"}),
    ("xgboost_random_forest", {}, True, CUDA_BUILDS, {"device": "cuda"}),
    ("lightgbm", {}, True, CUDA_BUILDS, {"device_type": "gpu"}),
    ("lightgbm", {}, True, {"lightgbm": "cuda"}.get, {"device_type": "cuda"}),
    ("xgboost", {}, False, CUDA_BUILDS, {}),  # no device: the CPU, whatever the wheel has
    ("xgboost", {}, True, lambda lib: None, {}),  # a build without CUDA
    ("xgboost", {"device": "cpu"}, True, CUDA_BUILDS, {}),  # the user's choice wins
    ("xgboost", {"tree_method": "hist"}, True, CUDA_BUILDS, {}),
    ("lightgbm", {"device_type": "cpu"}, True, CUDA_BUILDS, {}),
    ("random_forest", {}, True, CUDA_BUILDS, {}),  # scikit-learn has no GPU
    ("catboost", {}, True, CUDA_BUILDS, {}),
])
def test_the_gpu_is_chosen_only_with_a_device_a_capable_library_and_no_user_choice(
        algorithm, hyperparams, cuda, supports, expected):
    assert devices.training_device(algorithm, hyperparams, cuda=cuda,
                                   supports=supports) == expected


@pytest.mark.skipif(runtime.cuda_device_present(), reason="this host has a CUDA device")
def test_this_cpu_host_trains_xgboost_on_the_cpu_and_records_nothing(diabetes):
    s = diabetes
    result = train("regression", "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                   feature_names=s.feature_names, hyperparams={"n_estimators": 5})
    assert "device" not in result.hyperparams
    assert devices.training_device("xgboost", {}, cuda=runtime.cuda_device_present()) == {}


def test_a_gpu_fit_is_recorded_and_the_stored_model_predicts_on_the_cpu(monkeypatch, diabetes):
    """The CUDA path as a GPU host takes it (XGBoost itself falls back to the CPU here)."""
    monkeypatch.setattr(runtime, "cuda_device_present", lambda: True)
    monkeypatch.setattr(devices, "gpu_support", CUDA_BUILDS)
    s = diabetes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train("regression", "xgboost", s.X_train, s.y_train, s.X_test, s.y_test,
                       feature_names=s.feature_names, hyperparams={"n_estimators": 5})
    assert result.hyperparams == {"n_estimators": 5, "device": "cuda"}
    assert result.estimator[-1].get_params()["device"] == "cpu"
    assert result.runtime == "onnx" and result.parity["ok"]
