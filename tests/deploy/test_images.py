"""The images, without a Docker engine: each Dockerfile's RUN steps are calls of install
scripts, and these tests run those scripts outside Docker into temporary prefixes
(tests/deploy/conftest.py), then start the image's entry-point logic from the prefix against
the test clusters. A RUN step the tests do not exercise fails test_every_run_step_is_tested.

The GPU variant is not installed here (the CUDA and cuDNN wheels are gigabytes): its branch is
proven to resolve with `pip install --dry-run --report`, which reads package metadata only.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, run_script, scrubbed_env, site_packages, wait_for

# Every command a Dockerfile RUN may contain, and the test here that runs it.
TESTED_RUN_COMMANDS = {
    "Dockerfile.sidecar": {
        "bash deploy/install-sidecar.sh /opt/pgml-replica /src": "sidecar_prefix",
        "rm -rf /src": "(cleanup of the build context copy)",
    },
    "Dockerfile.ml-replica": {
        'bash deploy/install-ml-replica.sh "$PGML_VENV" "$VARIANT" /src': "ml_prefix",
        "rm -rf /src": "(cleanup of the build context copy)",
    },
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def env_of(dockerfile: Path) -> dict[str, str]:
    """The image's ENV (KEY=VALUE form), as its processes see it."""
    env = {}
    for op, args in instructions(dockerfile):
        if op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


@pytest.mark.parametrize("name", sorted(TESTED_RUN_COMMANDS))
def test_every_run_step_is_tested(name):
    allowed = TESTED_RUN_COMMANDS[name]
    runs = [args for op, args in instructions(DEPLOY / name) if op == "RUN"]
    assert runs, name
    for run in runs:
        for command in (c.strip() for c in run.split("&&")):
            command = re.sub(r"\s+", " ", command)
            assert command in allowed, f"{name}: RUN {command!r} is not exercised by a test"
    # the scripts the image copies in and starts are the ones the tests below run
    copies = " ".join(a for op, a in instructions(DEPLOY / name) if op == "COPY")
    hook = {"Dockerfile.sidecar": "deploy/sidecar-entrypoint.sh",
            "Dockerfile.ml-replica": "deploy/ml-replica/10-pgml-install.sh"}[name]
    assert hook in copies
    for fixture in allowed.values():
        if not fixture.startswith("("):
            assert fixture in Path(__file__).with_name("conftest.py").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sidecar_image_entrypoint_streams_and_answers_its_healthcheck(
        sidecar_prefix, source_db, replica_db, tmp_path, install_root):
    """deploy/sidecar-entrypoint.sh with the image's ENV and PATH, DSNs from secret files,
    as the image's unprivileged uid when the suite can switch to it."""
    dockerfile = DEPLOY / "Dockerfile.sidecar"
    source_db.execute("CREATE TABLE img_t (id int PRIMARY KEY)")
    secrets = install_root / f"secrets-{source_db.name}"
    secrets.mkdir(mode=0o755)
    (secrets / "source_dsn").write_text(source_db.dsn)
    (secrets / "target_dsn").write_text(replica_db.dsn)
    port = _free_port()
    image_env = env_of(dockerfile)
    env = scrubbed_env(**{**image_env,
                          "PGML_REPLICA_HTTP_PORT": str(port),
                          "PGML_REPLICA_NO_PGML_INSTALL": "1",
                          "PGML_REPLICA_SOURCE_FILE": str(secrets / "source_dsn"),
                          "PGML_REPLICA_TARGET_FILE": str(secrets / "target_dsn")})
    user = dict(instructions(dockerfile))["USER"]
    uid, gid = user.split(":")
    # as the image does: COPY --chmod=0755 ... /usr/local/bin/pgml-replica-entrypoint
    bindir = install_root / f"bin-{source_db.name}"
    bindir.mkdir(mode=0o755)
    shutil.copy(DEPLOY / "sidecar-entrypoint.sh", bindir / "pgml-replica-entrypoint")
    (bindir / "pgml-replica-entrypoint").chmod(0o755)
    env["PATH"] = f"{sidecar_prefix}/bin:{bindir}:/usr/bin:/bin"
    command = [*json.loads(dict(instructions(dockerfile))["ENTRYPOINT"]),
               *json.loads(dict(instructions(dockerfile))["CMD"])]
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0":
        command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command]
    log = tmp_path / "sidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd="/tmp", env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        def healthy():
            if proc.poll() is not None:
                pytest.fail(f"the entrypoint exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    return True
            except OSError:
                return False
        wait_for(healthy, 60, "/healthz")
        # the image's own HEALTHCHECK command, with the image's python
        [healthcheck] = [a for op, a in instructions(dockerfile) if op == "HEALTHCHECK"]
        argv = json.loads(healthcheck.split("CMD", 1)[1])
        subprocess.run(argv, env=env, check=True, timeout=30)
        source_db.execute("INSERT INTO img_t VALUES (7)")
        wait_for(lambda: _rows(replica_db, "img_t") == [(7,)], 60, "the row on the target")
    finally:
        proc.terminate()
        rc = proc.wait(60)
    assert rc == 0, log.read_text()[-3000:]


def _rows(db, table):
    try:
        return db.execute(f"SELECT * FROM public.{table}")  # noqa: S608 - a test's own name
    except Exception:
        return None


def test_ml_replica_image_hook_installs_pgml_from_its_environment(ml_prefix, replica_db):
    """The image's init hook (deploy/ml-replica/10-pgml-install.sh) with PGML_VENV pointing at
    the prefix deploy/install-ml-replica.sh built: PL/Python then runs the prefix's wheel."""
    cluster = replica_db.cluster
    env = scrubbed_env(**env_of(DEPLOY / "Dockerfile.ml-replica"))
    env.update(PGML_VENV=str(ml_prefix), POSTGRES_DB=replica_db.name,
               POSTGRES_USER=cluster.user, PGHOST=cluster.host, PGPORT=str(cluster.port))
    proc = subprocess.run(["bash", str(DEPLOY / "ml-replica/10-pgml-install.sh")], env=env,
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = str(site_packages(ml_prefix))
    assert replica_db.execute("SELECT value FROM pgml.settings WHERE name = 'python_path'") \
        == [([site],)]
    [(environment,)] = replica_db.execute("SELECT pgml._environment()")
    assert site in json.dumps(environment), environment


def test_gpu_variant_resolves_onnxruntime_gpu_with_cuda_and_cudnn(built_wheel, install_root):
    """The gpu branch of deploy/install-ml-replica.sh, resolved but not downloaded."""
    report = install_root / "gpu-report.json"
    run_script(str(DEPLOY / "install-ml-replica.sh"), str(install_root / "ml-gpu"), "gpu",
               str(built_wheel), PGML_REPLICA_DRY_RUN=str(report))
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names
    assert any(n.startswith("nvidia-cudnn") for n in names), names
    assert any(n.startswith("nvidia-cuda-runtime") for n in names), names
    assert {"scikit-learn", "xgboost", "lightgbm", "pgml-replica"} <= names
