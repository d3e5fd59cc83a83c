"""What pgml.train, pgml.snapshot and pgml.deploy do to a project, step by step.

Training: check the arguments (an unknown algorithm fails before any data work), take a new
snapshot of the relation or reload the project's latest one, split it, train
(``inference.training``), store the model and, with automatic_deploy, deploy it when it beats
the deployed model on the task's key metric. Deploying: choose a model by strategy
(PostgresML's best_score, most_recent, rollback) and record the deployment.

Everything here writes in the calling statement, through store.py and relations.py, so an
error anywhere leaves nothing behind: a failed train rolls back its snapshot table, project,
model and deployment rows together. Arguments arrive as Python values (sql_api.py adapts them
from SQL); errors are the classes of inference.errors.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from inference import column_stats, relations, store, train_split
from inference.encoding import TEXT_TYPES
from inference.errors import (
    InvalidData,
    NotDeployed,
    NotNumeric,
    PgmlError,
    UnknownProject,
    UnknownRelation,
)

STRATEGIES = ("best_score", "most_recent", "rollback")  # 'specific': deploy_model, by id
SEARCHES = ("grid", "random")


# -- training ------------------------------------------------------------------------------


def train(project_name, task, relation_name, y_column_name, algorithm, hyperparams, search,
          search_params, search_args, test_size, test_sampling, automatic_deploy, preprocess,
          joint=False, materialize_snapshot=False):
    """Train a model for the project; (project, task, algorithm, deployed) as PostgresML
    2.9's ``pgml.train`` answers."""
    from inference import algorithms, encoding, training

    if not project_name:
        raise PgmlError("project_name must not be empty")
    project = store.project(project_name)
    task = _task(task, project, project_name)
    algorithm = algorithms.canonical_name(algorithm or "linear")
    unsupervised = task in algorithms.UNSUPERVISED
    if unsupervised and algorithm == "linear":  # PostgresML's defaults for these tasks
        algorithm = algorithms.DEFAULT_ALGORITHM[task]
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
    if unsupervised:
        if y_columns:
            raise PgmlError(f"{task} learns without a label; leave y_column_name out")
        y_columns = []
    snap, n, values, statistics = _snapshot_for(project, project_name, relation_name, y_columns,
                                                test_size, test_sampling, unsupervised,
                                                materialize_snapshot)
    if len(snap.y_column_name) > 1 and not joint:
        raise PgmlError(f"project {project_name!r} has several y columns; use pgml.train_joint")
    for y in snap.y_column_name:
        missing = int(np.isnan(values[y]).sum())
        if missing:
            raise InvalidData(f"y column {y!r} has {missing} NULL value(s); train on a view "
                              f"that filters them out (WHERE {y} IS NOT NULL) or fills them")
    features = snap.features
    text_labels = [y for y in snap.y_column_name if y in snap.categories]
    if text_labels and task != "classification":
        raise NotNumeric(f"y column {text_labels[0]!r} is text: only classification takes "
                         "text labels; cast it to a number for a regression")
    labels = values[snap.y_column_name[0]] if task == "classification" else None
    train_rows, test_rows = train_split.split(n, snap.test_size, snap.test_sampling,
                                              snap.random_state, labels)
    features, values, preprocess, encoded = encoding.fit(
        snap.columns, preprocess, values, train_rows,
        values[snap.y_column_name[0]] if snap.y_column_name else None)
    if text_labels:
        encoded = {**(encoded or {"inputs": None}),
                   "label_categories": snap.categories[text_labels[0]]}
    preprocess = _expand_arrays(preprocess, snap.widths)
    X_train, X_test = (relations.gather(values, features, rows) for rows in (train_rows, test_rows))
    Y_train, Y_test = (relations.gather(values, snap.y_column_name, rows)
                       for rows in (train_rows, test_rows))
    if statistics is not None:  # a new snapshot: its statistics ran beside the steps above
        statistics.finish()
    if unsupervised:
        from inference import unsupervised as learn

        result = learn.train(task, algorithm, X_train, X_test, feature_names=features,
                             hyperparams=hyperparams, preprocess=preprocess,
                             random_state=snap.random_state)
        joint = task == "decomposition"  # several outputs per row, like a joint model
        return _store_and_deploy(project, project_name, task, snap, algorithm, features, result,
                                 None, {}, {}, joint, automatic_deploy, X_test, encoded)
    if not joint:
        Y_train, Y_test = Y_train.reshape(-1), Y_test.reshape(-1)
    result = training.train(
        task, algorithm, X_train, Y_train, X_test, Y_test,
        feature_names=features, hyperparams=hyperparams, preprocess=preprocess, search=search,
        search_params=search_params, search_args=search_args, joint=joint,
        random_state=snap.random_state, compile_trees=True)
    try:
        return _store_and_deploy(project, project_name, task, snap, algorithm, features, result,
                                 search, search_params, search_args, joint, automatic_deploy,
                                 X_test, encoded)
    finally:
        if result.compiled is not None:  # finished by _compile_trees, or not needed
            result.compiled.cancel()


