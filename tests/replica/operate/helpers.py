"""Shared pieces of the ops tests: a streaming state, a database-backed status provider, and a
headless Chromium that loads a page and hands back its DOM after the page's JS ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import psycopg

from replica.state import SidecarState

SECRET = "Sup3r$ecret-Pa55w0rd"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--disable-quic",
                  "--lang=en-US"]


def sidecar_env_names() -> set[str]:
    """The environment variables `pgml-replica run` reads (from replica.config.Settings),
    plus the *_FILE variants the image's entry point turns into them."""
    from replica.config import ENV_PREFIX, Settings

    names = set()
    for name, field in Settings.model_fields.items():
        choices = getattr(field.validation_alias, "choices", None) or []
        env = [c.upper() for c in choices if c.upper().startswith(ENV_PREFIX)]
        names |= set(env) or {ENV_PREFIX + name.upper()}
    return names | {ENV_PREFIX + "SOURCE_FILE", ENV_PREFIX + "TARGET_FILE"}


def streaming_state(**kw) -> SidecarState:
    base = dict(phase="streaming", source_connected=True, target_connected=True,
                received_lsn=0x1_6B37_4D48, applied_lsn=0x1_6B37_4D48,
                flushed_lsn=0x1_6B37_4D48, tables=["public.items"])
    base.update(kw)
    return SidecarState(**base)


def database_provider(dsn: str, slot: str):
    """What the sidecar's status provider does: ask the source about the slot and the tables.
    It carelessly returns the DSN and a password - the app must not let them out."""

    def provide() -> dict:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT active, confirmed_flush_lsn::text, wal_status,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            count = conn.execute("SELECT count(*) FROM public.items").fetchone()[0]
        return {"slot_active": row[0], "confirmed_flush_lsn": row[1], "wal_status": row[2],
                "retained_wal_bytes": row[3], "row_counts": {"public.items": count},
                "source": dsn, "checked_at": datetime.now(UTC),
                "source_connection": {"user": "ops", "password": SECRET},
                "last_retry": f"postgresql://ops:{SECRET}@10.0.0.5/app?sslmode=require "
                              f"and host=x password='{SECRET}' and ?password={SECRET}&a=1"}

    return provide


def chromium(url: str, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; return its stdout."""
    with tempfile.TemporaryDirectory(prefix="pgml-replica-chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True, text=True, timeout=timeout, cwd=profile,
            env={**os.environ, "HOME": profile})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dump_dom(url: str, budget_ms: int = 5000) -> Dom:
    """The DOM after the page's scripts ran for ``budget_ms`` of virtual time."""
    return Dom(chromium(url, f"--virtual-time-budget={budget_ms}", "--dump-dom"))


def screenshot(url: str, path: Path, budget_ms: int = 5000, size: str = "1280,900") -> Path:
    chromium(url, f"--virtual-time-budget={budget_ms}", f"--window-size={size}",
             f"--screenshot={path}")
    return path


class Dom(HTMLParser):
    """Text and attributes of every element with an id, from a dumped DOM."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.html = html
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._stack: list[str | None] = []
        self.all_text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in self.VOID:
            return
        ident = a.get("id")
        if ident:
            self.attrs[ident] = a
            self.text[ident] = ""
        self._stack.append(ident)

    def handle_startendtag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.attrs[a["id"]] = a
            self.text[a["id"]] = ""

    def handle_endtag(self, tag):
        if tag not in self.VOID and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        self.all_text.append(data)
        for ident in self._stack:
            if ident:
                self.text[ident] += data

    def __getitem__(self, ident: str) -> str:
        return " ".join(self.text[ident].split())

    def hidden(self, ident: str) -> bool:
        return "hidden" in self.attrs[ident]

    def classes(self, ident: str) -> set[str]:
        return set((self.attrs[ident].get("class") or "").split())
