"""pgml prediction benchmark: in-database scoring against the service-based alternative.

One run, one model: XGBoost, 100 trees of depth 6, on diabetes (10 features), trained with
pgml.train and exported to ONNX. Measured on a throw-away ML replica cluster:

  (a) SELECT pgml.predict(...) FROM t over N rows: us per row, ONNX runtime vs the native
      (pickled XGBoost) runtime of the same model, and the PL/Python call floor
  (b) pgbench, one pgml.predict per query, 1 and 2 clients: queries/s
  (c) pgml.predict_batch over N rows in one call: rows/s (default settings, and on one thread)
  (d) the service the seeds describe: a FastAPI/uvicorn server holding the same ONNX model; a
      client reads a row's features from Postgres and POSTs them; 1 and 2 clients:
      requests/s and latency
  (e) train-time overhead: pgml.train wall time vs fitting the same estimator on the same
      in-memory training rows, 1M rows x 10 features (XGBoost, and LinearRegression), in a
      backend that has trained before (libraries imported), and what the first pgml.train of a
      fresh backend adds (importing scikit-learn, XGBoost, skl2onnx, ... once per backend)

Rows are distinct: each is a diabetes row plus Gaussian noise (5 % of the feature's spread), so
no row repeats, and consecutive rows come from different diabetes rows. A tree ensemble scores
repeated rows much faster than distinct ones (the CPU's branch predictor learns their paths),
and real tables do not repeat rows. Per-row and batch
timings also report the backend's CPU time (from /proc/<pid>/schedstat) next to wall time,
which a shared machine disturbs less.

Run: .venv/bin/python -m benchmarks.predict [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from devtools.localcluster import PG_BIN, REPLICA_SETTINGS, free_port, running_cluster
from replica.target.pgml_install import install

MODEL = {"n_estimators": 100, "max_depth": 6}
PROJECT = "bench"
TRAIN_REPEATS = 2
FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def _cpu_seconds(pid: int, all_threads: bool = False) -> float:
    """CPU time a server process has used (the benchmark runs on the server's machine).

    schedstat counts the main thread in nanoseconds; /proc/<pid>/stat counts every thread the
    process ever had (predict_batch's helpers are gone by the time we look), in clock ticks.
    """
    if not all_threads:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(conn, query: str, params=None, repeat: int = 3,
           all_threads: bool = False) -> tuple[float, float]:
    """(best wall time, best backend CPU time) of ``repeat`` runs (the first also warms)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    wall = cpu = float("inf")
    for _ in range(repeat):
        cpu_start, start = _cpu_seconds(pid, all_threads), time.perf_counter()
        conn.execute(query, params).fetchall()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, _cpu_seconds(pid, all_threads) - cpu_start)
    return wall, cpu


def setup(conn, rows: int, batch_rows: int) -> dict:
    conn.execute("SELECT pgml.load_dataset('diabetes')")
    conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target',"
                 " 'xgboost', %s)", (PROJECT, json.dumps(MODEL)))
    onnx_id = conn.execute("SELECT max(id) FROM pgml.models").fetchone()[0]
    # The same fitted model scored natively: a copy of the model row with runtime 'python'
    # (its model.pkl is the very pipeline the ONNX graph was exported from).
    native_id = conn.execute(
        "INSERT INTO pgml.models (project_id, snapshot_id, num_features, algorithm, runtime,"
        " hyperparams, metrics, parity, preprocess, classes)"
        " SELECT project_id, snapshot_id, num_features, algorithm, 'python', hyperparams,"
        " metrics, parity, preprocess, classes FROM pgml.models WHERE id = %s RETURNING id",
        (onnx_id,)).fetchone()[0]
    conn.execute("INSERT INTO pgml.files (model_id, path, data) SELECT %s, path, data"
                 " FROM pgml.files WHERE model_id = %s AND path = 'model.pkl'",
                 (native_id, onnx_id))
    copies = -(-rows // 442)
    conn.execute("SELECT setseed(0.42)")
    noisy = ", ".join(f"{c} + 0.05 * s_{c} * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())"
                      for c in FEATURES)  # Box-Muller: Gaussian noise, 5 % of the column's spread
    spreads = ", ".join(f"stddev_pop({c}) AS s_{c}" for c in FEATURES)
    # Consecutive rows cycle through the 442 base rows (ORDER BY copy, then row): near-copies
    # of one base row one after another would take nearly the same tree paths, which the
    # branch predictor learns (5.6 instead of 7.6 us per row, measured).
    conn.execute(f"CREATE TABLE bench_rows AS SELECT row_number() OVER (ORDER BY g, d.n) AS id,"  # noqa: S608 - constants
                 f" ARRAY[{noisy}]::float8[] AS features"
                 f" FROM (SELECT row_number() OVER () AS n, * FROM pgml.diabetes) d,"
                 f" (SELECT {spreads} FROM pgml.diabetes) s, generate_series(1, %s) g"
                 f" ORDER BY g, d.n LIMIT %s", (copies, rows))
    conn.execute("ALTER TABLE bench_rows ADD PRIMARY KEY (id)")
    conn.execute("CREATE TABLE bench_flat AS SELECT array_agg(x ORDER BY id, i) AS a"
                 " FROM bench_rows, unnest(features) WITH ORDINALITY u(x, i) WHERE id <= %s",
                 (batch_rows,))
    conn.execute("VACUUM ANALYZE bench_rows")
    onnx = conn.execute("SELECT data FROM pgml.files WHERE model_id = %s AND path ="
                        " 'model.onnx'", (onnx_id,)).fetchone()[0]
    return {"onnx_id": onnx_id, "native_id": native_id, "onnx": bytes(onnx)}


# -- (a) per-row SELECT -------------------------------------------------------------------


def per_row(conn, ids: dict, rows: int, native_rows: int) -> dict:
    conn.execute("CREATE OR REPLACE FUNCTION bench_floor(p text, f float8[], k float8)"
                 " RETURNS float8 LANGUAGE plpython3u STABLE STRICT AS $$ return 1.0 $$")
    out = {}
    for key, query, params, n in (
            ("floor", "SELECT sum(bench_floor('bench', features, date_part('epoch',"
                      " statement_timestamp()))) FROM bench_rows WHERE id <= %s", (rows,), rows),
            ("onnx", "SELECT sum(pgml.predict(%s, features)) FROM bench_rows WHERE id <= %s",
             (PROJECT, rows), rows),
            ("onnx_model_predict", "SELECT sum(pgml.model_predict(%s, features)) FROM bench_rows"
                                   " WHERE id <= %s", (ids["onnx_id"], rows), rows),
            ("native", "SELECT sum(pgml.model_predict(%s, features)) FROM bench_rows"
                       " WHERE id <= %s", (ids["native_id"], native_rows), native_rows)):
        wall, cpu = _timed(conn, query, params, repeat=2 if key == "native" else 3)
        out[f"{key}_us"], out[f"{key}_cpu_us"] = wall / n * 1e6, cpu / n * 1e6
    return out


# -- (b) pgbench ---------------------------------------------------------------------------


def pgbench(cluster, dbname: str, clients: int, seconds: int) -> float:
    """Steady-state queries/s: per-second counts from pgbench's log, first 2 s dropped (each
    client's first call imports the Python stack in its backend)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "predict.sql")
        script.write_text("\\set id random(1, 400)\n"
                          "SELECT pgml.predict('bench', features) FROM bench_rows WHERE id = :id;\n")
        subprocess.run([str(PG_BIN / "pgbench"), "-n", "-M", "prepared", "-c", str(clients),
                        "-j", str(clients), "-T", str(seconds + 2), "-l",
                        "--aggregate-interval=1", "-f", str(script), "-h", cluster.host,
                        "-p", str(cluster.port), "-U", "postgres", dbname],
                       check=True, capture_output=True, text=True, cwd=tmp, timeout=seconds + 60)
        per_second: dict[int, int] = {}
        for log in Path(tmp).glob("pgbench_log.*"):
            for line in log.read_text().splitlines():
                t, count = line.split()[:2]
                per_second[int(t)] = per_second.get(int(t), 0) + int(count)
    steady = [per_second[t] for t in sorted(per_second)[2:-1]]
    return statistics.mean(steady) if steady else 0.0


# -- (c) predict_batch ---------------------------------------------------------------------


CONFIGURATIONS = ("default", "one_thread", "onnx_only")


def _configure(conn, key: str | None) -> None:
    """The session settings of one scoring configuration (None: back to the defaults):
    as configured; one thread; as configured but onnxruntime's TreeEnsemble scores batches."""
    conn.execute("RESET max_parallel_workers_per_gather")
    conn.execute("RESET pgml.native_bulk")
    conn.execute("RESET pgml.bulk_copy")
    conn.execute("RESET pgml.bulk_chunk_rows")
    if key == "one_thread":
        conn.execute("SET max_parallel_workers_per_gather = 0")
    elif key == "onnx_only":
        conn.execute("SET pgml.native_bulk = off")
    elif key == "array_write":
        conn.execute("SET pgml.bulk_copy = off")
    elif key == "one_chunk":  # predict_relation without the overlap: read all, score, write
        conn.execute("SET pgml.bulk_chunk_rows = 0")
    elif key is not None and key.startswith("chunks_"):  # chunks of this many rows
        conn.execute(f"SET pgml.bulk_chunk_rows = {int(key.split('_', 1)[1])}")


def batch(conn, rows: int) -> dict:
    """predict_batch as configured (threads: max_parallel_workers_per_gather + 1, capped by the
    cores), then on one thread; plus what reading the argument and returning rows cost alone."""
    query = "SELECT count(p) FROM bench_flat, pgml.predict_batch(%s, a) p"
    out = {}
    for key in CONFIGURATIONS:
        _configure(conn, key)
        wall, cpu = _timed(conn, query, (PROJECT,), all_threads=True)
        out[key] = {"rows_per_s": rows / wall, "seconds": wall, "cpu_s": cpu}
    _configure(conn, None)
    return out


RELATION_CONFIGURATIONS = (*CONFIGURATIONS, "array_write", "one_chunk")


def relation(conn, rows: int, configurations=RELATION_CONFIGURATIONS, repeat: int = 3) -> dict:
    """(f) pgml.predict_relation over the first ``rows`` rows as a table of feature columns,
    keyed by id: end to end (read, score, write the new table), median of ``repeat`` runs, wall
    and the backend's CPU (all its threads): as configured (chunks read while a worker thread
    scores), one thread (the chunks in turn), onnxruntime scoring, the results written through
    array parameters instead of binary COPY, and the relation read as one chunk (no overlap:
    read, then score, then write, as before the overlap); ``chunks_N``: chunks of N rows."""
    cols = ", ".join(f"features[{i + 1}] AS {c}" for i, c in enumerate(FEATURES))
    conn.execute("DROP TABLE IF EXISTS bench_wide")
    conn.execute(f"CREATE TABLE bench_wide AS SELECT id, {cols} FROM bench_rows"  # noqa: S608 - constants
                 " WHERE id <= %s", (rows,))
    conn.execute("VACUUM ANALYZE bench_wide")
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    out = {}
    for key in configurations:
        _configure(conn, key)
        walls, cpus = [], []
        for _ in range(repeat):
            conn.execute("DROP TABLE IF EXISTS bench_scored")
            cpu, start = _cpu_seconds(pid, True), time.perf_counter()
            n = conn.execute("SELECT pgml.predict_relation(%s, 'bench_wide', '{id}',"
                             " 'bench_scored')", (PROJECT,)).fetchone()[0]
            walls.append(time.perf_counter() - start)
            cpus.append(_cpu_seconds(pid, True) - cpu)
        wall = statistics.median(walls)
        info = json.loads(conn.execute("SELECT pgml.runtime_info(%s)::text", (PROJECT,))
                          .fetchone()[0]).get("last_predict_relation", {})
        out[key] = {"rows": n, "seconds": wall, "rows_per_s": n / wall, "walls": walls,
                    "cpu_s": statistics.median(cpus), "load": os.getloadavg()[0],
                    "steps": info.get("seconds", {}), "scored_by": info.get("scored_by"),
                    "chunks": info.get("chunks")}
    _configure(conn, None)
    return out


# -- (d) the service alternative -----------------------------------------------------------


class Features(BaseModel):
    features: list[float]


def make_app():
    """The model server: FastAPI holding the same ONNX model, scored by the same Scorer."""
    from fastapi import FastAPI

    from inference.routing import load_scorer

    scorer = load_scorer("onnx", Path(os.environ["PGML_BENCH_ONNX"]).read_bytes(), None,
                         "regression", 10)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/predict")
    def predict(body: Features) -> dict:
        return {"prediction": scorer.predict_one(body.features)}

    return app


def _service_client(dsn: str, url: str, seconds: float, queue) -> None:
    import httpx
    import psycopg

    latencies = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn, httpx.Client() as http:
            deadline = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                features = conn.execute("SELECT features FROM bench_rows WHERE id = %s",
                                        (i % 400 + 1,), prepare=True).fetchone()[0]
                response = http.post(url, json={"features": features})
                response.raise_for_status()
                _ = response.json()["prediction"]
                latencies.append(time.perf_counter() - start)
                i += 1
    except Exception as exc:  # reported by the parent, which would otherwise wait in vain
        queue.put(f"{type(exc).__name__}: {exc}")
        return
    queue.put(latencies)


def service(dsn: str, onnx: bytes, clients_list: list[int], seconds: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        f.write(onnx)
    port = free_port()
    env = {**os.environ, "PGML_BENCH_ONNX": f.name}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "benchmarks.predict:make_app",
                               "--factory", "--port", str(port), "--log-level", "warning",
                               "--no-access-log"], env=env)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the model server did not start") from None
                time.sleep(0.2)
        results = {}
        ctx = mp.get_context("spawn")
        for clients in clients_list:
            queue = ctx.Queue()
            procs = [ctx.Process(target=_service_client,
                                 args=(dsn, f"http://127.0.0.1:{port}/predict", seconds, queue))
                     for _ in range(clients)]
            for p in procs:
                p.start()
            latencies = []
            for _ in procs:
                got = queue.get(timeout=seconds + 120)
                if isinstance(got, str):
                    raise RuntimeError(f"a service client failed: {got}")
                latencies += got
            for p in procs:
                p.join(timeout=30)
            lat = np.array(latencies) * 1e3
            results[clients] = {"requests_per_s": len(latencies) / seconds,
                                "p50_ms": float(np.percentile(lat, 50)),
                                "p99_ms": float(np.percentile(lat, 99))}
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.unlink(f.name)


