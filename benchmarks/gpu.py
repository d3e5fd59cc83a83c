"""GPU scoring benchmark: the tensor graph on CUDA vs the TreeEnsemble graph on the CPU vs
XGBoost's own predictor, same model, rows/s at 1M and 10M rows. No database; < 5 minutes.

Model: XGBoost regression, 100 trees of depth 6, 10 features, trained on 200k synthetic rows
through inference.training.train (so the default graph is the one pgml serves) and converted
by inference.tree_graph. Scored rows are distinct (fresh Gaussian rows).

* ``gpu tensor``: onnxruntime CUDA provider, tensor graph, batches of --batch rows fed from
  host memory (the copy to the device is part of the time, as in pgml.predict_relation).
* ``cpu treeensemble``: onnxruntime CPU, the default graph, one session with all cores as
  intra-op threads (the best CPU number; pgml's backends use one thread each).
* ``xgboost native``: ``booster.inplace_predict`` on the CPU, and on the GPU when XGBoost was
  built with CUDA (``device='cuda'``).
* ``cpu compiled trees``: the model's compiled trees (inference/compiled_scorer.py, what pgml
  scores CPU batches with), batches split across all cores -- the best CPU path when a C
  compiler is present.

Training (``--train-rows``, default 1M x 10 features): XGBoost's fit with ``device='cuda'``
(what pgml.train chooses on a CUDA host, inference/devices.py) against ``device='cpu'`` (hist,
all cores), and LightGBM's GPU build (``device_type`` cuda or gpu, when the installed build
accepts one) against its CPU fit; 100 trees of depth 6, seconds and the ratio, same run.

Without a CUDA device the GPU rows print "no CUDA device". Run:
  .venv/bin/python -m benchmarks.gpu [--quick] [--train-rows N]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def _model():
    from inference.training import train

    rng = np.random.default_rng(0)
    X = rng.normal(size=(250_000, 10))
    y = X @ rng.normal(size=10) + np.sin(3 * X[:, 0]) + 0.1 * rng.normal(size=len(X))
    names = [f"f{i}" for i in range(10)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train("regression", "xgboost", X[:200_000], y[:200_000], X[200_000:],
                       y[200_000:], feature_names=names, random_state=0,
                       hyperparams={"n_estimators": 100, "max_depth": 6})
    return result, names


def _compiled(result):
    """The model's compiled trees (what pgml scores CPU batches with), or None without a C
    compiler; built into a private temporary cache."""
    import tempfile

    from inference import compiled_scorer, compiled_trees

    os.environ.setdefault("PGML_COMPILED_TREES_DIR", tempfile.mkdtemp(prefix="pgml-gpu-bench-"))
    try:
        source = compiled_trees.c_source(result.estimator, task="regression", n_features=10,
                                         classes=None)
    except Exception:  # noqa: BLE001 - no compiled form: the row is left out
        return None
    return compiled_scorer.load(source, 1)


def _rate(fn, X: np.ndarray, batch: int) -> float:
    fn(X[: min(batch, len(X))])  # warm up (session, CUDA kernels, allocations)
    start = time.perf_counter()
    for i in range(0, len(X), batch):
        fn(X[i:i + batch])
    return len(X) / (time.perf_counter() - start)


def _fit_seconds(fit) -> float:
    start = time.perf_counter()
    fit()
    return time.perf_counter() - start


def training(rows: int, cuda: bool) -> None:
    """GPU vs CPU fit times of XGBoost and LightGBM on ``rows`` x 10 synthetic rows."""
    import lightgbm
    import xgboost

    from inference import devices

    rng = np.random.default_rng(2)
    X = rng.normal(size=(rows, 10)).astype(np.float32)
    y = X @ rng.normal(size=10) + np.sin(3 * X[:, 0])
    print(f"GPU training benchmark: {rows:,} rows x 10 features, 100 trees depth 6; "
          f"CUDA device: {'yes' if cuda else 'no'}")
    size = {"n_estimators": 100, "max_depth": 6}
    fits = {"xgboost cpu (hist, all cores)": lambda: xgboost.XGBRegressor(
        **size, tree_method="hist", device="cpu").fit(X, y)}
    lgb = {"n_estimators": 100, "max_depth": 6, "num_leaves": 63, "verbose": -1}
    fits["lightgbm cpu"] = lambda: lightgbm.LGBMRegressor(**lgb).fit(X, y)
    if cuda:
        if devices.gpu_support("xgboost"):
            fits["xgboost cuda"] = lambda: xgboost.XGBRegressor(
                **size, tree_method="hist", device="cuda").fit(X, y)
        kind = devices.gpu_support("lightgbm")
        if kind:
            fits[f"lightgbm {kind}"] = lambda: lightgbm.LGBMRegressor(
                **lgb, device_type=kind).fit(X, y)
        else:
            print("  lightgbm: the installed build accepts neither device_type cuda nor gpu")
    seconds = {}
    for label, fit in fits.items():
        first = _fit_seconds(fit)  # a GPU's first fit also sets up CUDA/OpenCL: fit again
        seconds[label] = first if "cpu" in label else min(first, _fit_seconds(fit))
        print(f"  {label:36s} {seconds[label]:8.2f} s")
    for lib in ("xgboost", "lightgbm"):
        gpu = [v for k, v in seconds.items() if k.startswith(lib) and "cpu" not in k]
        cpu = [v for k, v in seconds.items() if k.startswith(lib) and "cpu" in k]
        if gpu:
            print(f"  {lib}: cpu / gpu fit time {cpu[0] / gpu[0]:.1f}x")
        elif not cuda:
            print(f"  {lib} gpu: no CUDA device on this machine")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k and 1M rows instead")
    parser.add_argument("--batch", type=int, default=1 << 20, help="rows per call")
    parser.add_argument("--train-rows", type=int, default=1_000_000,
                        help="rows for the GPU vs CPU training comparison (0: skip it)")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from inference import runtime, tree_graph

    sizes = (100_000, 1_000_000) if args.quick else (1_000_000, 10_000_000)
    result, names = _model()
    tensor = tree_graph.tensor_graph(result.estimator, task="regression", n_features=10,
                                     classes=None, has_proba=False, error_columns=[],
                                     feature_names=names)
    cuda = runtime.CUDA in runtime.providers()
    cpu_opts = ort.SessionOptions()
    cpu_opts.intra_op_num_threads = os.cpu_count() or 1
    cpu = ort.InferenceSession(result.onnx, cpu_opts, providers=[runtime.CPU])
    gpu = None
    if cuda:
        gpu = ort.InferenceSession(tensor, providers=[runtime.CUDA, runtime.CPU])
        if runtime.CUDA not in gpu.get_providers():
            gpu, cuda = None, False
    booster = result.estimator[-1].get_booster()
    compiled = _compiled(result)
    rng = np.random.default_rng(1)
    print(f"GPU scoring benchmark: XGBoost 100 trees depth 6, 10 features; {os.cpu_count()} "
          f"cores; onnxruntime {ort.__version__}; CUDA device: {'yes' if cuda else 'no'}; "
          f"batch {args.batch} rows")
    for n in sizes:
        X = rng.normal(size=(n, 10)).astype(np.float32)
        rows = {
            "cpu treeensemble (onnxruntime, all cores)":
                _rate(lambda b: cpu.run(None, {"features": b}), X, args.batch),
            "xgboost native (cpu)": _rate(lambda b: booster.inplace_predict(b), X, args.batch),
        }
        if compiled is not None:  # pgml's CPU batch path (compiled_scorer.py), all cores
            rows["cpu compiled trees (all cores)"] = _rate(
                lambda b: compiled.rows(b, threads=os.cpu_count() or 1), X, args.batch)
        if gpu is not None:
            rows["gpu tensor graph (onnxruntime CUDA)"] = _rate(
                lambda b: gpu.run(None, {"features": b}), X, args.batch)
            try:
                booster.set_param({"device": "cuda"})
                rows["xgboost native (cuda)"] = _rate(lambda b: booster.inplace_predict(b), X,
                                                      args.batch)
            except Exception as exc:  # noqa: BLE001 - a CPU-only XGBoost build
                print(f"  xgboost cuda: {exc}")
            finally:
                booster.set_param({"device": "cpu"})
        for label, rate in rows.items():
            print(f"  {n:>10,} rows  {label:44s} {rate:14,.0f} rows/s")
        if gpu is None:
            print(f"  {n:>10,} rows  gpu tensor graph: no CUDA device on this machine")
        else:
            best_cpu = max(v for k, v in rows.items() if "cpu" in k)
            print(f"  {n:>10,} rows  gpu tensor / best cpu: "
                  f"{rows['gpu tensor graph (onnxruntime CUDA)'] / best_cpu:.1f}x")
    if args.train_rows:
        training(args.train_rows, runtime.cuda_device_present())


if __name__ == "__main__":
    main()
