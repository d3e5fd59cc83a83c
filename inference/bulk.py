"""pgml.predict_relation: score every row of a relation into a new table, without per-row calls.

Three steps, each one statement inside the caller's transaction (so an error, or a rollback,
leaves no table behind, and the relation is read as the caller sees it -- uncommitted rows
included -- which a second, loopback connection could not do):

1. Read. One scan returns the key columns (their send bytes for step 3's COPY, or text
   arrays for the array path) and every feature column as one bytea of big-endian float8 (``string_agg(float8send(col::float8))``, NULL as NaN),
   which numpy reads without a Python object per value -- the loader training uses
   (relations.py: 0.7 s for 1M x 11 columns against 1.37 s for psycopg binary COPY over a
   loopback connection, measured on this box). All aggregates run in the one scan, so key i
   and feature row i are the same row.
2. Score in batches of BATCH_ROWS rows through the deployed model's Scorer (``predict`` with
   the threads Postgres allows one query, as predict_batch; on a CUDA box the RoutedScorer
   sends these batches to the tensor graph) -- or, for XGBoost and LightGBM on the CPU, through
   the stored native pipeline, whose own batch predictor is faster than onnxruntime's
   TreeEnsemble kernel, once it has answered like the graph on the batch's first rows
   (``native_scorer``).
3. Write. CREATE TABLE into (keys, prediction float8[, probabilities float8[]]), then one
   binary COPY FROM a file this backend writes: copybin builds the stream with numpy (the
   key columns travel as their type's own send bytes, read in step 1 with
   ``string_agg(<typsend>(key))`` and their lengths, so a key of any type, NULL or not, goes
   back byte for byte with no Python object per row). Measured for 1M rows on the dev box:
   0.2 s of backend CPU against 1.2-1.3 s for the array-parameter form below. COPY FROM a
   server file needs a role that may read server files (superuser, pg_read_server_files);
   for any other role, or with ``SET pgml.bulk_copy = off``, the results go in as before:
   ``CREATE TABLE into AS SELECT ... FROM unnest($1, $2, ...)``, one array parameter per
   column (keys as text, cast back).

Read, measured: 0.55-0.65 s of backend CPU for 1M x 10 float8 (per value, float8send and
string_agg's append); binary COPY of the same table to a server file costs the same 0.5 s
(the same send functions), and psycopg over a loopback connection adds the socket -- and
could not see the caller's uncommitted rows. Scoring (XGBoost 100 trees depth 6, its own
predictor) is 0.8-0.9 s of CPU per 1M rows on one thread; compiled trees (routing.py) 1.3 s.

Names: the relation through to_regclass (relations.resolve), key columns checked against its
columns and quoted; ``into`` may be schema-qualified (``schema.table``, each part quoted) and
must not exist.
"""

from __future__ import annotations

import numpy as np
import plpy

from inference import deployed, relations, store
from inference.errors import InvalidData, PgmlError, UnknownColumn

BATCH_ROWS = 262_144


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
    n, key_values, X = _read(source, [cols[k] for k in keys], [cols[f] for f in features],
                             categories, sent=by_copy)
    if encoding:  # text columns were read as codes: the model's encoded features
        from inference.encoding import apply

        values = apply(model.encoding, {f: X[:, j] for j, f in enumerate(features)})
        X = relations.gather(values, encoded, np.arange(n))
    read = clock.lap()
    prediction = np.empty(n)
    proba = np.empty((n, len(scorer.classes))) if scorer.has_proba and n else None
    native = native_scorer(model.model_id, scorer, X, threads)
    LAST_RUN.clear()
    LAST_RUN.update(model_id=model.model_id, rows=n, scored_by=_scored_by(scorer, native, n),
                    written_by="copy" if by_copy else "arrays")
    for start in range(0, n, BATCH_ROWS):
        part = X[start:start + BATCH_ROWS]
        if native is not None:
            prediction[start:start + len(part)] = native.predict(part)
            if proba is not None:
                proba[start:start + len(part)] = native.predict_proba(part)
            continue
        prediction[start:start + len(part)] = scorer.predict(part, threads=threads)
        if proba is not None:
            proba[start:start + len(part)] = scorer.predict_proba(part)
    score = clock.lap()
    if by_copy:
        _write_copy(into, [cols[k] for k in keys], key_values, prediction, proba)
    else:
        _write(into, [cols[k] for k in keys], key_values, prediction, proba)
    LAST_RUN["seconds"] = {"read": read, "score": score, "write": clock.lap()}
    return n


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


def native_scorer(model_id: int, scorer, X: np.ndarray, threads: int):
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

    if len(X) < NATIVE_MIN_ROWS or getattr(scorer, "cuda", False) or scorer.runtime != "onnx":
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
    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    inner = getattr(final, "estimator_", final)
    if type(inner).__name__ not in NATIVE_BULK:
        return None
    if "n_jobs" in inner.get_params():
        inner.set_params(n_jobs=max(1, int(threads)))
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


def _final_name(pipeline) -> str:
    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    return type(getattr(final, "estimator_", final)).__name__


