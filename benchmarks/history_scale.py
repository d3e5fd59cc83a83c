"""History at scale (issue 11): pgml.point_in_time vs Feast vs a Postgres LATERAL join, one run.

    .venv/bin/python -m benchmarks.history --scale-only [--scale-spine S] [--scale-versions V]
        [--feast-python PATH] [--rounds R]

The versions are written straight into the history tables (the sidecar's layout, no sidecar:
what is measured here is reading them), in ``RELATIONS`` feature relations keyed on ``id``
(V / RELATIONS versions each, a tenth as many keys, 100-row transactions one second apart,
each touching 100 different keys - Feast does not reliably order two versions of a key with
the same timestamp (its dask store sorts by created, then by event time, not stably) -
seeded like an initial copy). The spine: S rows, a random key and a random event time inside
the history, a label. Then, on the same data:

1. ``pgml.point_in_time`` on the versions in Postgres, and after ``pgml.history_compact``
   (from Parquet);
2. the same join as ``LEFT JOIN LATERAL (... ORDER BY commit time DESC LIMIT 1)`` per
   relation, with an index on (id, commit time) - the index build timed apart; the two
   results are compared row for row (EXCEPT ALL both ways);
3. Feast's ``get_historical_features`` with its file (dask) and DuckDB offline stores over the
   same versions exported to Parquet (export not timed), in Feast's own environment
   (``--feast-python``, default /var/lib/pgml-replica/feast-venv/bin/python; said so and
   skipped when it is not installed). Its non-NULL counts and sums are checked against
   pgml.point_in_time's.
Times are medians of ``--rounds``; every line says which.
"""

# ruff: noqa: S608 - SQL built from this module's constant relation names and temp paths
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from devtools.localcluster import REPLICA_SETTINGS, running_cluster

ROOT = Path(__file__).resolve().parents[1]
RELATIONS = ("feat_a", "feat_b")
FEAST_PYTHON = "/var/lib/pgml-replica/feast-venv/bin/python"


def _synth(r, name: str, keys: int, versions: int) -> None:
    from replica.history import store

    r.execute(f"CREATE TABLE public.{name} (id bigint PRIMARY KEY, x float8, y int, t text)")
    with r.transaction():
        store.ensure(r, "public", name, ["id"], None)
    r.execute("UPDATE pgml_history.tables SET started_at = '2026-01-01' WHERE relation_name"
              " = %s", (f"public.{name}",))
    h = f"pgml_history.public__{name}"
    r.execute(f"INSERT INTO {h} (_pgml_commit_time, _pgml_commit_lsn, _pgml_seq, _pgml_op)"  # noqa: S608
              " VALUES ('2026-01-01', '0/10', -2, 'T')")
    r.execute(f"INSERT INTO {h} (id, x, y, t, _pgml_commit_time, _pgml_commit_lsn, _pgml_seq,"  # noqa: S608
              " _pgml_op) SELECT g, random(), (random() * 100)::int, md5(g::text), '2026-01-01',"
              " '0/10', -1, 'S' FROM generate_series(1, %s) g", (keys,))
    r.execute(f"INSERT INTO {h} (id, x, y, t, _pgml_commit_time, _pgml_commit_lsn, _pgml_seq,"  # noqa: S608
              " _pgml_op) SELECT 1 + (g::int8 * 7919 + (g::int8 / 100) * 104729) %% %s, random(),"
              " (random() * 100)::int,"
              " md5(random()::text), '2026-01-01'::timestamptz + (1 + g / 100) * interval '1 second',"
              " '0/0'::pg_lsn + (1000 + (g / 100) * 1000), g %% 100, 'U'"
              " FROM generate_series(0, %s - 1) g", (keys, versions - keys))
    r.execute(f"VACUUM ANALYZE {h}")


def _timed(r, sql: str, rounds: int, before: str | None = None) -> list[float]:
    out = []
    for _ in range(rounds):
        if before:
            r.execute(before)
        t0 = time.perf_counter()
        r.execute(sql)
        out.append(time.perf_counter() - t0)
    return out


def _pit_sql(into: str) -> str:
    feats = ", ".join(f"'public.{n}'" for n in RELATIONS)
    return f"SELECT pgml.point_in_time('spine', 'at', ARRAY[{feats}], '{into}')"


