-- pgml-replica: the pgml functions (PostgresML's classic SQL API).
--
-- Every PL/Python body is two lines: make sure this backend has loaded the project's Python
-- package (pgml._bootstrap, once per backend), then call one function of inference.sql_api,
-- where the logic lives. Run after 10_pgml_schema.sql; idempotent (CREATE OR REPLACE).
--
-- Scoring functions come in two layers. The public pgml.predict* are SQL functions simple
-- enough for the planner to inline into the calling query; each passes the current
-- statement's start time along to a PL/Python function, which uses it as its cache key: the
-- deployment is looked up once per statement (and whenever pgml.deployments changes in this
-- backend), never once per row. A deployment committed by any session -- or replayed on a
-- physical standby -- is therefore used from the next statement on, in every backend.

-- Loader ---------------------------------------------------------------------------------

-- Puts the directories listed in pgml.settings 'python_path' at the front of sys.path
-- (processing their .pth files, as a virtual environment needs), imports inference.sql_api
-- and keeps it in GD, PL/Python's per-backend dictionary.
CREATE OR REPLACE FUNCTION pgml._bootstrap() RETURNS text
LANGUAGE plpython3u AS $$
import json, site, sys
if "pgml" not in GD:
    rows = plpy.execute("SELECT value::text AS v FROM pgml.settings WHERE name = 'python_path'")
    paths = json.loads(rows[0]["v"]) if rows.nrows() else []
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
        site.addsitedir(path)
    from inference import sql_api
    GD["pgml"] = sql_api
return GD["pgml"].__file__
$$;

-- What the installer checks after installing: the package PL/Python imports, and versions.
CREATE OR REPLACE FUNCTION pgml._environment() RETURNS jsonb
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].environment()
$$;

CREATE OR REPLACE FUNCTION pgml.version() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT value #>> '{}' FROM pgml.settings WHERE name = 'version'
$$;

-- Training ---------------------------------------------------------------------------------

-- PostgresML 2.9.3's train, argument for argument and result column for result column,
-- plus as_of (docs/history.md): train on relation_name as it was then. runtime ('python' or
-- 'rust' there) is checked and otherwise has no effect: every model here scores through ONNX
-- with its native pipeline as the checked fallback. materialize_snapshot as PostgresML: false
-- (the default) reads the relation in place, true copies it into pgml.snapshot_<id> so that
-- retrains see the same rows (docs/pgml.md, Snapshots; relations.needs_copy says when a copy
-- is kept anyway).
-- Earlier installs' forms (13 and 14 arguments, status text) are dropped so calls are never
-- ambiguous and the result type can change.
DROP FUNCTION IF EXISTS pgml.train(text, text, text, text, text, jsonb, text, jsonb, jsonb,
                                   real, text, boolean, jsonb);
DROP FUNCTION IF EXISTS pgml.train(text, text, text, text, text, jsonb, text, jsonb, jsonb,
                                   real, text, boolean, jsonb, timestamptz);
DROP FUNCTION IF EXISTS pgml.train_joint(text, text, text, text[], text, jsonb, text, jsonb,
                                         jsonb, real, text, boolean, jsonb);

CREATE OR REPLACE FUNCTION pgml.train(
    project_name         text,
    task                 text DEFAULT NULL,
    relation_name        text DEFAULT NULL,
    y_column_name        text DEFAULT NULL,
    algorithm            text DEFAULT 'linear',
    hyperparams          jsonb DEFAULT '{}',
    search               text DEFAULT NULL,
    search_params        jsonb DEFAULT '{}',
    search_args          jsonb DEFAULT '{}',
    test_size            real DEFAULT 0.25,
    test_sampling        text DEFAULT 'random',
    runtime              text DEFAULT NULL,
    automatic_deploy     boolean DEFAULT true,
    materialize_snapshot boolean DEFAULT false,
    preprocess           jsonb DEFAULT '{}',
    as_of                timestamptz DEFAULT NULL)
RETURNS TABLE (project text, task text, algorithm text, deployed boolean)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
if runtime is not None and runtime.strip().lower() not in ("python", "rust"): plpy.error(f"runtime {runtime!r} is not one of python, rust (every model here scores through ONNX)", sqlstate="22023")
relation = relation_name if as_of is None else GD["pgml"].history_as_of(relation_name, as_of, None)
return GD["pgml"].train(project_name, task, relation, y_column_name, algorithm, hyperparams, search, search_params, search_args, test_size, test_sampling, automatic_deploy, preprocess, materialize_snapshot=materialize_snapshot)
$$;

