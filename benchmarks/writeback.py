"""Point lookups of predictions read on the source through postgres_fdw, live vs materialized,
next to the same lookup run directly on the ML replica; and what materializing costs writes.

    .venv/bin/python -m benchmarks.writeback [--quick]

Two throw-away clusters (a source and an ML replica with pgml), the same `patients` table on
both (diabetes features, repeated with noise), an XGBoost model (100 trees, depth 6) deployed
and exposed by id. Then pgbench, one query per transaction, prepared statements:

  source, live          SELECT prediction FROM ml.patients WHERE id = :id   (fdw -> scores 1 row)
  source, materialized  same query; the replica reads a predictions table
  replica, live         SELECT prediction FROM pgml_out.patients WHERE id = :id
  replica, materialized same, over the predictions table
  replica, pgml.predict SELECT pgml.predict(...) FROM patients WHERE id = :id (PostgresML's way)

p50/p99 latency come from pgbench's per-transaction log. Write cost: rows/s of an INSERT and
of an UPDATE of every feature on the replica table with the materializing triggers vs without
(the sidecar's apply pays that difference).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from devtools.localcluster import PG_BIN, REPLICA_SETTINGS, SOURCE_SETTINGS, running_cluster

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
PROJECT = "bench_writeback"
READER_PASSWORD = "bench-reader-password"


@dataclass
class Run:
    where: str
    mode: str
    clients: int
    qps: float
    p50_ms: float
    p99_ms: float


def _load(conn: psycopg.Connection, rows: int) -> None:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    rng = np.random.default_rng(7)
    idx = np.arange(rows) % len(data.target)
    X = data.data[idx] + rng.normal(0, 0.005, size=(rows, len(FEATURES)))
    y = data.target[idx]
    conn.execute(sql.SQL("CREATE TABLE public.patients (id bigint PRIMARY KEY, {},"
                         " progression float8)").format(
        sql.SQL(", ").join(sql.SQL("{} float8").format(sql.Identifier(f)) for f in FEATURES)))
    with conn.cursor() as cur, cur.copy("COPY public.patients FROM STDIN") as copy:
        for i in range(rows):
            copy.write_row([i + 1, *X[i].tolist(), float(y[i])])
    conn.execute("ANALYZE public.patients")


def _pgbench(cluster, dbname: str, script: str, clients: int, seconds: int, workdir: Path,
             user: str = "postgres") -> tuple[float, float, float]:
    """(queries/s, p50 ms, p99 ms) of one pgbench run."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    (run_dir / "q.sql").write_text(script)
    cmd = [str(PG_BIN / "pgbench"), "-n", "-M", "prepared", "-c", str(clients),
           "-j", str(clients), "-T", str(seconds), "-l", "--log-prefix", "tx",
           "-f", "q.sql", "-h", cluster.host, "-p", str(cluster.port), "-U", user, dbname]
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True,
                          timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {proc.stderr.strip() or proc.stdout.strip()}")
    tps = float(re.search(r"tps = ([0-9.]+)", proc.stdout).group(1))
    latencies = []
    for log in run_dir.glob("tx.*"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1000.0)  # µs -> ms
    shutil.rmtree(run_dir, ignore_errors=True)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return tps, p50, p99


