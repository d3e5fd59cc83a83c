#!/usr/bin/env bash
# Creates the secret files docker-compose.yml mounts (random passwords, and the two DSNs the
# sidecar reads), once: existing files are kept. Usage: deploy/make-secrets.sh [DIR]
# (default deploy/secrets). The directory is private to you (0700); the files are 0644 so the
# containers' own users (postgres, the sidecar's uid 10001) can read their bind mounts.
set -euo pipefail
dir="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
put() {  # put NAME VALUE: write unless present
    if [ ! -s "$dir/$1" ]; then
        (umask 022; printf '%s\n' "$2" > "$dir/$1")
        echo "make-secrets: wrote $dir/$1"
    fi
}
put source_postgres_password "$(random)"
put replicator_password "$(random)"
put ml_postgres_password "$(random)"
put grafana_admin_password "$(random)"
put source_dsn "host=source port=5432 dbname=app user=pgml_replica password=$(cat "$dir/replicator_password") sslmode=disable"
put target_dsn "host=ml-replica port=5432 dbname=ml user=postgres password=$(cat "$dir/ml_postgres_password") sslmode=disable"
