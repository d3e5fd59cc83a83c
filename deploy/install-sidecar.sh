#!/usr/bin/env bash
# Installs the pgml-replica sidecar into a fresh virtual environment at PREFIX: the wheel and
# its base dependencies only (no scikit-learn, no onnxruntime: those run inside the ML
# replica's PL/Python, not in the sidecar).
#
#   deploy/install-sidecar.sh PREFIX SRC      SRC: a pgml_replica-*.whl or a source tree
#
# Dockerfile.sidecar runs exactly this; tests/deploy/test_images.py runs it outside Docker into
# a temporary prefix and then starts the image's entry point from it. PYTHON chooses the
# interpreter (default python3; it must be 3.11).
set -euo pipefail
if [ "$#" -ne 2 ]; then
    echo "usage: $0 PREFIX SRC" >&2
    exit 2
fi
PREFIX="$1"
SRC="$2"
PYTHON="${PYTHON:-python3}"
say() { echo "install-sidecar: $*"; }
# shellcheck source=deploy/lib/wheel.sh
. "$(dirname "$0")/lib/wheel.sh"

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11, not " + sys.version'
say "creating the environment in $PREFIX"
"$PYTHON" -m venv "$PREFIX"
PY="$PREFIX/bin/python"
# The compiled hot path (decoder._speedups, about 2x the catch-up rate) needs a C compiler at
# build time only. An image without one (python:slim) gets gcc for the build and loses it after,
# so the image stays lean; elsewhere a missing compiler means the pure-Python path.
added=()
if ! command -v cc >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    added=(gcc libc6-dev)
    say "installing ${added[*]} for the build"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${added[@]}" >/dev/null
fi
build_wheel "$SRC"
if [ "${#added[@]}" -gt 0 ]; then
    apt-get purge -y -qq --auto-remove "${added[@]}" >/dev/null
    rm -rf /var/lib/apt/lists/*
fi
say "installing $(basename "$WHEEL") with the sidecar's dependencies"
pip_quiet install --quiet --disable-pip-version-check "$WHEEL"
# The sidecar must start from this environment alone: its modules and the dashboard's files.
"$PY" -I - <<'PY'
import importlib.util, pathlib, replica
root = pathlib.Path(replica.__file__).parent
assert list(root.glob("**/dashboard/index.html")), "the dashboard's files are missing from the wheel"
for name in ("decoder", "psycopg", "fastapi", "uvicorn", "prometheus_client", "pydantic_settings"):
    assert importlib.util.find_spec(name), f"{name} is not installed"
PY
"$PREFIX/bin/pgml-replica" --help >/dev/null
say "hot path: $("$PY" -I -c 'import decoder.accel as a; print(a.describe())')"
chmod -R a+rX "$PREFIX"
say "done: $PREFIX/bin/pgml-replica"
