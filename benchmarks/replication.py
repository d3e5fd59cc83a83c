"""pgml-replica's sidecar against native logical replication (CREATE SUBSCRIPTION), in one run
on the same two clusters, printing ours/native ratios.

    .venv/bin/python -m benchmarks.replication [--quick] [--rows N] [--lag-seconds S]

What is measured (each side alone, the other's slot idle):
1. Initial copy: rows/s for a table of N rows (bigint pk, 2 float8, text, timestamptz).
   Ours: slot + exported snapshot + parallel binary COPY + primary key built after the load.
   Native: CREATE SUBSCRIPTION (copy_data) until the table is 'r'eady.
2. Stream apply, catch-up: N inserts, then N updates, then N deletes, each once in one
   transaction and once in 100-row transactions, written while both subscribers are stopped;
   then each is started alone and timed from the moment its slot is active until a marker row
   written after the workload is visible on the target (commit order: everything before it
   is there). Live: each subscriber alone, running while the source executes the
   one-transaction workloads; timed from the statement's start to the marker.
   Beside each catch-up: a CPU account (benchmarks/cpu_account.py) - each side's
   walsender, native's apply worker, our sidecar and its target backends: CPU and waiting
   for a core per wall second, CPU microseconds per row - and the walsender's ceiling (the
   same WAL decoded by pgoutput alone; the walsender's rows per CPU second of its own).
3. Lag: a steady mixed load (5,000 rows/s by default: inserts, updates, deletes in 50-row
   transactions, each with a probe row); a poller reads the highest probe id on the target
   every 2 ms; lag = when it was first seen minus when the source commit returned.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from benchmarks import cpu_account
from devtools.localcluster import REPLICA_SETTINGS, SOURCE_SETTINGS, running_cluster

ROOT = Path(__file__).resolve().parents[1]
TABLE_DDL = ("CREATE TABLE bench (id bigint PRIMARY KEY, a float8, b float8, t text,"
             " ts timestamptz)")
PROBE_DDL = "CREATE TABLE probe (id bigint PRIMARY KEY, at timestamptz)"


def wait(cond, timeout: float, what: str, every: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Side:
    """One subscriber: ours (a `pgml-replica run` process) or native (a subscription)."""

    def __init__(self, name: str, src, tgt, db: str) -> None:
        self.name, self.src, self.tgt, self.db = name, src, tgt, db
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self.profile_dir: Path | None = None  # --profile: py-spy samples each sidecar run
        self.profiles = 0

    @property
    def slot(self) -> str:
        return "pgml_replica" if self.name == "ours" else "native_sub"

    def target(self) -> psycopg.Connection:
        return self.tgt.connect(self.db)

    def start(self) -> None:
        if self.name == "ours":
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "replica", "run", "--source", self.src.dsn("bench"),
                 "--target", self.tgt.dsn(self.db), "--http-port", "0",
                 "--log-level", "WARNING", "--no-pgml-install"], cwd=ROOT, stdout=open(self.log, "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT)
            if self.profile_dir is not None:  # py-spy writes when the sidecar exits
                self.profiles += 1
                out = self.profile_dir / f"sidecar-{self.profiles:02d}.txt"
                subprocess.Popen(  # noqa: S603 - our own tool, our own child's pid
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                     str(self.proc.pid), "--format", "raw", "--rate", "250", "--nonblocking", "--threads",
                     "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            with self.target() as c:
                c.execute("ALTER SUBSCRIPTION native_sub ENABLE")

    def stop(self) -> None:
        if self.name == "ours":
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(60)
        else:
            with self.target() as c:
                c.execute("ALTER SUBSCRIPTION native_sub DISABLE")
        with self.src.connect("bench") as c:
            wait(lambda: not c.execute("SELECT active FROM pg_replication_slots WHERE"
                                       " slot_name = %s", (self.slot,)).fetchone()[0],
                 60, f"{self.slot} to go inactive")

    def slot_active(self) -> bool:
        with self.src.connect("bench") as c:
            row = c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                            (self.slot,)).fetchone()
        return bool(row and row[0])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited ({self.proc.returncode}):\n"
                               f"{self.log.read_text()[-3000:]}")


# -- 1. initial copy -------------------------------------------------------------------


def fill(src, rows: int) -> None:
    with src.connect("bench") as c:
        c.execute("INSERT INTO bench SELECT g, random(), random(), md5(g::text), now()"
                  " FROM generate_series(1, %s) g", (rows,))
        c.execute("VACUUM ANALYZE bench")


def snapshot_ours(src, tgt, rows: int) -> float:
    from replica.clone.bootstrap import Bootstrap
    from replica.config import Settings
    from replica.state import SidecarState

    s = Settings(source=src.dsn("bench"), target=tgt.dsn("ours"), tables="public.bench,"
                 "public.probe", http_port=0)
    with psycopg.connect(s.source, autocommit=True) as c:
        c.execute("CREATE PUBLICATION pgml_replica FOR TABLE bench, probe")
    t0 = time.perf_counter()
    with psycopg.connect(s.source, autocommit=True) as sc, \
            psycopg.connect(s.target, autocommit=True) as tc:
        Bootstrap(s, SidecarState(), threading.Event()).prepare(sc, tc)
    return rows / (time.perf_counter() - t0)


def snapshot_native(src, tgt, rows: int) -> float:
    with tgt.connect("native") as c:
        c.execute(TABLE_DDL)
        c.execute(PROBE_DDL)
    with src.connect("bench") as c:
        c.execute("CREATE PUBLICATION native_pub FOR TABLE bench, probe")
    t0 = time.perf_counter()
    with tgt.connect("native") as c:
        c.execute(f"CREATE SUBSCRIPTION native_sub CONNECTION '{src.dsn('bench')}'"  # noqa: S608 - our own local DSN
                  " PUBLICATION native_pub")
        wait(lambda: c.execute("SELECT bool_and(srsubstate = 'r') AND count(*) = 2 FROM"
                               " pg_subscription_rel").fetchone()[0], 600, "native copy")
    return rows / (time.perf_counter() - t0)


STEP = re.compile(rb"step (\w+) at monotonic ([0-9.]+)")


def fresh_ours(src, tgt, rows: int, n: int, workers: int | None = None,
               env: dict[str, str] | None = None) -> tuple[float, dict[str, float]]:
    """A fresh replica from process start: `pgml-replica run` against an empty target
    database (pgml installed there beforehand, as on a deployed ML replica) until every row
    is there. rows/s over the whole wall time, start-up included; and the seconds from exec
    to each start-up step the sidecar logged (replica/clone/steps.py; the last of a name),
    ``seen`` being when this side saw every row."""
    from replica.target.pgml_install import install

    db = f"fresh{n}"
    with tgt.connect() as c:
        c.execute(f"CREATE DATABASE {db}")
    try:
        install(tgt.dsn(db))
    except Exception as exc:  # noqa: BLE001 - no PL/Python here: run warns and goes on
        print(f"  (pgml not installed on {db}: {exc})", flush=True)
    args = [sys.executable, "-m", "replica", "run", "--source", src.dsn("bench"), "--target",
            tgt.dsn(db), "--http-port", "0", "--log-level", "INFO", "--slot", db,
            "--publication", db, "--tables", "public.bench"]
    if workers:
        args += ["--snapshot-workers", str(workers)]
    log_path = Path(tempfile.gettempdir()) / f"bench-{db}.log"
    log = open(log_path, "wb")  # noqa: SIM115
    with tgt.connect(db) as c:
        t0 = time.monotonic()  # the clock the sidecar's step lines use
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env)

        def done():
            # the table's mark commits after every row of it (the copy's own commits, then
            # the key and the mark in one transaction): the same event as native's 'r'eady.
            # The rows are counted after the clock stops (a count(*) of 4M rows took
            # ~0.3 s inside the timed wait, which native's catalog check does not pay)
            if proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited ({proc.returncode}), see {log.name}")
            try:
                return c.execute("SELECT count(*) FROM pgml_replica.tables WHERE"
                                 " table_name = 'bench'").fetchone()[0]
            except psycopg.errors.UndefinedTable:
                return False
        wait(done, 600, "a fresh replica", every=0.005)
        elapsed = time.monotonic() - t0
        got = c.execute("SELECT count(*) FROM public.bench").fetchone()[0]
        if got != rows:
            raise RuntimeError(f"the fresh replica has {got} rows, not {rows}")
    proc.terminate()
    proc.wait(60)
    log.close()
    steps = {m[1].decode(): float(m[2]) - t0 for m in STEP.finditer(log_path.read_bytes())}
    steps["seen"] = elapsed
    with src.connect("bench") as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", (db,))
        c.execute(f"DROP PUBLICATION IF EXISTS {db}")
    return rows / elapsed, steps


def _fresh_label(w: int) -> str:
    """fresh's runs: w workers, or w - 100 workers with the pure relay (--fresh-pure)."""
    return f"{w % 100} workers" + (", pure relay" if w > 100 else "")


