-- pgml-replica: predictions served to the source database through postgres_fdw.
--
-- Loaded after the pgml schema (it needs pgml.projects, pgml.deployments, pgml.predict,
-- pgml.predict_proba, pgml.predict_batch). Idempotent: run it again to upgrade.
--
--   pgml_out      the only thing a reader role sees: one view per exposure, the key columns
--                 plus `prediction` (and `probabilities` for classification).
--   pgml_expose   private machinery, no grants to anyone: SECURITY DEFINER scoring wrappers,
--                 materialized prediction tables, trigger functions.
--   pgml.exposures  what was exposed, so `pgml-replica writeback` and the triggers know it.
--
-- Why the wrappers: a view reads its tables with its owner's rights, but a function inside a
-- view runs as the *caller* (PostgreSQL 15). Through a plain pgml.predict the reader would need
-- USAGE on pgml and SELECT on the model tables. Instead the views call pgml_expose.predict*,
-- SECURITY DEFINER functions owned by the installer; the reader gets EXECUTE on those but no
-- USAGE on pgml_expose, so it can only reach them through the views.
--
-- Every name reaches SQL through format('%I') / quote_ident / regclass; the project name is a
-- literal (%L) inside view definitions.

CREATE SCHEMA IF NOT EXISTS pgml_out;
COMMENT ON SCHEMA pgml_out IS
    'pgml-replica: prediction views for postgres_fdw readers (see pgml.expose)';
CREATE SCHEMA IF NOT EXISTS pgml_expose;
COMMENT ON SCHEMA pgml_expose IS
    'pgml-replica: private machinery behind pgml_out; grant nothing here';
REVOKE ALL ON SCHEMA pgml_expose FROM PUBLIC;
REVOKE ALL ON SCHEMA pgml_out FROM PUBLIC;

