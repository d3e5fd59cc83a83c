"""What the pgml SQL functions call: one entry point per function of sql/20_pgml_api.sql.

Runs only inside PL/Python (``import plpy``). Library errors (inference.errors) become
PostgreSQL errors with a SQLSTATE that says what kind of mistake it was; because everything a
function writes happens in the calling statement, an error leaves nothing behind -- a failed
train rolls back its snapshot table, project, model and deployment rows together.

Scoring cache, and the consistency it gives. ``pgml.predict`` passes the calling statement's
start time (``statement_key``). The first call of a statement looks the deployment up (one
indexed query) and keeps ``(statement_key, scorer)`` per project; later calls of the same
statement reuse it, so a 100k-row SELECT does one lookup, not 100k. A new statement sees a new
key and looks again, so a deployment committed by any session -- or replayed on a physical
standby -- is used from the next statement on; within one statement every row is scored by one
model. Changes to pgml.deployments made in this backend clear the cache at once (trigger). The
loaded models themselves are cached by model id in store.py (model rows never change).
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import plpy

from inference import data, store
from inference.errors import InvalidData, InvalidHyperparams, PgmlError, UnknownAlgorithm

STRATEGIES = ("best_score", "most_recent", "rollback")
SEARCHES = ("grid", "random")

_SQLSTATES = ((InvalidData, "22000"), (UnknownAlgorithm, "22023"), (InvalidHyperparams, "22023"))


def _raise(exc: PgmlError):
    """Re-raise a library error as a PostgreSQL error (message as written, a fitting SQLSTATE)."""
    sqlstate = getattr(exc, "sqlstate", None) or next(
        (code for cls, code in _SQLSTATES if isinstance(exc, cls)), "22023")
    plpy.error(str(exc), sqlstate=sqlstate)


def _entry(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PgmlError as exc:
            _raise(exc)
    return wrapper


def _object(value: str | None, what: str) -> dict:
    parsed = json.loads(value) if value else {}
    if not isinstance(parsed, dict):
        raise PgmlError(f"{what} must be a JSON object like '{{\"key\": 1}}', got {value}")
    return parsed


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
    for dist in ("onnx", "skl2onnx", "onnxmltools", "xgboost", "lightgbm"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return json.dumps({"inference": os.path.dirname(inference.__file__),
                       "python": sys.version.split()[0], "versions": versions})


# -- training ------------------------------------------------------------------------------


@_entry
def train(project_name, task, relation_name, y_column_name, algorithm, hyperparams, search,
          search_params, search_args, test_size, test_sampling, automatic_deploy, preprocess,
          joint=False):
    from inference import algorithms, training

    if not project_name:
        raise PgmlError("project_name must not be empty")
    project = store.project(project_name)
    task = _task(task, project, project_name)
    algorithm = algorithms.canonical_name(algorithm or "linear")
    algorithms.spec(algorithm, task)  # an unknown name fails before any data work
    if joint and task != "regression":
        raise PgmlError("pgml.train_joint trains regression only; use task => 'regression'")
    search = search.strip().lower() if search else None
    if search is not None and search not in SEARCHES:
        raise PgmlError(f"search {search!r} is not one of {', '.join(SEARCHES)}")
    hyperparams = _object(hyperparams, "hyperparams")
    search_params = _object(search_params, "search_params")
    search_args = _object(search_args, "search_args")
    preprocess = _object(preprocess, "preprocess")

    y_columns = _y_columns(y_column_name, joint)
    snap, n, values = _snapshot_for(project, project_name, relation_name, y_columns,
                                    test_size, test_sampling)
    if len(snap.y_column_name) > 1 and not joint:
        raise PgmlError(f"project {project_name!r} has several y columns; use pgml.train_joint")
    for y in snap.y_column_name:
        missing = int(np.isnan(values[y]).sum())
        if missing:
            raise InvalidData(f"y column {y!r} has {missing} NULL value(s); train on a view "
                              f"that filters them out (WHERE {y} IS NOT NULL) or fills them")
    features = snap.features
    train_rows, test_rows = data.split(n, snap.test_size, snap.test_sampling, snap.random_state)
    X_train, X_test = (data.gather(values, features, rows) for rows in (train_rows, test_rows))
    Y_train, Y_test = (data.gather(values, snap.y_column_name, rows)
                       for rows in (train_rows, test_rows))
    if not joint:
        Y_train, Y_test = Y_train.reshape(-1), Y_test.reshape(-1)
    result = training.train(
        task, algorithm, X_train, Y_train, X_test, Y_test,
        feature_names=features, hyperparams=hyperparams, preprocess=preprocess, search=search,
        search_params=search_params, search_args=search_args, joint=joint,
        random_state=snap.random_state)

    if project is None:
        project = store.create_project(project_name, task)
    model_id = store.insert_model(project.id, snap.id, algorithm, len(features), result, search,
                                  search_params, search_args, joint)
    deployed = bool(automatic_deploy) and _beats_deployed(project.id, task, result.metrics)
    if deployed:
        store.deploy(project.id, model_id, "new_score")
    return [(project.name, task, algorithm, "deployed" if deployed else "not deployed")]


def _task(task: str | None, project: store.Project | None, name: str) -> str:
    from inference.algorithms import normalize_task

    if task is None:
        if project is None:
            raise store.UnknownProject(
                f"project {name!r} does not exist yet; its first pgml.train needs task, "
                "relation_name and y_column_name")
        return project.task
    task = normalize_task(task)
    if project is not None and task != project.task:
        raise PgmlError(f"project {name!r} is a {project.task} project, not {task}; "
                        "train under a new project name")
    return task


def _y_columns(y_column_name, joint: bool) -> list[str] | None:
    if y_column_name is None:
        return None
    y = list(y_column_name) if joint else [y_column_name]
    if not y or any(not c for c in y):
        raise PgmlError("y_column_name must name at least one column")
    return y


def _snapshot_for(project, project_name, relation_name, y_columns, test_size, test_sampling):
    """A new snapshot when relation_name is given, else the project's latest, reloaded."""
    previous = store.project_snapshot(project.id) if project else None
    if relation_name is None:
        if previous is None:
            raise store.UnknownProject(
                f"project {project_name!r} has no snapshot yet; its first pgml.train needs "
                "relation_name and y_column_name")
        if y_columns and y_columns != previous.y_column_name:
            raise PgmlError(
                f"y_column_name {y_columns} differs from the project's snapshot "
                f"({previous.y_column_name}); pass relation_name to take a new snapshot")
        try:
            oid, _ = data.resolve(previous.table)
        except data.UnknownRelation:
            raise data.UnknownRelation(
                f"the snapshot table {previous.table} of project {project_name!r} was dropped; "
                "pass relation_name to take a new snapshot") from None
        n, values = data.load(previous.table, data.columns(oid))
        return previous, n, values
    if not y_columns:
        if previous is None:
            raise PgmlError("y_column_name is required for the first pgml.train of a project")
        y_columns = previous.y_column_name
    return _take_snapshot(relation_name, y_columns, test_size, test_sampling)


