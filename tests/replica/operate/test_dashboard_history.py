"""History on the dashboard, in a real headless Chromium: what a replica's history tables hold
(read by replica/history/report.py from a real replica with pgml, compacted to Parquet by
the real pgml.history_compact) and what this process recorded, per table, in /status and on
the page."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import UTC

import pytest

from replica import metrics
from replica.history import report, store
from tests.replica.operate.helpers import CHROMIUM, dump_dom, streaming_state

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM}: `make setup` installs Debian's chromium package")


def test_dashboard_shows_history_sizes_and_compactions(serve, pgml_replica_db):
    with pgml_replica_db.connect() as c:
        c.execute("CREATE TABLE public.hdash (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO public.hdash SELECT g, 'v' || g FROM generate_series(1, 500) g")
        store.seed(c, "public", "hdash", ["id", "v"], ["id"], 0x1_0000_0000, None)
        c.commit()
        report.refresh(c)  # versions in Postgres, no segment yet
        c.execute("SELECT pgml.history_compact('public.hdash', interval '0')")
        c.commit()
        report.refresh(c)  # a segment the sidecar had not seen before: not a run it saw
        store.seed(c, "public", "hdash", ["id", "v"], ["id"], 0x2_0000_0000, None)
        c.commit()
        c.execute("SELECT pgml.history_compact('public.hdash', interval '0')")
        c.commit()
        report.refresh(c)  # the segment rewritten: one compaction seen
        versions, size, written = c.execute(
            "SELECT versions, bytes, created_at FROM pgml_history.segments"
            " WHERE relation_name = 'public.hdash'").fetchone()
        c.rollback()
    metrics.HISTORY_VERSIONS.labels("public.hdash").inc(1234)
    metrics.HISTORY_BYTES.labels("public.hdash").inc(1 << 20)
    server = serve(streaming_state())

    with urllib.request.urlopen(server.url + "/status", timeout=10) as resp:
        status = json.load(resp)["history"]["public.hdash"]
    assert status["versions_recorded"] == 1234
    assert (status["versions_parquet"], status["bytes_parquet"]) == (versions, size)
    assert status["compactions"] == 1
    assert status["bytes_postgres"] > 0  # the table's own pages, even when emptied

    dom = dump_dom(server.url + "/")
    assert not dom.hidden("history-card")
    row = "history-public_hdash-"
    assert dom[row + "name"] == "public.hdash"
    assert dom[row + "versions"] == "1,234"
    assert dom[row + "bytes"] == "1.0 MiB"
    assert dom[row + "parquet"].startswith(f"{versions:,} · ")
    assert dom[row + "postgres"].startswith("~")  # the statistics' estimate, marked so
    assert dom[row + "compactions"] == "1"
    assert dom[row + "last-compaction"] == written.astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def test_dashboard_hides_history_when_there_is_none(serve):
    """No --history table has recorded or been read: no History card (other tests may have
    put history metrics into this process's registry: then the card shows only those)."""
    server = serve(streaming_state())
    with urllib.request.urlopen(server.url + "/status", timeout=10) as resp:
        has = bool(json.load(resp).get("history"))
    dom = dump_dom(server.url + "/")
    assert dom.hidden("history-card") == (not has)
