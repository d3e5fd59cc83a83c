"""What this backend keeps between calls to score rows: loaded models and deployment lookups.

The one module that caches anything read from the pgml tables, so what may go stale, and when
it is dropped, is decided here:

- Loaded models, by model id, for the life of the backend (tree models as compiled trees
  where they have them, routing.CompiledScorer, else their ONNX graph) (at most MAX_CACHED_SCORERS, least
  recently used dropped first). A model row and its files never change after training (rows
  are inserted, never updated), so a loaded Scorer can never be stale.
- Which model a project has deployed, per statement. That *does* change, in any session, or
  through WAL replay on a physical standby. ``pgml.predict`` passes the calling statement's
  start time (``statement_key``); the first call of a statement looks the deployment up (one
  indexed query) and keeps it per project, later calls of the same statement reuse it -- so a
  100k-row SELECT does one lookup, not 100k, and every row of one statement is scored by one
  model. A new statement sees a new key and looks again, so a deployment committed by any
  session is used from the next statement on. Changes to pgml.deployments made in this backend
  call ``forget_deployments`` at once (a trigger in sql/20_pgml_api.sql).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from inference import store

MAX_CACHED_SCORERS = 32


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model ready to score: its Scorer and whether it predicts several targets (joint)."""

    model_id: int
    scorer: object
    joint: bool
    encoding: dict | None = None  # text columns/labels (inference/encoding.py)


@dataclass(frozen=True, slots=True)
class Deployed:
    """The model a project had deployed when the statement ``statement_key`` first asked."""

    statement_key: float
    model_id: int
    scorer: object
    joint: bool
    encoding: dict | None = None


_LOADED: OrderedDict[int, Loaded] = OrderedDict()
_DEPLOYED: dict[str, Deployed] = {}


def loaded(model_id: int) -> Loaded:
    """The model, from this backend's cache when it is there, else read and loaded."""
    found = _LOADED.get(model_id)
    if found is not None:
        _LOADED.move_to_end(model_id)
        return found
    found = _compiled(model_id) if compiled_trees_enabled() else None
    if found is None:
        stored = store.stored_model(model_id)
        found = Loaded(model_id, _general(model_id, stored), stored.joint, stored.encoding)
    _LOADED[model_id] = found
    while len(_LOADED) > MAX_CACHED_SCORERS:
        _LOADED.popitem(last=False)
    return found


def _general(model_id: int, stored) -> object:
    """The model's ONNX (or native) scorer: imports numpy and onnxruntime (or scikit-learn)."""
    from inference.routing import load_scorer

    onnx, native = (stored.data, None) if stored.runtime == "onnx" else (None, stored.data)
    tensor = store.model_file(model_id, "tensor.onnx") if stored.runtime == "onnx" else None
    return load_scorer(stored.runtime, onnx, native, stored.task, stored.num_features,
                       tensor=tensor)


def _compiled(model_id: int) -> Loaded | None:
    """The model with its compiled trees (compiled_scorer.py), or None to load it otherwise.

    Reads the model's shape and only the head of its ``trees.c`` (the header names the
    library in the cache); the whole source is read only to build a missing library, and the
    ONNX graph only when a large batch first needs it. One query, no numpy.
    """
    rows = store.query(
        "SELECT m.runtime, m.num_features, m.joint, p.task,"
        " (m.preprocess->'encoding')::text AS encoding,"
        " (SELECT substring(f.data FROM 1 FOR 65536) FROM pgml.files f WHERE f.model_id = m.id"
        "   AND f.path = 'trees.c' ORDER BY f.part LIMIT 1) AS head"
        " FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id WHERE m.id = $1",
        ("int8",), (model_id,))
    if not rows.nrows() or rows[0]["head"] is None or rows[0]["runtime"] != "onnx":
        return None
    row = rows[0]
    from inference import compiled_scorer

    scorer = compiled_scorer.load_scorer(
        row["head"], lambda: store.model_file(model_id, "trees.c"), model_id, row["task"],
        row["num_features"], lambda: _general(model_id, store.stored_model(model_id)))
    if scorer is None:
        return None
    import json

    encoding = json.loads(row["encoding"]) if row["encoding"] else None
    return Loaded(model_id, scorer, row["joint"], encoding)


def compiled_trees_enabled() -> bool:
    """``SET pgml.compiled_trees = off`` keeps models loaded from then on in this backend on
    their ONNX graph (a comparison, or a way out should a compiled library misbehave)."""
    found = store.query("SELECT current_setting('pgml.compiled_trees', true) AS v")[0]["v"]
    return (found or "on").strip().lower() not in ("off", "false", "0")


def cached_scorers() -> dict[int, object]:
    """model id -> Scorer of every model loaded in this backend (for pgml.runtime_info)."""
    return {model_id: entry.scorer for model_id, entry in _LOADED.items()}


def for_statement(project_name: str, statement_key: float) -> Deployed:
    """The project's deployed model as the statement ``statement_key`` sees it.

    The per-row hot path of pgml.predict: one dict lookup and one comparison when the
    statement has asked before.
    """
    found = _DEPLOYED.get(project_name)
    if found is None or found.statement_key != statement_key:
        model = loaded(store.deployed_model(project_name))
        found = _DEPLOYED[project_name] = Deployed(statement_key, model.model_id, model.scorer,
                                                   model.joint, model.encoding)
    return found


def forget_deployments() -> None:
    """Drop every deployment lookup (pgml.deployments changed in this backend)."""
    _DEPLOYED.clear()
