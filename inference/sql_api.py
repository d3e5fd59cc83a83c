"""What the pgml SQL functions call: one entry point per function of sql/20_pgml_api.sql.

Runs only inside PL/Python (``import plpy``). An adapter and nothing more: it turns SQL
arguments into Python values (jsonb text into objects, predict_batch's array into numpy),
calls the module that does the work -- projects.py (train, snapshot, deploy), deployed.py
(the model to score with), datasets.py -- and turns what comes back into SQL results.

Imports: only what the per-row path needs (no numpy, no projects.py and what it loads): a
brand-new backend's first pgml.predict pays for the imports it makes (#1175); the other entry
points import their modules inside.

Errors: every library error (inference.errors) becomes a PostgreSQL error with the SQLSTATE
its class carries and its message as written; nothing here decides a code. Because
everything a function writes happens in the calling statement, an error leaves nothing
behind.
"""

from __future__ import annotations

import json
import struct
import sys

from inference import deployed, store
from inference.errors import InvalidData, PgmlError
from inference.sql_entry import _entry, _json, _raise

# The entry points of sql/40_pgml_scale.sql and sql/50_history.sql live in their own modules;
# the SQL wrappers reach every entry point through this module (GD["pgml"]).
from inference.sql_history import (  # noqa: F401
    history_as_of,
    history_compact,
    history_info,
    history_point_in_time,
)
from inference.sql_scale import export_onnx, predict_relation, runtime_info  # noqa: F401

# -- installation --------------------------------------------------------------------------


