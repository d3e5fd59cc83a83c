"""The pgml tables, read and written from inside PL/Python.

Every statement here is a prepared plan kept for the life of the backend, with values bound as
parameters: no name or value is ever pasted into SQL text. Only this module (and relations.py
for the snapshot tables themselves) touches the pgml tables, so their layout is known in one
place next to sql/10_pgml_schema.sql.

Nothing read here is cached here: what may be cached, and for how long, is decided in one
place, deployed.py (loaded models by id for the life of the backend; which model a project has
deployed, per statement).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import plpy

from inference.errors import NotDeployed, UnknownModel, UnknownProject

_PLANS: dict[str, object] = {}


def query(sql: str, types: tuple[str, ...] = (), args: tuple = ()):
    """Run ``sql`` as a prepared plan (prepared once per backend) with bound ``args``."""
    plan = _PLANS.get(sql)
    if plan is None:
        plan = _PLANS[sql] = plpy.prepare(sql, list(types))
    return plpy.execute(plan, list(args))


def dumps(value) -> str:
    """JSON for a jsonb parameter; numpy scalars and arrays become plain numbers and lists."""
    return json.dumps(value, default=_plain, allow_nan=False)


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -- projects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    task: str


def project(name: str) -> Project | None:
    rows = query("SELECT id, name, task FROM pgml.projects WHERE name = $1", ("text",), (name,))
    return Project(rows[0]["id"], rows[0]["name"], rows[0]["task"]) if rows.nrows() else None


def require_project(name: str) -> Project:
    found = project(name)
    if found is None:
        raise UnknownProject(
            f"project {name!r} does not exist; train it first with pgml.train({name!r}, ...) "
            "(the table pgml.projects lists the projects)"
        )
    return found


def create_project(name: str, task: str) -> Project:
    """Insert the project, or return the one a concurrent train created meanwhile."""
    query("INSERT INTO pgml.projects (name, task) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
          ("text", "text"), (name, task))
    return require_project(name)


# -- snapshots -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    id: int
    relation_name: str
    y_column_name: list[str]
    test_size: float
    test_sampling: str
    random_state: int
    columns: list[dict]
    materialized: bool = True

    @property
    def table(self) -> str:
        """What the snapshot's rows are read from: the materialized copy (built from our own
        integer id, so safe as SQL text), else the relation itself -- PostgresML's
        ``materialize_snapshot => false``, where a retrain reads the relation as it is then.
        A caller re-resolves the latter (relations.resolve) before using it as SQL text."""
        return f"pgml.snapshot_{int(self.id)}" if self.materialized else self.relation_name

    @property
    def features(self) -> list[str]:
        """Feature names in column order; an array column is one feature per element."""
        out: list[str] = []
        for c in self.columns:
            if c["label"]:
                continue
            if c.get("width") is None:
                out.append(c["name"])
            else:
                out += [f"{c['name']}[{i + 1}]" for i in range(int(c["width"]))]
        return out

    @property
    def categories(self) -> dict[str, list[str]]:
        """Text columns and their sorted values: what their codes index (inference/encoding)."""
        return {c["name"]: c["categories"] for c in self.columns
                if c.get("categories") is not None}

    @property
    def widths(self) -> dict[str, int]:
        """Array columns and their number of elements, as recorded when the snapshot was taken."""
        return {c["name"]: int(c["width"]) for c in self.columns if c.get("width") is not None}


_SNAPSHOT_COLUMNS = ("s.id, s.relation_name, s.y_column_name, s.test_size, s.test_sampling,"
                     " s.random_state, s.columns::text AS columns, s.materialized")


def _snapshot(row) -> Snapshot:
    return Snapshot(row["id"], row["relation_name"], list(row["y_column_name"]),
                    row["test_size"], row["test_sampling"], row["random_state"],
                    json.loads(row["columns"]), row["materialized"])


def new_snapshot(relation_name: str, y_columns: list[str], test_size: float, test_sampling: str,
                 columns: list[dict], materialized: bool = True) -> Snapshot:
    rows = query(
        "INSERT INTO pgml.snapshots AS s (relation_name, y_column_name, test_size,"  # noqa: S608 - constants
        " test_sampling, columns, materialized) VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
        " RETURNING " + _SNAPSHOT_COLUMNS,
        ("text", "text[]", "real", "text", "text", "bool"),
        (relation_name, y_columns, test_size, test_sampling, dumps(columns), materialized))
    return _snapshot(rows[0])


def finish_snapshot(snapshot_id: int, num_rows: int, analysis: dict, columns: list[dict]) -> None:
    query("UPDATE pgml.snapshots SET status = 'snapshot', num_rows = $2, analysis = $3::jsonb,"
          " columns = $4::jsonb, updated_at = clock_timestamp() WHERE id = $1",
          ("int8", "int8", "text", "text"),
          (snapshot_id, num_rows, dumps(analysis), dumps(columns)))


def project_snapshot(project_id: int) -> Snapshot | None:
    """The snapshot of the project's most recent model: what a train without relation reuses."""
    rows = query(
        "SELECT " + _SNAPSHOT_COLUMNS + " FROM pgml.models m JOIN pgml.snapshots s"  # noqa: S608 - constants
        " ON s.id = m.snapshot_id WHERE m.project_id = $1 ORDER BY m.created_at DESC, m.id DESC"
        " LIMIT 1", ("int8",), (project_id,))
    return _snapshot(rows[0]) if rows.nrows() else None