def fresh_native(src, tgt, rows: int, n: int) -> float:
    """CREATE SUBSCRIPTION on an empty database until the table is 'r'eady."""
    db = f"nfresh{n}"
    with tgt.connect() as c:
        c.execute(f"CREATE DATABASE {db}")
    with tgt.connect(db) as c:
        c.execute(TABLE_DDL)
        c.execute(PROBE_DDL)
        t0 = time.perf_counter()
        c.execute(f"CREATE SUBSCRIPTION {db} CONNECTION '{src.dsn('bench')}'"  # noqa: S608 - our own local DSN
                  " PUBLICATION native_pub")
        wait(lambda: c.execute("SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"
                               ).fetchone()[0], 600, "native fresh copy")
        elapsed = time.perf_counter() - t0
        c.execute(f"ALTER SUBSCRIPTION {db} DISABLE")
        c.execute(f"ALTER SUBSCRIPTION {db} SET (slot_name = NONE)")
        c.execute(f"DROP SUBSCRIPTION {db}")
    with src.connect("bench") as c:
        wait(lambda: not c.execute("SELECT count(*) FROM pg_replication_slots WHERE"
                                   " slot_name = %s AND active", (db,)).fetchone()[0], 60,
             "the fresh slot to go idle")
        c.execute("SELECT pg_drop_replication_slot(%s)", (db,))
    return rows / elapsed


