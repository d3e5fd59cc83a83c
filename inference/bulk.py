"""pgml.predict_relation: score every row of a relation into a new table, without per-row calls.

Everything runs inside the caller's transaction (so an error, or a rollback, leaves no table
behind, and the relation is read as the caller sees it -- uncommitted rows included -- which a
second, loopback connection could not do), in chunks of rows that overlap
(bulk_pipeline.py): while a worker thread scores chunk k, the backend reads chunk k+1 and
writes chunk k-1.

1. Read (bulk_read.py). One SPI cursor, so one snapshot, returns one row per chunk of heap
   blocks: the key columns (their send bytes for the COPY, or text arrays for the array
   path) and every feature column as one bytea of float8 (NULL as NaN) that numpy reads
   without a Python object per value -- the loader training uses (relations.py).
2. Score each chunk in the worker thread (``predict`` with the threads Postgres allows one
   query, less the one reading). Which scorer: the model's compiled trees where it has them
   (routing: the same C library that answers per-row pgml.predict, so bulk and per-row
   answers are the same numbers; 0.72-0.74 s of CPU per 1M rows against 0.85-0.86 s for
   XGBoost's own predictor in the same backend, and one GIL-free call per chunk); else, for
   XGBoost and LightGBM on the CPU, the stored native pipeline, faster than onnxruntime's
   TreeEnsemble kernel, once it has answered like the graph on the first chunk's first rows
   (``native_scorer``); else the ONNX scorer (on a CUDA box the RoutedScorer sends large
   batches to the tensor graph). The scorer is chosen, and anything it loads is loaded, in
   the backend's thread before the worker starts: the worker never calls plpy.
3. Write (bulk_write.py). CREATE TABLE into (keys, prediction float8[, probabilities
   float8[]]), then per chunk a binary COPY FROM a file built with copybin (keys byte for
   byte, any type) by the backend's thread, between reads (bulk_pipeline: "The GIL"); or, for a role that may not read server files or with ``SET
   pgml.bulk_copy = off``, one CREATE TABLE AS ... unnest of array parameters at the end.

With ``max_parallel_workers_per_gather = 0`` (one thread per query) the same chunks go
through the same steps one after another, without the worker.

Measured for 1M rows x 10 float8 + an int8 key, XGBoost 100 trees depth 6, backend CPU:
read 0.31 s, score 0.72 s (compiled trees), write 0.16 s + 0.04 s building the files; 1.27 s
in all against 1.80 s before the chunks, and 0.78 s wall on the 2-core box at load ~4.5
(docs/benchmarks.md, "Scoring at scale").

Names: the relation through to_regclass (relations.resolve), key columns checked against its
columns and quoted; ``into`` may be schema-qualified (``schema.table``, each part quoted) and
must not exist.
"""

from __future__ import annotations

import itertools

import numpy as np

from inference import bulk_pipeline, bulk_read, bulk_write, deployed, relations, store
from inference.errors import InvalidData, PgmlError, UnknownColumn
from inference.rows import feature_rows


def predict_relation(project_name: str, relation_name: str, key_columns: list[str] | None,
                     into: str, threads: int = 1) -> int:
    """Rows written into the new table ``into``: the key columns, prediction[, probabilities]."""
    if not into:
        raise PgmlError("into must name the table to create")
    model = deployed.loaded(store.deployed_model(project_name))
    if model.joint:
        raise PgmlError(f"project {project_name!r} is a joint model; predict_relation "
                        "writes one prediction per row")
    scorer = model.scorer
    # compiled trees (routing.CompiledScorer) score small batches as pgml.predict does and
    # hand large ones to the ONNX scorer, which also knows the feature names
    named = scorer.onnx if getattr(scorer, "graph", None) == "compiled" else scorer
    features = getattr(named, "feature_names", None)
    if not features:
        raise PgmlError("the deployed model does not record its feature names; retrain it")
    oid, source = relations.resolve(relation_name)
    cols = {c.name: c for c in relations.columns(oid)}
    keys = list(key_columns or [])
    encoding = (model.encoding or {}).get("inputs")
    encoded, features = features, [e["name"] for e in encoding] if encoding else features
    categories = {e["name"]: e["categories"] for e in encoding or () if "encode" in e}
    for name in [*keys, *features]:
        if name not in cols:
            role = "key column" if name in keys else "feature column"
            raise UnknownColumn(f"{role} {name!r} does not exist in {relation_name}; its "
                                f"columns are: {', '.join(cols)}")
    for name in features:
        if cols[name].base_oid not in relations.NUMERIC_TYPES and name not in categories:
            raise InvalidData(f"feature column {name!r} of {relation_name} has type "
                              f"{cols[name].pg_type}, which is not numeric")
    if set(keys) & {"prediction", "probabilities"} or len(set(keys)) != len(keys):
        raise PgmlError("key_columns must be distinct and not named prediction or probabilities")

    clock = _Clock()
    by_copy = copy_allowed()
    key_cols, feature_cols = [cols[k] for k in keys], [cols[f] for f in features]
    classes = len(scorer.classes) if scorer.has_proba else 0
    writer = (bulk_write.CopyWriter if by_copy else bulk_write.ArrayWriter)(into, key_cols,
                                                                           classes)
    try:
        steps = _score_chunks(model, scorer, source, oid, key_cols, feature_cols, categories,
                              encoded if encoding else None, writer, threads, by_copy)
        with bulk_pipeline.Timed(steps, "write"):
            writer.finish()
    finally:
        writer.close()
    LAST_RUN["seconds"] = {**steps.report(), "total": clock.lap()}
    LAST_RUN["chunks"] = steps.chunks
    return LAST_RUN["rows"]


