-- Scoring at scale (inference/bulk.py, inference/tree_graph.py): exporting a deployed model's
-- ONNX graph, and scoring a whole relation into a new table in one call.

-- The deployed model's ONNX bytes: 'default' is the graph that scores single rows (may use
-- ai.onnx.ml operators), 'tensor' the tree models' default-domain graph that runs on a GPU.
CREATE OR REPLACE FUNCTION pgml.export_onnx(project_name text, graph text DEFAULT 'default')
RETURNS bytea LANGUAGE plpython3u STABLE STRICT AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].export_onnx(project_name, graph)
$$;

-- Every row of relation_name scored by the project's deployed model, written into the new
-- table "into": the key columns, prediction, and probabilities (float8[]) for classifiers.
-- Returns the number of rows written. Runs in the calling transaction.
CREATE OR REPLACE FUNCTION pgml.predict_relation(project_name text, relation_name text,
                                                 key_columns text[], "into" text)
RETURNS bigint LANGUAGE plpython3u VOLATILE AS $$
if "pgml" not in GD: plpy.execute("SELECT pgml._bootstrap()")
return GD["pgml"].predict_relation(project_name, relation_name, key_columns, into)
$$;

-- A float8[]'s bytes as they are in memory (ndim, data offset, element type, dimensions, lower
-- bounds, then the values in the server's byte order), for the loaders in inference/relations.py:
-- numpy reads pgml._float8_array_bytes(array_agg(x)) in place, which costs ~30% less backend
-- CPU than string_agg(float8send(x)) (no send call per value). The built-in varchar length
-- coercion with typmod -1 returns its argument unchanged; declared over float8[] it hands the
-- array's varlena to PL/Python as bytea. Superuser-only to create, like the plpython3u functions.
CREATE OR REPLACE FUNCTION pgml._float8_array_bytes(float8[], int4 DEFAULT -1, bool DEFAULT false)
RETURNS bytea LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE AS 'varchar';