def environment() -> str:
    """Where PL/Python found the package and the versions it loaded (checked by the installer).

    Imports the scoring and training stacks (numpy, onnxruntime, scikit-learn) -- the check
    that the path works; the other libraries are only looked up, to keep the check quick.
    """
    import importlib.metadata
    import os

    import numpy
    import onnxruntime
    import sklearn

    import inference
    from inference import runtime, training  # noqa: F401 - importing them is the check

    versions = {"numpy": numpy.__version__, "sklearn": sklearn.__version__,
                "onnxruntime": onnxruntime.__version__}
    for dist in ("onnx", "skl2onnx", "onnxmltools", "xgboost", "lightgbm", "catboost"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return json.dumps({"inference": os.path.dirname(inference.__file__),
                       "python": sys.version.split()[0], "versions": versions})


# -- training and deployment ---------------------------------------------------------------


@_entry
def train(project_name, task, relation_name, y_column_name, algorithm, hyperparams, search,
          search_params, search_args, test_size, test_sampling, automatic_deploy, preprocess,
          joint=False, materialize_snapshot=False):
    from inference import projects

    return [projects.train(project_name, task, relation_name, y_column_name, algorithm,
                           _json(hyperparams), search, _json(search_params), _json(search_args),
                           test_size, test_sampling, automatic_deploy, _json(preprocess),
                           joint=joint, materialize_snapshot=bool(materialize_snapshot))]


@_entry
def snapshot(relation_name, y_column_name, test_size, test_sampling):
    if not y_column_name:
        raise PgmlError("y_column_name must name a column")
    from inference import projects

    snap, _, _ = projects.take_snapshot(relation_name, [y_column_name], test_size, test_sampling)
    return [(snap.relation_name, y_column_name, snap.id, snap.table)]


@_entry
def deploy(project_name, strategy, algorithm_name):
    from inference import projects

    return [projects.deploy(project_name, strategy, algorithm_name)]


@_entry
def deploy_model(model_id):
    from inference import projects

    return [projects.deploy_model(model_id)]


@_entry
def load_dataset(source, subset=None, limit=None, kwargs=None):
    from inference import datasets

    return [datasets.load(source, subset, limit, _json(kwargs))]


# -- scoring -------------------------------------------------------------------------------


def predict(project_name, features, statement_key):
    """The per-row hot path: a dict lookup and Scorer.predict_one on PL/Python's list."""
    try:
        model = deployed.for_statement(project_name, statement_key)
        if model.joint:
            if model.scorer.task == "decomposition":  # PostgresML's example calls predict too
                return _joint(model, features)[0]
            raise PgmlError(f"project {project_name!r} is a joint model; use pgml.predict_joint")
        if features and type(features[0]) is list:  # a multi-dimensional array (an image)
            features = _flat(features)
        return model.scorer.predict_one(features)
    except PgmlError as exc:
        _raise(exc)


@_entry
def predict_proba(project_name, features, statement_key):
    model = deployed.for_statement(project_name, statement_key)
    return _proba(model, features)


@_entry
def predict_joint(project_name, features, statement_key):
    model = deployed.for_statement(project_name, statement_key)
    if not model.joint:
        raise PgmlError(f"project {project_name!r} is not a joint model; use pgml.predict")
    return _joint(model, features)


@_entry
def predict_batch(project_name, features: bytes, statement_key):
    model = deployed.for_statement(project_name, statement_key)
    if model.joint:
        raise PgmlError(f"project {project_name!r} is a joint model; use pgml.predict_joint")
    return _batch(model, features)


def _batch(model, features: bytes):
    scorer = model.scorer
    values = float8_array(features)
    if values.size % scorer.n_features:
        raise InvalidData(f"predict_batch got {values.size} values, which is not a whole number "
                          f"of rows of {scorer.n_features} features")
    if not values.size:
        return []
    rows = values.reshape(-1, scorer.n_features)
    threads = _batch_threads(len(rows))
    from inference import bulk

    if len(rows) >= bulk.NATIVE_MIN_ROWS:  # XGBoost/LightGBM: their own batch predictor
        native = bulk.batch_scorer(model, rows, threads)
        if native is not None:
            return native.predict(rows).astype("float64").tolist()
    return scorer.predict(rows, threads=threads).tolist()


def _batch_threads(n_rows: int) -> int:
    """Threads a large predict_batch may use: Postgres' own parallelism setting for one query
    (max_parallel_workers_per_gather workers plus the leader), capped by the cores at hand in
    runtime; set it to 0 to keep batches on one thread. Small batches do not ask."""
    from inference.runtime import PARALLEL_MIN_ROWS

    if n_rows < PARALLEL_MIN_ROWS:
        return 1
    found = store.query("SELECT current_setting('max_parallel_workers_per_gather')::int AS n")
    return found[0]["n"] + 1


@_entry
def model_predict(model_id, features):
    model = deployed.loaded(model_id)
    if model.joint:
        raise PgmlError(f"model {model_id} is a joint model; use pgml.predict_joint")
    if features and type(features[0]) is list:
        features = _flat(features)
    return model.scorer.predict_one(features)


@_entry
def model_predict_proba(model_id, features):
    return _proba(deployed.loaded(model_id), features)


@_entry
def model_predict_joint(model_id, features):
    model = deployed.loaded(model_id)
    if not model.joint:
        raise PgmlError(f"model {model_id} is not a joint model; use pgml.predict")
    return _joint(model, features)


@_entry
def model_predict_batch(model_id, features: bytes):
    model = deployed.loaded(model_id)
    if model.joint:
        raise PgmlError(f"model {model_id} is a joint model; use pgml.predict_joint")
    return _batch(model, features)


@_entry
def predict_row(project_name, row, statement_key):
    """pgml.predict(project, (col, col, ...)): a heterogeneous row, fields in feature order."""
    model = deployed.for_statement(project_name, statement_key)
    return model.scorer.predict_one(_encoded_row(model, row))


@_entry
def model_predict_row(model_id, row):
    model = deployed.loaded(model_id)
    return model.scorer.predict_one(_encoded_row(model, row))


@_entry
def predict_label(project_name, features, statement_key, row=False):
    """pgml.predict_label: the predicted class as text -- a text label's own value (the
    number pgml.predict returns is its code, as in PostgresML), else the number as text."""
    model = deployed.for_statement(project_name, statement_key)
    if row:
        features = _encoded_row(model, features)
    elif features and type(features[0]) is list:
        features = _flat(features)
    value = model.scorer.predict_one(features)
    categories = (model.encoding or {}).get("label_categories")
    if categories is not None:
        from inference.encoding import label

        return label(categories, value)
    return str(int(value)) if value == value and float(value).is_integer() else repr(value)


def _encoded_row(model, row) -> list:
    """A row's fields as the model's features: text categoricals through the stored maps."""
    inputs = (model.encoding or {}).get("inputs")
    if not inputs:
        return _row_features(row)
    from inference.encoding import encode_row

    row = json.loads(row) if isinstance(row, str) else row
    fields = list(row.values()) if isinstance(row, dict) else row if isinstance(row, list) else [row]
    return encode_row(model.encoding, fields)


@_entry
def decompose(project_name, features, statement_key):
    """pgml.decompose: the deployed decomposition model's components for one vector."""
    model = deployed.for_statement(project_name, statement_key)
    return _joint(model, features)


def _proba(model, features) -> list[float]:
    return model.scorer.predict_proba(_matrix(features))[0].tolist()


def _joint(model, features) -> list[float]:
    import numpy as np

    return np.asarray(model.scorer.predict(_matrix(features))).reshape(-1).tolist()


def _matrix(features):
    """One row of features as a 1 x n matrix; a multi-dimensional array is flattened."""
    import numpy as np

    return np.array(features, dtype=np.float64).reshape(1, -1)


def _flat(nested) -> list:
    out = []
    for item in nested:
        if type(item) is list:
            out += _flat(item)
        else:
            out.append(item)
    return out


def _row_features(row) -> list:
    """A record's fields as numbers in order (arrays flattened, booleans as 0/1, NULL as None).

    A model trained on text columns goes through _encoded_row instead; here a text value
    is refused."""
    row = json.loads(row) if isinstance(row, str) else row
    values = row.values() if isinstance(row, dict) else row if isinstance(row, list) else [row]
    out = []
    for value in values:
        if type(value) is list:
            out += _flat(value)
        elif isinstance(value, str):
            raise InvalidData(f"the row has a text value {value!r}; this model takes numbers only")
        else:
            out.append(value)
    return [float(v) if isinstance(v, bool) else v for v in out]


def forget_deployments() -> None:
    """The pgml_forget_deployments trigger: pgml.deployments changed in this backend."""
    deployed.forget_deployments()


# -- arguments -----------------------------------------------------------------------------


def float8_array(buf: bytes):
    """A float8[] in array_send's binary form as float64 (NULL -> NaN), flattened.

    Layout: ndim, has-nulls flag, element type, (length, lower bound) per dimension, then per
    element an int32 byte length (-1 for NULL) and the big-endian value.
    """
    import numpy as np

    ndim, has_nulls, _ = struct.unpack_from(">iiI", buf, 0)
    if ndim == 0:
        return np.empty(0)
    dims = struct.unpack_from(f">{2 * ndim}i", buf, 12)[0::2]
    n = int(np.prod(dims))
    start = 12 + 8 * ndim
    if not has_nulls:  # fixed stride of 12 bytes: read the values in place
        return np.ndarray((n,), dtype=">f8", buffer=buf, offset=start + 4,
                          strides=(12,)).astype(np.float64)
    out = np.empty(n)
    pos = start
    for i in range(n):
        (length,) = struct.unpack_from(">i", buf, pos)
        pos += 4
        if length < 0:
            out[i] = np.nan
        else:
            (out[i],) = struct.unpack_from(">d", buf, pos)
            pos += length
    return out
