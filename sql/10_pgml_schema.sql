-- pgml-replica: the pgml schema's tables and views (PostgresML's classic layout).
--
-- Run as a superuser (plpython3u is an untrusted language). Idempotent: every object is
-- created only when missing, and columns added by later versions come as
-- ADD COLUMN IF NOT EXISTS, so running it again upgrades in place and keeps every project,
-- snapshot, model and deployment. `pgml-replica install --target DSN` runs this file, then
-- 20_pgml_api.sql, then any other *.sql here, in one transaction.
--
-- Text columns with CHECK constraints stand where PostgresML has enum types: the values are
-- PostgresML's, and a later version can widen a CHECK without rewriting a type.

CREATE EXTENSION IF NOT EXISTS plpython3u;
CREATE SCHEMA IF NOT EXISTS pgml;
COMMENT ON SCHEMA pgml IS 'pgml-replica: PostgresML-compatible train / deploy / predict';

-- One place for installation facts: the version, and where PL/Python finds the project's
-- Python environment (a JSON array of directories, read once per backend by pgml._bootstrap).
CREATE TABLE IF NOT EXISTS pgml.settings (
    name       text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS pgml.projects (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    task       text NOT NULL
               CHECK (task IN ('regression', 'classification', 'clustering', 'decomposition')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A snapshot names the relation a model was trained on, plus what is needed to split it
-- again identically: test_size, test_sampling and random_state. As in PostgresML it is a
-- copy (table pgml.snapshot_<id>) only with materialize_snapshot => true (or where the
-- loader needs one: docs/pgml.md "Snapshots"); otherwise a retrain reads the relation now.
-- columns: [{name, pg_type, position, label, nullable}] in the relation's column order;
-- analysis: {column: {count, missing, mean, stddev, min, max, median}} over all rows.
CREATE TABLE IF NOT EXISTS pgml.snapshots (
    id            bigserial PRIMARY KEY,
    relation_name text NOT NULL,
    y_column_name text[] NOT NULL,
    test_size     real NOT NULL CHECK (test_size > 0 AND test_size < 1),
    test_sampling text NOT NULL CHECK (test_sampling IN ('random', 'first', 'last', 'stratified')),
    status        text NOT NULL DEFAULT 'in_progress',
    columns       jsonb,
    analysis      jsonb,
    random_state  integer NOT NULL DEFAULT 0,
    num_rows      bigint,
    materialized  boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A trained model. runtime says how it is scored: 'onnx' (onnxruntime) or 'python' (the
-- pickled native estimator, when ONNX export or its parity check failed; parity->>'reason'
-- says why). The model bytes live in pgml.files. Rows are never updated after training,
-- which is what lets backends cache loaded models by id.
CREATE TABLE IF NOT EXISTS pgml.models (
    id             bigserial PRIMARY KEY,
    project_id     bigint NOT NULL REFERENCES pgml.projects (id) ON DELETE CASCADE,
    snapshot_id    bigint REFERENCES pgml.snapshots (id) ON DELETE SET NULL,
    num_features   integer NOT NULL,
    algorithm      text NOT NULL,
    runtime        text NOT NULL CHECK (runtime IN ('onnx', 'python')),
    hyperparams    jsonb NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'successful',
    metrics        jsonb,
    search         text CHECK (search IN ('grid', 'random')),
    search_params  jsonb NOT NULL DEFAULT '{}',
    search_args    jsonb NOT NULL DEFAULT '{}',
    search_results jsonb,
    parity         jsonb,
    preprocess     jsonb,
    classes        jsonb,
    joint          boolean NOT NULL DEFAULT false,
    warnings       jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS models_project_id_idx ON pgml.models (project_id);

-- Model bytes: path 'model.onnx' (the ONNX graph, preprocessing inside) and 'model.pkl'
-- (the native scikit-learn pipeline, pickled).
CREATE TABLE IF NOT EXISTS pgml.files (
    id         bigserial PRIMARY KEY,
    model_id   bigint NOT NULL REFERENCES pgml.models (id) ON DELETE CASCADE,
    path       text NOT NULL,
    part       integer NOT NULL DEFAULT 0,
    data       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (model_id, path, part)
);

-- The current deployment of a project is its latest row (created_at, then id).
CREATE TABLE IF NOT EXISTS pgml.deployments (
    id         bigserial PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES pgml.projects (id) ON DELETE CASCADE,
    model_id   bigint NOT NULL REFERENCES pgml.models (id) ON DELETE CASCADE,
    strategy   text NOT NULL
               CHECK (strategy IN ('new_score', 'best_score', 'most_recent', 'rollback', 'specific')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS deployments_project_idx
    ON pgml.deployments (project_id, created_at DESC, id DESC);

-- Upgrades: CHECKs widened by later versions (PostgresML's tasks clustering and
-- decomposition, its deploy-by-id strategy 'specific', test_sampling 'stratified'), dropped
-- and added again with the current definition: the same result however often it runs.
ALTER TABLE pgml.projects DROP CONSTRAINT IF EXISTS projects_task_check,
    ADD CONSTRAINT projects_task_check
    CHECK (task IN ('regression', 'classification', 'clustering', 'decomposition'));
ALTER TABLE pgml.snapshots DROP CONSTRAINT IF EXISTS snapshots_test_sampling_check,
    ADD CONSTRAINT snapshots_test_sampling_check
    CHECK (test_sampling IN ('random', 'first', 'last', 'stratified'));
ALTER TABLE pgml.deployments DROP CONSTRAINT IF EXISTS deployments_strategy_check,
    ADD CONSTRAINT deployments_strategy_check
    CHECK (strategy IN ('new_score', 'best_score', 'most_recent', 'rollback', 'specific'));

-- Feature importances, where the model has them (PostgresML's column name).
ALTER TABLE pgml.models ADD COLUMN IF NOT EXISTS feature_importances jsonb;

-- Views, with PostgresML's column names (runtime added at the end).
CREATE OR REPLACE VIEW pgml.overview AS
SELECT p.name, d.created_at AS deployed_at, p.task, m.algorithm, s.relation_name,
       s.y_column_name, s.test_sampling, s.test_size, m.runtime
  FROM pgml.projects p
  JOIN pgml.models m ON p.id = m.project_id
  JOIN pgml.deployments d ON d.project_id = p.id AND d.model_id = m.id
  LEFT JOIN pgml.snapshots s ON s.id = m.snapshot_id
 ORDER BY d.created_at DESC, d.id DESC;

CREATE OR REPLACE VIEW pgml.trained_models AS
SELECT m.id, p.name, p.task, m.algorithm, m.created_at, s.test_sampling, s.test_size,
       d.model_id IS NOT NULL AS deployed, m.runtime
  FROM pgml.projects p
  JOIN pgml.models m ON p.id = m.project_id
  LEFT JOIN pgml.snapshots s ON s.id = m.snapshot_id
  LEFT JOIN (SELECT DISTINCT ON (project_id) project_id, model_id
               FROM pgml.deployments
              ORDER BY project_id, created_at DESC, id DESC) d ON d.model_id = m.id
 ORDER BY m.created_at DESC, m.id DESC;

CREATE OR REPLACE VIEW pgml.deployed_models AS
SELECT m.id, p.name, p.task, m.algorithm, d.created_at AS deployed_at, m.runtime
  FROM pgml.projects p
  JOIN (SELECT DISTINCT ON (project_id) project_id, model_id, created_at
          FROM pgml.deployments
         ORDER BY project_id, created_at DESC, id DESC) d ON d.project_id = p.id
  JOIN pgml.models m ON m.id = d.model_id
 ORDER BY p.name;
