"""The sidecar's HTTP face: /metrics for Prometheus, probes for Kubernetes, /status and the
dashboard for people.

Why it answers from ``SidecarState`` alone: the replication loop is the only writer and must
never wait on a scrape, so every endpoint reads plain attributes; only /status also calls
``state.status_provider`` (the database-backed view the CLI installs), in FastAPI's thread
pool, and survives it failing.

Probe policy (docs/operations.md says the same):
- /healthz is liveness: 200 while the process serves HTTP and the loop has not given up
  (phase ``failed``); 503 after that, so Kubernetes restarts a sidecar whose loop is dead
  instead of leaving a process that answers but replicates nothing.
- /readyz is readiness: 200 only while streaming, connected to both ends and at most
  ``max_lag_seconds`` behind; 503 with the reason otherwise.

Secrets: the provider and the loop are expected to hand over secret-free text (replica.secrets
masks the DSNs they know), but a DSN with a password is one f-string away, so every /status,
/healthz and /readyz body also goes through ``redact``, which finds DSN- and URI-shaped
passwords in any text (``replica.secrets.redact``), before it leaves the process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from replica import metrics
from replica.errors import HttpServerError
from replica.secrets import redact
from replica.state import Phase, SidecarState

DASHBOARD_DIR = Path(__file__).with_name("dashboard")
_NO_STORE = {"Cache-Control": "no-store"}

def not_ready_reason(state: SidecarState, max_lag_seconds: float) -> str | None:
    """Why /readyz says 503 - the same conditions as ``SidecarState.is_ready``, in words."""
    if state.phase != Phase.STREAMING:
        reason = f"phase is {str(state.phase)!r}, not 'streaming'"
        if state.waiting:  # source/activity.py: say whom we wait for, not only that we wait
            w = state.waiting
            who = ", ".join(f"pid {b['pid']} ({b['user']}, {b['application']!r}, transaction "
                            f"{'-' if b['transaction_seconds'] is None else b['transaction_seconds']} s)"
                            for b in w.get("blockers", []))
            reason += f": {w['what']} has waited {w['seconds']} s for {who or 'the source'}"
        return f"{reason}: {state.error}" if state.error else reason
    if not state.source_connected:
        return "not connected to the source"
    if not state.target_connected:
        return "not connected to the target"
    lag = state.lag_seconds()
    if lag > max_lag_seconds:
        return f"lag {lag:.1f} s is above the {max_lag_seconds:g} s bound"
    if not state.is_ready(max_lag_seconds):
        return "not ready"
    return None


def refresh_metrics(state: SidecarState) -> None:
    """Set the gauges that derive from the state, so a scrape never sees a stale lag."""
    metrics.LAG_BYTES.set(state.lag_bytes())
    metrics.LAG_SECONDS.set(state.lag_seconds())
    metrics.APPLIED_LSN.set(state.applied_lsn)
    metrics.FLUSHED_LSN.set(state.flushed_lsn)
    metrics.RECEIVED_LSN.set(state.received_lsn)
    metrics.CONNECTED.labels("source").set(1 if state.source_connected else 0)
    metrics.CONNECTED.labels("target").set(1 if state.target_connected else 0)


def _samples(metric: Any, suffix: str = "") -> list[tuple[dict[str, str], float]]:
    """(labels, value) of one metric's samples, read through its public collect()."""
    out = []
    for family in metric.collect():
        for s in family.samples:
            if s.name == family.name + suffix:
                out.append((s.labels, s.value))
    return out


