"""Which statements apply a run of full-row updates fastest on the target (issue 14, updates)?

    .venv/bin/python -m benchmarks.update_forms [--rows 400000] [--keys 50000] [--rounds 3]

A full-row update (every column's new value present) replaces the row whole, so the sidecar
may write it as ``UPDATE ... FROM unnest($arrays)`` (replica/stream/tables.py
``update_any``, the form before this benchmark) or as a delete of its key followed by the
new image COPYed in (``replace_any`` + the COPY). Forms, against the replication
benchmark's table (bigint pk, 2 float8, text, timestamptz) on a throw-away PostgreSQL 15
cluster, each timed from the client (round trips included) and by the target backend's
own CPU (``/proc/<pid>/schedstat``):

- ``update unnest``: ``UPDATE bench t SET ... FROM unnest($1, ..., $5) AS s (...) WHERE
  t.id = s.id``, one binary array per column;
- ``delete any + copy``: ``DELETE FROM bench WHERE id = ANY($1)`` (one binary int8[]), then
  COPY BINARY of the new images into the table;
- ``delete returning + copy``: the same with ``RETURNING id`` (the rows found come back, so
  a key absent from the target can be told apart; rowcount alone when all were there).

Payloads (arrays, COPY data) are built before the clock starts, with the sidecar's own
encoders (``decoder.accel``), from raw images as pgoutput sends them. Each trial runs in a
transaction that is rolled back, then ``VACUUM`` (outside the clock) removes what it left,
so every form meets the same table; the forms take turns within a round, after one warm-up
round. Key sets: ``contiguous`` and ``random`` (``--keys`` of them) and ``random small``
(100 keys: what a lightly loaded stream's batch carries).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import sys
import time

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from benchmarks.cpu_account import backend_cpu_seconds
from decoder import accel
from devtools.localcluster import REPLICA_SETTINGS, running_cluster

TABLE_DDL = ("CREATE TABLE bench (id bigint PRIMARY KEY, a float8, b float8, t text,"
             " ts timestamptz)")
ELEMS = (20, 701, 701, 25, 1184)  # int8, float8, float8, text, timestamptz
ARRAYS = (1016, 1022, 1022, 1009, 1185)
UPDATE = ("UPDATE bench t SET a = s.a, b = s.b, t = s.t, ts = s.ts FROM unnest(%b, %b, %b,"
          " %b, %b) AS s (id, a, b, t, ts) WHERE t.id = s.id")
DELETE = "DELETE FROM bench WHERE id = ANY(%b)"
FORMS = ("update unnest", "delete any + copy", "delete returning + copy")
COPY = "COPY bench (id, a, b, t, ts) FROM STDIN (FORMAT binary)"


def _array_type(oid: int) -> tuple[type, type]:
    """A bytes subclass psycopg sends as-is, binary, typed ``oid`` (apply.py's way)."""
    cls = type(f"Array{oid}", (bytes,), {})
    dumper = type(f"Array{oid}Dumper", (Dumper,), {
        "oid": oid, "format": Format.BINARY, "dump": lambda self, obj: obj})
    return cls, dumper


TYPES = [_array_type(oid) for oid in ARRAYS]


def image(k: int, rng: random.Random) -> tuple[bytes, ...]:
    """A row's new image as pgoutput's binary values (COPY BINARY's field format)."""
    return (struct.pack("!q", k), struct.pack("!d", rng.random()),
            struct.pack("!d", rng.random()), f"{k:032x}".encode(),
            struct.pack("!q", 800_000_000_000_000 + k))


def run_form(c: psycopg.Connection, pid: int, form: str, params: list, copy_data: bytes,
             n: int) -> tuple[float, float]:
    """One rolled-back trial: (seconds, the backend's CPU seconds); checks every row."""
    with c.transaction(force_rollback=True):
        cpu0, t0 = backend_cpu_seconds(pid), time.perf_counter()
        if form == "update unnest":
            done = c.execute(UPDATE, params).rowcount
        else:
            stmt = DELETE + (" RETURNING id" if "returning" in form else "")
            done = c.execute(stmt, params[:1]).rowcount
            with c.cursor().copy(COPY) as cp:
                cp.write(copy_data)
        elapsed, cpu = time.perf_counter() - t0, backend_cpu_seconds(pid) - cpu0
        if done != n:
            raise RuntimeError(f"{form} matched {done} rows, not {n}")
    c.execute("VACUUM bench")
    return elapsed, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--keys", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    rng = random.Random(14)
    lo = a.rows // 3
    key_sets = {"contiguous": list(range(lo, lo + a.keys)),
                "random": rng.sample(range(1, a.rows + 1), a.keys),
                "random small": rng.sample(range(1, a.rows + 1), 100)}
    print(f"update forms: runs of full-row updates on a {a.rows:,}-row table, PostgreSQL 15, "
          f"{os.cpu_count()} CPUs, {accel.describe()}, load average "
          f"{os.getloadavg()[0]:.2f}, medians of {a.rounds} rounds (+1 warm-up)", flush=True)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with running_cluster("update-forms", REPLICA_SETTINGS) as tgt:
        with tgt.connect() as c:
            c.execute("CREATE DATABASE forms")
        with tgt.connect("forms", autocommit=True) as c:
            for cls, dumper in TYPES:
                c.adapters.register_dumper(cls, dumper)
            c.execute(TABLE_DDL)
            c.execute("ALTER TABLE bench SET (autovacuum_enabled = off)")
            c.execute("INSERT INTO bench SELECT g, random(), random(), md5(g::text), now()"
                      " FROM generate_series(1, %s) g", (a.rows,))
            c.execute("VACUUM ANALYZE bench")
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            for set_name, keys in key_sets.items():
                images = [image(k, rng) for k in keys]
                params = [cls(arr) for (cls, _), arr in zip(TYPES, accel.column_arrays(
                    images, range(5), ELEMS), strict=True)]
                data = accel.copy_rows(images, False)
                times: dict[str, list[tuple[float, float]]] = {f: [] for f in FORMS}
                for rnd in range(a.rounds + 1):
                    for form in FORMS:
                        took = run_form(c, pid, form, params, data, len(keys))
                        if rnd:  # round 0 warms the table's pages and the plans
                            times[form].append(took)
                r = results[set_name] = {f: (statistics.median(t for t, _ in v),
                                             statistics.median(u for _, u in v))
                                         for f, v in times.items()}
                base = r["update unnest"]
                print(f"\n{set_name} keys ({len(keys):,}, load {os.getloadavg()[0]:.2f}):",
                      flush=True)
                for form, (secs, cpu) in r.items():
                    print(f"  {form:24s} {secs * 1000:8.1f} ms {len(keys) / secs:11,.0f} rows/s"
                          f"  backend {cpu / len(keys) * 1e6:5.2f} us/row  "
                          f"{base[0] / secs:5.2f}x update's rows/s", flush=True)
    print("\n| keys | " + " | ".join(FORMS) + " |\n|---|" + "---:|" * len(FORMS))
    for set_name, r in results.items():
        n = len(key_sets[set_name])
        print(f"| {set_name} | " + " | ".join(
            f"{secs * 1000:.1f} ms, {cpu / n * 1e6:.2f} us/row" for secs, cpu in r.values())
            + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
