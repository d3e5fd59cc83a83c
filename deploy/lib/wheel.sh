# Sourced by the install scripts: turn SRC (a wheel file or a source tree) into a wheel path.
#
# Why build a wheel first: a wheel carries exactly what pyproject declares (packages found by
# discovery, package data); installing it is what a user's `pip install pgml-replica` does. The
# tree is copied to a scratch directory first so a build never writes build/ or *.egg-info into
# a checkout other people are working in.
# Sets WHEEL. Needs: PY (a python with pip), say().
build_wheel() {
    local src="$1"
    if [ -f "$src" ] && [[ "$src" == *.whl ]]; then
        WHEEL="$src"
        return
    fi
    if [ ! -f "$src/pyproject.toml" ]; then
        echo "$(basename "$0"): $src is neither a wheel nor a source tree with pyproject.toml" >&2
        exit 2
    fi
    local scratch
    scratch="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$scratch'" EXIT
    mkdir "$scratch/src" "$scratch/dist"
    (cd "$src" && tar --exclude=__pycache__ --exclude='*.so' -cf - pyproject.toml setup.py README* \
        replica decoder inference sql 2>/dev/null) | tar -xf - -C "$scratch/src"
    say "building the wheel from $src"
    pip_quiet wheel --no-deps --quiet --disable-pip-version-check -w "$scratch/dist" \
        "$scratch/src" >/dev/null
    WHEEL="$(ls "$scratch"/dist/pgml_replica-*.whl)"
}

# pip without the noise of a host's pip.conf naming find-links that do not exist here.
pip_quiet() {
    "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}
