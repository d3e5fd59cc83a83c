"""The wheel as a user installs it: non-editable, in a fresh environment outside the checkout.

What broke before (issue 8): pyproject listed packages by hand and dropped a subpackage, so
`import decoder` failed in an installed copy and every image crash-looped, while the suite,
running from the checkout, stayed green. Here nothing comes from the checkout: the console
script `pgml-replica` of the fresh environment runs between the test clusters.

The sidecar environment (fixture ``sidecar_prefix``) is the real base install: the wheel plus
its base dependencies, nothing else -- so it also proves the sidecar needs no ML library. The
ML environment (``ml_prefix``) has the freshly built wheel first and takes the ML libraries
from this checkout's environment (see its docstring for why).
"""

from __future__ import annotations

import json
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.deploy.conftest import ROOT, scrubbed_env, site_packages, wait_for

SHIPPED = ("replica", "decoder", "inference", "sql")

# Imports every module of the given packages from the running interpreter; prints where each
# came from. A stand-in `plpy` (only for import: the modules that run inside PL/Python import
# it at the top) when the environment has no PL/Python. __main__ is skipped: it runs the CLI.
WALK = """
import importlib, json, pkgutil, sys, types
sys.modules.setdefault("plpy", types.ModuleType("plpy"))
found = {}
for top in sys.argv[1:]:
    pkg = importlib.import_module(top)
    found[top] = pkg.__file__
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.name.endswith(".__main__"):  # a program, not a module: importing runs it
            continue
        found[info.name] = importlib.import_module(info.name).__file__
print(json.dumps(found))
"""


def walk(prefix: Path, *packages: str) -> dict[str, str]:
    proc = subprocess.run([str(prefix / "bin/python"), "-I", "-c", WALK, *packages],
                          capture_output=True, text=True, timeout=300, cwd="/",
                          env=scrubbed_env())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def checkout_modules(package: str) -> set[str]:
    """Every module the checkout has under ``package`` (by file, independent of pkgutil)."""
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    return names


def test_the_wheel_ships_the_packages_and_their_data_and_nothing_else(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(SHIPPED)
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*"):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file() and "__pycache__" not in rel and path.suffix in (
                    ".py", ".sql", ".html", ".js", ".css"):
                assert rel in names, f"{rel} is not in the wheel"
    assert any(n.endswith("dashboard/index.html") for n in names)
    metadata = zipfile.ZipFile(built_wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


@pytest.mark.parametrize("machine,system,expected", [
    ("x86_64", "linux", "onnxruntime-gpu"), ("aarch64", "linux", "onnxruntime"),
    ("arm64", "darwin", "onnxruntime"), ("x86_64", "darwin", "onnxruntime")])
def test_exactly_one_onnxruntime_per_platform(machine, system, expected):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = {"platform_machine": machine, "sys_platform": system, "extra": "ml"}
    chosen = [r.name for r in map(Requirement, project["optional-dependencies"]["ml"])
              if r.name.startswith("onnxruntime") and (r.marker is None or r.marker.evaluate(env))]
    assert chosen == [expected]
    base = [Requirement(r).name for r in project["dependencies"]]
    assert not {"numpy", "scikit-learn", "onnxruntime", "onnxruntime-gpu"} & set(base)
    assert Marker("platform_machine == 'x86_64'").evaluate(env) == (machine == "x86_64")


def test_the_base_install_imports_every_sidecar_module(sidecar_prefix):
    site = str(site_packages(sidecar_prefix))
    found = walk(sidecar_prefix, "replica", "decoder")
    assert checkout_modules("replica") | checkout_modules("decoder") <= set(found)
    assert all(path.startswith(site) for path in found.values()), found
    # `pgml-replica install` imports the inference package (to find its path), not its
    # libraries: the ML side is not installed there at all.
    python = str(sidecar_prefix / "bin/python")
    subprocess.run([python, "-I", "-c", "import inference, sql"], check=True, cwd="/")
    proc = subprocess.run([python, "-I", "-c", "import numpy"], capture_output=True, cwd="/")
    assert proc.returncode != 0


def test_the_ml_install_imports_every_module(ml_prefix):
    site = str(site_packages(ml_prefix))
    found = walk(ml_prefix, *SHIPPED)
    expected = set().union(*(checkout_modules(p) for p in SHIPPED))
    assert expected <= set(found), expected - set(found)
    assert all(path.startswith(site) for path in found.values()), found


def test_installed_run_streams_a_row_between_the_test_clusters(sidecar_prefix, source_db,
                                                                 replica_db, tmp_path):
    source_db.execute("CREATE TABLE wheel_t (id int PRIMARY KEY, v text)")
    source_db.execute("INSERT INTO wheel_t VALUES (1, 'copied')")
    log = tmp_path / "sidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(sidecar_prefix / "bin/pgml-replica"), "run", "--source", source_db.dsn,
             "--target", replica_db.dsn, "--http-port", "0", "--no-pgml-install",
             "--batch-max-seconds", "0.1"],
            cwd=tmp_path, env=scrubbed_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        def arrived(row_id):
            if proc.poll() is not None:
                pytest.fail(f"pgml-replica exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                return replica_db.execute("SELECT v FROM public.wheel_t WHERE id = %s",
                                          (row_id,))
            except Exception:
                return None
        assert wait_for(lambda: arrived(1), 90, "the initial copy") == [("copied",)]
        source_db.execute("INSERT INTO wheel_t VALUES (2, 'streamed')")
        assert wait_for(lambda: arrived(2), 60, "the streamed row") == [("streamed",)]
    finally:
        proc.terminate()
        rc = proc.wait(60)
    assert rc == 0, log.read_text()[-3000:]


def test_installed_install_makes_pgml_train_and_predict_work(ml_prefix, replica_db):
    proc = subprocess.run([str(ml_prefix / "bin/pgml-replica"), "install", "--target",
                           replica_db.dsn], capture_output=True, text=True, timeout=300,
                          cwd="/", env=scrubbed_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = str(site_packages(ml_prefix))
    [(paths,)] = replica_db.execute("SELECT value FROM pgml.settings WHERE name = 'python_path'")
    assert paths == [site]
    [(where,)] = replica_db.execute("SELECT pgml._bootstrap()")
    assert where.startswith(site), "PL/Python must run the installed wheel, not the checkout"
    replica_db.execute("CREATE TABLE pts AS SELECT g::float8 AS x, (3 * g + 1)::float8 AS y"
                       " FROM generate_series(1, 60) g")
    [row] = replica_db.execute("SELECT * FROM pgml.train('wheel', 'regression', 'pts', 'y',"
                               " 'linear')")
    assert row == ("wheel", "regression", "linear", True)
    [(pred,)] = replica_db.execute("SELECT pgml.predict('wheel', ARRAY[100::float8])")
    assert pred == pytest.approx(301, rel=1e-6)