CREATE TABLE IF NOT EXISTS pgml.exposures (
    view_name     text PRIMARY KEY,
    project_name  text NOT NULL,
    relation_name text NOT NULL,           -- schema-qualified and quoted, e.g. public.patients
    key_columns   text[] NOT NULL,
    features      text[] NOT NULL,         -- in the order the model expects them
    task          text NOT NULL,
    materialized  boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON pgml.exposures FROM PUBLIC;

-- Scoring wrappers --------------------------------------------------------------------------
-- PL/pgSQL, not SQL: a SECURITY DEFINER SQL function cannot be inlined and is planned anew in
-- every statement that calls it (~0.1 ms per point lookup); PL/pgSQL keeps its plan for the
-- session. STABLE so that a view column nobody selects is dropped by the planner (a key-only
-- scan through the foreign table scores nothing). No SET search_path: a SET clause costs a
-- GUC save/restore per row, and nothing here needs one -- every name is schema-qualified,
-- pg_catalog is searched first, and a caller's temporary schema is never searched for
-- functions or operators.

CREATE OR REPLACE FUNCTION pgml_expose.predict(project_name text, features float8[])
RETURNS float8 LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$ BEGIN RETURN pgml.predict(project_name, features); END $$;

CREATE OR REPLACE FUNCTION pgml_expose.predict_proba(project_name text, features float8[])
RETURNS float8[] LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$ BEGIN RETURN pgml.predict_proba(project_name, features); END $$;

REVOKE ALL ON FUNCTION pgml_expose.predict(text, float8[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgml_expose.predict_proba(text, float8[]) FROM PUBLIC;

-- Helpers that build SQL text ---------------------------------------------------------------

-- "a, b, c" for a column list, optionally qualified with an alias.
CREATE OR REPLACE FUNCTION pgml_expose.column_list(columns text[], alias text DEFAULT NULL)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$
    SELECT string_agg(CASE WHEN alias IS NULL THEN quote_ident(c)
                           ELSE quote_ident(alias) || '.' || quote_ident(c) END, ', ' ORDER BY i)
    FROM unnest(columns) WITH ORDINALITY AS u(c, i)
$$;

-- "a.k1 = b.k1 AND a.k2 = b.k2"
CREATE OR REPLACE FUNCTION pgml_expose.key_match(keys text[], a text, b text)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$
    SELECT string_agg(format('%I.%I = %I.%I', a, c, b, c), ' AND ' ORDER BY i)
    FROM unnest(keys) WITH ORDINALITY AS u(c, i)
$$;

-- ARRAY[...]::float8[] over the feature columns of `alias`; bool goes through int.
CREATE OR REPLACE FUNCTION pgml_expose.feature_array(e pgml.exposures, alias text)
RETURNS text LANGUAGE plpgsql STABLE
AS $$
DECLARE
    rel   regclass := e.relation_name::regclass;
    parts text[] := '{}';
    col   text;
    typ   oid;
BEGIN
    FOREACH col IN ARRAY e.features LOOP
        SELECT a.atttypid INTO typ FROM pg_attribute a
         WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF typ IS NULL THEN
            RAISE EXCEPTION 'feature column % is not in %', quote_ident(col), rel
                USING HINT = 'pass features => ARRAY[...] naming columns of the relation';
        END IF;
        IF typ = 'bool'::regtype THEN
            parts := parts || format('%I.%I::int::float8', alias, col);
        ELSIF typ IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'float4'::regtype,
                      'float8'::regtype, 'numeric'::regtype) THEN
            parts := parts || format('%I.%I::float8', alias, col);
        ELSE
            RAISE EXCEPTION 'feature column % of % has type %, which is not numeric',
                quote_ident(col), rel, format_type(typ, NULL)
                USING HINT = 'expose numeric or boolean columns only';
        END IF;
    END LOOP;
    RETURN 'ARRAY[' || array_to_string(parts, ', ') || ']::float8[]';
END
$$;

-- predict_batch reshapes a flat array by the model's feature count, so a model trained on
-- other columns can still "fit" the values; one prediction per row is the proof it did not.
CREATE OR REPLACE FUNCTION pgml_expose.check_scored(view_name text, project_name text,
                                                    passed integer, rows bigint, scored bigint)
RETURNS boolean LANGUAGE plpgsql STABLE
AS $$
DECLARE
    takes integer;
BEGIN
    IF rows = scored THEN
        RETURN true;
    END IF;
    SELECT m.num_features INTO takes
      FROM pgml.projects p JOIN pgml.deployments d ON d.project_id = p.id
      JOIN pgml.models m ON m.id = d.model_id
     WHERE p.name = check_scored.project_name
     ORDER BY d.created_at DESC, d.id DESC LIMIT 1;
    RAISE EXCEPTION 'the model deployed for project % takes % features, pgml_out.% passes %',
        quote_literal(project_name), coalesce(takes::text, '?'), quote_ident(view_name), passed
        USING HINT = 'expose it again: SELECT pgml.expose(...) (features default to the '
                     'deployed model''s)';
END
$$;

-- The upsert that scores every row of `source` (a FROM item whose rows have the relation's
-- columns: the base table, a trigger's transition table, or a subquery over those) into the
-- exposure's materialized table. One pgml.predict_batch call for all rows: scoring a batch
-- costs a fraction of a microsecond per row, one PL/Python call per row several.
CREATE OR REPLACE FUNCTION pgml_expose.score_sql(e pgml.exposures, source text)
RETURNS text LANGUAGE plpgsql STABLE
AS $$
DECLARE
    keys   text := pgml_expose.column_list(e.key_columns);
    skeys  text := pgml_expose.column_list(e.key_columns, 'src');
    proba  boolean := e.task = 'classification';
BEGIN
    RETURN format($q$
        WITH src AS MATERIALIZED (
            SELECT row_number() OVER () AS n, %1$s, %2$s AS f FROM %3$s AS s
        ), flat AS (   -- rows x features as one 2-D array: predict_batch reads it flat
            SELECT array_agg(src.f ORDER BY src.n) AS a FROM src HAVING count(*) > 0
        ), pred AS MATERIALIZED (
            SELECT r.n, r.p FROM flat, pgml.predict_batch(%4$L, flat.a) WITH ORDINALITY AS r(p, n)
        ), checked AS (
            SELECT pgml_expose.check_scored(%5$L, %4$L, %10$s, (SELECT count(*) FROM src),
                                            (SELECT count(*) FROM pred)) AS ok
        )
        INSERT INTO pgml_expose.%5$I AS t (%1$s, prediction%6$s, scored_at)
        SELECT %7$s, pred.p%8$s, now() FROM src JOIN pred USING (n), checked WHERE checked.ok
        ON CONFLICT (%1$s) DO UPDATE
           SET prediction = EXCLUDED.prediction%9$s, scored_at = EXCLUDED.scored_at$q$,
        keys, pgml_expose.feature_array(e, 's'), source, e.project_name, e.view_name,
        CASE WHEN proba THEN ', probabilities' ELSE '' END,
        skeys,
        CASE WHEN proba THEN format(', pgml.predict_proba(%L, src.f)', e.project_name)
             ELSE '' END,
        CASE WHEN proba THEN ', probabilities = EXCLUDED.probabilities' ELSE '' END,
        cardinality(e.features));
END
$$;

-- The pgml_out view's SELECT: live (score on read) or over the materialized table.
CREATE OR REPLACE FUNCTION pgml_expose.view_sql(e pgml.exposures)
RETURNS text LANGUAGE plpgsql STABLE
AS $$
DECLARE
    rel regclass := e.relation_name::regclass;
    fa  text;
BEGIN
    IF e.materialized THEN
        RETURN format('SELECT %s, prediction%s FROM pgml_expose.%I',
                      pgml_expose.column_list(e.key_columns),
                      CASE WHEN e.task = 'classification' THEN ', probabilities' ELSE '' END,
                      e.view_name);
    END IF;
    fa := pgml_expose.feature_array(e, 'r');
    RETURN format('SELECT %s, pgml_expose.predict(%L, %s) AS prediction%s FROM %s AS r',
                  pgml_expose.column_list(e.key_columns, 'r'), e.project_name, fa,
                  CASE WHEN e.task = 'classification'
                       THEN format(', pgml_expose.predict_proba(%L, %s) AS probabilities',
                                   e.project_name, fa)
                       ELSE '' END,
                  rel);
END
$$;

-- Readers are the roles holding USAGE on pgml_out: each (re)created view is granted to them,
-- so a view rebuilt by pgml.expose stays readable without re-running writeback.
CREATE OR REPLACE FUNCTION pgml_expose.grant_readers(view_name text)
RETURNS void LANGUAGE plpgsql
AS $$
DECLARE
    r regrole;
BEGIN
    FOR r IN
        SELECT a.grantee::regrole
          FROM pg_namespace n, aclexplode(n.nspacl) AS a
         WHERE n.nspname = 'pgml_out' AND a.privilege_type = 'USAGE'
           AND a.grantee <> 0 AND a.grantee <> n.nspowner
    LOOP
        EXECUTE format('GRANT SELECT ON pgml_out.%I TO %s', view_name, r);
    END LOOP;
END
$$;

-- (Re)create the pgml_out view of an exposure. CREATE OR REPLACE keeps grants and
-- dependants; when the columns changed it cannot, so the view is rebuilt and re-granted.
CREATE OR REPLACE FUNCTION pgml_expose.build_view(e pgml.exposures)
RETURNS void LANGUAGE plpgsql
AS $$
DECLARE
    body text := pgml_expose.view_sql(e);
BEGIN
    BEGIN
        EXECUTE format('CREATE OR REPLACE VIEW pgml_out.%I AS %s', e.view_name, body);
    EXCEPTION WHEN invalid_table_definition OR datatype_mismatch OR wrong_object_type THEN
        EXECUTE format('DROP VIEW pgml_out.%I', e.view_name);
        EXECUTE format('CREATE VIEW pgml_out.%I AS %s', e.view_name, body);
    END;
    EXECUTE format('COMMENT ON VIEW pgml_out.%I IS %L', e.view_name,
                   format('pgml-replica: %s predictions of project %s over %s by (%s)',
                          CASE WHEN e.materialized THEN 'materialized' ELSE 'live' END,
                          e.project_name, e.relation_name, array_to_string(e.key_columns, ', ')));
    PERFORM pgml_expose.grant_readers(e.view_name);
END
$$;

-- Materialized mode -------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgml_expose.trigger_name(view_name text, op text)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'pgml_' || left(view_name, 40) || '_' || left(md5(view_name), 6) || '_' || op $$;

-- One statement-level trigger per event (PostgreSQL allows transition tables only on
-- single-event triggers). Transition tables are visible only to SPI calls of the trigger
-- function itself, so the scoring SQL is built by helpers but EXECUTEd here.
-- A scoring failure must not stop replication: the rows are applied, their stale predictions
-- are removed (absent = not scored), and a WARNING says what failed; pgml_expose.refresh or
-- the next deployment rescores everything.
CREATE OR REPLACE FUNCTION pgml_expose.on_change()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off   -- compiling the scoring statement costs more than running it
AS $$
DECLARE
    e       pgml.exposures;
    changed text;
BEGIN
    SELECT * INTO e FROM pgml.exposures x WHERE x.view_name = TG_ARGV[0];
    IF NOT FOUND OR NOT e.materialized THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('TRUNCATE pgml_expose.%I', e.view_name);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- keys that are gone (deleted, or moved away by a key-changing update)
        EXECUTE format('DELETE FROM pgml_expose.%I AS t USING (SELECT %s FROM old_rows %s) AS d'
                       ' WHERE %s', e.view_name, pgml_expose.column_list(e.key_columns),
                       CASE WHEN TG_OP = 'UPDATE'
                            THEN 'EXCEPT SELECT ' || pgml_expose.column_list(e.key_columns)
                                 || ' FROM new_rows' ELSE '' END,
                       pgml_expose.key_match(e.key_columns, 't', 'd'));
    END IF;
    IF TG_OP = 'INSERT' THEN
        changed := 'new_rows';
    ELSIF TG_OP = 'UPDATE' THEN
        -- rescore only rows whose features changed, moved key, or have no prediction yet
        changed := format('(SELECT n.* FROM new_rows AS n LEFT JOIN old_rows AS o ON %s'
                          ' WHERE o.%I IS NULL OR %s IS DISTINCT FROM %s'
                          ' OR NOT EXISTS (SELECT FROM pgml_expose.%I AS t WHERE %s))',
                          pgml_expose.key_match(e.key_columns, 'o', 'n'), e.key_columns[1],
                          pgml_expose.feature_array(e, 'o'), pgml_expose.feature_array(e, 'n'),
                          e.view_name, pgml_expose.key_match(e.key_columns, 't', 'n'));
    ELSE
        RETURN NULL;
    END IF;
    BEGIN
        EXECUTE pgml_expose.score_sql(e, changed);
    EXCEPTION WHEN OTHERS THEN
        EXECUTE format('DELETE FROM pgml_expose.%I AS t USING (SELECT %s FROM new_rows) AS d'
                       ' WHERE %s', e.view_name, pgml_expose.column_list(e.key_columns),
                       pgml_expose.key_match(e.key_columns, 't', 'd'));
        RAISE WARNING 'pgml_out.% could not score % rows of %: %', quote_ident(e.view_name),
            lower(TG_OP), e.relation_name, SQLERRM
            USING HINT = 'their predictions are absent until fixed; then run SELECT '
                         || format('pgml_expose.refresh(%L)', e.view_name);
    END;
    RETURN NULL;
END
$$;

-- Rescore every row. SHARE lock: replication waits (its rows then get scored by the new
-- model in its own trigger), readers keep reading the previous predictions until commit.
CREATE OR REPLACE FUNCTION pgml_expose.refresh(view_name text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    e pgml.exposures;
    n bigint;
BEGIN
    SELECT * INTO e FROM pgml.exposures x WHERE x.view_name = refresh.view_name;
    IF NOT FOUND OR NOT e.materialized THEN
        RAISE EXCEPTION 'pgml_out.% is not a materialized exposure', quote_ident(view_name)
            USING HINT = 'see SELECT * FROM pgml.exposures';
    END IF;
    EXECUTE format('LOCK TABLE %s IN SHARE MODE', e.relation_name::regclass);
    EXECUTE format('DELETE FROM pgml_expose.%I', e.view_name);
    EXECUTE pgml_expose.score_sql(e, e.relation_name::regclass::text);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION pgml_expose.refresh(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgml_expose.drop_triggers(e pgml.exposures)
RETURNS void LANGUAGE plpgsql
SET client_min_messages = warning   -- no 'does not exist, skipping' chatter
AS $$
DECLARE
    rel regclass := to_regclass(e.relation_name);
    op  text;
BEGIN
    IF rel IS NULL THEN
        RETURN;
    END IF;
    FOREACH op IN ARRAY ARRAY['ins', 'upd', 'del', 'trunc'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
                       pgml_expose.trigger_name(e.view_name, op), rel);
    END LOOP;
END
$$;

-- Build the materialized table and its triggers for an exposure whose row says materialized.
CREATE OR REPLACE FUNCTION pgml_expose.build_materialized(e pgml.exposures)
RETURNS void LANGUAGE plpgsql
SET client_min_messages = warning   -- no 'does not exist, skipping' chatter
AS $$
DECLARE
    rel  regclass := e.relation_name::regclass;
    cols text;
    spec record;
BEGIN
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = rel) <> 'r' THEN
        RAISE EXCEPTION 'cannot materialize predictions of %: it is not a plain table', rel
            USING HINT = 'materialize exposes tables (mirrored tables are); use live mode';
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_index i
         WHERE i.indrelid = rel AND i.indisunique AND i.indpred IS NULL
           AND i.indnkeyatts = cardinality(e.key_columns)
           AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                 WHERE a.attrelid = rel AND a.attnum = ANY (i.indkey::int2[]))
               = (SELECT array_agg(k ORDER BY k) FROM unnest(e.key_columns) AS k)) THEN
        RAISE EXCEPTION 'cannot materialize predictions of % by (%): those columns are not unique',
            rel, array_to_string(e.key_columns, ', ')
            USING HINT = 'use the primary key (or a unique index) as key_columns';
    END IF;
    SELECT string_agg(format('%I %s NOT NULL', a.attname, format_type(a.atttypid, a.atttypmod)),
                      ', ' ORDER BY k.i)
      INTO cols
      FROM unnest(e.key_columns) WITH ORDINALITY AS k(name, i)
      JOIN pg_attribute a ON a.attrelid = rel AND a.attname = k.name;
    EXECUTE format('DROP TABLE IF EXISTS pgml_expose.%I', e.view_name);
    EXECUTE format('CREATE TABLE pgml_expose.%I (%s, prediction float8%s,'
                   ' scored_at timestamptz NOT NULL, PRIMARY KEY (%s))',
                   e.view_name, cols,
                   CASE WHEN e.task = 'classification' THEN ', probabilities float8[]' ELSE '' END,
                   pgml_expose.column_list(e.key_columns));
    PERFORM pgml_expose.drop_triggers(e);
    FOR spec IN SELECT * FROM (VALUES
            ('ins', 'INSERT', 'REFERENCING NEW TABLE AS new_rows'),
            ('upd', 'UPDATE', 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'),
            ('del', 'DELETE', 'REFERENCING OLD TABLE AS old_rows'),
            ('trunc', 'TRUNCATE', '')) AS s(op, event, refs)
    LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION pgml_expose.on_change(%L)',
                       pgml_expose.trigger_name(e.view_name, spec.op), spec.event, rel,
                       spec.refs, e.view_name);
        -- ALWAYS: fire also when the applying session runs with session_replication_role
        -- = replica, as replication apply workers do.
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', rel,
                       pgml_expose.trigger_name(e.view_name, spec.op));
    END LOOP;
    PERFORM pgml_expose.refresh(e.view_name);
END
$$;

CREATE OR REPLACE FUNCTION pgml_expose.drop_materialized(e pgml.exposures)
RETURNS void LANGUAGE plpgsql
SET client_min_messages = warning   -- no 'does not exist, skipping' chatter
AS $$
BEGIN
    PERFORM pgml_expose.drop_triggers(e);
    EXECUTE format('DROP TABLE IF EXISTS pgml_expose.%I', e.view_name);
END
$$;

-- Redeploying a project rescores its materialized exposures in the deploying transaction, so
-- readers switch from the old model's predictions to the new model's all at once. A model
-- that cannot score an exposure (trained on other columns) does not fail the deployment: the
-- exposure's predictions are removed, never left standing from a model no longer deployed.
-- Statement level and named to sort after pgml_forget_deployments (triggers on one event
-- fire in name order), so pgml.predict* has dropped its cached deployment by then.
CREATE OR REPLACE FUNCTION pgml_expose.on_deploy()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off   -- compiling the scoring statement costs more than running it
AS $$
DECLARE
    v text;
BEGIN
    FOR v IN
        SELECT DISTINCT x.view_name
          FROM new_deployments d
          JOIN pgml.projects p ON p.id = d.project_id
          JOIN pgml.exposures x ON x.project_name = p.name
         WHERE x.materialized ORDER BY x.view_name
    LOOP
        BEGIN
            PERFORM pgml_expose.refresh(v);
        EXCEPTION WHEN OTHERS THEN
            EXECUTE format('DELETE FROM pgml_expose.%I', v);
            RAISE WARNING 'the new deployment cannot score pgml_out.%: %', quote_ident(v), SQLERRM
                USING HINT = 'expose it again with the new model''s features: '
                             'SELECT pgml.expose(...)';
        END;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER pgml_refresh_exposures AFTER INSERT ON pgml.deployments
    REFERENCING NEW TABLE AS new_deployments
    FOR EACH STATEMENT EXECUTE FUNCTION pgml_expose.on_deploy();

-- Public API --------------------------------------------------------------------------------

-- The columns the deployed model of a project was trained on, in training order: the
-- model's own preprocessing spec names them; older rows fall back to the snapshot's columns
-- without the label(s), in the relation's column order.
CREATE OR REPLACE FUNCTION pgml_expose.training_features(project_name text)
RETURNS text[] LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        (SELECT array_agg(c->>'name' ORDER BY i)
           FROM jsonb_array_elements(CASE jsonb_typeof(m.preprocess->'columns')
                                     WHEN 'array' THEN m.preprocess->'columns' END)
                WITH ORDINALITY AS u(c, i)),
        (SELECT array_agg(c->>'name' ORDER BY (c->>'position')::int NULLS LAST, i)
           FROM jsonb_array_elements(CASE jsonb_typeof(s.columns)
                                     WHEN 'array' THEN s.columns END)
                WITH ORDINALITY AS u(c, i)
          WHERE NOT (c->>'name' = ANY (s.y_column_name))))
      FROM pgml.projects p
      JOIN pgml.deployments d ON d.project_id = p.id
      JOIN pgml.models m ON m.id = d.model_id
      LEFT JOIN pgml.snapshots s ON s.id = m.snapshot_id
     WHERE p.name = training_features.project_name
     ORDER BY d.created_at DESC, d.id DESC
     LIMIT 1
