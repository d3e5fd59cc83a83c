"""pgml.predict per row and a brand-new backend's first call: compiled trees vs the ONNX graph.

The per-row half of the prediction benchmark (benchmarks/predict.py has the rest and its
model): XGBoost, 100 trees of depth 6, diabetes' 10 features, pgml.train'ed; distinct rows
(diabetes rows plus Gaussian noise, consecutive rows from different base rows). In the same
run and cluster:

  (a) SELECT sum(pgml.predict(...)) over N rows, us per row, median of 3 (wall, and the
      backend's CPU from /proc): the PL/Python call floor (a function that returns 1.0),
      compiled trees (the default where a C compiler is), the ONNX graph (a backend with
      ``pgml.compiled_trees = off``), and pgml.model_predict (by id) both ways;
  (b) a brand-new backend's first pgml.predict after a deploy (connect, then time the one
      statement: bootstrap, imports, model load, the row), median of 3, both ways: wall and
      the backend's CPU for that statement, and which of numpy / onnxruntime / scikit-learn
      that backend imported. The package is installed as pip leaves it (a copy of inference/
      with compiled bytecode), not imported from this checkout;
  (c) one batch of the same rows scored in this process, one thread: the model's compiled
      trees against its ONNX graph (files read from pgml.files), rows/s of process CPU.

Run: .venv/bin/python -m benchmarks.predict_row [--rows N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.predict import PROJECT, _cpu_seconds, setup
from devtools.localcluster import REPLICA_SETTINGS, running_cluster
from replica.target.pgml_install import install

OFF = "-c pgml.compiled_trees=off"
HEAVY = ("numpy", "onnxruntime", "onnx", "sklearn", "xgboost")


def _median_of_3(conn, query: str, params) -> tuple[float, float]:
    """(median wall s, median backend CPU s) of 3 runs after one warm-up run."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.execute(query, params).fetchall()
    walls, cpus = [], []
    for _ in range(3):
        cpu, start = _cpu_seconds(pid), time.perf_counter()
        conn.execute(query, params).fetchall()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds(pid) - cpu)
    return statistics.median(walls), statistics.median(cpus)


def per_row(dsn: str, model_id: int, rows: int) -> dict:
    import psycopg

    out = {}
    with psycopg.connect(dsn, autocommit=True) as compiled, \
            psycopg.connect(dsn, autocommit=True, options=OFF) as graph:
        compiled.execute("CREATE OR REPLACE FUNCTION bench_floor(p text, f float8[], k float8)"
                         " RETURNS float8 LANGUAGE plpython3u STABLE STRICT AS $$ return 1.0 $$")
        where = " FROM bench_rows WHERE id <= %s"
        for key, conn, query, params in (
                ("floor", compiled, "SELECT sum(bench_floor('bench', features, date_part("
                                    "'epoch', statement_timestamp())))" + where, (rows,)),
                ("compiled", compiled, "SELECT sum(pgml.predict(%s, features))" + where,
                 (PROJECT, rows)),
                ("onnx", graph, "SELECT sum(pgml.predict(%s, features))" + where,
                 (PROJECT, rows)),
                ("compiled_model_predict", compiled,
                 "SELECT sum(pgml.model_predict(%s, features))" + where, (model_id, rows)),
                ("onnx_model_predict", graph,
                 "SELECT sum(pgml.model_predict(%s, features))" + where, (model_id, rows))):
            wall, cpu = _median_of_3(conn, query, params)
            out[key] = (wall / rows * 1e6, cpu / rows * 1e6)
        out["graphs"] = [c.execute("SELECT pgml.runtime_info(%s)->'project'->>'graph'",
                                   (PROJECT,)).fetchone()[0] for c in (compiled, graph)]
    return out


def first_call(dsn: str, model_id: int) -> dict:
    """Median of 3 brand-new backends' first pgml.predict, compiled and ONNX, after a deploy
    (of the trained model by id: setup's most recent model is its native-runtime copy)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgml.deploy(%s::bigint)", (model_id,))
        conn.execute("CREATE OR REPLACE FUNCTION bench_modules() RETURNS text[]"
                     " LANGUAGE plpython3u AS $$\nimport sys\n"
                     f"return sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))"
                     "\n$$")
        row = conn.execute("SELECT features FROM bench_rows WHERE id = 1").fetchone()[0]
    out = {}
    for key, options in (("compiled", ""), ("onnx", OFF)):
        times, cpus, modules = [], [], None
        for _ in range(3):
            with psycopg.connect(dsn, autocommit=True, options=options) as fresh:
                pid = fresh.execute("SELECT pg_backend_pid()").fetchone()[0]
                cpu, start = _cpu_seconds(pid), time.perf_counter()
                fresh.execute("SELECT pgml.predict(%s, %s::float8[])", (PROJECT, row)).fetchone()
                times.append(time.perf_counter() - start)
                cpus.append(_cpu_seconds(pid) - cpu)
                modules = fresh.execute("SELECT bench_modules()").fetchone()[0]
        out[key] = (statistics.median(times) * 1000, [t * 1000 for t in times], modules,
                    statistics.median(cpus) * 1000)
    return out


def _staged_package(tmp: str) -> list[str]:
    """The python path of an installed package: a copy of inference/ with its bytecode
    compiled (as pip leaves a wheel; this checkout runs with PYTHONDONTWRITEBYTECODE, so a
    backend importing it in place would compile every module on its first call), then the
    environment's site-packages."""
    import compileall
    import shutil
    import sysconfig
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    stage = Path(tmp, "pypath")
    shutil.copytree(root / "inference", stage / "inference",
                    ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(stage / "inference"), quiet=1)
    for dirpath, _dirnames, filenames in os.walk(tmp):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return [str(stage), str(Path(sysconfig.get_paths()["purelib"]).resolve())]


