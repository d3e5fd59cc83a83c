#!/usr/bin/env bash
# Installs the Python side of the ML replica: a virtual environment at PREFIX that PL/Python
# imports (this project's wheel with the `ml` extra), readable by the `postgres` OS user.
#
#   deploy/install-ml-replica.sh PREFIX cpu|gpu SRC     SRC: a pgml_replica-*.whl or a source tree
#
# Dockerfile.ml-replica runs exactly this (VARIANT is its build argument); tests/deploy/
# test_images.py runs it outside Docker into a temporary prefix, then runs the image's init
# hook (deploy/ml-replica/10-pgml-install.sh) from it against a PL/Python test cluster.
#
# Why the interpreter matters: PL/Python embeds the *system* python3 (3.11 for PostgreSQL 15 on
# Debian bookworm), so the environment is built with /usr/bin/python3 (PYTHON overrides).
#
# Variants: cpu is the `ml` extra as pyproject declares it (on x86_64 Linux that is
# onnxruntime-gpu, which runs on the CPU without CUDA). gpu adds onnxruntime-gpu's `cuda` and
# `cudnn` extras, i.e. the CUDA runtime and cuDNN libraries its CUDA provider loads, as pip
# wheels (nvidia-*), and registers their directories with the dynamic linker so a PostgreSQL
# backend finds them; the NVIDIA driver itself comes from the host (NVIDIA container toolkit).
#
# Environment:
#   PGML_REPLICA_DRY_RUN=FILE       resolve only: `pip install --dry-run --report FILE`, no
#                                   downloads of the packages themselves; then stop.
#   PGML_REPLICA_REUSE_SITE=DIR     development and the test suite only: take the ML libraries
#                                   from an existing site-packages (a .pth file) instead of
#                                   installing 1.5 GB again; only the wheel itself is installed.
#   PGML_REPLICA_LDCONFIG=1         (gpu) also write /etc/ld.so.conf.d/pgml-replica-cuda.conf
#                                   and run ldconfig: the image build sets it.
set -euo pipefail
if [ "$#" -ne 3 ] || { [ "$2" != cpu ] && [ "$2" != gpu ]; }; then
    echo "usage: $0 PREFIX cpu|gpu SRC" >&2
    exit 2
fi
PREFIX="$1"
VARIANT="$2"
SRC="$3"
PYTHON="${PYTHON:-/usr/bin/python3}"
# the server's major version: the official postgres images set PG_MAJOR; a bare Debian host has 15
PLPYTHON_PACKAGE="${PLPYTHON_PACKAGE:-postgresql-plpython3-${PG_MAJOR:-15}}"
say() { echo "install-ml-replica: $*"; }
# shellcheck source=deploy/lib/wheel.sh
. "$(dirname "$0")/lib/wheel.sh"

if [ "$VARIANT" = gpu ] && [ "$(uname -m)" != x86_64 ]; then
    echo "install-ml-replica: onnxruntime-gpu has no $(uname -m) wheels; build the cpu variant" >&2
    exit 2
fi

# System packages: PL/Python for the server, the interpreter it embeds, OpenMP for
# LightGBM/XGBoost, and a C compiler: tree models are compiled to a shared library at training
# (inference/compiled_trees.py; about 3 us a row against 7 us for ONNX) and fall back to ONNX
# quietly where there is none. Installed only when missing (the image's first build; never on a host
# that already has them).
missing=()
for pkg in "$PLPYTHON_PACKAGE" python3 python3-venv libgomp1 gcc libc6-dev; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    rm -rf /var/lib/apt/lists/*
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "PL/Python here needs Python 3.11, not " + sys.version'
say "creating the environment in $PREFIX ($VARIANT)"
"$PYTHON" -m venv "$PREFIX"
PY="$PREFIX/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
build_wheel "$SRC"

requirements=("$WHEEL[ml]")
if [ "$VARIANT" = gpu ]; then
    requirements+=("onnxruntime-gpu[cuda,cudnn]")
fi
pip_args=(--quiet --disable-pip-version-check)

if [ -n "${PGML_REPLICA_DRY_RUN:-}" ]; then
    say "resolving ${requirements[*]} (dry run, report in $PGML_REPLICA_DRY_RUN)"
    pip_quiet install "${pip_args[@]}" --dry-run --ignore-installed \
        --report "$PGML_REPLICA_DRY_RUN" "${requirements[@]}"
    exit 0
fi

if [ -n "${PGML_REPLICA_REUSE_SITE:-}" ]; then
    say "reusing the ML libraries of $PGML_REPLICA_REUSE_SITE"
    # After this environment's own site-packages: the freshly installed wheel wins.
    echo "$PGML_REPLICA_REUSE_SITE" > "$SITE/zz-pgml-replica-reuse.pth"
    pip_args+=(--no-deps --ignore-installed)
fi
extra="the ml extra"
[ "$VARIANT" = gpu ] && extra="the ml extra and the CUDA libraries"
say "installing $(basename "$WHEEL") with $extra"
pip_quiet install "${pip_args[@]}" "${requirements[@]}"

"$PY" -I - <<'PY'
import importlib, pathlib, sysconfig
site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
for name in ("inference", "sql"):
    where = pathlib.Path(importlib.import_module(name).__file__).resolve()
    assert site in where.parents, f"{name} comes from {where}, not from this environment"
for name in ("numpy", "sklearn", "xgboost", "lightgbm", "onnx", "onnxruntime", "skl2onnx",
             "onnxmltools"):
    importlib.import_module(name)
PY

if [ "$VARIANT" = gpu ]; then
    # The CUDA provider dlopens libcudart, libcublas, libcudnn, ... by soname: tell the
    # dynamic linker where the nvidia-* wheels put them.
    find "$SITE/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u \
        > "$PREFIX/cuda-libs.conf"
    if [ ! -s "$PREFIX/cuda-libs.conf" ]; then
        echo "install-ml-replica: no CUDA libraries under $SITE/nvidia" >&2
        exit 1
    fi
    if [ "${PGML_REPLICA_LDCONFIG:-}" = 1 ]; then
        cp "$PREFIX/cuda-libs.conf" /etc/ld.so.conf.d/pgml-replica-cuda.conf
        ldconfig
    fi
    say "CUDA libraries: $(wc -l < "$PREFIX/cuda-libs.conf") directories in $PREFIX/cuda-libs.conf"
fi

# PL/Python runs as the server's OS user.
chmod -R a+rX "$PREFIX"
if id postgres >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    if ! runuser -u postgres -- test -r "$SITE/inference/__init__.py"; then
        echo "install-ml-replica: $PREFIX is not readable by the postgres OS user (a parent" \
             "directory is private); install it elsewhere" >&2
        exit 1
    fi
fi
say "done: $PREFIX (PL/Python path $SITE)"