# -- (e) train-time overhead ---------------------------------------------------------------


def train_overhead(dsn: str, rows: int, repeats: int = TRAIN_REPEATS) -> dict:
    """pgml.train on 1M x 10 against the same estimator's fit on the same training rows.

    The timed pgml.train runs in a backend that has trained before (as a pooled connection
    would be), so it measures the per-call overhead; what the first pgml.train of a fresh
    backend adds -- importing the Python stack -- is measured on its own, on diabetes.
    """
    import psycopg
    import xgboost
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import train_test_split

    xs = ", ".join(f"x{i}" for i in range(10))
    randoms = ", ".join(f"random() AS x{i}" for i in range(10))
    out: dict = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big AS SELECT *, 3 * x0 - 2 * x1 + x2 * x3 + sin(6 * x4)"  # noqa: S608 - constants
                     f" + random() / 10 AS y FROM (SELECT {randoms} FROM generate_series(1, %s)) s",
                     (rows,))
        conn.execute("VACUUM ANALYZE big")
        cur = conn.cursor(binary=True)
        data = np.array(cur.execute(f"SELECT {xs}, y FROM big").fetchall(),  # noqa: S608 - constants
                        dtype=np.float64)
    X, y = data[:, :10], data[:, 10]
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.25, random_state=0)
    for name, algorithm, hyper, make in (
            ("xgboost", "xgboost", MODEL,
             lambda: xgboost.XGBRegressor(**MODEL, random_state=0, verbosity=1)),
            ("linear", "linear", {}, LinearRegression)):
        trains, fits_inside, fits = [], [], []
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = time.perf_counter()
            conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target',"
                         " %s, %s)", (f"warmup_{name}", algorithm, json.dumps(hyper)))
            first_call = time.perf_counter() - start
            start = time.perf_counter()
            conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target',"
                         " %s, %s)", (f"warmup_{name}", algorithm, json.dumps(hyper)))
            small_warm = time.perf_counter() - start
            # Interleaved repeats, best of each: on a shared 2-core machine an OpenMP fit that
            # loses a core to another process can take 2-4x longer, in or out of the database.
            for _ in range(repeats):
                start = time.perf_counter()
                conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'big', 'y', %s, %s)",
                             (f"overhead_{name}", algorithm, json.dumps(hyper)))
                trains.append(time.perf_counter() - start)
                fit_inside, table = conn.execute(
                    "SELECT (m.metrics->>'fit_time')::float8, CASE WHEN s.materialized THEN"
                    " 'pgml.snapshot_' || m.snapshot_id END FROM pgml.models m"
                    " JOIN pgml.snapshots s ON s.id = m.snapshot_id"
                    " ORDER BY m.id DESC LIMIT 1").fetchone()
                fits_inside.append(fit_inside)
                # A new 1M-row snapshot copy draws autovacuum once committed; done here,
                # untimed, so it does not run beside (and slow) the next fit. (The default
                # snapshot reads the relation in place: no copy.)
                if table:
                    conn.execute(f"VACUUM ANALYZE {table}")
                start = time.perf_counter()
                make().fit(X_train, y_train)
                fits.append(time.perf_counter() - start)
        overhead = min(t - f for t, f in zip(trains, fits_inside, strict=True))
        out[name] = {"train_s": min(trains), "fit_in_db_s": min(fits_inside),
                     "fit_in_memory_s": min(fits), "ratio": min(trains) / min(fits),
                     "overhead_s": overhead,
                     "ratio_from_overhead": (min(fits) + overhead) / min(fits),
                     "trains": trains, "fits": fits, "first_call_extra_s": first_call - small_warm,
                     "median_ratio": statistics.median(trains) / statistics.median(fits)}
    return out


