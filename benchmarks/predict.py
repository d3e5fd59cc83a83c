"""pgml prediction benchmark: in-database scoring against the service-based alternative.

One run, one model: XGBoost, 100 trees of depth 6, on diabetes (10 features), trained with
pgml.train and exported to ONNX. Measured on a throw-away ML replica cluster:

  (a) SELECT pgml.predict(...) FROM t over N rows: us per row, ONNX runtime vs the native
      (pickled XGBoost) runtime of the same model, and the PL/Python call floor
  (b) pgbench, one pgml.predict per query, 1 and 2 clients: queries/s
  (c) pgml.predict_batch over N rows in one call: rows/s
  (d) the service the seeds describe: a FastAPI/uvicorn server holding the same ONNX model; a
      client reads a row's features from Postgres and POSTs them; 1 and 2 clients:
      requests/s and latency
  (e) train-time overhead: pgml.train wall time vs fitting the same estimator on the same
      in-memory training rows, 1M rows x 10 features (XGBoost, and LinearRegression)

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

from replica.localcluster import PG_BIN, REPLICA_SETTINGS, free_port, running_cluster
from replica.pgml_install import install

MODEL = {"n_estimators": 100, "max_depth": 6}
PROJECT = "bench"


def _timed(conn, query: str, params=None, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` runs (the first run also warms caches)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        conn.execute(query, params).fetchall()
        best = min(best, time.perf_counter() - start)
    return best


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
    conn.execute("CREATE TABLE bench_rows AS SELECT row_number() OVER () AS id,"
                 " ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6]::float8[] AS features"
                 " FROM pgml.diabetes, generate_series(1, %s) LIMIT %s", (copies, rows))
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
    out = {"floor_us": _timed(conn, "SELECT sum(bench_floor('bench', features, date_part("
                                    "'epoch', statement_timestamp()))) FROM bench_rows"
                                    " WHERE id <= %s", (rows,)) / rows * 1e6}
    out["onnx_us"] = _timed(conn, "SELECT sum(pgml.predict(%s, features)) FROM bench_rows"
                            " WHERE id <= %s", (PROJECT, rows)) / rows * 1e6
    out["onnx_model_predict_us"] = _timed(
        conn, "SELECT sum(pgml.model_predict(%s, features)) FROM bench_rows WHERE id <= %s",
        (ids["onnx_id"], rows)) / rows * 1e6
    out["native_us"] = _timed(
        conn, "SELECT sum(pgml.model_predict(%s, features)) FROM bench_rows WHERE id <= %s",
        (ids["native_id"], native_rows), repeat=2) / native_rows * 1e6
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


def batch(conn, rows: int) -> dict:
    seconds = _timed(conn, "SELECT count(p) FROM bench_flat, pgml.predict_batch(%s, a) p",
                     (PROJECT,))
    return {"rows_per_s": rows / seconds, "seconds": seconds}


# -- (d) the service alternative -----------------------------------------------------------


class Features(BaseModel):
    features: list[float]


def make_app():
    """The model server: FastAPI holding the same ONNX model, scored by the same Scorer."""
    from fastapi import FastAPI

    from inference.runtime import load_scorer

    scorer = load_scorer("onnx", Path(os.environ["PGML_BENCH_ONNX"]).read_bytes(), None,
                         "regression", 10)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/predict")
    def predict(body: Features) -> dict:
        return {"prediction": float(scorer.predict(np.asarray(body.features))[0])}

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


def train_overhead(conn, rows: int) -> dict:
    import xgboost
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import train_test_split

    xs = ", ".join(f"x{i}" for i in range(10))
    randoms = ", ".join(f"random() AS x{i}" for i in range(10))
    conn.execute("CREATE TABLE big AS SELECT *, 3 * x0 - 2 * x1 + x2 * x3 + sin(6 * x4)"  # noqa: S608 - constants
                 f" + random() / 10 AS y FROM (SELECT {randoms} FROM generate_series(1, %s)) s",
                 (rows,))
    conn.execute("VACUUM ANALYZE big")
    cur = conn.cursor(binary=True)
    data = np.array(cur.execute(f"SELECT {xs}, y FROM big").fetchall(),  # noqa: S608 - constants
                    dtype=np.float64)
    X, y = data[:, :10], data[:, 10]
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.25, random_state=0)
    out = {}
    for name, algorithm, hyper, make in (
            ("xgboost", "xgboost", MODEL,
             lambda: xgboost.XGBRegressor(**MODEL, random_state=0, verbosity=1)),
            ("linear", "linear", {}, LinearRegression)):
        start = time.perf_counter()
        conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'big', 'y', %s, %s)",
                     (f"overhead_{name}", algorithm, json.dumps(hyper)))
        in_db = time.perf_counter() - start
        fit_time = conn.execute("SELECT (metrics->>'fit_time')::float8 FROM pgml.models"
                                " ORDER BY id DESC LIMIT 1").fetchone()[0]
        start = time.perf_counter()
        make().fit(X_train, y_train)
        in_memory = time.perf_counter() - start
        out[name] = {"train_s": in_db, "fit_in_db_s": fit_time, "fit_in_memory_s": in_memory,
                     "ratio": in_db / in_memory}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    args = parser.parse_args(argv)
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
        b = {n: pgbench(cluster, "bench", n, seconds) for n in (1, 2)}
        d = service(dsn, ids["onnx"], [1, 2], seconds)
        with psycopg.connect(dsn, autocommit=True) as conn:
            e = train_overhead(conn, train_rows)

    print(f"pgml predict benchmark ({'quick' if args.quick else 'full'}; XGBoost 100 trees "
          f"depth 6, 10 features; {os.cpu_count()} cores)")
    print(f"(a) pgml.predict per row over {rows} rows")
    print(f"    PL/Python call floor          {a['floor_us']:8.2f} us/row")
    print(f"    ONNX runtime (pgml.predict)   {a['onnx_us']:8.2f} us/row  "
          f"({1e6 / a['onnx_us']:,.0f} rows/s)")
    print(f"    ONNX runtime (model_predict)  {a['onnx_model_predict_us']:8.2f} us/row")
    print(f"    native runtime ({native_rows} rows)    {a['native_us']:8.2f} us/row")
    print(f"    native / ONNX                 {a['native_us'] / a['onnx_us']:8.1f}x")
    for n in (1, 2):
        print(f"(b) pgbench, {n} client(s)          {b[n]:10,.0f} queries/s")
    print(f"(c) predict_batch, {batch_rows} rows   {c['rows_per_s']:10,.0f} rows/s "
          f"({c['rows_per_s'] * a['onnx_us'] / 1e6:.1f}x per-row predict)")
    for n in (1, 2):
        s = d[n]
        print(f"(d) service, {n} client(s)         {s['requests_per_s']:10,.0f} requests/s  "
              f"p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  "
              f"-> pgbench / service {b[n] / s['requests_per_s']:.1f}x")
    for name, r in e.items():
        print(f"(e) train {name:8s} {train_rows} rows: pgml.train {r['train_s']:6.2f} s "
              f"(fit inside {r['fit_in_db_s']:.2f} s), fit in memory {r['fit_in_memory_s']:6.2f} s"
              f" -> {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