def registry_view() -> dict[str, Any]:
    """What /status adds from the process's own counters: rows by table, errors, slot health
    as the loop last saw it (the status provider, when set, overrides with fresher data)."""
    rows: dict[str, dict[str, int]] = {}
    for labels, value in _samples(metrics.ROWS_APPLIED, "_total"):
        rows.setdefault(labels["table"], {})[labels["op"]] = int(value)
    view: dict[str, Any] = {
        "rows_applied": rows,
        "errors_by_kind": {labels["kind"]: int(v)
                           for labels, v in _samples(metrics.ERRORS, "_total")},
        "transactions_applied": int(sum(v for _, v in
                                        _samples(metrics.TRANSACTIONS_APPLIED, "_total"))),
    }
    history = history_view()
    if history:
        view["history"] = history
    wal_status = [labels["status"] for labels, v in _samples(metrics.SLOT_WAL_STATUS) if v == 1]
    if wal_status:  # only once the loop has looked at the slot; 0 would be a guess
        view["wal_status"] = wal_status[0]
        view["retained_wal_bytes"] = int(_samples(metrics.SLOT_RETAINED_WAL_BYTES)[0][1])
    return view


def history_view() -> dict[str, dict[str, Any]]:
    """Per ``--history`` table: versions and bytes this process committed, what the table
    holds now in Postgres and in Parquet, compactions seen (replica/history/report.py)."""
    out: dict[str, dict[str, Any]] = {}

    def row(table: str) -> dict[str, Any]:
        return out.setdefault(table, {"versions_recorded": 0, "bytes_recorded": 0,
                                      "compactions": 0, "last_compaction": None})
    for labels, v in _samples(metrics.HISTORY_VERSIONS, "_total"):
        row(labels["table"])["versions_recorded"] = int(v)
    for labels, v in _samples(metrics.HISTORY_BYTES, "_total"):
        row(labels["table"])["bytes_recorded"] = int(v)
    for labels, v in _samples(metrics.HISTORY_STORED_VERSIONS):
        row(labels["table"])[f"versions_{labels['where']}"] = int(v)
    for labels, v in _samples(metrics.HISTORY_STORED_BYTES):
        row(labels["table"])[f"bytes_{labels['where']}"] = int(v)
    for labels, v in _samples(metrics.HISTORY_COMPACTIONS, "_total"):
        row(labels["table"])["compactions"] = int(v)
    for labels, v in _samples(metrics.HISTORY_LAST_COMPACTION):
        row(labels["table"])["last_compaction"] = v
    return out


def copy_progress(snapshot: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The copy as a whole, from the per-table entries replica.clone.snapshot keeps: rows
    copied, the total (an estimate until every table is done, never below what is copied),
    rows/s since the copy began and the seconds left at that rate (None when unknown)."""
    if not snapshot:
        return None
    tables = list(snapshot.values())
    rows = sum(int(t.get("rows") or 0) for t in tables)
    total = max(rows, sum(max(int(t.get("total") or 0), int(t.get("rows") or 0))
                          for t in tables))
    seconds = max((float(t.get("seconds") or 0) for t in tables), default=0.0)
    rate = rows / seconds if seconds > 0 else 0.0
    done = all(t.get("done") for t in tables)
    eta = 0.0 if done else ((total - rows) / rate if rate > 0 and total > rows else None)
    return {"rows": rows, "total": total,
            "total_is_estimate": any(t.get("total_is_estimate") for t in tables),
            "done": done, "rows_per_second": round(rate, 1),
            "eta_seconds": None if eta is None else round(eta, 1)}


class _ProviderCache:
    """The status provider queries the source; every open dashboard polls /status, so one
    answer serves all callers for ``ttl`` seconds instead of one query per poll."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._at = -ttl
        self._value: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, provider: Any) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value = provider()
                self._at = time.monotonic()
            return self._value


