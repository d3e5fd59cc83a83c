"""Fixtures for what users install: the wheel, and the two image installs made outside Docker.

Every environment here is built by the same script its Dockerfile runs (deploy/install-*.sh),
into a temporary prefix OUTSIDE the checkout that the ``postgres`` OS user can read (PL/Python
imports from it). Built once per session: the tests then run the installed console script
``pgml-replica``, never this checkout's modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from tests.fix_pg import _base_dir

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# PL/Python embeds the system interpreter: the environments are built with it.
SYSTEM_PYTHON = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else "python3"


def scrubbed_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no virtualenv, no PYTHONPATH pointing at us."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)) and ".venv" not in p)
    return {**env, **extra}


def run_script(*args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", *args], cwd=tempfile.gettempdir(), capture_output=True,
                          text=True, timeout=timeout, env=scrubbed_env(**env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def site_packages(prefix: Path) -> Path:
    out = subprocess.run([str(prefix / "bin/python"), "-I", "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out).resolve()


@pytest.fixture(scope="session")
def install_root():
    """A temporary directory outside the checkout, readable (not writable) by postgres."""
    root = Path(tempfile.mkdtemp(prefix="pgml-replica-install-", dir=_base_dir()))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def built_wheel(install_root) -> Path:
    """`pip wheel --no-deps` of a scratch copy of the sources (the checkout gets no build/)."""
    src = install_root / "src"
    for name in ("pyproject.toml", "setup.py", "README.md", "replica", "decoder", "inference",
                 "sql"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        elif (ROOT / name).exists():
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    dist = install_root / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                           "-w", str(dist), str(src)], capture_output=True, text=True,
                          timeout=300, cwd=install_root)
    assert proc.returncode == 0, proc.stderr
    [wheel] = dist.glob("pgml_replica-*.whl")
    return wheel


@pytest.fixture(scope="session")
def sidecar_prefix(install_root, built_wheel) -> Path:
    """deploy/install-sidecar.sh, as Dockerfile.sidecar runs it: the wheel and the base
    dependencies only, in a fresh environment (pip's cache makes reruns quick)."""
    prefix = install_root / "sidecar"
    run_script(str(DEPLOY / "install-sidecar.sh"), str(prefix), str(built_wheel),
               PYTHON=SYSTEM_PYTHON)
    return prefix


@pytest.fixture(scope="session")
def ml_prefix(install_root) -> Path:
    """deploy/install-ml-replica.sh PREFIX cpu SRC, as Dockerfile.ml-replica runs it, given the
    source tree (so the script's own wheel build is exercised too).

    Decision: the ml extra is about 1.5 GB; installing it into every fresh test prefix would
    make `make test` minutes slower. The script's PGML_REPLICA_REUSE_SITE takes the ML
    libraries from this checkout's environment (a .pth file after the prefix's own
    site-packages, which PL/Python's site.addsitedir honours) and installs only the freshly
    built wheel, with --no-deps. So the pgml code PL/Python runs comes from the fresh wheel,
    and numpy/scikit-learn/onnxruntime from the already-installed copies. The full install is
    measured by hand (docs/operations.md, "Installing")."""
    prefix = install_root / "ml-cpu"
    reuse = Path(sysconfig.get_paths()["purelib"]).resolve()  # .venv may be a symlink
    run_script(str(DEPLOY / "install-ml-replica.sh"), str(prefix), "cpu", str(ROOT),
               PGML_REPLICA_REUSE_SITE=str(reuse))
    return prefix


def wait_for(cond, timeout: float, what: str, every: float = 0.2):
    """Poll ``cond`` until truthy; fail after ``timeout``. (Own copy: these tests import
    nothing of the checkout's replica/, which the installed copy must do without.)"""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