def _store_and_deploy(project, project_name, task, snap, algorithm, features, result, search,
                      search_params, search_args, joint, automatic_deploy, X_test,
                      encoded=None):
    from inference.algorithms import UNSUPERVISED

    if encoded:  # text columns/labels: the category maps travel with the model's preprocess
        result.preprocessor = {**result.preprocessor, "encoding": encoded}

    if project is None:
        project = store.create_project(project_name, task)
    importances = None if task in UNSUPERVISED else feature_importances(result.estimator,
                                                                         features)
    model_id = store.insert_model(project.id, snap.id, algorithm, len(features), result, search,
                                  search_params, search_args, joint, importances)
    if task not in UNSUPERVISED:
        from inference.tree_graph import for_training  # tree models: the GPU-ready tensor graph

        native = _native_on_sample(result, task, X_test, snap.random_state)
        tensor = for_training(result, task, features, X_test, snap.random_state, native)
        if tensor is not None:
            store.add_file(model_id, "tensor.onnx", tensor)
        _compile_trees(model_id, result, task, features, X_test, snap.random_state, native)
    # NULL deploys as true does (PostgresML 2.9: ``Some(true) | None``)
    deployed = automatic_deploy is not False and _beats_deployed(project.id, task,
                                                                  result.metrics)
    if deployed:
        store.deploy(project.id, model_id, "new_score")
    return project.name, task, algorithm, deployed


def feature_importances(estimator, features: list[str]) -> dict[str, float] | None:
    """{feature: importance} of a model that has them, stored in pgml.models.feature_importances.

    Tree ensembles (scikit-learn, XGBoost, LightGBM, CatBoost) answer ``feature_importances_``;
    linear models the magnitude of ``coef_`` (averaged over classes or targets), which ranks
    features only when they share a scale -- preprocess with a scaler for that. Joint models
    fitted one estimator per target average their estimators'. None where the model has
    neither (SVMs with kernels, k-NN, ...) or the widths disagree (nothing is guessed).
    """
    model = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    inner = getattr(model, "estimator_", None)  # LabelEncodedClassifier, RANSAC (a forest's
    if inner is not None and _answer(model) is None:  # estimator_ is its unfitted template)
        model = inner
    parts = getattr(model, "estimators_", None)
    members = parts if isinstance(parts, list) and parts and not hasattr(
        model, "feature_importances_") else [model]
    rows = []
    for member in members:
        values = _answer(member)
        if values is None:
            return None
        values = np.asarray(values, dtype=np.float64)
        values = values.reshape(-1, values.shape[-1]).mean(axis=0) if values.ndim else values
        if values.shape != (len(features),):
            return None
        rows.append(values)
    mean = np.mean(rows, axis=0)
    if not np.all(np.isfinite(mean)):
        return None
    return {name: float(v) for name, v in zip(features, mean, strict=True)}


