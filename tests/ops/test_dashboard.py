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

from replica import metrics
from replica.http import DASHBOARD_DIR
from tests.ops.helpers import (
    CHROMIUM,
    SECRET,
    database_provider,
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
        snapshot={"public.items": {"rows": 37, "total": 37},
                  "public.orders": {"rows": 750_000, "total": 1_000_000}},
        error=f"retrying: connection to postgresql://app:{SECRET}@db.internal/app lost", **kw)


def test_dashboard_shows_state_and_slot(serve, slot_on_source, source_db, tmp_path):
    dsn, slot = slot_on_source
    state = lively_state(slot=slot, publication="ops_pub", tables=["public.items"],
                         status_provider=database_provider(dsn, slot))
    metrics.ROWS_APPLIED.labels("public.ops_dash", "insert").inc(12_345)
    server = serve(state)
    dom = dump_dom(server.url + "/")

    confirmed = source_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                  " WHERE slot_name = %s", (slot,))[0][0]
    assert dom["slot"] == slot
    assert dom["publication"] == "ops_pub"
    assert dom["phase"] == "streaming"
    assert dom["lag-bytes"] == f"{0x1_7000_0000 - 0x1_6B37_4D48:,}"
    assert dom["lag-bytes-human"] == "76.5 MiB"
    assert float(dom["lag-seconds"]) >= 4
    assert dom["applied-lsn"] == "1/6B374D48"
    assert dom["received-lsn"] == "1/70000000"
    assert dom["confirmed-flush-lsn"] == confirmed
    assert dom["wal-status"] == "reserved" and "good" in dom.classes("wal-status")
    assert GROUPED.match(dom["wal-retained"]), dom["wal-retained"]
    assert dom.hidden("slot-lost") and dom.hidden("unreachable")
    # the page polled more than once: its sparkline has history
    assert int(dom.attrs["spark-seconds"]["data-points"]) >= 2

    rows = re.findall(r"<tr><td>([^<]*)</td>((?:<td>[^<]*</td>)*)</tr>", dom.html)
    table = {name: re.findall(r"<td>([^<]*)</td>", cells) for name, cells in rows}
    assert table["public.items"][-1] == "37"  # rows on the target, from the provider
    inserted = metrics.REGISTRY.get_sample_value("pgml_replica_rows_applied_total",
                                                 {"table": "public.ops_dash", "op": "insert"})
    assert table["public.ops_dash"][0] == f"{inserted:,.0f}"
    assert "37 / 37 rows (100%)" in dom["snapshot"]
    assert "750,000 / 1,000,000 rows (75%)" in dom["snapshot"]
    assert "postgresql://app:********@db.internal/app" in dom["error"]
    assert SECRET not in dom.html

    png = screenshot(server.url + "/", tmp_path / "dashboard.png")
    keep = os.environ.get("PGML_REPLICA_SCREENSHOTS")
    if keep:  # for a person to look at
        shutil.copy(png, Path(keep) / "dashboard-streaming.png")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 900)


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
    assert "the source is unreachable" in dom["status-error"]
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
