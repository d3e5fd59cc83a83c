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
