"""`make demo`: the whole loop on one laptop, driven through the same CLI a user runs.

Why it drives the CLI rather than calling functions: the demo is the first thing a user sees,
so it should exercise exactly what they will type next (every command it runs is printed).

Steps: two local clusters (a logical-replication source and an ML replica) -> a demo table on
the source -> `pgml-replica run` streaming it into the replica -> lag from /status -> pgml.train
and pgml.predict on the replica -> `pgml-replica writeback` -> a row inserted on the source and
its prediction read back *on the source*. With a terminal attached it then keeps everything
running until Ctrl-C so you can try things; `--once` (or no terminal) tears down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from devtools.localcluster import REPLICA_SETTINGS, SOURCE_SETTINGS, free_port, make_cluster

console = Console(highlight=False)
PROJECT = "diabetes_progression"
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
DEADLINE_S = 120


class DemoError(RuntimeError):
    pass


def _step(text: str) -> None:
    console.print(f"\n[bold cyan]▶ {text}[/]")


def _cli(*args: str, env: dict | None = None) -> str:
    cmd = [sys.executable, "-m", "replica", *args]
    console.print(f"  [dim]$ pgml-replica {shlex.join(args)}[/]")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise DemoError(f"pgml-replica {args[0]} failed:\n{proc.stderr or proc.stdout}")
    return proc.stdout


def shown_sql(conn, query, params=None) -> str:
    """The statement as a person would type it: the values merged in client-side with
    psycopg's own quoting (ClientCursor.mogrify), for display only - the statement itself
    still travels with bound parameters."""
    text = psycopg.ClientCursor(conn).mogrify(query, params)
    return " ".join(text.split())


def _sql(conn, query: str, params=None, show: bool = True):
    if show:
        text = escape(shown_sql(conn, query, params))  # values are data, never rich markup
        console.print(f"  [dim]{conn.info.host}:{conn.info.port}=# {text}[/]")
    cur = conn.execute(query, params)
    return cur.fetchall() if cur.description else []


def _http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, None


def _wait(what: str, check, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


def _load_demo_table(source) -> int:
    """The diabetes data set (ships with scikit-learn) as an ordinary application table."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    cols = ", ".join(f"{c} float8 NOT NULL" for c in FEATURES)
    _sql(source, f"CREATE TABLE public.patients (id bigint GENERATED ALWAYS AS IDENTITY "
                 f"PRIMARY KEY, {cols}, progression float8)")
    with source.cursor() as cur:
        with cur.copy(f"COPY public.patients ({', '.join(FEATURES)}, progression) FROM STDIN"
                      ) as copy:
            for row, y in zip(data.data, data.target, strict=True):
                copy.write_row([*map(float, row), float(y)])
    return len(data.target)


