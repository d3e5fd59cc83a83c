#!/usr/bin/env bash
# /docker-entrypoint-initdb.d hook of the compose *source* (stands in for RDS): a replication
# role like the one an RDS operator creates (`GRANT rds_replication TO pgml_replica` there;
# REPLICATION here), owning a demo table so it may create the publication FOR TABLE.
set -euo pipefail
password="$(cat "${REPLICATOR_PASSWORD_FILE:-/run/secrets/replicator_password}")"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="$password" <<'SQL'
CREATE ROLE pgml_replica LOGIN REPLICATION PASSWORD :'pw';
GRANT CREATE ON DATABASE :"DBNAME" TO pgml_replica;
CREATE TABLE public.demo_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    amount numeric(12, 2),
    payload jsonb
);
ALTER TABLE public.demo_events OWNER TO pgml_replica;
INSERT INTO public.demo_events (kind, amount, payload)
SELECT (ARRAY['click', 'view', 'buy'])[1 + g % 3], round((random() * 100)::numeric, 2),
       jsonb_build_object('n', g)
FROM generate_series(1, 1000) g;
SQL