def _read(source: str, keys, features, categories: dict[str, list[str]] | None = None,
          sent: bool = False) -> tuple[int, list, np.ndarray]:
    """One scan: features as float8 bytes (a text column as its codes: NULL 0, a known value
    its 1-based place in ``categories``, an unknown one NaN); keys as arrays, or, ``sent``,
    as their type's send output ready for binary COPY (copybin.sent_field: no Python object
    per key, any type)."""
    parts = ["count(*)::int8 AS n"]
    raw = relations.raw_arrays()
    for i, k in enumerate(keys):
        name = plpy.quote_ident(k.name)
        if not sent:
            parts.append(f"array_agg({name}::text) AS k{i}")
            continue
        send, width = _send_function(k)
        parts.append(f"string_agg({send}({name}), ''::bytea) AS k{i}")
        if width > 0:  # a fixed-width type: each length is a constant (or NULL's -1)
            size = width.to_bytes(4, "big").hex()
            parts.append(f"string_agg(CASE WHEN {name} IS NULL THEN '\\xffffffff'::bytea"
                         f" ELSE '\\x{size}'::bytea END, ''::bytea) AS l{i}")
        else:
            parts.append(f"string_agg(int4send(coalesce(octet_length({send}({name})), -1)),"
                         f" ''::bytea) AS l{i}")
    params: list[list[str]] = []
    for i, c in enumerate(features):
        value = plpy.quote_ident(c.name)
        if categories and c.name in categories:
            params.append(list(categories[c.name]))
            value = (f"(CASE WHEN {value} IS NULL THEN 0 ELSE array_position(${len(params)}"
                     f"::text[], {value}::text) END)::float8")
        else:
            value = f"{value}::int::float8" if c.base_oid == 16 else f"{value}::float8"
        parts.append(f"{relations.float8_column_sql(value, raw)} AS c{i}")
    sql = f"SELECT {', '.join(parts)} FROM {source}"  # noqa: S608 - quoted
    row = (plpy.execute(plpy.prepare(sql, ["text[]"] * len(params)), params) if params
           else plpy.execute(sql))[0]
    n = row["n"]
    X = np.empty((n, len(features)), dtype=np.float64)
    for i in range(len(features)):
        if n:
            X[:, i] = relations.float8_column(row[f"c{i}"], n, raw)
    if sent:
        from inference import copybin

        return n, [copybin.sent_field(np.frombuffer(row[f"l{i}"] or b"", dtype=">i4"),
                                      row[f"k{i}"] or b"") for i in range(len(keys))], X
    return n, [row[f"k{i}"] or [] for i in range(len(keys))], X


def _send_function(column) -> tuple[str, int]:
    """The key column's type's binary send function, as SQL (regproc quotes it if needed), and
    the byte width of its send output where that is fixed (else 0): a domain's is its base
    type's, and its recv function reads the bytes back in the new table."""
    found = store.query(
        "SELECT typsend::regproc::text AS f, CASE WHEN typtype <> 'e'"  # an enum sends its label
        " AND (typbyval OR oid = ANY ('{uuid,macaddr,interval,point,timetz}'::regtype[]))"
        " THEN typlen ELSE 0 END::int AS w FROM pg_type WHERE oid = $1::oid",
        ("int8",), (column.base_oid,))
    return found[0]["f"], found[0]["w"]


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


def _target(into: str) -> str:
    """``into`` as quoted SQL: 'name' or 'schema.name' (a dot inside a name: quote it)."""
    found = store.query("SELECT parse_ident($1) AS parts", ("text",), (into,))
    parts = found[0]["parts"]
    if len(parts) > 2:
        raise PgmlError(f"into {into!r} must be a table name, optionally schema-qualified")
    return ".".join(plpy.quote_ident(p) for p in parts)


def _write_copy(into: str, keys, key_fields, prediction: np.ndarray,
                proba: np.ndarray | None) -> None:
    """CREATE TABLE into, then one binary COPY FROM a file this backend writes (in a private
    directory of its own, removed after): the stream built by copybin from the key columns'
    own send bytes, the predictions and the probabilities."""
    import os
    import shutil
    import tempfile

    from inference import copybin

    columns = [f"{plpy.quote_ident(k.name)} {k.pg_type}" for k in keys]
    columns.append("prediction float8")
    if proba is not None:
        columns.append("probabilities float8[]")
    target = _target(into)
    plpy.execute(f"CREATE TABLE {target} ({', '.join(columns)})")
    n = len(prediction)
    if not n:
        return
    fields = [*key_fields, copybin.float8_field(prediction)]
    if proba is not None:
        fields.append(copybin.float8_array_field(proba))
    folder = tempfile.mkdtemp(prefix="pgml-bulk-")
    try:
        path = os.path.join(folder, "rows.copy")
        with open(path, "wb") as out:
            copybin.write(out, n, fields)
        plpy.execute(f"COPY {target} FROM {plpy.quote_literal(path)} (FORMAT binary)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write(into: str, keys, key_values, prediction: np.ndarray, proba: np.ndarray | None):
    """The path without COPY: every column as one array parameter of CREATE TABLE AS ...
    unnest. Keys travel as their text form and are cast back (exact for every type, and an
    array-typed key stays one value per row, which unnest of an array of arrays would not)."""
    names = [plpy.quote_ident(k.name) for k in keys] + ["prediction"]
    types = ["text[]" for _ in keys] + ["float8[]"]
    args = [*key_values, prediction.tolist()]
    select = [f"{n}::{k.pg_type} AS {n}" for n, k in zip(names, keys, strict=False)]
    select.append("prediction")
    if proba is not None:
        classes = [f"p{j}" for j in range(proba.shape[1])]
        names += classes
        types += ["float8[]"] * len(classes)
        args += [proba[:, j].tolist() for j in range(proba.shape[1])]
        select.append(f"ARRAY[{', '.join(classes)}]::float8[] AS probabilities")
    params = ", ".join(f"${i + 1}" for i in range(len(args)))
    plan = plpy.prepare(
        f"CREATE TABLE {_target(into)} AS SELECT {', '.join(select)}"  # noqa: S608 - quoted
        f" FROM unnest({params}) AS t({', '.join(names)})", types)
    plpy.execute(plan, args)
