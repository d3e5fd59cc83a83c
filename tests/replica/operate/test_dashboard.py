"""The dashboard in a real headless Chromium: the page's JS polls /status of a real server
and the values of the state and of the source's real slot appear on the page."""

from __future__ import annotations

import os
import re
import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from decoder import parse_lsn
from replica import metrics
from replica.operate import report
from replica.operate.api import DASHBOARD_DIR
from tests.replica.operate.helpers import (
    CHROMIUM,
    SECRET,
    dump_dom,
    screenshot,
    streaming_state,
)

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM}: `make setup` installs Debian's chromium package")

GROUPED = re.compile(r"^\d{1,3}(,\d{3})*$")


def lively_state(**kw):
    return streaming_state(
        received_lsn=0x1_7000_0000, applied_lsn=0x1_6B37_4D48, flushed_lsn=0x1_6B30_0000,
        last_commit_time=datetime.now(UTC) - timedelta(seconds=4),
        snapshot={"public.items": {"rows": 37, "total": 37, "total_is_estimate": False,
                                   "done": True, "seconds": 0.5},
                  "public.orders": {"rows": 750_000, "total": 1_000_000,
                                    "total_is_estimate": True, "done": False,
                                    "seconds": 75.0}},
        error=f"retrying: connection to postgresql://app:{SECRET}@db.internal/app lost", **kw)


def test_dashboard_shows_state_and_slot(serve, slot_on_source, source_db, replica_db,
                                        tmp_path):
    """The sidecar's own status provider (replica.operate.report) over a real slot on the source
    and a target that has 30 of the 37 rows."""
    dsn, slot = slot_on_source
    replica_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    replica_db.execute("INSERT INTO public.items SELECT g, 'n' || g FROM generate_series(1, 30) g")
    state = lively_state(slot=slot, publication="ops_pub", tables=["public.items"],
                         status_provider=lambda: report.collect(
                             dsn, replica_db.dsn, slot=slot, publication="ops_pub",
                             exact=True))
    metrics.ROWS_APPLIED.labels("public.ops_dash", "insert").inc(12_345)
    server = serve(state)
    dom = dump_dom(server.url + "/")

    confirmed, current = source_db.execute(
        "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn() FROM pg_replication_slots"
        " WHERE slot_name = %s", (slot,))[0]
    assert dom["slot"] == slot
    assert dom["publication"] == "ops_pub"
    assert dom["phase"] == "streaming"
    # the database view wins where it has an answer: lag against the source's WAL end...
    assert GROUPED.match(dom["lag-bytes"]), dom["lag-bytes"]
    # ...and the state's live values stay where it has none (the target has no progress)
    assert dom["applied-lsn"] == "1/6B374D48"
    assert parse_lsn(dom["current-lsn"]) <= parse_lsn(str(current))
    assert dom["slot-active"] == "no"
    assert dom["received-lsn"] == "1/70000000"
    assert dom["confirmed-flush-lsn"] == confirmed
    assert dom["wal-status"] == "reserved" and "good" in dom.classes("wal-status")
    assert GROUPED.match(dom["wal-retained"]), dom["wal-retained"]
    # retained WAL coloured against the source's own bound, as the source reports it
    keep, = source_db.execute("SELECT CASE WHEN setting::bigint < 0 THEN -1 ELSE"
                              " pg_size_bytes(setting || unit) END FROM pg_settings"
                              " WHERE name = 'max_slot_wal_keep_size'")[0]
    retained = int(dom["wal-retained"].replace(",", ""))
    if keep > 0:
        assert dom["wal-bound"].endswith("(max_slot_wal_keep_size)")
        expected = "good" if retained <= keep / 2 else "warn" if retained <= keep else "bad"
    else:
        assert dom["wal-bound"] == ("5.0 GiB (the alert's threshold; max_slot_wal_keep_size"
                                    " is unlimited)")
        expected = "good" if retained <= 2.5 * 1024**3 else "warn"
    assert dom.attrs["wal-retained-human"]["data-level"] == expected
    # lag (a few seconds) against --max-lag-seconds (30 here)
    assert dom["lag-bound"] == "30"
    assert dom.attrs["lag-seconds"]["data-level"] == "good"
    # n_live_tup is never shown as a count: exact here, so no estimate note
    assert dom["rows-note"] == ""
    assert dom.hidden("slot-lost") and dom.hidden("unreachable")
    # the page polled more than once: its sparkline has history
    assert int(dom.attrs["spark-seconds"]["data-points"]) >= 2

    rows = re.findall(r"<tr><td>([^<]*)</td>((?:<td>[^<]*</td>)*)</tr>", dom.html)
    table = {name: re.findall(r"<td>([^<]*)</td>", cells) for name, cells in rows}
    assert table["public.items"][-2:] == ["37", "30"]  # rows on source and target
    inserted = metrics.REGISTRY.get_sample_value("pgml_replica_rows_applied_total",
                                                 {"table": "public.ops_dash", "op": "insert"})
    assert table["public.ops_dash"][0] == f"{inserted:,.0f}"
    assert "37 / 37 rows (100%)" in dom["snapshot"]
    # reltuples is an estimate until the table is done: marked so on the page
    assert "750,000 / ~1,000,000 rows (75%) est." in dom["snapshot"]
    assert not dom.hidden("copy-summary")
    assert dom["copy-rows"] == "750,037 / ~1,000,037"
    rate = round(750_037 / 75, 1)  # /status's rows_per_second; the page rounds half up
    assert dom["copy-rate"] == f"{int(rate + 0.5):,}"
    assert dom["copy-eta"] == "25s"  # 250,000 rows at 10,000 rows/s
    assert "postgresql://app:********@db.internal/app" in dom["error"]
    assert SECRET not in dom.html
    assert dom["query-errors"] == ""

    png = screenshot(server.url + "/", tmp_path / "dashboard.png")
    keep = os.environ.get("PGML_REPLICA_SCREENSHOTS")
    if keep:  # for a person to look at
        shutil.copy(png, Path(keep) / "dashboard-streaming.png")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 900)


