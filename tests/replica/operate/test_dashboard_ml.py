"""The ML side of the dashboard in a real headless Chromium: models trained with pgml.train
on a real PL/Python replica, read by replica.operate.ml_report through /ml, and every number
on the page compared with the replica's pgml tables."""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from inference.metrics import KEY_METRICS
from replica.operate import ml_report
from tests.replica.operate.helpers import CHROMIUM, dump_dom, screenshot, streaming_state

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM}: `make setup` installs Debian's chromium package")

NOTES = Path("/work/notes/screenshots")


def _when(t) -> str:
    """A timestamp as the page writes it (UTC, seconds)."""
    return re.sub(r"\.\d+", "", t.isoformat().replace("T", " ")).replace("+00:00", " UTC")


def _number(text: str) -> float:
    """The value of 'name = 0.1234 ↑' as the page shows it."""
    return float(text.split("=")[1].split()[0])


def _keep(png: Path, name: str) -> None:
    """Copies for a person to look at (the lead's notes, or PGML_REPLICA_SCREENSHOTS)."""
    for folder in filter(None, (os.environ.get("PGML_REPLICA_SCREENSHOTS"),
                                str(NOTES) if NOTES.parent.is_dir() else None)):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(folder) / name)


def test_key_metrics_mirror_the_pl_python_side():
    assert ml_report.KEY_METRICS == KEY_METRICS


@pytest.fixture
def trained(pgml_replica_db):
    """Two projects: a regression trained twice (linear, then ridge) and then deployed back to
    the first model by id, and a classification trained once."""
    db = pgml_replica_db
    with db.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("CREATE TABLE public.houses AS SELECT g AS id, (g % 17)::float8 AS rooms,"
                     " (g % 5)::float8 AS age, 3 * (g % 17) - (g % 5) + (g % 3) * 0.1 AS price"
                     " FROM generate_series(1, 200) g")
        conn.execute("CREATE TABLE public.flowers AS SELECT g AS id, (g % 7)::float8 AS petal,"
                     " (g % 4)::float8 AS sepal, (g % 7 > 3)::int AS kind"
                     " FROM generate_series(1, 200) g")
        conn.execute("SELECT * FROM pgml.train('house prices', 'regression',"
                     " 'public.houses', 'price', 'linear')")
    # one session per train: each is a fresh backend, as separate users would train
    with db.connect() as conn:
        conn.execute("SELECT * FROM pgml.train('house prices', 'regression',"
                     " 'public.houses', 'price', 'ridge')")
        first, = conn.execute("SELECT min(m.id) FROM pgml.models m JOIN pgml.projects p"
                              " ON p.id = m.project_id WHERE p.name = 'house prices'").fetchone()
        conn.execute("SELECT * FROM pgml.deploy(%s)", (first,))
    with db.connect() as conn:
        conn.execute("SELECT * FROM pgml.train('flowers', 'classification', 'public.flowers',"
                     " 'kind', 'linear')")
    return db


def test_ml_report_reads_the_replica_read_only(trained):
    ml = ml_report.collect(trained.dsn)
    assert ml["installed"] is True
    names = [p["name"] for p in ml["projects"]]
    assert names == ["flowers", "house prices"]
    rows = trained.execute("SELECT name, id, algorithm, runtime FROM pgml.deployed_models")
    for name, model_id, algorithm, runtime in rows:
        [p] = [p for p in ml["projects"] if p["name"] == name]
        assert (p["deployed"]["model_id"], p["deployed"]["algorithm"],
                p["deployed"]["runtime"]) == (model_id, algorithm, runtime)
    house = next(p for p in ml["projects"] if p["name"] == "house prices")
    assert house["models"] == 2 and house["deployed"]["strategy"] == "specific"
    assert house["deployed"]["key_metric"]["name"] == "mean_squared_error"
    # the history, newest first: flowers' first deploy, then the deploy by id
    [(n,)] = trained.execute("SELECT count(*) FROM pgml.deployments")
    assert len(ml["deployments"]) == n >= 4
    assert [(d["project"], d["strategy"]) for d in ml["deployments"][:2]] == [
        ("flowers", "new_score"), ("house prices", "specific")]
    # nothing the report does may write: its session refuses writes
    from replica.connect import connect

    with connect(trained.dsn, "target", "dashboard") as conn:
        conn.execute("SET default_transaction_read_only = on")
        ml_report.read(conn)
        with pytest.raises(Exception, match="read-only"):
            conn.execute("DELETE FROM pgml.deployments")


def test_ml_report_without_pgml(replica_db):
    assert ml_report.collect(replica_db.dsn) == {"installed": False, "projects": [],
                                                 "deployments": []}


def test_dashboard_shows_models_as_the_replica_has_them(serve, trained, tmp_path):
    server = serve(streaming_state(), max_lag_seconds=30,
                   ml_provider=lambda: ml_report.collect(trained.dsn))
    dom = dump_dom(server.url + "/", budget_ms=8000)

    assert dom["ml-error"] == ""
    assert dom.hidden("ml-empty")
    with trained.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        deployed = conn.execute(
            "SELECT p.name, p.task, d.id, m.algorithm, m.runtime, m.metrics, d.deployed_at,"
            " (SELECT max(created_at) FROM pgml.models x WHERE x.project_id = p.id),"
            " (SELECT count(*) FROM pgml.models x WHERE x.project_id = p.id)"
            " FROM pgml.deployed_models d JOIN pgml.projects p ON p.name = d.name"
            " JOIN pgml.models m ON m.id = d.id").fetchall()
        info, = conn.execute("SELECT pgml.runtime_info()").fetchone()
        last, = conn.execute("SELECT max(created_at) FROM pgml.models").fetchone()
        history = conn.execute("SELECT id FROM pgml.deployments ORDER BY created_at DESC,"
                               " id DESC").fetchall()
    gpu = "CUDAExecutionProvider" in info["probe_session_providers"]
    assert dom["ml-device"] == ("GPU (CUDA)" if gpu else "CPU")
    assert dom["ml-last-trained"] == _when(last)
    assert len(deployed) == 2
    for name, task, model_id, algorithm, runtime, metrics, at, trained_at, n in deployed:
        key = "ml-" + name.replace(" ", "_") + "-"
        assert dom[key + "name"] == name
        assert dom[key + "task"] == task
        assert dom[key + "model"] == f"#{model_id}"
        assert dom[key + "algorithm"] == algorithm
        assert dom[key + "runtime"] == {"onnx": "ONNX", "python": "Python"}[runtime]
        assert dom[key + "device"] == ("GPU" if gpu and runtime == "onnx" else "CPU")
        metric, _ = KEY_METRICS[task]
        assert dom[key + "metric"].startswith(metric + " = ")
        assert _number(dom[key + "metric"]) == pytest.approx(metrics[metric], rel=1e-3)
        assert dom[key + "deployed"] == _when(at)
        assert dom[key + "trained"] == _when(trained_at)
        assert dom[key + "models"] == str(n)
    shown = [i for i in dom.attrs if i.startswith("ml-deployment-")]
    assert shown == [f"ml-deployment-{i}" for i, in history]

    png = screenshot(server.url + "/", tmp_path / "dashboard-ml.png", budget_ms=8000,
                     size="1280,1300")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 1300)
    _keep(png, "dashboard-ml.png")


def test_dashboard_says_why_there_is_no_ml_view(serve):
    def down():
        raise RuntimeError("connection to the target refused")

    dom = dump_dom(serve(streaming_state(), ml_provider=down).url + "/")
    assert dom["ml-error"] == "ML view: RuntimeError: connection to the target refused"
