"""The shape of the house is a fact the suite checks: import contracts and strict types.

pyproject's ``[tool.importlinter]`` declares replica/'s layers and what decoder/ and
inference/ may not import; ``[tool.mypy]`` holds decoder/ to ``--strict``. These tests run
both tools as ``make lint`` does, and show that the layers contract is not vacuous: a copy
of the packages with one upward import must fail it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ("replica", "decoder", "inference")
CONTRACTS = ["replica/ in layers",
             "decoder/ is a pure library: no I/O driver, nothing of the sidecar or of pgml",
             "inference/ (inside PL/Python) knows nothing of the sidecar"]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with pyproject's contracts, analysing the packages found in ``cwd``."""
    exe = shutil.which("lint-imports", path=str(BIN)) or "lint-imports"  # a dev dependency
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([exe, "--no-cache", "--no-logo", str(cwd / "pyproject.toml")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _verdicts(output: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"(?m)^(.+?) (KEPT|BROKEN)$", output)}


def test_every_import_contract_is_kept():
    run = _lint_imports(ROOT)
    assert _verdicts(run.stdout) == dict.fromkeys(CONTRACTS, "KEPT"), run.stdout + run.stderr
    assert run.returncode == 0
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in run.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """The source layer importing the operator's CLI: the contract must catch it (and only
    the layers contract: the other two are about other packages)."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    catalog = tmp_path / "replica" / "source" / "catalog.py"
    catalog.write_text(catalog.read_text() + "\nimport replica.operate.cli  # noqa: E402\n")

    run = _lint_imports(tmp_path)
    verdicts = _verdicts(run.stdout)
    assert verdicts == {CONTRACTS[0]: "BROKEN", CONTRACTS[1]: "KEPT",
                        CONTRACTS[2]: "KEPT"}, run.stdout + run.stderr
    assert run.returncode != 0
    # It is the copy that was analysed, and the report names the forbidden import.
    assert "replica.source.catalog -> replica.operate.cli" in run.stdout, run.stdout


def test_decoder_type_checks_strictly():
    """mypy --strict on decoder/ (pyproject [tool.mypy]): zero errors."""
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"Success: no issues found in \d+ source files", run.stdout), run.stdout

