"""The sidecar's HTTP endpoints, served by a real uvicorn on a loopback port and read with
httpx; /status backed by a provider that queries a real replication slot on the source."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from replica import metrics
from replica.errors import HttpServerError
from replica.operate import report
from replica.operate.api import HttpServer, create_app
from replica.state import SidecarState
from tests.replica.operate.helpers import SECRET, database_provider, streaming_state


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}, through prometheus-client's parser."""
    resp = httpx.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def test_metrics_are_refreshed_from_the_state_on_every_scrape(serve):
    state = streaming_state(received_lsn=5_000_000, applied_lsn=3_000_000, flushed_lsn=2_000_000,
                            target_connected=False,
                            last_commit_time=datetime.now(UTC) - timedelta(seconds=42))
    server = serve(state)
    m = scrape(server.url)
    assert m[("pgml_replica_lag_bytes", ())] == 2_000_000
    assert m[("pgml_replica_lag_seconds", ())] >= 42
    assert m[("pgml_replica_applied_lsn", ())] == 3_000_000
    assert m[("pgml_replica_flushed_lsn", ())] == 2_000_000
    assert m[("pgml_replica_received_lsn", ())] == 5_000_000
    assert m[("pgml_replica_connected", (("peer", "source"),))] == 1
    assert m[("pgml_replica_connected", (("peer", "target"),))] == 0

    # the loop catches up and reconnects: the next scrape says so, nothing cached
    state.applied_lsn = state.flushed_lsn = 5_000_000
    state.target_connected = True
    m = scrape(server.url)
    assert m[("pgml_replica_lag_bytes", ())] == 0
    assert m[("pgml_replica_lag_seconds", ())] == 0
    assert m[("pgml_replica_connected", (("peer", "target"),))] == 1


def test_metrics_carry_the_counters_the_loop_increments(serve):
    server = serve(streaming_state())
    key = ("pgml_replica_rows_applied_total", (("op", "update"), ("table", "public.ops_m")))
    before = scrape(server.url).get(key, 0)
    metrics.ROWS_APPLIED.labels("public.ops_m", "update").inc(7)
    assert scrape(server.url)[key] - before == 7


def test_healthz_is_200_while_alive_and_503_once_the_loop_failed(serve):
    state = streaming_state()
    server = serve(state)
    ok = httpx.get(server.url + "/healthz", timeout=10)
    assert ok.status_code == 200 and ok.json()["status"] == "ok"

    for phase in ("starting", "snapshot", "reconnecting", "stopping"):
        state.phase = phase
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200, phase

    state.phase = "failed"
    state.error = f"could not connect to postgresql://app:{SECRET}@db.internal:5432/app"
    failed = httpx.get(server.url + "/healthz", timeout=10)
    assert failed.status_code == 503
    assert failed.json()["status"] == "failed"
    assert "db.internal" in failed.json()["error"]
    assert SECRET not in failed.text


@pytest.mark.parametrize("change, reason", [
    (dict(phase="snapshot"), "phase is 'snapshot'"),
    (dict(phase="reconnecting", error="source went away"), "source went away"),
    (dict(phase="waiting_for_transactions",
          waiting={"what": "slot", "seconds": 12.0, "blockers": [
              {"pid": 4242, "user": "report", "application": "psql",
               "transaction_seconds": 3600.0}]}),
     "slot has waited 12.0 s for pid 4242 (report, 'psql', transaction 3600.0 s)"),
    (dict(source_connected=False), "not connected to the source"),
    (dict(target_connected=False), "not connected to the target"),
    (dict(received_lsn=0x1_6B37_FFFF,
          last_commit_time=datetime.now(UTC) - timedelta(seconds=90)), "above the 30 s bound"),
])
def test_readyz_says_why_it_is_not_ready(serve, change, reason):
    state = streaming_state(last_commit_time=datetime.now(UTC))
    server = serve(state, max_lag_seconds=30)
    ready = httpx.get(server.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True

    for k, v in change.items():
        setattr(state, k, v)
    resp = httpx.get(server.url + "/readyz", timeout=10)
    assert resp.status_code == 503
    assert resp.json()["ready"] is False
    assert reason in resp.json()["reason"]


def test_readyz_bound_is_the_apps_parameter(serve):
    state = streaming_state(received_lsn=0x1_6B37_FFFF,
                            last_commit_time=datetime.now(UTC) - timedelta(seconds=90))
    assert httpx.get(serve(state, max_lag_seconds=30).url + "/readyz",
                     timeout=10).status_code == 503
    assert httpx.get(serve(state, max_lag_seconds=3600).url + "/readyz",
                     timeout=10).status_code == 200


def test_status_merges_state_and_the_database_view_without_secrets(serve, slot_on_source,
                                                                  source_db):
    dsn, slot = slot_on_source
    state = streaming_state(slot=slot, publication="ops_pub",
                            snapshot={"public.items": {"rows": 37, "total": 37}},
                            status_provider=database_provider(dsn, slot))
    server = serve(state)
    resp = httpx.get(server.url + "/status", timeout=20)
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()

    confirmed, wal_status = source_db.execute(
        "SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots"
        " WHERE slot_name = %s", (slot,))[0]
    # state
    assert body["slot"] == slot and body["phase"] == "streaming"
    assert body["applied_lsn"] == "1/6B374D48"
    assert body["snapshot"] == {"public.items": {"rows": 37, "total": 37}}
    assert body["ready"] is True and body["not_ready_reason"] is None
    # the database view, straight from the real slot
    assert body["confirmed_flush_lsn"] == confirmed
    assert body["wal_status"] == wal_status == "reserved"
    assert body["retained_wal_bytes"] >= 0
    assert body["row_counts"] == {"public.items": 37}
    assert body["slot_active"] is False
    # no secret anywhere, but the non-secret parts of the DSNs are still there
    assert SECRET not in resp.text
    assert str(source_db.cluster.port) in body["source"]
    assert "password=********" in body["source"]
    assert body["source_connection"] == {"user": "ops", "password": "********"}
    assert "postgresql://ops:********@10.0.0.5/app" in body["last_retry"]


def test_status_with_the_sidecars_provider_and_an_unreachable_target(serve, slot_on_source,
                                                                      source_db):
    """replica.operate.report.collect as the CLI installs it: the source side answers, the target
    does not; the state's live values stay where the databases have no answer."""
    dsn, slot = slot_on_source
    target = source_db.cluster.dsn("no_such_database_ops", password=SECRET)
    state = streaming_state(slot=slot, publication="ops_pub",
                            status_provider=lambda: report.collect(
                                dsn, target, slot=slot, publication="ops_pub", exact=True))
    resp = httpx.get(serve(state).url + "/status", timeout=30)
    body = resp.json()
    confirmed = source_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                  " WHERE slot_name = %s", (slot,))[0][0]
    assert body["confirmed_flush_lsn"] == confirmed
    assert body["wal_status"] == "reserved" and body["active"] is False
    assert body["tables"]["public.items"]["source_rows"] == 37
    assert "no_such_database_ops" in body["target_error"]
    assert body["applied_lsn"] == "1/6B374D48"  # the provider had None: the state's stays
    assert body["phase"] == "streaming"
    assert SECRET not in resp.text