def test_dashboard_colours_lag_above_its_bound_and_marks_estimates(serve, slot_on_source,
                                                                    source_db):
    """The provider's default (statistics) row counts are shown with "~" and a note, never
    as counts; lag of a few seconds against a 1 s bound is red."""
    dsn, slot = slot_on_source
    source_db.execute("ANALYZE public.items")
    state = lively_state(slot=slot, publication="ops_pub", tables=["public.items"],
                         status_provider=lambda: report.collect(
                             dsn, None, slot=slot, publication="ops_pub"))
    dom = dump_dom(serve(state).url + "/")
    [(n_live,)] = source_db.execute("SELECT n_live_tup FROM pg_stat_user_tables"
                                    " WHERE relname = 'items'")
    rows = re.findall(r"<tr><td>public.items</td>((?:<td>[^<]*</td>)*)</tr>", dom.html)
    assert re.findall(r"<td>([^<]*)</td>", rows[0])[-2] == f"~{n_live:,}"
    assert "estimates (n_live_tup)" in dom["rows-note"]
    # the state's own lag (its last commit a few seconds ago) against a 1 s bound
    dom = dump_dom(serve(lively_state(), max_lag_seconds=1).url + "/")
    assert dom.attrs["lag-seconds"]["data-level"] == "bad"
    assert "bad" in dom.classes("lag-seconds")


def test_dashboard_says_a_lost_slot_needs_a_new_snapshot(serve, wal_status_reset, tmp_path):
    metrics.set_wal_status("lost")
    metrics.SLOT_RETAINED_WAL_BYTES.set(3 * 1024**3)

    def failing_provider() -> dict:
        raise RuntimeError("the source is unreachable")

    state = lively_state(phase="failed", status_provider=failing_provider)
    server = serve(state)
    dom = dump_dom(server.url + "/dashboard")
    assert not dom.hidden("slot-lost")
    assert "the slot was invalidated: a new snapshot is needed" in dom["slot-lost"]
    assert dom["wal-status"] == "lost" and "bad" in dom.classes("wal-status")
    assert dom["wal-status-text"] == "the slot was invalidated: a new snapshot is needed"
    assert dom["wal-retained-human"] == "3.0 GiB"
    assert dom["phase"] == "failed" and "bad" in dom.classes("phase")
    assert dom["ready"] == "not ready"
    assert "phase is 'failed'" in dom["not-ready"]
    assert "status: RuntimeError: the source is unreachable" in dom["query-errors"]
    assert dom.hidden("no-errors")
    keep = os.environ.get("PGML_REPLICA_SCREENSHOTS")
    if keep:
        shutil.copy(screenshot(server.url + "/", tmp_path / "lost.png"),
                    Path(keep) / "dashboard-lost.png")


def test_dashboard_says_when_the_sidecar_is_unreachable(tmp_path):
    """When /status cannot be fetched the page shows a banner, not numbers passing for live
    ones: the page is opened from a file, where its relative `status` fetch fails."""
    page = tmp_path / "page.html"
    page.write_text((DASHBOARD_DIR / "index.html").read_text()
                    .replace('href="dashboard/static/style.css"',
                             f'href="{(DASHBOARD_DIR / "style.css").as_uri()}"')
                    .replace('src="dashboard/static/app.js"',
                             f'src="{(DASHBOARD_DIR / "app.js").as_uri()}"'))
    dom = dump_dom(page.as_uri())
    assert not dom.hidden("unreachable")
    assert dom["unreachable-why"]
    assert dom["phase"] == "loading"


def test_dashboard_during_the_copy(serve, tmp_path):
    """Phase copying: the badge, both sides connected, rows/s and the ETA from /status's
    `copy`, and a total marked as the estimate it is."""
    state = streaming_state(
        phase="copying", received_lsn=0, applied_lsn=0, flushed_lsn=0,
        snapshot={"public.small": {"rows": 5_000, "total": 5_000, "total_is_estimate": False,
                                   "done": True, "seconds": 1.0},
                  "public.big": {"rows": 300_000, "total": 300_000, "total_is_estimate": True,
                                 "done": False, "seconds": 20.0}})
    server = serve(state)
    dom = dump_dom(server.url + "/")
    assert dom["phase"] == "copying" and "info" in dom.classes("phase")
    assert dom["source-connected"] == "connected" and dom["target-connected"] == "connected"
    # reltuples said 5,000 for big; 300,000 are copied: the total follows the rows
    assert "300,000 / ~300,000 rows (99%) est." in dom["snapshot"]
    assert "5,000 / 5,000 rows (100%)" in dom["snapshot"]
    assert dom["copy-rows"] == "305,000 / ~305,000"
    assert dom["copy-rate"] == "15,250"  # 305,000 rows in 20 s
    assert dom["copy-eta"] == "unknown"  # past the estimate: what is left is not known
    keep = os.environ.get("PGML_REPLICA_SCREENSHOTS")
    png = screenshot(server.url + "/", tmp_path / "copying.png")
    for folder in filter(None, (keep, "/work/notes/screenshots"
                                if Path("/work/notes").is_dir() else None)):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(folder) / "dashboard-copying.png")