# -- models --------------------------------------------------------------------------------


def insert_model(project_id: int, snapshot_id: int, algorithm: str, num_features: int,
                 result, search: str | None, search_params: dict, search_args: dict,
                 joint: bool, feature_importances: dict | None = None) -> int:
    """The model row and its files (ONNX graph when exported, native pickle always)."""
    rows = query(
        "INSERT INTO pgml.models (project_id, snapshot_id, num_features, algorithm, runtime,"
        " hyperparams, metrics, search, search_params, search_args, search_results, parity,"
        " preprocess, classes, joint, warnings, feature_importances) VALUES ($1, $2, $3, $4,"
        " $5, $6::jsonb, $7::jsonb, $8, $9::jsonb, $10::jsonb, $11::jsonb, $12::jsonb,"
        " $13::jsonb, $14::jsonb, $15, $16::jsonb, $17::jsonb) RETURNING id",
        ("int8", "int8", "int4", "text", "text", "text", "text", "text", "text", "text", "text",
         "text", "text", "text", "bool", "text", "text"),
        (project_id, snapshot_id, num_features, algorithm, result.runtime,
         dumps(result.hyperparams), dumps(result.metrics), search, dumps(search_params or {}),
         dumps(search_args or {}),
         None if result.search_results is None else dumps(result.search_results),
         dumps(result.parity), dumps(result.preprocessor), dumps(result.classes), joint,
         dumps(result.warnings),
         None if feature_importances is None else dumps(feature_importances)))
    model_id = rows[0]["id"]
    files = {"model.pkl": result.native}
    if result.onnx:
        files["model.onnx"] = result.onnx
    for path, data in files.items():
        query("INSERT INTO pgml.files (model_id, path, data) VALUES ($1, $2, $3)",
              ("int8", "text", "bytea"), (model_id, path, bytes(data)))
    return model_id


def add_file(model_id: int, path: str, data: bytes) -> None:
    """One more file of a model (e.g. 'tensor.onnx', the tree models' tensor graph)."""
    query("INSERT INTO pgml.files (model_id, path, data) VALUES ($1, $2, $3)",
          ("int8", "text", "bytea"), (model_id, path, bytes(data)))


def model_file(model_id: int, path: str) -> bytes | None:
    """A model's file reassembled from its parts; None when the model has no such file."""
    rows = query("SELECT string_agg(data, ''::bytea ORDER BY part) AS data FROM pgml.files"
                 " WHERE model_id = $1 AND path = $2", ("int8", "text"), (model_id, path))
    return None if not rows.nrows() or rows[0]["data"] is None else bytes(rows[0]["data"])


# -- deployments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """The project's current deployment: its model, that model's algorithm and metrics."""

    model_id: int
    algorithm: str
    metrics: dict


@dataclass(frozen=True)
class Candidate:
    """A model a deploy strategy chose."""

    model_id: int
    algorithm: str


def _candidate(rows) -> Candidate | None:
    return Candidate(rows[0]["id"], rows[0]["algorithm"]) if rows.nrows() else None


def current_deployment(project_id: int) -> Deployment | None:
    rows = query(
        "SELECT d.model_id, m.algorithm, m.metrics::text AS metrics FROM pgml.deployments d"
        " JOIN pgml.models m ON m.id = d.model_id WHERE d.project_id = $1"
        " ORDER BY d.created_at DESC, d.id DESC LIMIT 1", ("int8",), (project_id,))
    if not rows.nrows():
        return None
    return Deployment(rows[0]["model_id"], rows[0]["algorithm"], json.loads(rows[0]["metrics"] or "{}"))