def _take_snapshot(relation_name, y_columns, test_size, test_sampling):
    oid, source = data.resolve(relation_name)
    cols = data.columns(oid)
    data.check_columns(source, cols, y_columns)
    fraction = data.test_fraction(test_size)
    sampling = data.check_sampling(test_sampling)
    meta = [{"name": c.name, "pg_type": c.pg_type, "position": c.position,
             "nullable": c.nullable, "label": c.name in y_columns} for c in cols]
    snap = store.new_snapshot(source, y_columns, fraction, sampling, meta)
    data.materialize(snap, source, cols)
    n, values = data.load(snap.table, cols)
    store.finish_snapshot(snap.id, n, data.analyze(values))
    return snap, n, values


def _beats_deployed(project_id: int, task: str, metrics: dict) -> bool:
    """Automatic deployment: no model deployed yet, or a strictly better key metric."""
    from inference.training import key_metric

    current = store.current_deployment(project_id)
    if current is None:
        return True
    metric, higher_is_better = key_metric(task)
    new, old = metrics.get(metric), current.metrics.get(metric)
    if new is None:
        return False
    if old is None:
        return True
    return new > old if higher_is_better else new < old


@_entry
def snapshot(relation_name, y_column_name, test_size, test_sampling):
    if not y_column_name:
        raise PgmlError("y_column_name must name a column")
    snap, n, _ = _take_snapshot(relation_name, [y_column_name], test_size, test_sampling)
    return [(snap.relation_name, y_column_name, snap.id, snap.table)]