def _answer(model):
    """``feature_importances_``, else ``|coef_|``; None when the model has neither."""
    try:
        values = getattr(model, "feature_importances_", None)
        if values is None:
            coef = getattr(model, "coef_", None)
            values = None if coef is None else np.abs(np.asarray(coef, dtype=np.float64))
    except Exception:  # noqa: BLE001 - a property that cannot answer means "has none"
        return None
    return values


def _native_on_sample(result, task, X_test, random_state):
    """The native model's answers on the parity sample, computed once for both scorers built
    from its trees (tensor graph, compiled trees); None where neither is built from them."""
    pending = result.compiled
    if result.runtime != "onnx" or pending is None or pending.ensemble is None:
        return None
    from inference import parity
    from inference.compiled_trees import native_on

    rows = parity.sample_rows(len(X_test), random_state)
    return native_on(result.estimator, X_test if rows is None else X_test[rows], task)


def _compile_trees(model_id, result, task, features, X_test, random_state,
                   native=None) -> None:
    """Tree models: the C source of the per-row scorer (compiled_trees.py), parity-checked;
    its record joins the model's parity column under 'compiled_trees' either way."""
    from inference.compiled_trees import SOURCE_FILE, for_training

    source, record = for_training(result, task, features, X_test, random_state, model_id,
                                  native)
    if source is not None:
        store.add_file(model_id, SOURCE_FILE, source)
    store.query("UPDATE pgml.models SET parity = coalesce(parity, '{}'::jsonb)"
                " || jsonb_build_object('compiled_trees', $2::jsonb) WHERE id = $1",
                ("int8", "text"), (model_id, store.dumps(record)))


def _expand_arrays(preprocess: dict, widths: dict[str, int]) -> dict:
    """Options given for an array column apply to each of its elements (PostgresML's rule)."""
    if not widths or not any(name in widths for name in preprocess):
        return preprocess
    out = {}
    for name, options in preprocess.items():
        names = relations.element_names(name, widths[name]) if name in widths else [name]
        out.update({n: options for n in names})
    return out


def _object(value, what: str) -> dict:
    """A jsonb argument, already parsed, that must be an object."""
    if not isinstance(value, dict):
        raise PgmlError(f"{what} must be a JSON object like '{{\"key\": 1}}', "
                        f"got {json.dumps(value)}")
    return value


