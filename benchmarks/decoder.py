"""How fast the pure-Python pgoutput decoder is, next to how fast the stream arrives.

    .venv/bin/python -m benchmarks.decoder [--quick] [--messages N]

A throw-away source cluster; a table like PERF-NOTES' (bigint pk, 2 x float8, text,
timestamptz); N/2 inserts in one transaction, then an update of every row in another. The
slot's stream is recorded once per mode (text values, ``binary 'true'``) through
ReplicationConnection; the time that takes is the receive rate - the real ceiling a decoder
must keep up with (a bare reader: PERF-NOTES measured ~125k rows/s). Then, over the
recorded CopyData frames, in the same process:

  decode              Decoder.decode of pre-split payloads (messages/s)
  framing + decode    parse_copy_data + Decoder.decode: what the sidecar's loop pays
  + values()          ... plus TupleData.values() on every Insert/Update (pure Python)
  + psycopg loaders   ... plus psycopg's C loaders on the same raw values instead

Ratios printed: decode rate / receive rate (>1: the decoder is not the bound) and
values() / psycopg's C loaders (conversion cost against the compiled alternative).
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
from collections.abc import Callable

from psycopg import pq
from psycopg.adapt import Transformer

from decoder import Decoder, Insert, Update, XLogData, parse_copy_data
from devtools.localcluster import SOURCE_SETTINGS, running_cluster
from replica.source.replconn import ReplicationConnection

TABLE = ("CREATE TABLE bench (id bigint PRIMARY KEY, a float8, b float8, t text, "
         "ts timestamptz)")


def _workload(cluster, dbname: str, rows: int) -> tuple[str, int]:
    with cluster.connect(dbname) as conn:
        conn.execute(TABLE)
        conn.execute("CREATE PUBLICATION pub FOR TABLE bench")
    with ReplicationConnection(cluster.dsn(dbname)) as rc:
        start = rc.create_slot("bench", snapshot="nothing")["consistent_point"]
    with cluster.connect(dbname) as conn:
        conn.execute("INSERT INTO bench SELECT g, g * 0.5, random(), 'row ' || g, "
                     "now() - g * interval '1 second' FROM generate_series(1, %s) g", (rows,))
        conn.execute("UPDATE bench SET a = a + 1")
    return "bench", start


def _record(dsn: str, slot: str, start: int, binary: bool, changes: int
            ) -> tuple[list[bytes], float, float]:
    """Every CopyData frame up to the second Commit; wall and CPU seconds receiving took."""
    frames: list[bytes] = []
    commits = seen = 0
    options = {"proto_version": "1", "publication_names": "pub",
               "binary": "true" if binary else "false"}
    with ReplicationConnection(dsn) as rc:
        rc.start(slot, start, options)
        first = None
        while commits < 2:
            data = rc.read(60.0)
            if data is None:
                raise TimeoutError(f"stream stalled after {seen} of {changes} changes")
            if data[:1] != b"w":
                continue
            if first is None:
                first, cpu = time.perf_counter(), time.process_time()
            frames.append(data)
            tag = data[25:26]
            if tag == b"C":
                commits += 1
            elif tag in (b"I", b"U"):
                seen += 1
        elapsed, cpu = time.perf_counter() - first, time.process_time() - cpu
    if seen != changes:
        raise RuntimeError(f"recorded {seen} changes, expected {changes}")
    return frames, elapsed, cpu


def _best_interleaved(passes: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Least CPU seconds of each pass over ``rounds`` rounds that run every pass once.

    CPU time (process_time), not wall time, and interleaved rounds: on a shared machine
    other processes stretch wall time, and a burst of load then hits every pass alike.
    """
    best = dict.fromkeys(passes, float("inf"))
    for _ in range(rounds):
        for name, fn in passes.items():
            gc.collect()
            t = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t)
    return best


def _passes(frames: list[bytes], binary: bool) -> dict[str, Callable[[], None]]:
    payloads = [parse_copy_data(f).payload for f in frames]
    fmt = pq.Format.BINARY if binary else pq.Format.TEXT

    def decode_only() -> None:
        d = Decoder(1)
        for p in payloads:
            d.decode(p)

    def framing_decode() -> None:
        d = Decoder(1)
        for f in frames:
            x = parse_copy_data(f)
            if type(x) is XLogData:
                d.decode(x.payload)

    def with_values() -> None:
        d = Decoder(1)
        relations = d.relations
        for f in frames:
            m = d.decode(parse_copy_data(f).payload)
            if type(m) is Insert or type(m) is Update:
                m.new_tuple.values(relations[m.relation_id])

    def with_psycopg() -> None:
        d = Decoder(1)
        loaders: dict[int, Transformer] = {}
        for f in frames:
            m = d.decode(parse_copy_data(f).payload)
            if type(m) is Insert or type(m) is Update:
                tx = loaders.get(m.relation_id)
                if tx is None:
                    tx = loaders[m.relation_id] = Transformer()
                    tx.set_loader_types(
                        [c.type_oid for c in d.relations[m.relation_id].columns], fmt)
                tx.load_sequence(m.new_tuple.raw)

    return {"decode": decode_only, "framing + decode": framing_decode,
            "+ values()": with_values, "+ psycopg loaders": with_psycopg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k messages, 3 rounds")
    parser.add_argument("--messages", type=int, default=None,
                        help="Insert+Update messages to record (default 1,000,000)")
    args = parser.parse_args()
    changes = args.messages or (50_000 if args.quick else 1_000_000)
    rows = changes // 2
    changes = rows * 2
    repeat = 3 if args.quick else 4
    print(f"decoder benchmark: {changes:,} Insert/Update messages ({rows:,} inserts + "
          f"{rows:,} updates), Python {platform.python_version()}; decode rates are CPU "
          f"time, best of {repeat} interleaved rounds; receive is wall time")
    with running_cluster("bench-decoder", SOURCE_SETTINGS) as cluster:
        cluster.create_database("bench")
        slot, start = _workload(cluster, "bench", rows)
        for binary in (False, True):
            mode = "binary" if binary else "text"
            frames, received, read_cpu = _record(cluster.dsn("bench"), slot, start, binary,
                                                 changes)
            n = len(frames)
            size = sum(len(f) for f in frames)
            print(f"\n[{mode}] {n:,} messages, {size / 1e6:.1f} MB; "
                  f"receive (ReplicationConnection.read): {n / received:,.0f} msg/s, "
                  f"reader CPU {read_cpu / n * 1e6:.2f} µs/msg")
            seconds = _best_interleaved(_passes(frames, binary), repeat)
            rates = {name: n / sec for name, sec in seconds.items()}
            for name, rate in rates.items():
                print(f"  {name:<18} {rate:>12,.0f} msg/s   {1e6 / rate:6.2f} µs/msg   "
                      f"x{rate / (n / received):.2f} of receive")
            values_cost = 1 / rates["+ values()"] - 1 / rates["framing + decode"]
            psycopg_cost = 1 / rates["+ psycopg loaders"] - 1 / rates["framing + decode"]
            print(f"  conversion per row: values() {values_cost * 1e6:.2f} µs, psycopg C "
                  f"loaders {psycopg_cost * 1e6:.2f} µs (x{values_cost / psycopg_cost:.1f})")
            one_thread = read_cpu / n + 1 / rates["framing + decode"]
            print(f"  read + framing + decode in one thread: {one_thread * 1e6:.2f} µs/msg = "
                  f"{1 / one_thread:,.0f} msg/s of CPU (x{received / n / one_thread:.2f} "
                  f"of receive)")
            del frames


if __name__ == "__main__":
    main()