# -- 2. stream apply -------------------------------------------------------------------

MARK = [0]


def marker(src) -> int:
    MARK[0] += 1
    with src.connect("bench") as c:
        c.execute("INSERT INTO probe VALUES (%s, now())", (-MARK[0],))
    return -MARK[0]


def catch_up(side: Side, mark: int, rows: int) -> tuple[float, dict[str, float]]:
    """rows/s from the slot's activation to the marker, and each involved process's CPU
    seconds per wall second over that time (benchmarks/cpu_account.py)."""
    side.start()
    wait(lambda: side.check_alive() or side.slot_active(), 120, f"{side.name}'s slot")
    pids = cpu_account.side_pids(side, side.src)
    before = cpu_account.snapshot(pids)
    waited0 = cpu_account.snapshot(pids, cpu_account.runqueue_wait_seconds)
    t0 = time.perf_counter()
    with side.target() as c:
        def seen():
            side.check_alive()
            return c.execute("SELECT 1 FROM probe WHERE id = %s", (mark,)).fetchone()
        wait(seen, 900, f"{side.name} to catch up", every=0.002)
    elapsed = time.perf_counter() - t0
    pids = list(dict.fromkeys(pids + cpu_account.side_pids(side, side.src)))
    after = cpu_account.snapshot(pids)
    waited = cpu_account.snapshot(pids, cpu_account.runqueue_wait_seconds)
    settle_slot(side)
    side.stop()
    use = cpu_account.utilisation(before, after, elapsed)
    # the share of the phase each process was runnable but had no core (a shared machine)
    use.update({f"{k} waited": v for k, v in cpu_account.utilisation(waited0, waited,
                                                                      elapsed).items()})
    return rows / elapsed, use