POST_FIT_STEPS = """
CREATE FUNCTION pg_temp.step_timers_on() RETURNS void LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
import gc, importlib, resource, time
# (step, module, attribute): wall seconds and calls of each, nested ones inside their caller's;
# names a version lacks are skipped (the same function times before and after a change).
# Installed once per backend and left in place: the client's own pgml.train is then timed
# step by step in the same call as its wall clock (step_times reads and resets them).
STEPS = [("pgml.train total", "inference.sql_api", "train"),
         ("snapshot rows (store.new_snapshot)", "inference.store", "new_snapshot"),
         ("load (relations.load)", "inference.relations", "load"),
         ("  statistics (column_stats.analyze; in a thread from 2026-12-05)",
          "inference.column_stats", "analyze"),
         ("statistics: wait for them and store them", "inference.column_stats", "Beside.finish"),
         ("  store.finish_snapshot", "inference.store", "finish_snapshot"),
         ("split (train_split.split)", "inference.train_split", "split"),
         ("encoding.fit", "inference.encoding", "fit"),
         ("gather (relations.gather)", "inference.relations", "gather"),
         ("as_float_matrix", "inference.training", "as_float_matrix"),
         ("fit_preprocessor", "inference.training", "fit_preprocessor"),
         ("apply_preprocessor", "inference.training", "apply_preprocessor"),
         ("fit", "inference.training", "_fit"),
         ("start compile (C source, gcc started)", "inference.training", "_start_compile"),
         ("ONNX export + parity", "inference.training", "_export_and_check"),
         ("  onnx_export.export", "inference.onnx_export", "export"),
         ("    skl2onnx.to_onnx", "skl2onnx", "to_onnx"),
         ("    fold_imputation_into_trees", "inference.onnx_graph", "fold_imputation_into_trees"),
         ("store.insert_model", "inference.store", "insert_model"),
         ("feature_importances", "inference.projects", "feature_importances"),
         ("native answers on the sample", "inference.projects", "_native_on_sample"),
         ("tensor graph + parity", "inference.tree_graph", "for_training"),
         ("compiled trees + parity", "inference.projects", "_compile_trees"),
         ("  wait for gcc (started early)", "inference.compiled_scorer", "Build.finish"),
         ("  gcc in the foreground", "inference.compiled_scorer", "build"),
         ("  c_source", "inference.compiled_trees", "c_source"),
         ("  ensemble_of (tree_graph)", "inference.tree_graph", "ensemble_of"),
         ("  ensemble_of (others)", "inference.tree_graph_models", "ensemble_of"),
         ("deploy decision", "inference.projects", "_beats_deployed")]
if "bench_times" not in GD:
    times = GD["bench_times"] = {}
    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent, calls = times.get(name, (0.0, 0))
                times[name] = (spent + time.perf_counter() - start, calls + 1)
        return wrapper
    for name, module, attr in STEPS:
        owner = importlib.import_module(module)
        *path, leaf = attr.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, leaf):
            continue
        setattr(owner, leaf, timed(name, getattr(owner, leaf)))
    collecting = []
    def on_gc(phase, info):  # the cyclic collector's passes, wherever they fall
        if phase == "start":
            collecting[:] = [time.perf_counter()]
        elif collecting:
            spent, calls = times.get("  (gc passes, anywhere)", (0.0, 0))
            times["  (gc passes, anywhere)"] = (spent + time.perf_counter() - collecting[0],
                                                calls + 1)
    gc.callbacks.append(on_gc)
GD["bench_times"].clear()
usage = resource.getrusage(resource.RUSAGE_SELF)
GD["bench_usage"] = (usage.ru_utime + usage.ru_stime, usage.ru_minflt)
$$;
CREATE FUNCTION pg_temp.step_times() RETURNS text LANGUAGE plpython3u AS $$
import json, resource
times = dict(GD["bench_times"])
score = plpy.execute("SELECT (metrics->>'score_time')::float8 AS s FROM pgml.models"
                     " ORDER BY id DESC LIMIT 1")[0]["s"]
times["score the test split (metrics)"] = (score, 1)
# what no step above covers (top-level steps are disjoint): pickling, the entry, SQL around
top = [v[0] for k, v in times.items() if not k.startswith(" ") and k != "pgml.train total"]
times["the rest (total - top-level steps)"] = (times["pgml.train total"][0] - sum(top), 1)
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu, faults = GD["bench_usage"]
times["  backend CPU s, all threads (not wall)"] = (usage.ru_utime + usage.ru_stime - cpu, 1)
times["  minor page faults / 1e5 (not s)"] = ((usage.ru_minflt - faults) / 1e5, 1)
return json.dumps(times)
$$;
"""