def _task(task: str | None, project: store.Project | None, name: str) -> str:
    from inference.algorithms import normalize_task

    if task is None:
        if project is None:
            raise UnknownProject(
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


# -- snapshots -----------------------------------------------------------------------------


def _snapshot_for(project, project_name, relation_name, y_columns, test_size, test_sampling,
                  unsupervised=False, materialize=False):
    """(snapshot, rows, values, its statistics under way or None): a new snapshot when
    relation_name is given, else the project's latest, reloaded (its statistics are stored)."""
    previous = store.project_snapshot(project.id) if project else None
    if relation_name is None:
        if previous is None:
            raise UnknownProject(
                f"project {project_name!r} has no snapshot yet; its first pgml.train needs "
                "relation_name and y_column_name")
        if y_columns and y_columns != previous.y_column_name:
            raise PgmlError(
                f"y_column_name {y_columns} differs from the project's snapshot "
                f"({previous.y_column_name}); pass relation_name to take a new snapshot")
        try:
            oid, table = relations.resolve(previous.table)
        except UnknownRelation:
            raise UnknownRelation(
                f"the snapshot table {previous.table} of project {project_name!r} was dropped; "
                "pass relation_name to take a new snapshot") from None
        n, values = relations.load(table, relations.snapshot_columns(previous, oid), previous.widths,
                                   previous.categories, tuple(previous.y_column_name))
        return previous, n, values, None
    if not y_columns and not unsupervised:
        if previous is None:
            raise PgmlError("y_column_name is required for the first pgml.train of a project")
        y_columns = previous.y_column_name
    return _new_snapshot(relation_name, y_columns, test_size, test_sampling, materialize)


def take_snapshot(relation_name, y_columns, test_size, test_sampling, materialize=True):
    """A new snapshot of the relation, copied into its own table where relations.needs_copy
    says so, else read in place, its statistics stored; (snapshot, rows, column values)."""
    snap, n, values, statistics = _new_snapshot(relation_name, y_columns, test_size,
                                                test_sampling, materialize)
    statistics.finish()
    return snap, n, values


def _new_snapshot(relation_name, y_columns, test_size, test_sampling, materialize):
    """take_snapshot with its statistics still computing (``column_stats.Beside``)."""
    oid, source = _resolve(relation_name)
    cols = relations.columns(oid)
    relations.check_columns(source, cols, y_columns)
    fraction = train_split.test_fraction(test_size)
    sampling = train_split.check_sampling(test_sampling)
    meta = [{"name": c.name, "pg_type": c.pg_type, "position": c.position,
             "nullable": c.nullable, "label": c.name in y_columns} for c in cols]
    snap = store.new_snapshot(source, y_columns, fraction, sampling, meta,
                              relations.needs_copy(oid, cols, materialize))
    relations.materialize(snap, source, cols)
    for c, m in zip(cols, meta, strict=True):
        if c.is_array:  # the width is part of the snapshot: a retrain expands it the same way
            m["width"] = relations.array_width(snap.table, c)
        elif c.base_oid in TEXT_TYPES:  # so are the categories a text column's codes index
            m["categories"] = relations.categories(snap.table, c)
    snap = dataclasses.replace(snap, columns=meta)
    n, values = relations.load(snap.table, cols, snap.widths, snap.categories, tuple(y_columns))
    # statistics of the snapshot's own rows (PostgresML #527 read them from the live table)
    return snap, n, values, column_stats.Beside(snap.id, n, values, meta)


def _resolve(relation_name: str) -> tuple[int, str]:
    """relations.resolve, and PostgresML's unquoted ``schema.name`` where the name itself
    holds characters an identifier cannot (``'pgml.jdxcosta/diamonds'``, the table
    load_dataset made for a Hugging Face name): split at the first dot, looked up exactly."""
    try:
        return relations.resolve(relation_name)
    except UnknownRelation:
        schema, dot, name = (relation_name or "").partition(".")
        if not dot:
            raise
        rows = store.query(
            "SELECT format('%I.%I', n.nspname, c.relname) AS quoted FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = $2", ("text", "text"), (schema, name))
        if not rows:
            raise
        return relations.resolve(rows[0]["quoted"])


# -- deployment ----------------------------------------------------------------------------


def deploy(project_name, strategy, algorithm_name):
    """Deploy the model the strategy chooses; (project, strategy, algorithm) as PostgresML."""
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
            raise NotDeployed(f"project {project_name!r} has no deployment to roll back")
        chosen = store.rollback_model(project.id, current.model_id, algorithm)
    if chosen is None:
        which = f" with algorithm {algorithm!r}" if algorithm else ""
        raise NotDeployed(
            f"project {project_name!r} has no model{which} to deploy with strategy {strategy!r}"
            + (" (no earlier deployment of another model)" if strategy == "rollback" else ""))
    store.deploy(project.id, chosen.model_id, strategy)
    return project.name, strategy, chosen.algorithm


def deploy_model(model_id: int):
    """Deploy one chosen model (PostgresML 2.x's ``pgml.deploy(model_id)``, strategy
    'specific'); (project, strategy, algorithm)."""
    found = store.model_project(model_id)
    if found is None:
        from inference.errors import UnknownModel

        raise UnknownModel(f"model {model_id} does not exist (see the table pgml.models)")
    project, algorithm = found
    store.deploy(project.id, model_id, "specific")
    return project.name, "specific", algorithm