CREATE OR REPLACE FUNCTION pgml.train_joint(
    project_name         text,
    task                 text DEFAULT NULL,
    relation_name        text DEFAULT NULL,
    y_column_name        text[] DEFAULT NULL,
    algorithm            text DEFAULT 'linear',
    hyperparams          jsonb DEFAULT '{}',
    search               text DEFAULT NULL,
    search_params        jsonb DEFAULT '{}',
    search_args          jsonb DEFAULT '{}',
    test_size            real DEFAULT 0.25,
    test_sampling        text DEFAULT 'random',
    runtime              text DEFAULT NULL,
    automatic_deploy     boolean DEFAULT true,
    materialize_snapshot boolean DEFAULT false,
    preprocess           jsonb DEFAULT '{}')
RETURNS TABLE (project text, task text, algorithm text, deployed boolean)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
if runtime is not None and runtime.strip().lower() not in ("python", "rust"): plpy.error(f"runtime {runtime!r} is not one of python, rust (every model here scores through ONNX)", sqlstate="22023")
return GD["pgml"].train(project_name, task, relation_name, y_column_name, algorithm, hyperparams, search, search_params, search_args, test_size, test_sampling, automatic_deploy, preprocess, joint=True, materialize_snapshot=materialize_snapshot)
$$;

-- PostgresML's result columns (project, strategy, algorithm); earlier installs answered
-- (project_name, task, algorithm_name), hence the DROP.
DROP FUNCTION IF EXISTS pgml.deploy(text, text, text);
CREATE OR REPLACE FUNCTION pgml.deploy(
    project_name   text,
    strategy       text DEFAULT 'best_score',
    algorithm_name text DEFAULT NULL)
RETURNS TABLE (project text, strategy text, algorithm text)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].deploy(project_name, strategy, algorithm_name)
$$;

CREATE OR REPLACE FUNCTION pgml.snapshot(
    relation_name text,
    y_column_name text,
    test_size     real DEFAULT 0.25,
    test_sampling text DEFAULT 'random')
RETURNS TABLE (relation text, y_column_name text, snapshot_id bigint, table_name text)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].snapshot(relation_name, y_column_name, test_size, test_sampling)
$$;

-- PostgresML 2.x's signature: subset and kwargs go to Hugging Face's datasets library for names
-- that are not one of the built-in datasets; limit keeps the first rows.
DROP FUNCTION IF EXISTS pgml.load_dataset(text);
CREATE OR REPLACE FUNCTION pgml.load_dataset(
    source  text,
    subset  text DEFAULT NULL,
    "limit" bigint DEFAULT NULL,
    kwargs  jsonb DEFAULT '{}')
RETURNS TABLE (table_name text, rows bigint)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].load_dataset(source, subset, args[2], kwargs)
$$;

-- Deploy one chosen model (PostgresML 2.x): strategy 'specific'.
CREATE OR REPLACE FUNCTION pgml.deploy(model_id bigint)
RETURNS TABLE (project text, strategy text, algorithm text)
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].deploy_model(model_id)
$$;

CREATE OR REPLACE FUNCTION pgml.runtime_info(project_name text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpython3u AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].runtime_info(project_name)
$$;

