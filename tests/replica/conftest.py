"""Helpers for the sidecar's tests: a sidecar in a thread or a real process, bounded waits,
and an order-independent digest of a table (a multiset hash: duplicates count)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from replica.config import Settings
from replica.operate.runner import Runner
from replica.state import SidecarState

ROOT = Path(__file__).resolve().parents[2]

# The replication core, run against every configured source version (fix_pg: `make test`
# 15 and 17, `make test-all` 15-18); everything else here streams from PostgreSQL 15.
# Keys are "module::test"; values map a major to why the test is known to fail there (a
# strict xfail: it turns red once fixed, so the entry is removed with the fix).
SOURCE_MATRIX: dict[str, dict[int, str]] = {
    "test_stream.py::test_changes_of_every_kind_arrive": {},  # streaming, TOAST 'u'
    "test_stream.py::test_truncate_restart_identity_and_cascade": {},
    "test_stream.py::test_big_transaction_spans_segments": {},
    "test_streaming.py::test_streamed_transactions_commit_abort_and_subtransactions": {},
    "test_streaming.py::test_streamed_transaction_survives_kill_and_replays": {},
    "test_exactly_once.py::test_exactly_once_with_kill_9": {},
    "test_schema_changes.py::test_add_drop_retype_rename_while_streaming": {},
    "test_schema_changes.py::test_schema_change_inside_a_streamed_transaction": {},
    "test_schema_changes.py::test_table_added_to_the_publication_later_is_copied_and_joined": {},
    "test_slots.py::test_snapshot_in_ctid_ranges_with_column_list_and_row_filter": {},
    "test_slots.py::test_existing_slot_handed_over_meets_the_copy_exactly": {},
    "test_slots.py::test_idle_slot_keeps_advancing": {},
    "test_slots.py::test_lost_slot_asks_for_a_resnapshot": {},
    "test_reconnect.py::test_source_restart": {},
}


def _matrix_key(path, name: str) -> str:
    return f"{Path(path).name}::{name}"


def pytest_generate_tests(metafunc):
    from tests.fix_pg import parametrize_sources

    key = _matrix_key(metafunc.definition.path, metafunc.definition.originalname)
    if key in SOURCE_MATRIX:
        parametrize_sources(metafunc, xfail=SOURCE_MATRIX[key])


def pytest_collectreport(report):
    """A matrix entry naming a test its module no longer has would silently drop coverage."""
    if not report.passed or not report.nodeid.startswith("tests/replica/test_"):
        return
    module = Path(report.nodeid).name
    names = {getattr(i, "originalname", i.name) for i in report.result}
    for key in SOURCE_MATRIX:
        mod, _, name = key.partition("::")
        if mod == module and name not in names:
            import warnings

            warnings.warn(pytest.PytestWarning(
                f"tests/replica/conftest.py SOURCE_MATRIX names {key}, which {module} does "
                "not define: rename the entry with the test"), stacklevel=1)


def wait_for(cond: Callable[[], object], timeout: float = 30, what: str = "condition",
             every: float = 0.1):
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def lose_slot_wal(source_db, pg_source, until: Callable[[], object], what: str) -> None:
    """Make the source drop WAL the (stopped) sidecar's slot still needs: cap it with
    max_slot_wal_keep_size = 1MB, write and switch whole segments until ``until()`` holds,
    then lift the cap again whatever happened."""
    with pg_source.connect() as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        for _ in range(4):  # whole WAL segments the slot would need
            source_db.execute("INSERT INTO t SELECT g, repeat('x', 500) FROM"
                              " generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET"
                              " v = excluded.v || 'y'; SELECT pg_switch_wal(); CHECKPOINT")
        wait_for(until, 30, what)
    finally:
        with pg_source.connect() as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")


def digest(conn: psycopg.Connection, table: str, columns: list[str] | None = None):
    """(rows, multiset hash of the rows' text) - equal on both sides iff the tables are."""
    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema or "public", name)
    if columns is None:
        columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum", (ident.as_string(conn),)).fetchall()]
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
    conn.execute("SET TimeZone = 'UTC'")
    return conn.execute(sql.SQL(
        "SELECT count(*), coalesce(sum(('x' || substr(md5({}::text), 1, 15))::bit(60)"
        "::bigint::numeric), 0) FROM {}").format(row, ident)).fetchone()


def same(source_db, replica_db, tables: list[str]) -> bool:
    with source_db.connect() as s, replica_db.connect() as r:
        for t in tables:
            cols = [c[0] for c in s.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (t,)).fetchall()]
            try:
                if digest(s, t, cols) != digest(r, t, cols):
                    return False
            except psycopg.errors.UndefinedTable:
                return False
            except psycopg.errors.UndefinedColumn:
                r.rollback() if not r.autocommit else None
                return False
    return True


class ThreadSidecar:
    """`pgml-replica run` in a thread of the test process (fast to start, state visible)."""

    def __init__(self, **settings) -> None:
        self.settings = Settings(http_port=0, publication_poll_seconds=0.5, **settings)
        self.state = SidecarState(slot=self.settings.slot,
                                  publication=self.settings.publication)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            Runner(self.settings, self.state, self.stop_event).run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> ThreadSidecar:
        self.thread.start()
        return self

    def wait_streaming(self, timeout: float = 60) -> ThreadSidecar:
        wait_for(lambda: self.state.phase == "streaming" or self.error, timeout,
                 "the sidecar to stream")
        if self.error:
            raise self.error
        return self

    def wait_same(self, source_db, replica_db, tables: list[str], timeout: float = 30,
                  what: str = "the target to equal the source") -> None:
        """Until the tables are equal; the sidecar's own error, if it stopped, fails first."""
        def check():
            if self.error is not None:
                raise self.error
            return same(source_db, replica_db, tables)
        wait_for(check, timeout, what)

    def stop(self, timeout: float = 30) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sidecar did not stop"


class ProcessSidecar:
    """A real `python -m replica run` process (for SIGKILL and SIGTERM)."""

    def __init__(self, *args: str, env: dict | None = None, log: Path | None = None) -> None:
        # replication only: `run` also installs pgml on the target unless told not to
        self.env = {**os.environ, "PGML_REPLICA_NO_PGML_INSTALL": "1", **(env or {})}
        quiet = [] if "--http-port" in args or "PGML_REPLICA_HTTP_PORT" in self.env \
            else ["--http-port", "0"]
        self.args = ["run", *quiet, *args]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> ProcessSidecar:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "replica", *self.args], cwd=ROOT,
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def sidecars():
    """Start sidecars through this; every one still running is stopped at the end."""
    started: list = []

    def make(kind: str = "thread", *args, **kwargs):
        sc = ThreadSidecar(**kwargs) if kind == "thread" else ProcessSidecar(*args, **kwargs)
        started.append(sc)
        return sc.start()

    yield make
    for sc in started:
        if isinstance(sc, ThreadSidecar):
            sc.stop_event.set()
            sc.thread.join(30)
        elif sc.alive():
            sc.proc.kill()
            sc.proc.wait(30)
