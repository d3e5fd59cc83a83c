-- pgml-replica: history on the ML replica (docs/history.md).
--
-- The sidecar, started with --history, appends every version of a table's rows to
-- pgml_history."<schema>__<table>" in the transaction that applies them. These functions
-- read them through DuckDB inside PL/Python (inference/history.py). Idempotent.
--
-- pgml.train gains one named argument, as_of: train on the relation as it was then (the
-- snapshot records the as_of table's name). It is redefined here, after 20_pgml_api.sql:
-- the old signature is dropped first, so an install or re-install leaves one pgml.train.

CREATE OR REPLACE FUNCTION pgml.as_of(
    relation_name text,
    as_of         timestamptz,
    "into"        text DEFAULT NULL)
RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].history_as_of(relation_name, as_of, into)
$$;

CREATE OR REPLACE FUNCTION pgml.point_in_time(
    spine             text,
    event_time_column text,
    features          text[],
    "into"            text DEFAULT NULL,
    ttl               interval DEFAULT NULL)
RETURNS text LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].history_point_in_time(spine, event_time_column, features, into, ttl)
$$;

DROP FUNCTION IF EXISTS pgml.history_info();
CREATE OR REPLACE FUNCTION pgml.history_info()
RETURNS TABLE (relation_name text, versions bigint, bytes bigint, oldest timestamptz,
               newest timestamptz, retention interval, segments bigint)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].history_info()
$$;

-- Old versions out of Postgres into an immutable Parquet segment (inference/history_compact.py);
-- the sidecar's --history-retention is applied here.
CREATE OR REPLACE FUNCTION pgml.history_compact(
    relation_name text DEFAULT NULL,
    older_than    interval DEFAULT '1 hour')
RETURNS TABLE (relation_name text, versions bigint, path text, bytes bigint)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].history_compact(relation_name, older_than)
$$;
