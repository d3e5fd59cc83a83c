"""History (issue 11): apply throughput with --history on vs off, bytes per change, and
pgml.point_in_time against the same join written as a Postgres LATERAL query, in one run.

    .venv/bin/python -m benchmarks.history [--keys K] [--changes N] [--spine S]

1. Apply, catch-up: two sidecar processes (slots ``hist_on`` / ``hist_off``), each into its
   own replica database, copy a table of K keys, then are stopped; the source makes N updates
   (100-row transactions, the whole row rewritten) and a marker row; each sidecar is started
   alone and timed from start until the marker is visible on its target (polled on one open
   connection). Beside each time, the CPU seconds of the sidecar process (start-up
   included), of its target backend and of the source's walsender (from /proc: where the
   extra time goes); ``--profile DIR``: py-spy samples of each sidecar run, summed per mode;
   ``--compare-tree DIR`` (repeatable): one more sidecar, history on, run from another
   checkout (slot ``hist_<dir name>``), so a change is measured against the code before it
   in the same run.
2. Bytes per change: the history table's total size (heap + TOAST) over its versions.
3. Point in time: a spine of S rows (random key, random event time inside the history) on the
   replica; ``pgml.point_in_time`` vs ``LEFT JOIN LATERAL (... ORDER BY commit LSN DESC
   LIMIT 1)`` over the history table with an index on (id, commit time) - the index build is
   timed apart; the two results are checked equal.

4. At scale (``--scale-only``: benchmarks/history_scale.py): pgml.point_in_time vs Feast's
   get_historical_features vs the LATERAL join on synthetic versions (default: a 1M-row spine
   over 10M versions).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks import history_scale
from benchmarks.cpu_account import stat_cpu_seconds
from benchmarks.replication import profile_summary, wait
from devtools.localcluster import REPLICA_SETTINGS, SOURCE_SETTINGS, running_cluster

ROOT = Path(__file__).resolve().parents[1]
DDL = "CREATE TABLE feat (id bigint PRIMARY KEY, x float8, y int, t text)"


def sidecar(src, tgt, db: str, history: bool, root: Path = ROOT) -> subprocess.Popen:
    args = [sys.executable, "-m", "replica", "run", "--source", src.dsn("bench"), "--target",
            tgt.dsn(db), "--http-port", "0", "--log-level", "WARNING", "--slot", db,
            "--tables", "public.feat,public.marker", "--no-pgml-install", "--protocol", "1"]
    if history:
        args += ["--history", "public.feat"]
    log = open(tempfile.mkstemp(prefix=f"bench-{db}-", suffix=".log")[1], "ab")  # noqa: SIM115
    return subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT)


def marker_seen(tgt, db: str, n: int) -> bool:
    try:
        with psycopg.connect(tgt.dsn(db), autocommit=True) as c:
            return c.execute("SELECT count(*) FROM marker WHERE id = %s", (n,)).fetchone()[0] > 0
    except psycopg.Error:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) from /proc (a process gone raises)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def peers_cpu(src, tgt, db: str, watcher: psycopg.Connection) -> tuple[float, float]:
    """CPU seconds so far of the sidecar's target backends (every client backend in ``db``
    but the watcher's) and of its walsender on the source (the slot's active pid)."""
    pids = [r[0] for r in watcher.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")]
    with psycopg.connect(src.dsn("bench"), autocommit=True) as s:
        (ws,) = s.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                          (db,)).fetchone()
    return sum(cpu_seconds(p) for p in pids), cpu_seconds(ws) if ws else 0.0


def profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy on the sidecar (writes ``out`` when the sidecar exits)."""
    return subprocess.Popen(  # noqa: S603 - our own tool, our own child's pid
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--format",
         "raw", "--rate", "250", "--nonblocking", "--threads", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--spine", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--apply-only", action="store_true",
                    help="stop after the apply catch-up and bytes per version (no point in time)")
    ap.add_argument("--scale-only", action="store_true",
                    help="only the point-in-time comparison at scale (benchmarks/history_scale.py)")
    ap.add_argument("--scale-spine", type=int, default=1_000_000)
    ap.add_argument("--scale-versions", type=int, default=10_000_000)
    ap.add_argument("--feast-python", default=history_scale.FEAST_PYTHON,
                    help="python of the environment where Feast is installed")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy each catch-up run into DIR/<db>-NN.txt; print a summary per mode")
    ap.add_argument("--compare-tree", type=Path, action="append", default=[], metavar="DIR",
                    help="also time history on with the sidecar of another checkout"
                         " (hist_<dir name>; repeatable)")
    a = ap.parse_args()
    if a.scale_only:
        return history_scale.run(a.scale_spine, a.scale_versions, a.rounds, a.feast_python)
    modes = [("hist_off", False, ROOT), ("hist_on", True, ROOT)]
    for tree in a.compare_tree:
        name = "hist_" + "".join(c if c.isalnum() else "_" for c in tree.resolve().name.lower())
        modes.append((name, True, tree.resolve()))
    names = [m[0] for m in modes]
    with running_cluster("hsrc", SOURCE_SETTINGS) as src, \
            running_cluster("hml", REPLICA_SETTINGS) as tgt:
        src.create_database("bench")
        for db in names:
            tgt.create_database(db)
        with psycopg.connect(src.dsn("bench"), autocommit=True) as s:
            s.execute(DDL)
            s.execute("CREATE TABLE marker (id int PRIMARY KEY)")
            s.execute("INSERT INTO feat SELECT g, random(), (random() * 100)::int,"
                      " md5(g::text) FROM generate_series(1, %s) g", (a.keys,))
            s.execute("CREATE PUBLICATION pgml_replica FOR TABLE feat, marker")
        from replica.target.pgml_install import install
        install(tgt.dsn("hist_on"))
        # 1. copy, stop, change, catch up
        for db, hist, root in modes:
            p = sidecar(src, tgt, db, hist, root)
            with psycopg.connect(src.dsn("bench"), autocommit=True) as s:
                s.execute("INSERT INTO marker VALUES (0) ON CONFLICT DO NOTHING")
            wait(lambda db=db: marker_seen(tgt, db, 0), 300, f"{db} to copy")
            p.terminate()
            p.wait(60)
        rng = random.Random(1)
        times: dict[str, list[float]] = {db: [] for db in names}
        cpus: dict[str, list[tuple[float, float, float]]] = {db: [] for db in names}
        if a.profile is not None:
            a.profile.mkdir(parents=True, exist_ok=True)
        changes = 0
        for rnd in range(a.rounds):  # both stopped; N changes; each catches up alone
            with psycopg.connect(src.dsn("bench"), autocommit=True) as s:
                for start in range(0, a.changes, 100):
                    with s.transaction():
                        ids = [rng.randint(1, a.keys)
                               for _ in range(min(100, a.changes - start))]
                        changes += len(set(ids)) if rnd == 0 else 0
                        s.execute("UPDATE feat SET x = random(), y = y + 1,"
                                  " t = md5(random()::text) WHERE id = ANY(%s)", (ids,))
                s.execute("INSERT INTO marker VALUES (%s)", (rnd + 1,))
            k = rnd % len(modes)  # each mode first in turn; odd rounds reversed
            order = modes[k:] + modes[:k]
            for db, hist, root in order if rnd % 2 == 0 else order[::-1]:
                with psycopg.connect(tgt.dsn(db), autocommit=True) as watcher:
                    t0 = time.perf_counter()
                    p = sidecar(src, tgt, db, hist, root)
                    if a.profile is not None:
                        profile(p.pid, a.profile / f"{db}-{rnd:02d}.txt")
                    wait(lambda w=watcher, n=rnd + 1: w.execute(
                        "SELECT 1 FROM marker WHERE id = %s", (n,)).fetchone(), 900,
                         f"{db} to catch up")
                    times[db].append(time.perf_counter() - t0)
                    cpus[db].append((cpu_seconds(p.pid), *peers_cpu(src, tgt, db, watcher)))
                p.terminate()
                p.wait(60)
        med = {db: statistics.median(ts) for db, ts in times.items()}
        print(f"apply catch-up, {changes:,} row updates in 100-row transactions, median of"
              f" {a.rounds} rounds (process start to the marker row):")
        for db in names:
            print(f"  {db}: {med[db]:.2f} s  {changes / med[db]:,.0f} changes/s"
                  f"  (rounds: {', '.join(f'{t:.2f}' for t in times[db])})")
        for db in names[1:]:
            print(f"  {db} is {100 * (med[db] / med['hist_off'] - 1):+.1f}% time against"
                  " hist_off")
        print("  CPU seconds, median (sidecar process incl. start-up / target backend /"
              " walsender):")
        for db in names:
            sc, be, ws = (statistics.median(c[i] for c in cpus[db]) for i in range(3))
            print(f"    {db}: {sc:.2f} / {be:.2f} / {ws:.2f}")
        if a.profile is not None:
            time.sleep(1)  # py-spy writes its file once the sidecar it sampled has exited
            for db in names:
                print(f"profile {db} (py-spy, the sidecar's busy samples):\n"
                      + profile_summary(sorted(a.profile.glob(f"{db}-*.txt"))))
        with psycopg.connect(tgt.dsn("hist_on"), autocommit=True) as r:
            versions, size = r.execute(
                "SELECT count(*), pg_total_relation_size('pgml_history.public__feat')"
                " FROM pgml_history.public__feat").fetchone()
            print(f"history: {versions:,} versions, {size / 1e6:.1f} MB,"
                  f" {size / versions:.0f} bytes per version")
            if a.apply_only:
                return 0
            # 3. point in time
            lo, hi = r.execute("SELECT min(_pgml_commit_time), max(_pgml_commit_time) FROM"
                               " pgml_history.public__feat WHERE _pgml_op <> 'S'").fetchone()
            r.execute("CREATE TABLE spine (id bigint, at timestamptz, label int)")
            r.execute("INSERT INTO spine SELECT (1 + random() * (%s - 1))::bigint,"
                      " %s + random() * (%s - %s), (random() * 2)::int"
                      " FROM generate_series(1, %s)", (a.keys, lo, hi, lo, a.spine))
            t_pits = []
            for _ in range(3):
                r.execute("DROP TABLE IF EXISTS pit_out")
                t0 = time.perf_counter()
                r.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.feat'],"
                          " 'pit_out')")
                t_pits.append(time.perf_counter() - t0)
            t_pit = statistics.median(t_pits)
            t0 = time.perf_counter()
            r.execute("CREATE INDEX ON pgml_history.public__feat (id, _pgml_commit_time)")
            t_idx = time.perf_counter() - t0
            t0 = time.perf_counter()
            r.execute(
                "CREATE TABLE lateral_out AS SELECT s.*, CASE WHEN h._pgml_op <> 'D' THEN h.x"
                " END AS feat__x, CASE WHEN h._pgml_op <> 'D' THEN h.y END AS feat__y,"
                " CASE WHEN h._pgml_op <> 'D' THEN h.t END AS feat__t FROM spine s"
                " LEFT JOIN LATERAL (SELECT * FROM pgml_history.public__feat h WHERE h.id = s.id"
                " AND h._pgml_commit_time <= s.at ORDER BY h._pgml_commit_time DESC,"
                " h._pgml_commit_lsn DESC, h._pgml_seq DESC LIMIT 1) h ON true")
            t_lat = time.perf_counter() - t0
            (diff,) = r.execute(
                "SELECT count(*) FROM ((SELECT * FROM pit_out EXCEPT ALL SELECT * FROM"
                " lateral_out) UNION ALL (SELECT * FROM lateral_out EXCEPT ALL"
                " SELECT * FROM pit_out)) d").fetchone()
            t0 = time.perf_counter()
            r.execute("SELECT pgml.history_compact('public.feat', interval '0')")
            t_compact = time.perf_counter() - t0
            seg = r.execute("SELECT bytes FROM pgml_history.segments").fetchone()[0]
            t_pits_c = []
            for _ in range(3):
                r.execute("DROP TABLE IF EXISTS pit_c")
                t0 = time.perf_counter()
                r.execute("SELECT pgml.point_in_time('spine', 'at', ARRAY['public.feat'],"
                          " 'pit_c')")
                t_pits_c.append(time.perf_counter() - t0)
            (diff_c,) = r.execute(
                "SELECT count(*) FROM ((SELECT * FROM pit_c EXCEPT ALL SELECT * FROM"
                " lateral_out) UNION ALL (SELECT * FROM lateral_out EXCEPT ALL"
                " SELECT * FROM pit_c)) d").fetchone()
        print(f"point in time, spine {a.spine:,} rows over {versions:,} versions:")
        print(f"  after pgml.history_compact ({t_compact:.2f} s; Parquet segment"
              f" {seg / 1e6:.1f} MB, {seg / versions:.0f} bytes per version):"
              f" {statistics.median(t_pits_c):.2f} s, rows that differ: {diff_c}")
        print(f"  pgml.point_in_time (DuckDB ASOF): {t_pit:.2f} s (median of 3; first"
              f" {t_pits[0]:.2f} s)")
        print(f"  Postgres LATERAL (index):         {t_lat:.2f} s  (+{t_idx:.2f} s index build)")
        print(f"  rows that differ: {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