def _lateral_sql() -> str:
    cols, joins = [], []
    for n in RELATIONS:
        cols += [f"CASE WHEN {n}._pgml_op <> 'D' THEN {n}.{c} END AS {n}__{c}" for c in "xyt"]
        joins.append(
            f" LEFT JOIN LATERAL (SELECT * FROM pgml_history.public__{n} h WHERE h.id = s.id"
            " AND h._pgml_commit_time <= s.at ORDER BY h._pgml_commit_time DESC,"
            f" h._pgml_commit_lsn DESC, h._pgml_seq DESC LIMIT 1) {n} ON true")
    return f"CREATE TABLE lateral_out AS SELECT s.*, {', '.join(cols)} FROM spine s{''.join(joins)}"


def _diff(r, a: str, b: str) -> int:
    return r.execute(f"SELECT count(*) FROM ((SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})"  # noqa: S608
                     f" UNION ALL (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a})) d").fetchone()[0]


def _export(r, work: Path) -> float:
    """Spine and versions as Parquet for Feast (server-side COPY to CSV, DuckDB to Parquet)."""
    import duckdb

    t0 = time.perf_counter()
    raw = Path(tempfile.mkdtemp(prefix="pgml-hist-csv-"))
    os.chmod(raw, 0o777)
    con = duckdb.connect()
    r.execute(f"COPY (SELECT id, at AS event_timestamp, label FROM spine) TO '{raw}/spine.csv'"
              " (FORMAT csv, HEADER)")
    con.execute(f"COPY (SELECT id, event_timestamp::TIMESTAMPTZ AS event_timestamp, label FROM"
                f" read_csv('{raw}/spine.csv')) TO '{work}/spine.parquet' (FORMAT parquet)")
    for n in RELATIONS:
        r.execute(f"COPY (SELECT id, x, y, t, _pgml_commit_time AS event_timestamp,"
                  " to_timestamp(row_number() OVER (ORDER BY _pgml_commit_lsn, _pgml_seq))"
                  f" AS created FROM pgml_history.public__{n} WHERE _pgml_op IN ('S', 'I', 'U'))"
                  f" TO '{raw}/{n}.csv' (FORMAT csv, HEADER)")
        con.execute(f"COPY (SELECT id, x, y::BIGINT AS cnt, t, event_timestamp::TIMESTAMPTZ AS"
                    " event_timestamp,"
                    f" created::TIMESTAMPTZ AS created FROM read_csv('{raw}/{n}.csv'))"
                    f" TO '{work}/{n}.parquet' (FORMAT parquet)")
    for p in raw.iterdir():
        p.unlink()
    raw.rmdir()
    return time.perf_counter() - t0