def status_body(state: SidecarState, max_lag_seconds: float,
                cache: _ProviderCache | None = None) -> dict[str, Any]:
    """The /status document: state, readiness, registry view, then the provider's view."""
    body = state.to_dict()
    reason = not_ready_reason(state, max_lag_seconds)
    body.update(
        ready=reason is None,
        not_ready_reason=reason,
        max_lag_seconds=max_lag_seconds,
        seconds_since_last_message=(round(time.monotonic() - state.last_message_at, 1)
                                    if state.last_message_at else None),
        copy=copy_progress(state.snapshot),
    )
    body.update(registry_view())
    if state.status_provider is not None:
        try:
            provided = (cache.get(state.status_provider) if cache
                        else state.status_provider())
        except Exception as exc:  # the database view is optional; the rest still answers
            body["status_error"] = f"{type(exc).__name__}: {exc}"
        else:
            # the databases' answer wins, except where it has none (a side unreachable)
            body.update({k: v for k, v in provided.items() if v is not None or k not in body})
    return redact(jsonable_encoder(body))


def ml_body(provider: Any, cache: _ProviderCache) -> dict[str, Any]:
    """The /ml document: the ML side as replica.operate.ml_report reads it, or why not."""
    if provider is None:
        return {"available": False, "error": "this sidecar has no ML view (no target given)"}
    try:
        body = {"available": True, **cache.get(provider)}
    except Exception as exc:  # the page shows the reason; /status is unaffected
        body = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    return redact(jsonable_encoder(body))


def create_app(state: SidecarState, *, max_lag_seconds: float = 30.0,
               status_cache_seconds: float = 1.0, ml_provider: Any = None,
               ml_cache_seconds: float = 5.0) -> FastAPI:
    """The sidecar's HTTP app over ``state``; ``max_lag_seconds`` bounds /readyz, and the
    status provider's answer is reused for ``status_cache_seconds``. ``ml_provider`` (the
    CLI passes ``ml_report.collect`` over the target) answers /ml, reused for
    ``ml_cache_seconds``: models change when someone trains, not every second."""
    app = FastAPI(title="pgml-replica sidecar", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        refresh_metrics(state)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        if state.phase == Phase.FAILED:
            return JSONResponse(redact({"status": "failed", "phase": str(state.phase),
                                        "error": state.error}), 503, headers=_NO_STORE)
        return JSONResponse({"status": "ok", "phase": str(state.phase)}, headers=_NO_STORE)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        reason = not_ready_reason(state, max_lag_seconds)
        body = {"ready": reason is None, "phase": str(state.phase),
                "lag_seconds": round(state.lag_seconds(), 3), "reason": reason}
        return JSONResponse(redact(body), 200 if reason is None else 503, headers=_NO_STORE)

    provider_cache = _ProviderCache(status_cache_seconds)

    @app.get("/status")
    def status() -> JSONResponse:
        return JSONResponse(status_body(state, max_lag_seconds, provider_cache),
                            headers=_NO_STORE)

    ml_cache = _ProviderCache(ml_cache_seconds)

    @app.get("/ml")
    def ml() -> JSONResponse:
        return JSONResponse(ml_body(ml_provider, ml_cache), headers=_NO_STORE)

    index = DASHBOARD_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        if not index.is_file():
            return PlainTextResponse(
                f"the dashboard files are missing from this installation ({DASHBOARD_DIR}); "
                "reinstall pgml-replica from a release that ships replica/dashboard/", 500)
        return FileResponse(index, headers=_NO_STORE)

    app.mount("/dashboard/static", StaticFiles(directory=DASHBOARD_DIR, check_dir=False),
              name="dashboard-static")
    return app


class HttpServer:
    """uvicorn in a daemon thread: the replication loop keeps the main thread and its signal
    handlers (uvicorn installs none outside the main thread)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.host = host
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                     log_level="warning", access_log=False,
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._run, name="pgml-replica-http",
                                        daemon=True)

    def _run(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn's answer to a failed bind; start() reports it
            pass

    def start(self, timeout: float = 10.0) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise HttpServerError(
                    f"the HTTP server could not listen on {self.host}:{self._server.config.port}"
                    " (address in use or not local?); choose another --http-host/--http-port,"
                    " or --http-port 0 to serve nothing")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
