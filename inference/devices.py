"""Where a fit runs: the GPU for XGBoost and LightGBM when this host really has a CUDA device
and the installed library can use it, else the CPU; the user's own ``device`` always wins.

The same test as scoring's (runtime.cuda_device_present: an NVIDIA device node and driver, not
merely a CUDA-enabled wheel -- onnxruntime-gpu and XGBoost's wheels carry CUDA everywhere). The
decision itself (``training_device``) is a pure function of the algorithm, the user's
hyperparameters, that test and what the library supports, so it is tested without a GPU.

* XGBoost / XGBoost random forest: ``device='cuda'`` when ``xgboost.build_info()`` says
  USE_CUDA. After the fit the model is set back to ``device='cpu'``, so the stored pickle
  scores anywhere (bulk's native path, a CPU-only replica) and training's own predictions on
  host arrays do not warn about mismatched devices.
* LightGBM: ``device_type='cuda'`` (a CUDA build) or ``'gpu'`` (the OpenCL build PyPI's wheels
  ship), whichever a one-round fit of a tiny dataset accepts (probed once per process, only on
  a host with a device); prediction is always on the CPU.
* Anything else (scikit-learn, CatBoost) fits on the CPU.

The device used is recorded with the model's hyperparameters (``device`` or ``device_type``),
which is what pgml.models.hyperparams shows and a retrain reuses.
"""

from __future__ import annotations

import functools

XGBOOST = ("xgboost", "xgboost_random_forest")
USER_KEYS = {"xgboost": ("device", "tree_method", "gpu_id"),
             "lightgbm": ("device", "device_type")}


def training_device(algorithm: str, hyperparams: dict, *, cuda: bool,
                    supports=None) -> dict:
    """Estimator parameters that put the fit on the GPU; {} for the CPU.

    ``cuda``: whether a CUDA device is present (runtime.cuda_device_present()). ``supports``:
    library name -> the GPU kind it accepts ('cuda', 'gpu') or None; defaults to probing the
    installed library (``gpu_support``).
    """
    if not cuda:
        return {}
    family = "xgboost" if algorithm in XGBOOST else algorithm
    if family not in USER_KEYS or any(k in (hyperparams or {}) for k in USER_KEYS[family]):
        return {}  # not a GPU-capable library, or the user chose the device
    kind = (supports or gpu_support)(family)
    if kind is None:
        return {}
    return {"device": "cuda"} if family == "xgboost" else {"device_type": kind}


@functools.cache
def gpu_support(library: str) -> str | None:
    """The GPU kind the installed ``library`` accepts: 'cuda', 'gpu' or None (probed once)."""
    if library == "xgboost":
        import xgboost

        return "cuda" if xgboost.build_info().get("USE_CUDA") else None
    if library == "lightgbm":
        import lightgbm
        import numpy as np

        X = np.random.default_rng(0).normal(size=(64, 2))
        data = lightgbm.Dataset(X, X[:, 0], params={"verbose": -1})
        for kind in ("cuda", "gpu"):
            try:
                lightgbm.train({"device_type": kind, "verbose": -1, "num_leaves": 2}, data,
                               num_boost_round=1)
                return kind
            except Exception:  # noqa: BLE001, S112 - a build without it: try the next kind
                continue
    return None


def back_to_cpu(fitted) -> None:
    """A fitted XGBoost model (inside a pipeline or label wrapper) set to predict on the CPU."""
    steps = [s for _, s in fitted.steps] if hasattr(fitted, "steps") else [fitted]
    for step in steps:
        model = getattr(step, "estimator_", step)
        if type(model).__module__.startswith("xgboost") and hasattr(model, "set_params"):
            model.set_params(device="cpu")
