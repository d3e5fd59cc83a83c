"""The optional compiled hot path (decoder._speedups) in the wheel as a user installs it.

setup.py builds it with ``optional=True``: where a C compiler and Python's headers are
present the wheel must carry it and the installed sidecar must use it; without them the
build still succeeds and the sidecar runs the pure-Python path (decoder/accel.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.deploy.conftest import scrubbed_env


def compiler_present() -> bool:
    """What setuptools needs to build the extension for the Python that builds the wheel."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return bool(shutil.which(cc)) and Path(sysconfig.get_paths()["include"], "Python.h").exists()


def test_the_wheel_carries_the_extension_where_a_compiler_exists(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    built = [n for n in names if n.startswith("decoder/_speedups") and n.endswith(".so")]
    if compiler_present():
        assert len(built) == 1, names
        assert f"cp{sys.version_info[0]}{sys.version_info[1]}" in built_wheel.name
    else:  # nothing half-built (the tag stays the platform's: the wheel declares an extension)
        assert built == []


def test_the_installed_sidecar_says_which_path_it_runs(sidecar_prefix):
    python = str(sidecar_prefix / "bin/python")
    probe = "from decoder import accel; print(accel.IMPLEMENTATION, accel.describe())"
    out = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True,
                         check=True, cwd="/", env=scrubbed_env()).stdout.split()
    assert out[0] == ("c" if compiler_present() else "python"), out
    forced = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True,
                            check=True, cwd="/", env=scrubbed_env(PGML_REPLICA_PURE="1"))
    assert forced.stdout.split()[0] == "python"
    assert "PGML_REPLICA_PURE" in forced.stdout
