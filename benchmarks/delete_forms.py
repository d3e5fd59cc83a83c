"""Which statement deletes a batch of keys fastest on the target (issue 14, deletes)?

    .venv/bin/python -m benchmarks.delete_forms [--rows 400000] [--keys 50000] [--rounds 3]

The sidecar deletes a run of keyed rows in one statement per batch (replica/stream/apply.py
``_write_arrays``; replica/stream/tables.py ``delete_any``). Forms of it, against
the same table (the replication benchmark's: bigint pk, 2 float8, text, timestamptz) on a
throw-away PostgreSQL 15 cluster, each timed from the client (round trip included):

- ``any``: ``DELETE ... WHERE id = ANY($1)``, one binary int8[] parameter - the current
  form; planned with the array's values (the unnamed statement's custom plan);
- ``any generic``: the same prepared, with ``plan_cache_mode = force_generic_plan`` - the
  plan the server may switch to once psycopg prepares the statement (after five runs) and
  five custom plans cost no less than the generic one;
- ``unnest``: ``DELETE ... t USING unnest($1) AS s (id) WHERE t.id = s.id``;
- ``copy + using``: COPY BINARY of the keys into a temporary table (no statistics, as the
  sidecar's stage), then ``DELETE ... USING`` it; the COPY is inside the time;
- ``copy + analyze + using``: the same with ``ANALYZE`` of the temporary table between (its
  time inside too): whether statistics turn the join around.

Every payload (the array parameter, the COPY data) is built before the clock starts, as the
sidecar's compiled path builds them: the time is the server's plus the transfer. Each
trial runs in a transaction that is rolled back, so every form deletes the same rows; the
forms take turns within a round, after one warm-up round. Key sets: ``contiguous`` (50k
consecutive ids in order, what a catch-up of ``DELETE ... WHERE id BETWEEN`` sends) and
``random`` (50k ids drawn from the whole table, shuffled). One EXPLAIN (ANALYZE, BUFFERS)
per form and key set is printed (its own rolled-back transaction).
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

from devtools.localcluster import REPLICA_SETTINGS, running_cluster

INT8_OID, INT8_ARRAY_OID = 20, 1016
TABLE_DDL = ("CREATE TABLE bench (id bigint PRIMARY KEY, a float8, b float8, t text,"
             " ts timestamptz)")
STAGE_DDL = "CREATE TEMP TABLE stage (id bigint) ON COMMIT DELETE ROWS"
FORMS = {
    "any": "DELETE FROM bench WHERE id = ANY(%b)",
    "any generic": "DELETE FROM bench WHERE id = ANY(%b)",
    "unnest": "DELETE FROM bench t USING unnest(%b) AS s (id) WHERE t.id = s.id",
    "copy + using": "DELETE FROM bench t USING stage s WHERE t.id = s.id",
    "copy + analyze + using": "DELETE FROM bench t USING stage s WHERE t.id = s.id",
}
GENERIC = "PREPARE generic_any (bigint[]) AS DELETE FROM bench WHERE id = ANY($1)"


class Int8Array(bytes):
    """A binary int8[] sent as-is (apply.py's ``_array_class`` does the same per type)."""


class Int8ArrayDumper(Dumper):
    oid = INT8_ARRAY_OID
    format = Format.BINARY

    def dump(self, obj):
        return obj


def int8_array(keys: list[int]) -> Int8Array:
    """The binary array format (array_send): ndim, has-nulls, element type, then one
    dimension (length, lower bound 1) and each element as length + value."""
    head = struct.pack("!iiiii", 1, 0, INT8_OID, len(keys), 1)
    return Int8Array(head + b"".join(struct.pack("!iq", 8, k) for k in keys))


def copy_binary(keys: list[int]) -> bytes:
    """COPY BINARY rows of one int8 column: signature, flags, extension, rows, trailer."""
    return (b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
            + b"".join(struct.pack("!hiq", 1, 8, k) for k in keys) + struct.pack("!h", -1))


def run_form(c: psycopg.Connection, form: str, arr: Int8Array, copy_data: bytes,
             explain: list[int] | None = None) -> tuple[float, int, str]:
    """One rolled-back trial: (seconds, rows deleted, the plan when given the keys to
    ``explain``)."""
    stmt = FORMS[form]
    if explain:
        stmt = "EXPLAIN (ANALYZE, BUFFERS) " + stmt
    plan = ""
    with c.transaction(force_rollback=True):
        if form == "any generic":
            c.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        if explain and form == "any generic":
            # a protocol-level prepared EXPLAIN plans with the values; EXECUTE of a PREPARE
            # shows the generic plan (the keys as a literal: only the plan is wanted)
            c.execute(GENERIC)
            plan = "\n".join(r[0] for r in psycopg.ClientCursor(c).execute(
                "EXPLAIN (ANALYZE, BUFFERS) EXECUTE generic_any (%s)", (explain,)))
            c.execute("DEALLOCATE generic_any")
            return 0.0, len(explain), plan
        t0 = time.perf_counter()
        if form.startswith("copy"):
            with c.cursor().copy("COPY stage FROM STDIN (FORMAT binary)") as cp:
                cp.write(copy_data)
            if "analyze" in form:
                c.execute("ANALYZE stage")
            cur = c.execute(stmt)
        else:
            cur = c.execute(stmt, (arr,), prepare=form == "any generic")
        if explain:
            plan = "\n".join(r[0] for r in cur.fetchall())
        elapsed = time.perf_counter() - t0
        deleted = cur.rowcount
    return elapsed, deleted, plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--keys", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--plans", action="store_true", help="print the whole EXPLAIN of each")
    a = p.parse_args(argv)
    rng = random.Random(14)
    lo = a.rows // 3
    key_sets = {"contiguous": list(range(lo, lo + a.keys)),
                "random": rng.sample(range(1, a.rows + 1), a.keys)}
    print(f"delete forms: {a.keys:,} keys of a {a.rows:,}-row table, PostgreSQL 15, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, medians of "
          f"{a.rounds} rounds (+1 warm-up)", flush=True)
    with running_cluster("delete-forms", REPLICA_SETTINGS) as tgt:
        with tgt.connect() as c:
            c.execute("CREATE DATABASE forms")
        with tgt.connect("forms", autocommit=True) as c:
            c.adapters.register_dumper(Int8Array, Int8ArrayDumper)
            c.execute(TABLE_DDL)
            c.execute("INSERT INTO bench SELECT g, random(), random(), md5(g::text), now()"
                      " FROM generate_series(1, %s) g", (a.rows,))
            c.execute("VACUUM ANALYZE bench")
            c.execute(STAGE_DDL)
            results: dict[str, dict[str, float]] = {}
            for set_name, keys in key_sets.items():
                arr, data = int8_array(keys), copy_binary(keys)
                times: dict[str, list[float]] = {f: [] for f in FORMS}
                for rnd in range(a.rounds + 1):
                    for form in FORMS:
                        secs, deleted, _ = run_form(c, form, arr, data)
                        if deleted != len(keys):
                            raise RuntimeError(f"{form} deleted {deleted}, not {len(keys)}")
                        if rnd:  # round 0 warms the table's pages and the plans
                            times[form].append(secs)
                results[set_name] = {f: statistics.median(v) for f, v in times.items()}
                best = min(results[set_name].values())
                print(f"\n{set_name} keys (load {os.getloadavg()[0]:.2f}):", flush=True)
                for form, secs in results[set_name].items():
                    print(f"  {form:22s} {secs * 1000:8.1f} ms  {len(keys) / secs:12,.0f} keys/s"
                          f"  {secs / best:5.2f}x the fastest", flush=True)
                for form in FORMS:
                    _, _, plan = run_form(c, form, arr, data, explain=keys)
                    lines = plan.splitlines()
                    shown = lines if a.plans else [
                        ln for ln in lines if "->" in ln or "Cond:" in ln or "Filter:" in ln
                        or ln.startswith(("Delete", "Execution", "Planning"))]
                    print(f"  EXPLAIN ANALYZE, {form}:\n" + "\n".join(  # arrays: cut short
                        f"    {ln[:150]}{'...' if len(ln) > 150 else ''}" for ln in shown),
                        flush=True)
            # which plan the sidecar's statement gets: psycopg prepares it after five runs
            # (prepare_threshold), the server then tries five custom plans before it may
            # keep the generic one
            # (12 batches in one transaction: psycopg forgets its prepared statements at a
            # ROLLBACK, which the sidecar's commits never send)
            keys = key_sets["random"]
            step = len(keys) // 12
            with c.transaction(force_rollback=True):
                for i in range(12):
                    c.execute(FORMS["any"], (int8_array(keys[i * step:(i + 1) * step]),))
                for name, generic, custom in c.execute(
                        "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"):
                    print(f"\n= ANY($1), 12 batches of {step:,} keys with psycopg's defaults:"
                          f" prepared as {name}, {generic} generic and {custom} custom plans",
                          flush=True)
    print("\n| keys | " + " | ".join(FORMS) + " | fastest |\n|---|"
          + "---:|" * len(FORMS) + "---|")
    for set_name, r in results.items():
        print(f"| {set_name} | " + " | ".join(f"{s * 1000:.1f} ms" for s in r.values())
              + f" | {min(r, key=r.get)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