def _score_chunks(model, scorer, source: str, oid: int, key_cols, feature_cols, categories,
                  encoded: list[str] | None, writer, threads: int, by_copy: bool):
    """Read, score and write every chunk (bulk_pipeline), the scorer chosen on the first chunk
    in this thread: nothing the worker thread runs may touch plpy or load a model file."""
    steps = bulk_pipeline.Steps()
    cuda = getattr(scorer, "cuda", False)  # a compiled scorer asks (and loads) here
    compiled = getattr(scorer, "graph", None) == "compiled" and not cuda
    blocks = bulk_read.plan_blocks(oid, source, bulk_read.chunk_rows(len(feature_cols)))
    # compiled trees take float32 (per-row pgml.predict packs the same floats): converted
    # while reading, so the worker's only step is the library call
    chunks = bulk_read.read(source, key_cols, feature_cols, categories, sent=by_copy,
                            blocks=blocks, dtype=np.float32 if compiled else np.float64)
    names = [c.name for c in feature_cols]

    from inference.encoding import apply  # imported here: the worker only calls it

    def features(chunk) -> np.ndarray:
        if encoded is None:
            return chunk.X
        # text columns were read as codes: the model's encoded features
        values = apply(model.encoding, {f: chunk.X[:, j] for j, f in enumerate(names)})
        return relations.gather(values, encoded, np.arange(chunk.n))

    with bulk_pipeline.Timed(steps, "read"):
        first = next(chunks, None)
    native = None
    with bulk_pipeline.Timed(steps, "check"):
        if first is not None and not compiled:  # compiled trees first, else native
            expected = max(blocks.rows if blocks is not None else 0, first.n)
            native = native_scorer(model.model_id, scorer, features(first), threads,
                                   rows=expected)
    counted = [0]

    def score(chunk, n_threads: int):
        X = features(chunk)
        counted[0] += chunk.n
        if native is not None:
            _set_threads(native, n_threads)
            prediction = np.asarray(native.predict(X), dtype=np.float64)
            return prediction, (native.predict_proba(X) if scorer.has_proba else None)
        if compiled:  # the library itself, as CompiledScorer.predict / predict_proba use it
            out, labels = scorer.trees.rows(feature_rows(X, scorer.n_features), n_threads)
            if scorer.has_proba:  # one pass gives both
                return scorer.classes[labels], out
            return out.reshape(-1), None
        prediction = np.asarray(scorer.predict(X, threads=n_threads), dtype=np.float64)
        return prediction, (scorer.predict_proba(X) if scorer.has_proba else None)

    LAST_RUN.clear()
    LAST_RUN.update(model_id=model.model_id, rows=0, written_by="copy" if by_copy else "arrays",
                    scored_by=_scored_by(scorer, native, first.n if first is not None else 0))
    if first is not None:
        bulk_pipeline.run(itertools.chain([first], chunks), score, writer.prepare,
                          writer.write, threads=threads, steps=steps,
                          overlap=blocks is not None, prepare_here=True)
    LAST_RUN["rows"] = counted[0]
    return steps


class _Clock:
    """Wall and process CPU seconds (all threads) of each step, for pgml.runtime_info."""

    def __init__(self):
        import time

        self._time = time
        self._last = (time.perf_counter(), time.process_time())

    def lap(self) -> dict:
        now = (self._time.perf_counter(), self._time.process_time())
        wall, cpu = (round(a - b, 4) for a, b in zip(now, self._last, strict=True))
        self._last = now
        return {"wall": wall, "cpu": cpu}


def _scored_by(scorer, native, n: int) -> str:
    if native is not None:
        return f"native {_final_name(native)}"
    if getattr(scorer, "graph", None) == "compiled":
        import sys

        # below its module's COMPILED_MAX_ROWS a compiled scorer answers with the compiled trees
        if n < getattr(sys.modules.get(type(scorer).__module__), "COMPILED_MAX_ROWS", 0):
            return "compiled"
    return "onnx"