def post_fit_steps(dsn: str, table: str = "big", repeat: int = 3) -> dict:
    """pgml.train's steps (XGBoost, 100 x depth 6), wall seconds inside the backend in the
    same call as the client's wall clock and its COMMIT, median of ``repeat`` runs in a
    backend that has trained before: {step: (seconds, calls)}."""
    import psycopg

    runs = []
    with psycopg.connect(dsn) as conn:
        conn.execute(POST_FIT_STEPS)
        conn.execute("SELECT * FROM pgml.train('warmup_post_fit', 'regression', 'pgml.diabetes',"
                     " 'target', 'xgboost', %s)", (json.dumps(MODEL),))  # imports, not timed
        conn.commit()
        for _ in range(repeat):
            conn.execute("SELECT pg_temp.step_timers_on()")
            conn.commit()
            start = time.perf_counter()
            conn.execute("SELECT * FROM pgml.train('post_fit', 'regression', %s, 'y', 'xgboost',"
                         " %s)", (table, json.dumps(MODEL))).fetchall()
            answered = time.perf_counter()
            conn.commit()
            committed = time.perf_counter()
            got = json.loads(conn.execute("SELECT pg_temp.step_times()").fetchone()[0])
            conn.commit()
            got["client: SELECT pgml.train, wall"] = (answered - start, 1)
            got["client: its COMMIT"] = (committed - answered, 1)
            got["client wall - pgml.train total"] = (answered - start
                                                     - got["pgml.train total"][0], 1)
            runs.append(got)
    return {k: (statistics.median(r[k][0] for r in runs), runs[0][k][1]) for k in runs[0]}