def settle_slot(side: Side, timeout: float = 30.0) -> None:
    """Untimed, before a side stops: move its slot's restart_lsn past the phase just applied.

    Why: the slot restarts decoding at restart_lsn, which moves only when the walsender
    decodes a running-transactions record (the bgwriter logs one every 15 s, a CHECKPOINT
    one at once) below the confirmed position. Stopped right after a quick catch-up, a slot
    kept it before the phase's big transaction, and the next phase's walsender decoded that
    transaction again before sending anything: our walsender's CPU on 400k one-transaction
    deletes was 0.9 or 1.9-3.0 us a row by that chance alone (same options, same run), for
    either side. Settled, each phase decodes only its own changes, as a running stream does."""
    with side.src.connect("bench") as c:
        upto = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        c.execute("CHECKPOINT")
        try:
            wait(lambda: side.check_alive() or c.execute(
                "SELECT restart_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                (upto, side.slot)).fetchone()[0], timeout, f"{side.slot}'s restart_lsn")
        except TimeoutError:
            print(f"    ({side.slot}'s restart_lsn did not pass {upto} in {timeout:.0f} s: the"
                  " next phase may decode this one again)", flush=True)


def workload(src, op: str, rows: int, per_txn: int | None, base: int) -> None:
    stmt = {"insert": "INSERT INTO bench SELECT g, random(), random(), md5(g::text), now()"
                      " FROM generate_series(%s, %s) g",
            "update": "UPDATE bench SET a = a + 1, ts = now() WHERE id BETWEEN %s AND %s",
            "delete": "DELETE FROM bench WHERE id BETWEEN %s AND %s"}[op]
    with src.connect("bench") as c:
        step = per_txn or rows
        for lo in range(base, base + rows, step):
            c.execute(stmt, (lo, lo + step - 1))


def stream_apply(src, sides: list[Side], rows: int, repeat: int = 1
                 ) -> dict[str, dict[str, float]]:
    """Each phase ``repeat`` times (ours and native in turn); the median of each. Beside
    the rates: each side's processes' CPU per wall second, and the walsender's ceiling -
    the same WAL decoded by pgoutput alone with each side's options (cpu_account.py);
    ``<side> ceiling`` in the result is that rate."""
    runs: dict[str, dict[str, list[float]]] = {}
    uses: dict[str, dict[str, list[dict[str, float]]]] = {}
    base = 10_000_000
    for _ in range(repeat):
        for per_txn, label in ((None, "1 txn"), (100, "100-row txns")):
            for op in ("insert", "update", "delete"):
                cpu_account.create_ceiling_slots(src)
                workload(src, op, rows, per_txn, base)
                mark = marker(src)
                with src.connect("bench") as c:
                    upto = str(c.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
                name = f"{op}s, {label}"
                got = runs.setdefault(name, {s.name: [] for s in sides})
                use = uses.setdefault(name, {s.name: [] for s in sides})
                for s in sides:
                    rate, u = catch_up(s, mark, rows)
                    got[s.name].append(rate)
                    use[s.name].append(u)
                    # CPU microseconds per row, each process and all together
                    per_row = {k: v * 1e6 / rate for k, v in u.items() if " waited" not in k}
                    per_row["all"] = sum(per_row.values())
                    use.setdefault(f"{s.name} us/row", []).append(per_row)
                    # what its walsender sends per CPU second of its own (decode + send)
                    got.setdefault(f"{s.name} walsender per cpu", []).append(
                        rate / max(u.get("walsender", 0.0), 1e-3))
                for side, (wall, cpu, waited) in cpu_account.decode_ceiling(src, upto).items():
                    got.setdefault(f"{side} ceiling", []).append(rows / wall)
                    # what one free core decodes: the wall rate on a loaded machine is less
                    got.setdefault(f"{side} ceiling per cpu", []).append(rows / max(cpu, 0.01))
                    use.setdefault(f"{side} ceiling", []).append(
                        {"decoder": cpu / wall, "decoder waited": waited / wall})
                print(f"  {name}: " + ", ".join(
                    f"{k} {v[-1]:,.0f} rows/s" for k, v in got.items() if "per cpu" not in k)
                    + f" (load {os.getloadavg()[0]:.1f})", flush=True)
                print("    cpu/wall: " + "; ".join(
                    f"{k} {cpu_account.format_utilisation(v[-1])}" for k, v in use.items()
                    if "us/row" not in k), flush=True)
            base += 10_000_000
    print("\nWhere the catch-up time goes (medians; cpu/wall = CPU seconds per wall second of "
          "each process, + the share it was runnable without a core; walsender = rows its "
          "walsender sent per CPU second of its own in the catch-up; decoder = the same WAL "
          "decoded by pgoutput alone (pg_logical_slot_get_binary_changes) per CPU second; "
          "each ours' / native's options; best = the lower of the two / native's rate: the "
          "ratio a subscriber costing nothing reaches with a core for the walsender):")
    print("\n| phase | ours/native | ours | native | walsender rows/CPU s | decoder rows/CPU s |"
          " best ours / native options | cpu/wall ours | cpu/wall native | decoder |"
          "\n|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for name, got in runs.items():
        med = {k: statistics.median(v) for k, v in got.items()}
        cpu = {k: {label: statistics.median(u.get(label, 0.0) for u in us)
                   for label in dict.fromkeys(lb for u in us for lb in u)}
               for k, us in uses[name].items()}
        oc, nc = med["ours ceiling per cpu"], med["native ceiling per cpu"]
        ow, nw = med["ours walsender per cpu"], med["native walsender per cpu"]
        print(f"| {name} | {med['ours'] / med['native']:.2f} | {med['ours']:,.0f} |"
              f" {med['native']:,.0f} | {ow:,.0f} / {nw:,.0f} | {oc:,.0f} / {nc:,.0f} |"
              f" {min(ow, oc) / med['native']:.2f} / {min(nw, nc) / med['native']:.2f} |"
              f" {cpu_account.format_utilisation(cpu['ours'])} |"
              f" {cpu_account.format_utilisation(cpu['native'])} |"
              f" {cpu_account.format_utilisation(cpu['ours ceiling'])} /"
              f" {cpu_account.format_utilisation(cpu['native ceiling'])} |", flush=True)
    print("\nCPU microseconds per row, each process (medians of the runs):\n\n| phase | ours |"
          " native |\n|---|---|---|")
    for name in runs:
        cols = []
        for side in ("ours", "native"):
            us = uses[name][f"{side} us/row"]
            cols.append(", ".join(f"{label} {statistics.median(u.get(label, 0.0) for u in us):.2f}"
                                  for label in dict.fromkeys(lb for u in us for lb in u)))
        print(f"| {name} | {cols[0]} | {cols[1]} |", flush=True)
    return {name: {k: statistics.median(v) for k, v in got.items() if k in ("ours", "native")}
            for name, got in runs.items()}


def live(src, side: Side, rows: int, base: int) -> dict[str, float]:
    """The subscriber runs while the source executes each one-transaction workload: rows/s
    from the statement's start until the marker after its commit is on the target."""
    side.start()
    mark = marker(src)
    results = {}
    with side.target() as c:
        wait(lambda: side.check_alive() or c.execute(
            "SELECT 1 FROM probe WHERE id = %s", (mark,)).fetchone(), 900, "catch-up")
        for op in ("insert", "update", "delete"):
            t0 = time.perf_counter()
            workload(src, op, rows, None, base)
            mark = marker(src)
            wait(lambda mark=mark: side.check_alive() or c.execute(
                "SELECT 1 FROM probe WHERE id = %s", (mark,)).fetchone(), 900, f"live {op}",
                every=0.002)
            results[op] = rows / (time.perf_counter() - t0)
    side.stop()
    return results


# -- 3. lag ----------------------------------------------------------------------------


def lag(src, side: Side, rate: int, seconds: float, first_probe: int) -> tuple[float, float]:
    # the same settled start for each side: after the stream phases' 2.4M changes, autovacuum
    # and a checkpoint fell into whichever side ran first (ours: p99 94-208 ms in full runs
    # against 6-7 ms for the lag phase alone, native then 7-11 ms)
    with src.connect("bench") as c:
        c.execute("VACUUM (ANALYZE) bench")
        c.execute("CHECKPOINT")
    side.start()
    with side.target() as c:
        c.execute("VACUUM (ANALYZE) bench")
        c.execute("CHECKPOINT")
    mark = marker(src)  # start caught up: nothing of the other side's run is pending
    with side.target() as c:
        wait(lambda: side.check_alive() or c.execute(
            "SELECT 1 FROM probe WHERE id = %s", (mark,)).fetchone(), 300, "catch-up")
    committed: dict[int, float] = {}
    seen: dict[int, float] = {}
    done = threading.Event()
    last_id = first_probe + int(rate * seconds / 50)

    def poll() -> None:
        with side.target() as c:
            last = first_probe - 1
            deadline = None
            while last < last_id:
                top = c.execute("SELECT coalesce(max(id), %s) FROM probe WHERE id BETWEEN"
                                " %s AND %s", (first_probe - 1, first_probe, last_id)
                                ).fetchone()[0]
                now = time.perf_counter()
                for i in range(last + 1, top + 1):
                    seen[i] = now
                last = max(last, top)
                if done.is_set():
                    deadline = deadline or now + 60
                    if now > deadline:
                        break
                time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    per_txn = 50
    interval = per_txn / rate
    base = 50_000_000 + first_probe * 100
    with src.connect("bench") as c:
        start = time.perf_counter()
        for n, probe_id in enumerate(range(first_probe, last_id + 1)):
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            lo = base + n * 30
            with c.transaction():  # 30 inserts, 15 updates, 4 deletes, 1 probe
                c.execute("INSERT INTO bench SELECT g, random(), random(), 'x', now() FROM"
                          " generate_series(%s, %s) g", (lo, lo + 29))
                c.execute("UPDATE bench SET a = a + 1 WHERE id BETWEEN %s AND %s",
                          (lo - 150, lo - 136))
                c.execute("DELETE FROM bench WHERE id BETWEEN %s AND %s",
                          (lo - 300, lo - 297))
                c.execute("INSERT INTO probe VALUES (%s, now())", (probe_id,))
            committed[probe_id] = time.perf_counter()
    done.set()
    poller.join(90)
    side.stop()
    lags = sorted((seen[i] - committed[i]) * 1000 for i in committed if i in seen)
    if len(lags) < len(committed):
        raise RuntimeError(f"{side.name}: {len(committed) - len(lags)} probes never arrived")
    return statistics.median(lags), lags[max(0, int(len(lags) * 0.99) - 1)]


# -- profile summary -------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``func (file.py)``."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rsplit('/', 1)[-1].split(':')[0].rstrip(')')})" if where else func


def profile_summary(files: list[Path], top: int = 22) -> str:
    """Where the sidecar's busy samples went, from py-spy's raw (collapsed) stacks.

    Only the streaming work counts: the decoding loop (``Stream.run``) and the target writer
    thread (``TargetWriter._work``); start-up (imports, preflight) happens before a catch-up
    run's clock starts. Idle samples (py-spy leaves them out without --idle) do not count."""
    parts = {"stream loop (decode + net)": 0, "writer thread (COPY, SQL)": 0, "other": 0}
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for f in files:
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            count = int(n)
            names = [_frame_name(fr) for fr in stack.split(";")[1:]]
            if "TargetWriter._work (apply.py)" in names:
                parts["writer thread (COPY, SQL)"] += count
            elif "Stream.run (loop.py)" in names:
                parts["stream loop (decode + net)"] += count
            else:
                parts["other"] += count
                continue
            total += count
            own[names[-1]] = own.get(names[-1], 0) + count
            for name in set(names):
                incl[name] = incl.get(name, 0) + count
    if not total:
        return "no samples"
    lines = [f"{total} busy streaming samples in {len(files)} runs "
             f"({parts['other']} more in start-up and other threads, left out)"]
    lines += [f"  {k}: {v / total:.0%}" for k, v in parts.items() if k != "other"]
    lines.append("self time:")
    lines += [f"  {v / total:6.1%}  {k}" for k, v in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines.append("inclusive:")
    lines += [f"  {v / total:6.1%}  {k}" for k, v in sorted(incl.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100k rows, 8 s of lag load")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--lag-seconds", type=float, default=None)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--only", choices=["snapshot", "fresh", "stream", "live", "lag"],
                   action="append")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of the fresh-replica and catch-up phases; medians reported")
    p.add_argument("--workers", default="1,2",
                   help="snapshot workers to compare for a fresh replica (ours)")
    p.add_argument("--fresh-pure", action="store_true",
                   help="beside each fresh replica of ours, one with PGML_REPLICA_PURE=1 (the"
                        " pure copy relay), interleaved")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy each sidecar run into DIR/sidecar-NN.txt (collapsed stacks) and "
                        "print where the time went")
    a = p.parse_args(argv)
    rows = a.rows or (100_000 if a.quick else 1_000_000)
    lag_seconds = a.lag_seconds or (8 if a.quick else 30)
    only = set(a.only or ["snapshot", "fresh", "stream", "live", "lag"])
    print(f"pgml-replica vs native logical replication: {rows:,} rows, "
          f"{os.cpu_count()} CPUs, PostgreSQL 15 (both clusters on this machine), load average "
          f"{os.getloadavg()[0]:.2f}, medians of {a.repeat}", flush=True)
    ratios: list[tuple[str, float, float]] = []
    with running_cluster("bench-source", SOURCE_SETTINGS) as src, \
            running_cluster("bench-target", {**REPLICA_SETTINGS,  # native restarts fast
                                             "wal_retrieve_retry_interval": "100ms"}) as tgt:
        with src.connect() as c:
            c.execute("CREATE DATABASE bench")
        with tgt.connect() as c:
            c.execute("CREATE DATABASE ours")
            c.execute("CREATE DATABASE native")
        with src.connect("bench") as c:
            c.execute(TABLE_DDL)
            c.execute(PROBE_DDL)
        fill(src, rows)
        ours, native = Side("ours", src, tgt, "ours"), Side("native", src, tgt, "native")
        if a.profile is not None:
            a.profile.mkdir(parents=True, exist_ok=True)
            ours.profile_dir = a.profile
        o = snapshot_ours(src, tgt, rows)
        n = snapshot_native(src, tgt, rows)
        with tgt.connect("native") as c:
            c.execute("ALTER SUBSCRIPTION native_sub DISABLE")
        if "snapshot" in only:
            print(f"  initial copy: ours {o:,.0f} rows/s, native {n:,.0f} rows/s", flush=True)
            ratios.append(("initial copy rows/s", o, n))
        if "fresh" in only:
            # keys: workers, then workers + 100 for the same with the pure relay (--fresh-pure)
            fo: dict[int, list[float]] = {int(w): [] for w in a.workers.split(",")}
            if a.fresh_pure:
                fo.update({w + 100: [] for w in fo})
            fs: dict[int, list[dict[str, float]]] = {w: [] for w in fo}
            fn: list[float] = []
            pure = {**os.environ, "PGML_REPLICA_PURE": "1"}
            for i in range(a.repeat):
                for w in (list(fo) if i % 2 == 0 else list(fo)[::-1]):  # order evened out
                    rate, steps = fresh_ours(src, tgt, rows, i * 1000 + w, w % 100,
                                             pure if w > 100 else None)
                    fo[w].append(rate)
                    fs[w].append(steps)
                fn.append(fresh_native(src, tgt, rows, i))
                print("  fresh replica from process start: " + ", ".join(
                    f"ours ({_fresh_label(w)}) {v[-1]:,.0f}" for w, v in fo.items())
                    + f", native {fn[-1]:,.0f} rows/s (load {os.getloadavg()[0]:.1f})",
                    flush=True)
            for w, v in fo.items():
                ratios.append((f"fresh replica from process start, {_fresh_label(w)}, rows/s",
                               statistics.median(v), statistics.median(fn)))
                print(f"  ours ({_fresh_label(w)}), seconds from exec to each step (median of "
                      f"{len(fs[w])}): " + ", ".join(
                          f"{k} {statistics.median(r[k] for r in fs[w] if k in r):.3f}"
                          for k in sorted({k for r in fs[w] for k in r},
                                          key=lambda k: statistics.median(
                                              r[k] for r in fs[w] if k in r))), flush=True)
        with src.connect("bench") as c:  # a clean slate for the stream phase
            c.execute("TRUNCATE bench")
        for side in (ours, native):
            mark = marker(src)
            side.start()
            with side.target() as c:
                wait(lambda c=c, mark=mark, side=side: side.check_alive() or c.execute(
                    "SELECT 1 FROM probe WHERE id = %s", (mark,)).fetchone(), 120, "truncate")
            side.stop()
        if "stream" in only:
            for name, r in stream_apply(src, [ours, native], rows, a.repeat).items():
                ratios.append((f"{name} rows/s", r["ours"], r["native"]))
        if "live" in only:
            lo, ln = live(src, ours, rows, 30_000_000), live(src, native, rows, 40_000_000)
            for op in lo:
                print(f"  {op}s, 1 txn, live: ours {lo[op]:,.0f} rows/s, native "
                      f"{ln[op]:,.0f} rows/s", flush=True)
                ratios.append((f"{op}s, 1 txn, live (from the statement's start) rows/s",
                               lo[op], ln[op]))
        if "lag" in only:
            lo = lag(src, ours, a.rate, lag_seconds, 1)
            ln = lag(src, native, a.rate, lag_seconds, 1_000_000)
            print(f"  lag at {a.rate} rows/s: ours p50 {lo[0]:.1f} ms p99 {lo[1]:.1f} ms; "
                  f"native p50 {ln[0]:.1f} ms p99 {ln[1]:.1f} ms", flush=True)
            ratios.append(("lag p50 ms (lower is better)", lo[0], ln[0]))
            ratios.append(("lag p99 ms (lower is better)", lo[1], ln[1]))
    print("\n| measure | ours | native | ours/native |\n|---|---:|---:|---:|")
    for name, o, n in ratios:
        print(f"| {name} | {o:,.1f} | {n:,.1f} | {o / n:.2f} |")
    if a.profile is not None:
        time.sleep(1)  # py-spy writes its file once the sidecar it sampled has exited
        print("\nprofile (py-spy, the sidecar's busy samples):\n"
              + profile_summary(sorted(a.profile.glob("sidecar-*.txt"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