# Estimators whose own batch predictor beats onnxruntime's TreeEnsemble kernel on the CPU
# (XGBoost's inplace_predict ~5x on a 100-tree model, docs/benchmarks.md): bulk scoring uses
# the stored native pipeline for them, after checking it answers like the served graph.
NATIVE_BULK = ("XGBRegressor", "XGBClassifier", "XGBRFRegressor", "XGBRFClassifier",
               "LGBMRegressor", "LGBMClassifier")
LAST_RUN: dict = {}  # what scored this backend's last predict_relation (pgml.runtime_info)
NATIVE_MIN_ROWS = 20_000  # below this, loading the pickle costs more than it saves
CHECK_ROWS = 2_000
_PIPELINES: dict = {}  # model id -> its unpickled pipeline (a model's files never change)


def batch_scorer(model, X: np.ndarray, threads: int):
    """What scores a large pgml.predict_batch: the native pipeline (native_scorer) or None."""
    return native_scorer(model.model_id, model.scorer, X, threads)


def native_scorer(model_id: int, scorer, X: np.ndarray, threads: int, rows: int | None = None):
    """The model's native pipeline (model.pkl) for a large batch, or None to use ``scorer``.

    Only where the served graph is the default CPU one (a CUDA-routed scorer keeps its tensor
    graph), the estimator is one of NATIVE_BULK, and the pipeline answers like ``scorer`` on
    the first CHECK_ROWS rows of this very batch -- the bar of training's parity check
    (inference.parity: regression within RTOL of the predictions' scale, labels equal on
    all but MAX_BOUNDARY_FRACTION of the rows, probabilities within PROBA_ATOL). Training
    already checked graph and pipeline on the test split; this re-check on the rows being
    scored costs a few milliseconds and keeps a mismatch from ever reaching a table.
    """
    import pickle

    from inference import parity

    if (len(X) if rows is None else rows) < NATIVE_MIN_ROWS or getattr(scorer, "cuda", False) or scorer.runtime != "onnx":
        return None
    setting = store.query("SELECT current_setting('pgml.native_bulk', true) AS v")[0]["v"]
    if (setting or "on").strip().lower() in ("off", "false", "0"):  # SET pgml.native_bulk = off
        return None
    pipeline = _PIPELINES.get(model_id)
    if pipeline is None:
        data = store.model_file(model_id, "model.pkl")
        if data is None:
            return None
        pipeline = pickle.loads(data)  # noqa: S301 - our own model file, written by pgml.train
        _PIPELINES.clear()  # one model's pipeline at a time: a backend scores one at a time
        _PIPELINES[model_id] = pipeline
    if _final_name(pipeline) not in NATIVE_BULK:
        return None
    _set_threads(pipeline, threads)
    probe = X[:CHECK_ROWS]
    ours, theirs = scorer.predict(probe), np.asarray(pipeline.predict(probe), dtype=np.float64)
    if scorer.classes is None:
        scale = max(float(np.max(np.abs(ours))) if len(ours) else 0.0, 1.0)
        if not np.allclose(theirs, ours, rtol=0, atol=parity.RTOL * scale, equal_nan=True):
            return None
    elif np.mean(theirs != ours) > parity.MAX_BOUNDARY_FRACTION:
        return None
    if scorer.has_proba and not np.allclose(pipeline.predict_proba(probe),
                                            scorer.predict_proba(probe), atol=parity.PROBA_ATOL):
        return None
    return pipeline


def _estimator(pipeline):
    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    return getattr(final, "estimator_", final)


def _final_name(pipeline) -> str:
    return type(_estimator(pipeline)).__name__


def _set_threads(pipeline, threads: int) -> None:
    """The native estimator's n_jobs (XGBoost passes it on to its booster), when it changes."""
    inner = _estimator(pipeline)
    params = inner.get_params()
    if "n_jobs" in params and params["n_jobs"] != max(1, int(threads)):
        inner.set_params(n_jobs=max(1, int(threads)))


def copy_allowed() -> bool:
    """Whether the results go in with COPY FROM a server file (the current role may read
    server files: superuser or pg_read_server_files) -- about 4x cheaper than handing the
    columns over as array parameters, measured -- and ``SET pgml.bulk_copy = off`` has not
    turned it off."""
    found = store.query(
        "SELECT pg_has_role(current_user, 'pg_read_server_files', 'USAGE') AS ok,"
        " current_setting('pgml.bulk_copy', true) AS setting")[0]
    return bool(found["ok"]) and (found["setting"] or "on").strip().lower() not in (
        "off", "false", "0")