def _print_post_fit(steps: dict) -> None:
    print("    pgml.train's steps, XGBoost, wall s inside the backend, timed in the client's call"
          " (median of 3; calls):")
    for name, (seconds, calls) in steps.items():
        print(f"      {name:40s} {seconds:7.3f}  ({calls})")


TRAIN_STEPS = """
CREATE FUNCTION pg_temp.train_steps(rel text, y text, materialize bool, reference bool)
RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
import json, time
import numpy as np
from inference import column_stats, float8_bytes, relations, store, train_split

def analyze_before(values):  # column_stats.analyze before issue 12's round (numpy calls)
    out = {}
    for name, col in values.items():
        col = np.asarray(col, dtype=np.float64)
        nan = np.isnan(col)
        missing = int(nan.sum())
        present = col[~nan] if missing else col
        out[name] = {"count": int(present.size), "missing": missing, "mean": float(present.mean()),
                     "stddev": float(present.std()), "min": float(present.min()),
                     "max": float(present.max()), "median": float(np.median(present))}
    return out

def gather_before(values, names, rows):  # relations.gather before issue 12's round
    out = np.empty((len(rows), len(names)))
    for j, name in enumerate(names):
        np.take(np.asarray(values[name], dtype=np.float64), rows, out=out[:, j])
    return out

def load_before(table, cols, *_):  # relations.load before issue 12's round: one array_agg
    parts = ["count(*)::int8 AS n"] + [  # per column, coalesce per value
        float8_bytes.float8_column_sql(plpy.quote_ident(c.name) + "::float8", True) + f" AS c{i}"
        for i, c in enumerate(cols)]
    plpy.execute("SET LOCAL synchronize_seqscans = off")
    plpy.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    row = plpy.execute(f"SELECT {', '.join(parts)} FROM {table}")[0]
    return row["n"], {c.name: float8_bytes.float8_column(row[f"c{i}"], row["n"], True)
                      for i, c in enumerate(cols)}

analyze = analyze_before if reference else column_stats.analyze
gather = gather_before if reference else relations.gather
load = load_before if reference else relations.load
cpu = {}
def step(name, fn, *args):
    start = time.process_time()
    result = fn(*args)
    cpu[name] = time.process_time() - start
    return result

oid, source = relations.resolve(rel)
cols = relations.columns(oid)
meta = [{"name": c.name, "pg_type": c.pg_type, "position": c.position, "nullable": c.nullable,
         "label": c.name == y} for c in cols]
snap = store.new_snapshot(source, [y], 0.25, "random", meta,
                          relations.needs_copy(oid, cols, materialize))
step("snapshot", relations.materialize, snap, source, cols)
n, values = step("load", load, snap.table, cols, {}, {}, (y,))
step("statistics", analyze, values)
train, test = step("split", train_split.split, n, 0.25, "random", 0)
features = [c.name for c in cols if c.name != y]
step("gather", lambda: [gather(values, names, r) for names in (features, [y])
                        for r in (train, test)])
cpu["total"] = sum(cpu.values())
return json.dumps(cpu)
$$
"""