def batch_rates(dsn: str, model_id: int, tmp: str) -> dict:
    """(c) rows/s of one batch of the benchmark's distinct rows, one thread, process CPU: the
    model's compiled trees (``pgml_rows``) against its ONNX graph (onnxruntime TreeEnsemble),
    loaded from pgml.files into this process."""
    import numpy as np
    import psycopg

    os.environ["PGML_COMPILED_TREES_DIR"] = os.path.join(tmp, "compiled")
    from inference import compiled_scorer
    from inference.runtime import OnnxScorer

    with psycopg.connect(dsn, autocommit=True) as conn:
        files = dict(conn.execute("SELECT path, string_agg(data, ''::bytea ORDER BY part)"
                                  " FROM pgml.files WHERE model_id = %s GROUP BY path",
                                  (model_id,)).fetchall())
        X = np.array([r[0] for r in conn.execute("SELECT features FROM bench_rows ORDER BY id")])
    trees = compiled_scorer.load(bytes(files["trees.c"]).decode(), model_id)
    graph = OnnxScorer(bytes(files["model.onnx"]), "regression", X.shape[1])
    rates = {}
    for key, fn in (("compiled", lambda: trees.rows(X)), ("onnx", lambda: graph.predict(X))):
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        rates[key] = len(X) / best
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per per-row run")
    args = parser.parse_args(argv)
    import tempfile

    import psycopg

    with running_cluster("bench-predict-row", REPLICA_SETTINGS) as cluster, \
            tempfile.TemporaryDirectory() as tmp:
        cluster.create_database("bench")
        dsn = cluster.dsn("bench")
        install(dsn, python_path=_staged_package(tmp))
        with psycopg.connect(dsn, autocommit=True) as conn:
            ids = setup(conn, args.rows, 1_000)
        load_before = os.getloadavg()
        a = per_row(dsn, ids["onnx_id"], args.rows)
        b = first_call(dsn, ids["onnx_id"])
        c = batch_rates(dsn, ids["onnx_id"], tmp)
        load_after = os.getloadavg()
    print(f"pgml.predict per row and first call (XGBoost 100 trees depth 6, 10 features, "
          f"distinct rows; {os.cpu_count()} cores; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after)")
    print(f"(a) per row over {args.rows} rows, median of 3      wall        backend CPU")
    for key, label in (("floor", "PL/Python call floor"), ("compiled", "pgml.predict, compiled"),
                       ("onnx", "pgml.predict, ONNX graph"),
                       ("compiled_model_predict", "model_predict, compiled"),
                       ("onnx_model_predict", "model_predict, ONNX graph")):
        wall, cpu = a[key]
        print(f"    {label:36s} {wall:7.2f} us  {cpu:7.2f} us/row")
    print(f"    ONNX / compiled: {a['onnx'][0] / a['compiled'][0]:.2f}x wall, "
          f"{a['onnx'][1] / a['compiled'][1]:.2f}x CPU; above the floor: compiled "
          f"{a['compiled'][1] - a['floor'][1]:.2f} us, ONNX {a['onnx'][1] - a['floor'][1]:.2f} us "
          f"CPU (runtime_info graphs: {a['graphs']})")
    for key in ("compiled", "onnx"):
        median, runs, modules, cpu = b[key]
        print(f"(b) first pgml.predict, brand-new backend, {key:8s}: median {median:6.0f} ms "
              f"wall (runs {', '.join(f'{t:.0f}' for t in runs)} ms), backend CPU {cpu:.0f} ms;"
              f" imported: {modules or 'none'}")
    print(f"(c) one batch of the {args.rows} rows, one thread, best of 3 (process CPU): compiled "
          f"{c['compiled']:,.0f} rows/s, ONNX TreeEnsemble {c['onnx']:,.0f} rows/s -> "
          f"{c['compiled'] / c['onnx']:.1f}x")


if __name__ == "__main__":
    main()