$$;

CREATE OR REPLACE FUNCTION pgml.expose(
    project_name  text,
    relation_name text,
    key_columns   text[],
    view_name     text DEFAULT NULL,
    features      text[] DEFAULT NULL)
RETURNS text LANGUAGE plpgsql
AS $$
DECLARE
    rel    regclass;
    e      pgml.exposures;
    prev   pgml.exposures;
    v_task text;
    col    text;
BEGIN
    BEGIN
        rel := to_regclass(expose.relation_name);
    EXCEPTION WHEN invalid_name THEN
        rel := NULL;   -- not even a name: reported as missing below
    END;
    SELECT p.task INTO v_task FROM pgml.projects p WHERE p.name = expose.project_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'project % does not exist', quote_literal(expose.project_name)
            USING HINT = 'train it first: SELECT * FROM pgml.train(...)';
    END IF;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'relation % does not exist', quote_literal(expose.relation_name)
            USING HINT = 'name the mirrored table, e.g. ''public.patients''';
    END IF;
    IF coalesce(cardinality(expose.key_columns), 0) = 0 THEN
        RAISE EXCEPTION 'key_columns is empty'
            USING HINT = 'name the columns that identify a row, e.g. ARRAY[''id'']';
    END IF;
    FOREACH col IN ARRAY expose.key_columns LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col
                          AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'key column % is not in %', quote_ident(col), rel;
        END IF;
        IF col IN ('prediction', 'probabilities') THEN
            RAISE EXCEPTION 'key column % clashes with the view''s own columns',
                quote_ident(col);
        END IF;
    END LOOP;

    e.view_name := coalesce(expose.view_name,
                            nullif(trim(both '_' from regexp_replace(
                                lower(expose.project_name), '[^a-z0-9_]+', '_', 'g')), ''));
    IF e.view_name IS NULL OR e.view_name ~ '^[0-9]' THEN
        e.view_name := 'p_' || coalesce(e.view_name, left(md5(expose.project_name), 8));
    END IF;
    IF length(e.view_name) > 50 THEN
        RAISE EXCEPTION 'view name % is longer than 50 characters', quote_ident(e.view_name)
            USING HINT = 'pass a shorter view_name (the source adds suffixes to it)';
    END IF;
    SELECT * INTO prev FROM pgml.exposures x WHERE x.view_name = e.view_name;
    IF FOUND AND prev.project_name <> expose.project_name THEN
        RAISE EXCEPTION 'pgml_out.% already exposes project %', quote_ident(e.view_name),
            quote_literal(prev.project_name)
            USING HINT = 'pass another view_name';
    END IF;

    e.project_name  := expose.project_name;
    e.relation_name := (SELECT format('%I.%I', n.nspname, c.relname)
                          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.oid = rel);
    e.key_columns   := expose.key_columns;
    e.features      := coalesce(expose.features, pgml_expose.training_features(expose.project_name));
    IF e.features IS NULL OR cardinality(e.features) = 0 THEN
        RAISE EXCEPTION 'project % has no deployed model to take the feature columns from',
            quote_literal(expose.project_name)
            USING HINT = 'deploy a model, or pass features => ARRAY[...]';
    END IF;
    e.task          := v_task;
    e.materialized  := coalesce(prev.materialized, false);
    e.created_at    := coalesce(prev.created_at, now());
    e.updated_at    := now();
    PERFORM pgml_expose.feature_array(e, 'r');   -- validates the feature columns

    IF prev.materialized THEN
        -- the view reads the old predictions table: both are rebuilt (grants come back from
        -- pgml_out's readers in build_view)
        EXECUTE format('DROP VIEW IF EXISTS pgml_out.%I', prev.view_name);
        PERFORM pgml_expose.drop_materialized(prev);
    END IF;
    INSERT INTO pgml.exposures VALUES (e.*)
        ON CONFLICT ON CONSTRAINT exposures_pkey DO UPDATE
        SET project_name = EXCLUDED.project_name, relation_name = EXCLUDED.relation_name,
            key_columns = EXCLUDED.key_columns, features = EXCLUDED.features,
            task = EXCLUDED.task, updated_at = EXCLUDED.updated_at;
    IF e.materialized THEN
        PERFORM pgml_expose.build_materialized(e);
    END IF;
    PERFORM pgml_expose.build_view(e);
    RETURN format('pgml_out.%I', e.view_name);
END
$$;

-- Switch an exposure between live (score on read) and materialized (score on write).
CREATE OR REPLACE FUNCTION pgml.materialize(view_name text, enabled boolean DEFAULT true)
RETURNS text LANGUAGE plpgsql
AS $$
DECLARE
    e pgml.exposures;
BEGIN
    SELECT * INTO e FROM pgml.exposures x WHERE x.view_name = materialize.view_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgml_out.% is not an exposure', quote_ident(materialize.view_name)
            USING HINT = 'create it with pgml.expose(...)';
    END IF;
    IF e.materialized = enabled THEN
        IF enabled THEN
            PERFORM pgml_expose.refresh(e.view_name);
        END IF;
    ELSE
        UPDATE pgml.exposures x SET materialized = enabled, updated_at = now()
         WHERE x.view_name = e.view_name;
        e.materialized := enabled;
        IF enabled THEN
            PERFORM pgml_expose.build_materialized(e);
            PERFORM pgml_expose.build_view(e);
        ELSE
            PERFORM pgml_expose.build_view(e);   -- first: the view depends on the table
            PERFORM pgml_expose.drop_materialized(e);
        END IF;
    END IF;
    RETURN CASE WHEN enabled THEN 'materialized' ELSE 'live' END;
END
$$;

CREATE OR REPLACE FUNCTION pgml.unexpose(view_name text)
RETURNS void LANGUAGE plpgsql
SET client_min_messages = warning   -- no 'does not exist, skipping' chatter
AS $$
DECLARE
    e pgml.exposures;
BEGIN
    SELECT * INTO e FROM pgml.exposures x WHERE x.view_name = unexpose.view_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgml_out.% is not an exposure', quote_ident(unexpose.view_name);
    END IF;
    EXECUTE format('DROP VIEW IF EXISTS pgml_out.%I', e.view_name);
    PERFORM pgml_expose.drop_materialized(e);
    DELETE FROM pgml.exposures x WHERE x.view_name = e.view_name;
END
$$;

-- Give a role what a postgres_fdw reader needs, and nothing else: USAGE on pgml_out, SELECT
-- on its views, EXECUTE on the scoring wrappers (reachable only through those views).
CREATE OR REPLACE FUNCTION pgml.grant_reader(role_name text)
RETURNS void LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA pgml_out TO %I', role_name);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA pgml_out TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION pgml_expose.predict(text, float8[]),'
                   ' pgml_expose.predict_proba(text, float8[]) TO %I', role_name);
END
$$;

CREATE OR REPLACE FUNCTION pgml.revoke_reader(role_name text)
RETURNS void LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA pgml_out FROM %I', role_name);
    EXECUTE format('REVOKE USAGE ON SCHEMA pgml_out FROM %I', role_name);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION pgml_expose.predict(text, float8[]),'
                   ' pgml_expose.predict_proba(text, float8[]) FROM %I', role_name);
END
$$;