def test_status_survives_a_failing_provider(serve, source_db):
    bad_dsn = source_db.cluster.dsn(source_db.name, user="no_such_role_ops", password=SECRET)

    def provide() -> dict:
        try:
            psycopg.connect(bad_dsn, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            raise RuntimeError(f"status query on {bad_dsn} failed: {exc}") from exc
        return {}

    server = serve(streaming_state(status_provider=provide))
    resp = httpx.get(server.url + "/status", timeout=20)
    assert resp.status_code == 200
    body = resp.json()
    assert body["phase"] == "streaming"
    assert "no_such_role_ops" in body["status_error"]
    assert SECRET not in resp.text


def test_status_reports_rows_errors_and_slot_health_from_the_registry(serve, wal_status_reset):
    server = serve(streaming_state())
    before = httpx.get(server.url + "/status", timeout=10).json()
    assert "wal_status" not in before  # never looked at the slot: no guess
    metrics.ROWS_APPLIED.labels("public.ops_r", "insert").inc(11)
    metrics.ROWS_APPLIED.labels("public.ops_r", "delete").inc(2)
    metrics.ERRORS.labels("OpsTestError").inc()
    metrics.set_wal_status("unreserved")
    metrics.SLOT_RETAINED_WAL_BYTES.set(123_456_789)
    after = httpx.get(server.url + "/status", timeout=10).json()

    def rows(body, op):
        return body["rows_applied"].get("public.ops_r", {}).get(op, 0)

    assert rows(after, "insert") - rows(before, "insert") == 11
    assert rows(after, "delete") - rows(before, "delete") == 2
    assert (after["errors_by_kind"]["OpsTestError"]
            - before["errors_by_kind"].get("OpsTestError", 0)) == 1
    assert after["wal_status"] == "unreserved"
    assert after["retained_wal_bytes"] == 123_456_789


def test_dashboard_page_and_assets_are_served_locally(serve):
    server = serve(streaming_state())
    for path in ("/", "/dashboard"):
        page = httpx.get(server.url + path, timeout=10)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>pgml-replica</title>" in page.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs, "the page loads its script and style"
    for ref in refs:
        assert "//" not in ref, f"{ref}: the dashboard must load nothing from elsewhere"
        asset = httpx.get(f"{server.url}/{ref}", timeout=10)
        assert asset.status_code == 200, ref
    js = httpx.get(server.url + "/dashboard/static/app.js", timeout=10)
    assert "javascript" in js.headers["content-type"]
    assert not re.search(r"https?://", js.text)
    assert httpx.get(server.url + "/dashboard/static/nope.js", timeout=10).status_code == 404


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(HttpServerError, match="--http-port"):
            HttpServer(create_app(SidecarState()), "127.0.0.1", port).start(timeout=10)


def test_server_stops_and_frees_its_port():
    server = HttpServer(create_app(SidecarState()), "127.0.0.1", 0).start()
    port = server.port
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.parametrize("ttl, queries", [(3600, 1), (0, 3)])
def test_status_provider_answers_are_shared_for_a_while(serve, slot_on_source, ttl, queries):
    """Every open dashboard polls /status: within the cache time one database query serves
    them all; with no cache time each poll queries."""
    dsn, slot = slot_on_source
    calls = []
    provide = database_provider(dsn, slot)

    def counting() -> dict:
        calls.append(1)
        return provide()

    server = serve(streaming_state(status_provider=counting), status_cache_seconds=ttl)
    with httpx.Client(timeout=20) as client:
        bodies = [client.get(server.url + "/status").json() for _ in range(3)]
    assert len(calls) == queries
    assert all(b["row_counts"] == {"public.items": 37} for b in bodies)