-- Scoring: PL/Python layer (statement_key = the calling statement's start time) -------------
-- One function per array type, so PL/Python converts the elements itself (no SQL array cast
-- per row). STRICT: a NULL features array predicts NULL.

CREATE OR REPLACE FUNCTION pgml._predict(project_name text, features float8[], statement_key float8)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict(project_name text, features real[], statement_key float8)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict(project_name text, features integer[], statement_key float8)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict(project_name text, features bigint[], statement_key float8)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict(project_name text, features smallint[], statement_key float8)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict(project_name text, features boolean[], statement_key float8)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict_proba(project_name text, features float8[], statement_key float8)
RETURNS float8[] LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict_proba(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict_joint(project_name text, features float8[], statement_key float8)
RETURNS float8[] LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict_joint(project_name, features, statement_key)
$$;

-- features arrives as array_send()'s binary form: numpy reads it without a Python object
-- per element, which is what makes a million-value batch cheap.
CREATE OR REPLACE FUNCTION pgml._predict_batch(project_name text, features bytea, statement_key float8)
RETURNS float8[] LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict_batch(project_name, features, statement_key)
$$;

-- Scoring: public API ------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgml.predict(project_name text, features float8[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict(project_name, features, date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict(project_name text, features real[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict(project_name, features, date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict(project_name text, features integer[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict(project_name, features, date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict(project_name text, features bigint[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict(project_name, features, date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict(project_name text, features smallint[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict(project_name, features, date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict(project_name text, features boolean[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict(project_name, features, date_part('epoch', statement_timestamp()))
$$;

-- ARRAY[1.5, 2.0] is numeric[]; without this overload the call would be ambiguous between
-- the float8[] and real[] ones.
CREATE OR REPLACE FUNCTION pgml.predict(project_name text, features numeric[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict(project_name, features::float8[], date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict_proba(project_name text, features float8[]) RETURNS float8[]
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict_proba(project_name, features, date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict_joint(project_name text, features float8[]) RETURNS float8[]
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict_joint(project_name, features, date_part('epoch', statement_timestamp()))
$$;

-- features: rows one after another (n_rows x num_features values); one prediction per row.
CREATE OR REPLACE FUNCTION pgml.predict_batch(project_name text, features float8[])
RETURNS SETOF float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT unnest(pgml._predict_batch(project_name, array_send(features),
                                      date_part('epoch', statement_timestamp())))
$$;

-- A specific model, deployed or not. Models never change once trained, so the loaded model
-- is cached by id for the life of the backend.
CREATE OR REPLACE FUNCTION pgml.model_predict(model_id bigint, features float8[]) RETURNS float8
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict(model_id, features)
$$;

-- Scoring by model id (PostgresML 2.x): any model, deployed or not; loaded models are cached
-- by id for the life of the backend, so these need no statement key.
CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, features float8[]) RETURNS float8
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, features real[]) RETURNS float8
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, features integer[]) RETURNS float8
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, features bigint[]) RETURNS float8
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, features smallint[]) RETURNS float8
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, features boolean[]) RETURNS float8
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, features numeric[]) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml.predict(model_id, features::float8[])
$$;

CREATE OR REPLACE FUNCTION pgml.predict_proba(model_id bigint, features float8[]) RETURNS float8[]
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict_proba(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict_joint(model_id bigint, features float8[]) RETURNS float8[]
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict_joint(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml._predict_batch(model_id bigint, features bytea) RETURNS float8[]
LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict_batch(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict_batch(model_id bigint, features float8[])
RETURNS SETOF float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT unnest(pgml._predict_batch(model_id, array_send(features)))
$$;

-- A heterogeneous row, pgml.predict('project', (col1, col2, ...)) as PostgresML 2.x takes it:
-- the fields in the relation's feature order, arrays flattened. PL/Python cannot take
-- anyelement, so the row travels as to_json()'s text (field order kept). An array argument
-- still goes to the array overloads above (an exact type match wins over anyelement).
CREATE OR REPLACE FUNCTION pgml._predict_row(project_name text, features text, statement_key float8)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict_row(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict_row(model_id bigint, features text)
RETURNS float8 LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].model_predict_row(model_id, features)
$$;

CREATE OR REPLACE FUNCTION pgml.predict(project_name text, "row" anyelement) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict_row(project_name, to_json("row")::text,
                             date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict(model_id bigint, "row" anyelement) RETURNS float8
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict_row(model_id, to_json("row")::text)
$$;

-- pgml.predict_label: the predicted class as text. For a text label pgml.predict returns the
-- class's code as PostgresML does (a number); this returns the class itself.
CREATE OR REPLACE FUNCTION pgml._predict_label(project_name text, features float8[], statement_key float8)
RETURNS text LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict_label(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml._predict_label_row(project_name text, features text, statement_key float8)
RETURNS text LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict_label(project_name, features, statement_key, row=True)
$$;

CREATE OR REPLACE FUNCTION pgml.predict_label(project_name text, features float8[]) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict_label(project_name, features, date_part('epoch', statement_timestamp()))
$$;

CREATE OR REPLACE FUNCTION pgml.predict_label(project_name text, "row" anyelement) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._predict_label_row(project_name, to_json("row")::text,
                                   date_part('epoch', statement_timestamp()))
$$;

-- pgml.decompose (PostgresML 2.x): the deployed decomposition model's components of a vector.
CREATE OR REPLACE FUNCTION pgml._decompose(project_name text, features float8[], statement_key float8)
RETURNS float8[] LANGUAGE plpython3u STABLE STRICT PARALLEL RESTRICTED AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].decompose(project_name, features, statement_key)
$$;

CREATE OR REPLACE FUNCTION pgml.decompose(project_name text, vector float8[]) RETURNS float8[]
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED AS $$
    SELECT pgml._decompose(project_name, vector, date_part('epoch', statement_timestamp()))
$$;

-- Any change to pgml.deployments in this backend drops its cached deployment lookups at once
-- (changes made elsewhere are seen from the next statement, see above).
CREATE OR REPLACE FUNCTION pgml._forget_deployments() RETURNS trigger
LANGUAGE plpython3u AS $$
if "pgml" in GD: GD["pgml"].forget_deployments()
return None
$$;

CREATE OR REPLACE TRIGGER pgml_forget_deployments
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgml.deployments
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._forget_deployments();