def run_demo(once: bool) -> None:
    import psycopg
    from psycopg import sql

    base = Path(tempfile.mkdtemp(prefix="pgml-replica-demo-"))
    os.chmod(base, 0o755)
    clusters, sidecar = [], None
    try:
        _step("Starting two local PostgreSQL 15 clusters")
        src = make_cluster("source", SOURCE_SETTINGS, base)
        ml = make_cluster("ml-replica", REPLICA_SETTINGS, base)
        for c in (src, ml):
            clusters.append(c)
            c.start()
            console.print(f"  {c.name:<11} {c.dsn()}")
        source = psycopg.connect(src.dsn(), autocommit=True)
        replica = psycopg.connect(ml.dsn(), autocommit=True)

        _step("A demo table on the source (the diabetes data set as patients)")
        n = _load_demo_table(source)
        console.print(f"  {n} rows in public.patients")

        _step("The sidecar: snapshot, then stream (pgml-replica run)")
        http_port = free_port()
        args = ["run", "--source", src.dsn(), "--target", ml.dsn(), "--tables",
                "public.patients", "--history", "public.patients", "--http-port",
                str(http_port)]
        console.print(f"  [dim]$ pgml-replica {shlex.join(args)} &[/]")
        log = open(base / "sidecar.log", "w")  # noqa: SIM115 - lives as long as the process
        sidecar = subprocess.Popen([sys.executable, "-m", "replica", *args], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        status_url = f"http://127.0.0.1:{http_port}"

        def ready():
            if sidecar.poll() is not None:
                raise DemoError(f"the sidecar exited ({sidecar.returncode}); see "
                                f"{base / 'sidecar.log'}:\n{(base / 'sidecar.log').read_text()[-2000:]}")
            return _http_json(status_url + "/readyz")[0] == 200

        _wait("the sidecar to finish the snapshot and stream", ready)
        count = _sql(replica, "SELECT count(*) FROM public.patients")[0][0]
        console.print(f"  mirrored: {count} rows in public.patients on the ML replica")

        before_writes = _sql(source, "SELECT clock_timestamp()", show=False)[0][0]
        _step("Writes on the source stream over; the sidecar reports the lag")
        _sql(source, "INSERT INTO public.patients (age, sex, bmi, bp, s1, s2, s3, s4, s5, s6,"
                     " progression) SELECT age, sex, bmi * 1.01, bp, s1, s2, s3, s4, s5, s6,"
                     " progression FROM public.patients")
        expected = _sql(source, "SELECT count(*) FROM public.patients", show=False)[0][0]
        _wait("the new rows on the replica", lambda: _sql(
            replica, "SELECT count(*) FROM public.patients", show=False)[0][0] == expected)
        _, status = _http_json(status_url + "/status")
        table = Table("slot", "phase", "applied LSN", "lag bytes", "lag seconds")
        table.add_row(str(status.get("slot")), str(status.get("phase")),
                      str(status.get("applied_lsn")), str(status.get("lag_bytes")),
                      str(status.get("lag_seconds")))
        console.print(table)
        console.print(f"  dashboard: {status_url}/dashboard   metrics: {status_url}/metrics")

        _step("Train on the mirrored table, on the ML replica (PostgresML's SQL)")
        # pgml.train learns from every column but the label, as PostgresML does: a view on
        # the replica leaves the key out (it lives only on the ML side; the source never sees it).
        _sql(replica, sql.SQL("CREATE VIEW public.patients_training AS SELECT {}, progression"
                              " FROM public.patients").format(
            sql.SQL(", ").join(map(sql.Identifier, FEATURES))))
        for algorithm in ("linear", "xgboost"):
            rows = _sql(replica, "SELECT * FROM pgml.train(%s, 'regression', "
                                 "'public.patients_training', 'progression', %s)",
                        (PROJECT, algorithm))
            console.print(f"  {rows[0]}")
        for row in _sql(replica, "SELECT algorithm, metrics->>'r2', runtime FROM pgml.models "
                                 "ORDER BY id", show=False):
            console.print(f"  model {row[0]:<8} r2={float(row[1]):.3f} runtime={row[2]}")

        _step("Predict on the replica")
        query = sql.SQL("SELECT id, progression, round(pgml.predict(%s, ARRAY[{}])::numeric, 1)"
                        " FROM public.patients ORDER BY id LIMIT 3").format(
            sql.SQL(", ").join(map(sql.Identifier, FEATURES)))
        for row in _sql(replica, query, (PROJECT,)):
            console.print(f"  id={row[0]} actual={row[1]} predicted={row[2]}")

        _step("Predictions back on the source through postgres_fdw")
        _sql(replica, "SELECT pgml.expose(%s, 'public.patients', ARRAY['id'])", (PROJECT,))
        env = {**os.environ, "PGML_REPLICA_READER_PASSWORD": "demo-reader-password"}
        _cli("writeback", "--source", src.dsn(), "--target", ml.dsn(), "--project", PROJECT,
             env=env)
        new_id = _sql(source, "INSERT INTO public.patients (age, sex, bmi, bp, s1, s2, s3, s4,"
                              " s5, s6) VALUES (0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04,"
                              " 0.0, 0.02, 0.01) RETURNING id")[0][0]
        views = _sql(source, "SELECT table_name FROM information_schema.tables WHERE "
                             "table_schema = 'ml' AND table_type = 'FOREIGN' ORDER BY 1",
                     show=False)
        if not views:
            raise DemoError("writeback created no foreign table in schema ml on the source")
        view = views[0][0]

        def predicted():
            query = sql.SQL("SELECT prediction FROM ml.{} WHERE id = %s").format(
                sql.Identifier(view))
            rows = _sql(source, query, (new_id,), show=False)
            return rows[0][0] if rows else None

        value = _wait("the new row's prediction on the source", predicted)
        console.print(f'  source=# SELECT prediction FROM ml."{view}" WHERE id = {new_id};')  # noqa: S608 - printed, not run
        console.print(f"  [bold green]{value:.1f}[/]  (scored on the ML replica, read on the source)")

        _step("Time travel: the table as it was before the writes (--history, docs/history.md)")
        as_of = _sql(replica, "SELECT pgml.as_of('public.patients', %s)", (before_writes,))[0][0]
        then = _sql(replica, sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(as_of)))[0][0]
        now = _sql(replica, "SELECT count(*) FROM public.patients", show=False)[0][0]
        console.print(f"  {as_of}: {then} rows then, {now} in public.patients now")

        _step("Try it yourself")
        console.print(f"  psql \"{src.dsn()}\"      # the source: INSERT rows, "  # noqa: S608
                      f"SELECT * FROM ml.\"{view}\"")
        console.print(f"  psql \"{ml.dsn()}\"      # the ML replica: "  # noqa: S608
                      "SELECT * FROM pgml.overview")
        console.print(f"  {status_url}/dashboard      # lag, rows applied, slot health")
        if once or not sys.stdin.isatty():
            return
        console.print("\n  Everything keeps running until you press Ctrl-C.")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while True:
            time.sleep(3600)
    finally:
        if sidecar is not None and sidecar.poll() is None:
            sidecar.terminate()
            try:
                sidecar.wait(15)
            except subprocess.TimeoutExpired:
                sidecar.kill()
        for c in clusters:
            c.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true",
                        help="tear everything down at the end instead of waiting for Ctrl-C")
    args = parser.parse_args(argv)
    try:
        run_demo(args.once)
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        pass
    console.print("\n[bold]Done.[/] Clusters stopped and removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
