#!/bin/sh
# Entry point of the sidecar image: PGML_REPLICA_<NAME>_FILE (a Docker/Compose secret) is read
# into PGML_REPLICA_<NAME>, so a DSN with its password never has to sit in the environment of
# `docker inspect` or in a compose file. Then hands over to `pgml-replica "$@"`.
set -eu
for name in SOURCE TARGET; do
    file_var="PGML_REPLICA_${name}_FILE"
    eval "file=\${$file_var:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "pgml-replica-entrypoint: $file_var=$file is not a readable file" >&2
            exit 2
        fi
        export "PGML_REPLICA_${name}=$(cat "$file")"
        unset "$file_var"
    fi
done
exec pgml-replica "$@"