@_entry
def deploy(project_name, strategy, algorithm_name):
    from inference.algorithms import canonical_name
    from inference.training import key_metric

    project = store.require_project(project_name)
    strategy = (strategy or "").strip().lower()
    if strategy not in STRATEGIES:
        raise PgmlError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    algorithm = canonical_name(algorithm_name) if algorithm_name else None
    if strategy == "best_score":
        chosen = store.best_model(project.id, algorithm, *key_metric(project.task))
    elif strategy == "most_recent":
        chosen = store.most_recent_model(project.id, algorithm)
    else:
        current = store.current_deployment(project.id)
        if current is None:
            raise store.NotDeployed(f"project {project_name!r} has no deployment to roll back")
        chosen = store.rollback_model(project.id, current.model_id, algorithm)
    if chosen is None:
        which = f" with algorithm {algorithm!r}" if algorithm else ""
        raise store.NotDeployed(
            f"project {project_name!r} has no model{which} to deploy with strategy {strategy!r}"
            + (" (no earlier deployment of another model)" if strategy == "rollback" else ""))
    store.deploy(project.id, chosen[0], strategy)
    return [(project.name, project.task, chosen[1])]


@_entry
def load_dataset(source):
    from inference import datasets

    return [datasets.load(source)]


# -- scoring -------------------------------------------------------------------------------

_DEPLOYED: dict[str, tuple] = {}


def forget_deployments() -> None:
    _DEPLOYED.clear()


def _deployed(project_name: str, statement_key: float) -> tuple:
    model_id = store.deployed_model(project_name)
    scorer, joint = store.loaded(model_id)
    entry = (statement_key, scorer, joint, model_id)
    _DEPLOYED[project_name] = entry
    return entry


def predict(project_name, features, statement_key):
    """The per-row hot path: a dict lookup and Scorer.predict_one on PL/Python's list."""
    try:
        entry = _DEPLOYED.get(project_name)
        if entry is None or entry[0] != statement_key:
            entry = _deployed(project_name, statement_key)
        if entry[2]:
            raise PgmlError(f"project {project_name!r} is a joint model; use pgml.predict_joint")
        return entry[1].predict_one(features)
    except PgmlError as exc:
        _raise(exc)


@_entry
def predict_proba(project_name, features, statement_key):
    entry = _DEPLOYED.get(project_name)
    if entry is None or entry[0] != statement_key:
        entry = _deployed(project_name, statement_key)
    return entry[1].predict_proba(np.array(features, dtype=np.float64))[0].tolist()


@_entry
def predict_joint(project_name, features, statement_key):
    entry = _DEPLOYED.get(project_name)
    if entry is None or entry[0] != statement_key:
        entry = _deployed(project_name, statement_key)
    if not entry[2]:
        raise PgmlError(f"project {project_name!r} is not a joint model; use pgml.predict")
    return np.asarray(entry[1].predict(np.array(features, dtype=np.float64))).reshape(-1).tolist()


@_entry
def predict_batch(project_name, features: bytes, statement_key):
    entry = _DEPLOYED.get(project_name)
    if entry is None or entry[0] != statement_key:
        entry = _deployed(project_name, statement_key)
    if entry[2]:
        raise PgmlError(f"project {project_name!r} is a joint model; use pgml.predict_joint")
    scorer = entry[1]
    values = data.float8_array(features)
    if values.size % scorer.n_features:
        raise InvalidData(f"predict_batch got {values.size} values, which is not a whole number "
                          f"of rows of {scorer.n_features} features")
    if not values.size:
        return []
    rows = values.reshape(-1, scorer.n_features)
    return scorer.predict(rows, threads=_batch_threads(len(rows))).tolist()


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
    scorer, joint = store.loaded(model_id)
    if joint:
        raise PgmlError(f"model {model_id} is a joint model; pgml.model_predict returns one value")
    return scorer.predict_one(features)


@_entry
def runtime_info(project_name=None) -> str:
    """What onnxruntime offers here and which providers sessions in this backend really got."""
    import onnxruntime as ort

    from inference import runtime

    info = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "requested_providers": runtime.providers(),
        "probe_session_providers": _probe_providers(runtime.providers()),
        "sessions": [{"model_id": model_id, "runtime": s.runtime, "providers": list(s.providers)}
                     for model_id, s in store.cached_scorers().items()],
    }
    if project_name is not None:
        model_id = store.deployed_model(project_name)
        s = store.scorer(model_id)
        info["project"] = {"name": project_name, "model_id": model_id, "runtime": s.runtime,
                           "providers": list(s.providers)}
    return json.dumps(info)


def _probe_providers(wanted: list[str]) -> list[str]:
    """The providers a plain (ai.onnx-only) session gets when it asks for ``wanted``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=wanted)
    return session.get_providers()