def _feast(python: str, work: Path, kind: str, rounds: int) -> list[dict]:
    out = []
    for i in range(rounds):
        for stale in ("registry.db", "online.db"):
            (work / stale).unlink(missing_ok=True)
        p = subprocess.run([python, str(ROOT / "benchmarks" / "history_feast.py"), str(work), kind],
                           capture_output=True, text=True, timeout=3600, check=False)
        if p.returncode:
            print(f"  Feast ({kind}) failed in round {i + 1}: {p.stderr.strip()[-600:]}")
            return out
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def run(spine: int, versions: int, rounds: int, feast_python: str) -> int:
    per = versions // len(RELATIONS)
    keys = max(per // 10, 1)
    print(f"history at scale: spine {spine:,} rows, {len(RELATIONS)} feature relations x"
          f" {per:,} versions ({keys:,} keys each), {versions:,} versions in all;"
          f" load average {os.getloadavg()[0]:.2f}")
    with running_cluster("hscale", REPLICA_SETTINGS) as tgt:
        tgt.create_database("scale")
        from replica.target.pgml_install import install

        install(tgt.dsn("scale"))
        with psycopg.connect(tgt.dsn("scale"), autocommit=True) as r:
            t0 = time.perf_counter()
            for n in RELATIONS:
                _synth(r, n, keys, per)
            r.execute("CREATE TABLE spine AS SELECT (1 + random() * (%s - 1))::bigint AS id,"
                      " '2026-01-01'::timestamptz + random() * %s * interval '1 second' AS at,"
                      " (random() * 2)::int AS label FROM generate_series(1, %s)",
                      (keys, (per - keys) // 100, spine))
            r.execute("VACUUM ANALYZE spine")
            (size,) = r.execute("SELECT sum(pg_total_relation_size(format('pgml_history.%I',"
                                " history_table)))::int8 FROM pgml_history.tables").fetchone()
            print(f"  generated in {time.perf_counter() - t0:.0f} s; history in Postgres"
                  f" {size / 1e6:.0f} MB, {size / versions:.0f} bytes per version")
            pit = _timed(r, _pit_sql("pit_out"), rounds, "DROP TABLE IF EXISTS pit_out")
            t_idx = sum(_timed(r, f"CREATE INDEX ON pgml_history.public__{n} (id,"
                               " _pgml_commit_time)", 1)[0] for n in RELATIONS)
            lat = _timed(r, _lateral_sql(), rounds, "DROP TABLE IF EXISTS lateral_out")
            diff = _diff(r, "pit_out", "lateral_out")
            work = Path(tempfile.mkdtemp(prefix="pgml-hist-feast-"))
            have_feast = Path(feast_python).exists()
            t_export = _export(r, work) if have_feast else 0.0
            t_compact = _timed(r, "SELECT pgml.history_compact(NULL, interval '0')", 1)[0]
            (seg,) = r.execute("SELECT sum(bytes)::int8 FROM pgml_history.segments").fetchone()
            pit_c = _timed(r, _pit_sql("pit_c"), rounds, "DROP TABLE IF EXISTS pit_c")
            diff_c = _diff(r, "pit_c", "lateral_out")
            sums = {}
            for n in RELATIONS:
                for c in "xy":
                    sums[f"{n}__{c}"] = [float(v) for v in r.execute(
                        f"SELECT count({n}__{c}), coalesce(sum({n}__{c}), 0) FROM pit_c"  # noqa: S608
                    ).fetchone()]
    med = statistics.median
    print(f"  pgml.point_in_time, versions in Postgres: {med(pit):.2f} s"
          f" (median of {rounds}: {', '.join(f'{t:.2f}' for t in pit)})")
    print(f"  pgml.point_in_time, after history_compact ({t_compact:.1f} s; Parquet"
          f" {seg / 1e6:.0f} MB, {seg / versions:.0f} bytes per version): {med(pit_c):.2f} s"
          f" (median of {rounds}: {', '.join(f'{t:.2f}' for t in pit_c)})")
    print(f"  Postgres LATERAL, indexed: {med(lat):.2f} s (median of {rounds}; +{t_idx:.1f} s"
          f" index build); rows that differ from point_in_time: {diff} (compacted: {diff_c})")
    print(f"  ratio LATERAL / point_in_time: {med(lat) / med(pit):.2f}x in Postgres,"
          f" {med(lat) / med(pit_c):.2f}x compacted")
    if not have_feast:
        print(f"  Feast: NOT MEASURED - not installed at {feast_python} (python3.11 -m venv"
              " /var/lib/pgml-replica/feast-venv && .../bin/pip install 'feast[duckdb]')")
        return 0
    print(f"  Feast: versions exported to Parquet in {t_export:.0f} s (not counted)")
    for kind in ("duckdb", "file"):
        res = _feast(feast_python, work, kind, rounds)
        if not res:
            continue
        got = [x["get_historical_features_s"] for x in res]
        same = all(abs(res[0]["checks"].get(k, [0, 0])[1] - v[1]) <= 1e-6 * max(1, abs(v[1]))
                   and res[0]["checks"].get(k, [0])[0] == v[0] for k, v in sums.items())
        print(f"  Feast get_historical_features ({kind} offline store): {med(got):.2f} s"
              f" (median of {len(got)}: {', '.join(f'{t:.2f}' for t in got)}; apply"
              f" {res[0]['apply_s']:.1f} s not counted); {res[0]['rows']:,} rows; counts and"
              f" sums equal to point_in_time's: {same}; point_in_time is"
              f" {med(got) / med(pit_c):.1f}x faster compacted, {med(got) / med(pit):.1f}x"
              " from Postgres")
        if not same:
            print(f"    point_in_time (count, sum): {sums}; Feast: {res[0]['checks']}")
    if not os.environ.get("PGML_HISTORY_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"  kept {work}")
    return 0
