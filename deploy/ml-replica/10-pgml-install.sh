#!/usr/bin/env bash
# /docker-entrypoint-initdb.d hook of the ML replica image: the server is up on its Unix socket
# only, as the postgres user. Installs the pgml schema (PL/Python wrappers, postgres_fdw) into
# $POSTGRES_DB and tells it to import the image's venv.
set -euo pipefail
# Resolved: PL/Python runs as postgres, which may not be able to pass through a symbolic link's
# directory (a checkout's .venv linking to a postgres-readable place), only the real path.
site="$("$PGML_VENV/bin/python" -c 'import os, sysconfig; print(os.path.realpath(sysconfig.get_paths()["purelib"]))')"
echo "pgml-replica: installing the pgml schema into ${POSTGRES_DB:-postgres} (python path $site)"
"$PGML_VENV/bin/pgml-replica" install \
    --target "host=${PGHOST:-/var/run/postgresql} port=${PGPORT:-5432} dbname=${POSTGRES_DB:-postgres} user=${POSTGRES_USER:-postgres}" \
    --python-path "$site"
