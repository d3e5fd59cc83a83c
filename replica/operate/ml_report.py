"""What the dashboard shows of the ML side, read from the replica's ``pgml`` tables.

Why its own module and its own connection: the replication report (report.py) is about the
slot and the rows; this one is about what people do with the rows - projects, the model
each one serves, how it scores, where it runs, when it was trained and deployed. It only
reads: every statement runs in a read-only transaction with a short statement timeout, so a
dashboard left open can never write to, or hold up, the ML replica.

Where a model runs: ``pgml.models.runtime`` says ONNX or Python; whether ONNX sessions get a
GPU is a property of the ML Postgres' machine, which ``pgml.runtime_info()`` (PL/Python)
reports. That call imports onnxruntime in the backend, so its answer is kept for
``DEVICE_TTL`` seconds instead of being asked at every poll.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import psycopg

from replica.connect import connect

# The metric PostgresML deploys by, per task, and whether higher is better. Mirrors
# inference.metrics.KEY_METRICS (the sidecar never imports the PL/Python side; a test keeps
# the two equal).
KEY_METRICS: dict[str, tuple[str, bool]] = {
    "regression": ("mean_squared_error", False), "classification": ("f1", True),
    "clustering": ("silhouette", True), "decomposition": ("cumulative_explained_variance", True)}
CUDA = "CUDAExecutionProvider"
DEVICE_TTL = 60.0
HISTORY = 20

_PROJECTS = """
SELECT p.name, p.task, p.created_at,
       (SELECT count(*) FROM pgml.models m WHERE m.project_id = p.id) AS models,
       (SELECT max(m.created_at) FROM pgml.models m WHERE m.project_id = p.id) AS last_trained,
       d.model_id, d.created_at AS deployed_at, d.strategy,
       m.algorithm, m.runtime, m.metrics, m.created_at AS trained_at
  FROM pgml.projects p
  LEFT JOIN LATERAL (SELECT model_id, created_at, strategy FROM pgml.deployments
                      WHERE project_id = p.id ORDER BY created_at DESC, id DESC LIMIT 1) d
         ON true
  LEFT JOIN pgml.models m ON m.id = d.model_id
 ORDER BY p.name"""

_HISTORY = """
SELECT d.id, p.name, p.task, d.model_id, m.algorithm, m.runtime, d.strategy, d.created_at,
       m.metrics
  FROM pgml.deployments d
  JOIN pgml.projects p ON p.id = d.project_id
  JOIN pgml.models m ON m.id = d.model_id
 ORDER BY d.created_at DESC, d.id DESC
 LIMIT %s"""


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def key_metric(task: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """{name, value, higher_is_better} of the task's deployment metric (value None if the
    model has no such metric)."""
    name, higher = KEY_METRICS.get(task, (None, True))
    value = (metrics or {}).get(name) if name else None
    return {"name": name, "value": float(value) if isinstance(value, (int, float)) else None,
            "higher_is_better": higher}


def device_of(runtime: str | None, providers: list[str] | None) -> str:
    """"GPU" for an ONNX model on a machine whose sessions get CUDA, "CPU" for the rest
    (the Python runtime scores with the estimator on the CPU), "unknown" when not known."""
    if runtime == "python":
        return "CPU"
    if providers is None:
        return "unknown"
    return "GPU" if CUDA in providers else "CPU"


class _DeviceCache:
    """pgml.runtime_info()'s providers, asked at most every DEVICE_TTL seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -DEVICE_TTL
        self._value: dict[str, Any] = {}

    def get(self, conn: psycopg.Connection) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._at >= DEVICE_TTL:
                self._value = _device(conn)
                self._at = time.monotonic()
            return self._value


def _device(conn: psycopg.Connection) -> dict[str, Any]:
    try:
        info, = conn.execute("SELECT pgml.runtime_info()").fetchone()
    except psycopg.Error as exc:  # PL/Python not importable, or a read-only refusal
        return {"providers": None, "gpu": None,
                "error": (exc.diag.message_primary or type(exc).__name__)}
    providers = list(info.get("probe_session_providers") or [])
    return {"providers": providers, "gpu": CUDA in providers,
            "onnxruntime": info.get("onnxruntime")}


_devices = _DeviceCache()


def read(conn: psycopg.Connection, *, history: int = HISTORY,
         devices: _DeviceCache | None = None) -> dict[str, Any]:
    """The ML side as one document, from an open connection to the replica."""
    installed, = conn.execute("SELECT to_regclass('pgml.deployments') IS NOT NULL").fetchone()
    if not installed:
        return {"installed": False, "projects": [], "deployments": []}
    version = conn.execute("SELECT value #>> '{}' FROM pgml.settings WHERE name = 'version'"
                           ).fetchone()
    device = (devices or _devices).get(conn)
    providers = device.get("providers")
    projects = []
    for (name, task, created, models, last_trained, model_id, deployed_at, strategy,
         algorithm, runtime, metrics, trained_at) in conn.execute(_PROJECTS).fetchall():
        deployed = None
        if model_id is not None:
            deployed = {"model_id": model_id, "algorithm": algorithm, "runtime": runtime,
                        "device": device_of(runtime, providers),
                        "key_metric": key_metric(task, metrics),
                        "deployed_at": _iso(deployed_at), "strategy": strategy,
                        "trained_at": _iso(trained_at)}
        projects.append({"name": name, "task": task, "created_at": _iso(created),
                         "models": models, "last_trained_at": _iso(last_trained),
                         "deployed": deployed})
    deployments = [
        {"id": did, "project": name, "model_id": model_id, "algorithm": algorithm,
         "runtime": runtime, "device": device_of(runtime, providers), "strategy": strategy,
         "deployed_at": _iso(at), "key_metric": key_metric(task, metrics)}
        for did, name, task, model_id, algorithm, runtime, strategy, at, metrics
        in conn.execute(_HISTORY, (history,)).fetchall()]
    last = max((p["last_trained_at"] for p in projects if p["last_trained_at"]), default=None)
    return {"installed": True, "version": version[0] if version else None,
            "device": device, "last_trained_at": last, "projects": projects,
            "deployments": deployments}


def collect(target_dsn: str, *, history: int = HISTORY, timeout: float = 5) -> dict[str, Any]:
    """``read`` over a fresh read-only connection to the target (``purpose`` "dashboard",
    so the replica's pg_stat_activity says who asks)."""
    with connect(target_dsn, "target", "dashboard", timeout=timeout) as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
        return read(conn, history=history)