STEP_MODES = {"before": (True, True), "copy": (True, False), "in_place": (False, False)}


def train_steps(dsn: str, table: str = "big", repeat: int = 3) -> dict:
    """pgml.train's steps beside the fit, backend CPU seconds per step, median of ``repeat``
    interleaved runs of each mode: 'before' (a copy, and load, statistics and gather as they
    were before issue 12's round), 'copy' (materialize_snapshot => true now), 'in_place' (the
    default now). Each run is rolled back: nothing stays."""
    import psycopg

    runs: dict[str, list[dict]] = {mode: [] for mode in STEP_MODES}
    with psycopg.connect(dsn) as conn:
        conn.execute(TRAIN_STEPS)
        conn.commit()
        for _ in range(repeat):
            for mode, (materialize, reference) in STEP_MODES.items():
                got = conn.execute("SELECT pg_temp.train_steps(%s, 'y', %s, %s)",
                                   (table, materialize, reference)).fetchone()[0]
                conn.rollback()
                runs[mode].append(json.loads(got))
    return {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for mode, rs in runs.items()}


def _print_steps(steps: dict, rows: int) -> None:
    names = list(steps["before"])
    print(f"    steps beside the fit, {rows} rows x 10 + y, backend CPU s (median of 3):")
    print("      " + " " * 9 + "".join(f"{k:>11s}" for k in names))
    for mode, r in steps.items():
        print(f"      {mode:9s}" + "".join(f"{r[k]:11.3f}" for k in names))
    print(f"      in_place / before: {steps['in_place']['total'] / steps['before']['total']:.2f}x"
          f"; target total <= {0.5 * rows / 1e6:.2f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    parser.add_argument("--relation-only", type=int, metavar="ROWS",
                        help="only (f): pgml.predict_relation over ROWS rows (e.g. 1000000)")
    parser.add_argument("--train-only", type=int, metavar="ROWS",
                        help="only (e): pgml.train overhead over ROWS rows x 10 features")
    parser.add_argument("--configurations", help="with --relation-only: a comma-separated "
                        f"subset of {','.join(RELATION_CONFIGURATIONS)}")
    parser.add_argument("--repeat", type=int, default=3,
                        help="with --relation-only or --train-only: runs each")
    parser.add_argument("--no-loader-steps", action="store_true",
                        help="with --train-only: leave out the loader's steps (train_steps)")
    parser.add_argument("--batch-rows", type=int, default=0,
                        help="with --relation-only: also (c) predict_batch over this many rows")
    parser.add_argument("--batch-only", type=int, metavar="ROWS",
                        help="only (c): one pgml.predict_batch over ROWS rows x 10 features")
    args = parser.parse_args(argv)
    if args.batch_only:
        return batch_only(args.batch_only)
    if args.train_only:
        return train_only(args.train_only, args.repeat, not args.no_loader_steps)
    if args.relation_only:
        configurations = args.configurations.split(",") if args.configurations else \
            RELATION_CONFIGURATIONS
        return relation_only(args.relation_only, configurations, args.repeat, args.batch_rows)
    rows, native_rows, batch_rows = (10_000, 1_000, 100_000) if args.quick else \
        (100_000, 10_000, 1_000_000)
    seconds = 3 if args.quick else 10
    train_rows = 100_000 if args.quick else 1_000_000

    with running_cluster("bench-predict", REPLICA_SETTINGS) as cluster:
        cluster.create_database("bench")
        dsn = cluster.dsn("bench")
        install(dsn)
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            ids = setup(conn, max(rows, batch_rows), batch_rows)
            a = per_row(conn, ids, rows, native_rows)
            c = batch(conn, batch_rows)
            f = relation(conn, batch_rows)
        b = {n: pgbench(cluster, "bench", n, seconds) for n in (1, 2)}
        d = service(dsn, ids["onnx"], [1, 2], seconds)
        e = train_overhead(dsn, train_rows)

    print(f"pgml predict benchmark ({'quick' if args.quick else 'full'}; XGBoost 100 trees "
          f"depth 6, 10 features, distinct rows; {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    print(f"(a) pgml.predict per row over {rows} rows            wall       backend CPU")
    for label, key in (("PL/Python call floor", "floor"), ("ONNX runtime (pgml.predict)", "onnx"),
                       ("ONNX runtime (model_predict)", "onnx_model_predict"),
                       (f"native runtime ({native_rows} rows)", "native")):
        print(f"    {label:34s} {a[key + '_us']:8.2f} us  {a[key + '_cpu_us']:8.2f} us/row")
    print(f"    ONNX rows/s {1e6 / a['onnx_us']:,.0f}; native / ONNX {a['native_us'] / a['onnx_us']:.1f}x")
    for n in (1, 2):
        print(f"(b) pgbench, {n} client(s)          {b[n]:10,.0f} queries/s")
    for key, label in (("default", "as configured"), ("one_thread", "one thread   ")):
        r = c[key]
        print(f"(c) predict_batch {batch_rows} rows, {label} {r['rows_per_s']:10,.0f} rows/s "
              f"({r['seconds']:.2f} s wall, {r['cpu_s']:.2f} s backend CPU)")
    _print_relation(f)
    for n in (1, 2):
        s = d[n]
        print(f"(d) service, {n} client(s)         {s['requests_per_s']:10,.0f} requests/s  "
              f"p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  "
              f"-> pgbench / service {b[n] / s['requests_per_s']:.1f}x")
    _print_train(e, train_rows)


def _print_train(e: dict, train_rows: int) -> None:
    for name, r in e.items():
        print(f"(e) train {name:8s} {train_rows} rows, best of {len(r['trains'])}: pgml.train "
              f"{r['train_s']:6.2f} s (fit inside {r['fit_in_db_s']:.2f} s, the rest "
              f"{r['overhead_s']:.2f} s), fit in memory {r['fit_in_memory_s']:6.2f} s -> "
              f"{r['ratio']:.2f}x")
        print(f"    (best in-memory fit + the rest) / best in-memory fit = "
              f"{r['ratio_from_overhead']:.2f}x: the ratio when the fit inside runs as fast")
        print(f"    runs: pgml.train {', '.join(f'{t:.2f}' for t in r['trains'])} s; fit "
              f"{', '.join(f'{t:.2f}' for t in r['fits'])} s; a fresh backend's first "
              f"pgml.train adds {r['first_call_extra_s']:.2f} s (imports)")
        print(f"    median pgml.train / median fit in memory = {r['median_ratio']:.2f}x")


def _print_relation(f: dict) -> None:
    labels = {"default": "as configured", "one_thread": "one thread   ",
              "onnx_only": "onnx only    ", "array_write": "array write  ",
              "one_chunk": "one chunk    "}
    for key in f:
        label = labels.get(key, key)
        r = f[key]
        print(f"(f) predict_relation {r['rows']} rows, {label} {r['rows_per_s']:10,.0f} rows/s "
              f"(median {r['seconds']:.2f} s wall of {', '.join(f'{w:.2f}' for w in r['walls'])};"
              f" {r['cpu_s']:.2f} s backend CPU = {r['rows'] / r['cpu_s']:,.0f} rows per CPU-s;"
              f" load {r['load']:.1f})")
        if r["steps"]:
            print("    last run's steps, wall / CPU s: " + ", ".join(
                f"{k} {v['wall']:.2f} / {v['cpu']:.2f}" for k, v in r["steps"].items())
                + f"; scored by {r['scored_by']}; {r.get('chunks')} chunks")
    if "default" in f and "array_write" in f:
        print(f"    binary COPY write vs array parameters, same run: "
              f"{f['array_write']['seconds'] / f['default']['seconds']:.2f}x wall, "
              f"{f['array_write']['cpu_s'] / f['default']['cpu_s']:.2f}x backend CPU")
    if "default" in f and "one_chunk" in f:
        print(f"    overlapped chunks vs one chunk (read, then score, then write), same run: "
              f"{f['one_chunk']['seconds'] / f['default']['seconds']:.2f}x wall, "
              f"{f['one_chunk']['cpu_s'] / f['default']['cpu_s']:.2f}x backend CPU")


def train_only(rows: int, repeats: int = TRAIN_REPEATS, loader_steps: bool = True) -> None:
    """(e) alone, on a cluster of its own, with pgml.train's steps timed inside the backend."""
    with running_cluster("bench-train", REPLICA_SETTINGS) as cluster:
        cluster.create_database("bench")
        dsn = cluster.dsn("bench")
        install(dsn)
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pgml.load_dataset('diabetes')")  # the warm-up trains on it
        load_start = os.getloadavg()[0]
        e = train_overhead(dsn, rows, repeats)
        post_fit = post_fit_steps(dsn)
        steps = train_steps(dsn) if loader_steps else None
    print(f"pgml.train overhead ({os.cpu_count()} cores; load average {load_start:.1f} at the"
          f" start, {os.getloadavg()[0]:.1f} at the end)")
    _print_train(e, rows)
    _print_post_fit(post_fit)
    if steps is not None:
        _print_steps(steps, rows)


# ``rows`` rows x 10 features, in row order: the FROM clause of batch_only's argument
ROWS_OF = (" FROM generate_series(0, %s - 1) g JOIN bench_base b ON b.k = g %% 442,"
           " LATERAL (VALUES (1, age), (2, sex), (3, bmi), (4, bp), (5, s1), (6, s2), (7, s3), (8, s4), (9, s5), (10, s6)) v(i, x)")


def batch_only(rows: int) -> None:
    """(c) once at ``rows`` rows x 10 features -- one pgml.predict_batch call, as configured --
    on a cluster of its own; an argument PostgreSQL cannot build or pass is reported with the
    server's own error (see docs/pgml.md, predict_batch's limits)."""
    import psycopg

    with running_cluster("bench-batch", REPLICA_SETTINGS) as cluster:
        cluster.create_database("bench")
        dsn = cluster.dsn("bench")
        install(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pgml.load_dataset('diabetes')")
            conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target',"
                         " 'xgboost', %s)", (PROJECT, json.dumps(MODEL)))
            # rows cycle through diabetes' 442 rows, each value with its own noise (distinct
            # rows); a nested loop over an index keeps generate_series' order, the VALUES list
            # each row's feature order (a 2-D array of the base rows would be detoasted per value)
            conn.execute(f"CREATE TABLE bench_base AS SELECT row_number() OVER () - 1 AS k,"  # noqa: S608 - constants
                         f" {', '.join(FEATURES)} FROM pgml.diabetes")
            conn.execute("CREATE UNIQUE INDEX ON bench_base (k)")
            conn.execute("VACUUM ANALYZE bench_base")
            conn.execute("SET enable_hashjoin = off")
            conn.execute("SET enable_mergejoin = off")
            start = time.perf_counter()
            try:
                conn.execute("CREATE TABLE bench_flat AS SELECT array_agg(v.x"
                             " * (0.95 + 0.1 * random())) AS a" + ROWS_OF, (rows,))
            except psycopg.Error as exc:
                print(f"(c) predict_batch {rows} rows: the argument cannot be built with array_agg"
                      f" ({time.perf_counter() - start:.1f} s): {exc.sqlstate} {exc}".strip())
                conn.execute("CREATE TABLE bench_flat AS SELECT a1 || a2 AS a FROM"
                             " (SELECT array_agg(v.x) AS a1" + ROWS_OF + ") s1,"
                             " (SELECT array_agg(v.x) AS a2" + ROWS_OF + ") s2",
                             (rows // 2, rows - rows // 2))
                print("    built as two halves (array_cat) instead, to try the call")
            load = os.getloadavg()[0]
            try:
                wall, cpu = _timed(conn, "SELECT count(p) FROM bench_flat,"
                                   " pgml.predict_batch(%s, a) p", (PROJECT,), repeat=1,
                                   all_threads=True)
            except psycopg.Error as exc:
                print(f"(c) predict_batch {rows} rows: {exc.sqlstate} {exc}".strip())
                return
    print(f"(c) predict_batch {rows} rows, as configured, one run: {rows / wall:,.0f} rows/s "
          f"({wall:.2f} s wall, {cpu:.2f} s backend CPU; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; {os.cpu_count()} cores)")


def relation_only(rows: int, configurations=RELATION_CONFIGURATIONS, repeat: int = 3,
                  batch_rows: int = 0) -> None:
    """(f), and (c) at ``batch_rows`` when asked, on a cluster of their own."""
    import psycopg

    load_before = os.getloadavg()[0]
    with running_cluster("bench-predict", REPLICA_SETTINGS) as cluster:
        cluster.create_database("bench")
        dsn = cluster.dsn("bench")
        install(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            setup(conn, rows, max(batch_rows, 1))
            c = batch(conn, batch_rows) if batch_rows else None
            f = relation(conn, rows, configurations, repeat)
    print(f"pgml.predict_relation (XGBoost 100 trees depth 6, 10 features, distinct rows; "
          f"{os.cpu_count()} cores; load average {load_before:.1f} before,"
          f" {os.getloadavg()[0]:.1f} after)")
    _print_relation(f)
    for key, r in (c or {}).items():
        print(f"(c) predict_batch {batch_rows} rows, {key:10s} {r['rows_per_s']:10,.0f} rows/s "
              f"({r['seconds']:.2f} s wall, {r['cpu_s']:.2f} s backend CPU)")


if __name__ == "__main__":
    main()