def deploy(project_id: int, model_id: int, strategy: str) -> None:
    query("INSERT INTO pgml.deployments (project_id, model_id, strategy) VALUES ($1, $2, $3)",
          ("int8", "int8", "text"), (project_id, model_id, strategy))


def best_model(project_id: int, algorithm: str | None, metric: str,
               higher_is_better: bool) -> Candidate | None:
    """The model with the best key metric, compared as numbers."""
    rows = query(
        "SELECT id, algorithm FROM pgml.models WHERE project_id = $1"
        " AND ($2::text IS NULL OR algorithm = $2) AND jsonb_typeof(metrics -> $3) = 'number'"
        " ORDER BY (metrics ->> $3)::float8 * $4, created_at DESC, id DESC LIMIT 1",
        ("int8", "text", "text", "float8"),
        (project_id, algorithm, metric, -1.0 if higher_is_better else 1.0))
    return _candidate(rows)


def most_recent_model(project_id: int, algorithm: str | None) -> Candidate | None:
    rows = query(
        "SELECT id, algorithm FROM pgml.models WHERE project_id = $1"
        " AND ($2::text IS NULL OR algorithm = $2) ORDER BY created_at DESC, id DESC LIMIT 1",
        ("int8", "text"), (project_id, algorithm))
    return _candidate(rows)


def rollback_model(project_id: int, current_model_id: int,
                   algorithm: str | None) -> Candidate | None:
    """The model of the latest deployment that is not the current model (PostgresML's rule)."""
    rows = query(
        "SELECT m.id, m.algorithm FROM pgml.deployments d JOIN pgml.models m ON m.id = d.model_id"
        " WHERE d.project_id = $1 AND d.model_id <> $2 AND ($3::text IS NULL OR m.algorithm = $3)"
        " ORDER BY d.created_at DESC, d.id DESC LIMIT 1",
        ("int8", "int8", "text"), (project_id, current_model_id, algorithm))
    return _candidate(rows)


def model_project(model_id: int) -> tuple[Project, str] | None:
    """(the model's project, its algorithm), or None when there is no such model."""
    rows = query("SELECT p.id, p.name, p.task, m.algorithm FROM pgml.models m"
                 " JOIN pgml.projects p ON p.id = m.project_id WHERE m.id = $1",
                 ("int8",), (model_id,))
    if not rows.nrows():
        return None
    r = rows[0]
    return Project(r["id"], r["name"], r["task"]), r["algorithm"]


def deployed_model(project_name: str) -> int:
    """The id of the model the project has deployed now; one indexed lookup."""
    rows = query(
        "SELECT d.model_id FROM pgml.projects p"
        " LEFT JOIN LATERAL (SELECT model_id FROM pgml.deployments WHERE project_id = p.id"
        "   ORDER BY created_at DESC, id DESC LIMIT 1) d ON true WHERE p.name = $1",
        ("text",), (project_name,))
    if not rows.nrows():
        require_project(project_name)  # raises with the helpful message
    if rows[0]["model_id"] is None:
        raise NotDeployed(
            f"project {project_name!r} has no deployed model; deploy one with "
            f"pgml.deploy({project_name!r}) or train with automatic_deploy => true"
        )
    return rows[0]["model_id"]


# -- model files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredModel:
    """What a Scorer is built from: the served file (ONNX graph or native pickle) and shape."""

    runtime: str
    task: str
    num_features: int
    joint: bool
    data: bytes
    encoding: dict | None = None  # text columns/labels: inference/encoding.py's maps


def stored_model(model_id: int) -> StoredModel:
    """The model's served file, reassembled from its parts; UnknownModel when there is none."""
    rows = query(
        "SELECT m.runtime, m.num_features, m.joint, p.task,"
        " (m.preprocess->'encoding')::text AS encoding,"
        " (SELECT string_agg(f.data, ''::bytea ORDER BY f.part) FROM pgml.files f"
        "   WHERE f.model_id = m.id AND f.path = CASE m.runtime WHEN 'onnx' THEN 'model.onnx'"
        "   ELSE 'model.pkl' END) AS data"
        " FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id WHERE m.id = $1",
        ("int8",), (model_id,))
    if not rows.nrows():
        raise UnknownModel(f"model {model_id} does not exist (see the table pgml.models)")
    row = rows[0]
    return StoredModel(row["runtime"], row["task"], row["num_features"], row["joint"], row["data"],
                       json.loads(row["encoding"]) if row["encoding"] else None)