def _write_cost(conn: psycopg.Connection, rows: int, start_id: int) -> tuple[float, float]:
    """(insert rows/s, update rows/s) on the replica table, as a single statement each, after
    a small warm-up round (a new backend loads the model on its first scoring call; the
    sidecar's long-lived connection pays that once)."""
    if rows > 10:
        _write_cost(conn, 10, start_id)
    t0 = time.perf_counter()
    conn.execute(sql.SQL("INSERT INTO public.patients SELECT g + %s, {} FROM"
                         " (SELECT generate_series(1, %s) AS g) s, LATERAL"
                         " (SELECT * FROM public.patients WHERE id = 1 + g %% 400) p").format(
        sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c))
                           for c in [*FEATURES, "progression"])), (start_id, rows))
    t1 = time.perf_counter()
    conn.execute("UPDATE public.patients SET bmi = bmi + 0.001, s5 = s5 - 0.001"
                 " WHERE id > %s", (start_id,))
    t2 = time.perf_counter()
    conn.execute("DELETE FROM public.patients WHERE id > %s", (start_id,))
    return rows / (t1 - t0), rows / (t2 - t1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.writeback", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small table, short runs")
    args = parser.parse_args(argv)
    rows = 20_000 if args.quick else 200_000
    seconds = 3 if args.quick else 15
    write_rows = 5_000 if args.quick else 50_000
    client_counts = [1] if args.quick else [1, 2]

    from replica.target import pgml_install
    from replica.writeback.setup import writeback

    workdir = Path(tempfile.mkdtemp(prefix="pgml-replica-bench-wb-"))
    workdir.chmod(0o755)
    runs: list[Run] = []
    with running_cluster("bench-source", SOURCE_SETTINGS) as source, \
            running_cluster("bench-replica", REPLICA_SETTINGS) as replica:
        source.create_database("app")
        replica.create_database("app")
        print(f"loading {rows} rows on both sides, training XGBoost on the replica ...",
              flush=True)
        with source.connect("app") as conn:
            _load(conn, rows)
        pgml_install.install(replica.secrets("app"))
        with replica.connect("app") as conn:
            _load(conn, rows)
            conn.execute(sql.SQL("CREATE VIEW public.patients_train AS SELECT {} FROM"
                                 " public.patients").format(
                sql.SQL(", ").join(map(sql.Identifier, [*FEATURES, "progression"]))))
            conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'public.patients_train',"
                         " 'progression', 'xgboost', '{\"n_estimators\": 100, \"max_depth\": 6}')",
                         (PROJECT,))
            conn.execute("SELECT pgml.expose(%s, 'public.patients', ARRAY['id'], 'patients')",
                         (PROJECT,))
        import os
        os.environ["PGML_REPLICA_READER_PASSWORD"] = READER_PASSWORD
        lookup = f"\\set id random(1, {rows})\n"
        for mode in ("live", "materialized"):
            t0 = time.perf_counter()
            writeback(source.dsn("app"), replica.secrets("app"), PROJECT,
                      materialize=(mode == "materialized"))
            print(f"writeback ({mode}) set up in {time.perf_counter() - t0:.1f} s", flush=True)
            cases = [("source (fdw)", source, "SELECT prediction FROM ml.patients WHERE id = :id;"),
                     ("replica", replica,
                      "SELECT prediction FROM pgml_out.patients WHERE id = :id;")]
            if mode == "live":
                direct = sql.SQL("SELECT pgml.predict({}, ARRAY[{}]) FROM public.patients"
                                 " WHERE id = :id;").format(
                    sql.Literal(PROJECT), sql.SQL(", ").join(map(sql.Identifier, FEATURES)))
                cases.append(("replica pgml.predict", replica, direct.as_string(None)))
            for clients in client_counts:
                for where, cluster, query in cases:
                    qps, p50, p99 = _pgbench(cluster, "app", lookup + query + "\n", clients,
                                             seconds, workdir)
                    runs.append(Run(where, mode, clients, qps, p50, p99))
                    print(f"  {where:<22} {mode:<12} c={clients}  {qps:9.0f} q/s"
                          f"  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms", flush=True)
        # write cost of materializing, on the replica (what the sidecar's apply pays)
        with replica.connect("app") as conn:
            mat_ins, mat_upd = _write_cost(conn, write_rows, 10 * rows)
            conn.execute("SELECT pgml.materialize('patients', false)")
            live_ins, live_upd = _write_cost(conn, write_rows, 10 * rows)
    shutil.rmtree(workdir, ignore_errors=True)

    def get(where, mode, clients):
        return next(r for r in runs if (r.where, r.mode, r.clients) == (where, mode, clients))

    print("\nRatios (same run, same machine):")
    for clients in client_counts:
        sl, sm = get("source (fdw)", "live", clients), get("source (fdw)", "materialized", clients)
        rl, rm = get("replica", "live", clients), get("replica", "materialized", clients)
        print(f"  c={clients}: source/replica q/s  live {sl.qps / rl.qps:.2f}x"
              f"  materialized {sm.qps / rm.qps:.2f}x;  on the source materialized/live"
              f" q/s {sm.qps / sl.qps:.2f}x, p50 {sm.p50_ms / sl.p50_ms:.2f}x")
    print(f"  writes on the replica with materializing triggers vs without ({write_rows} rows):"
          f" INSERT {mat_ins:,.0f} vs {live_ins:,.0f} rows/s ({mat_ins / live_ins:.2f}x),"
          f" UPDATE {mat_upd:,.0f} vs {live_upd:,.0f} rows/s ({mat_upd / live_upd:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
