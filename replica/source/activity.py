"""Who the sidecar is waiting for on the source, said out loud while it waits.

Why: CREATE_REPLICATION_SLOT waits for every transaction open at that moment before its
snapshot can be taken, and a table copy waits for any lock an open transaction holds. On a
busy RDS such a transaction (a report, a forgotten ``psql`` idle in transaction) can stay
open for hours, and a sidecar that waits silently cannot be told from one that hangs. So
while a step may wait, a ``WaitWatcher`` thread asks the source every second - over its own
catalog connection, since the waiting one is busy - which of our backends wait and which
sessions block them (``pg_blocking_pids``, which sees a walsender waiting on a transaction id
as well as a COPY waiting on a table lock), and once the wait is longer than a few seconds
puts the phase ``waiting_for_transactions``, the blockers in ``state.waiting`` (/status, the
dashboard), a log line every 10 s and ``pgml_replica_wait_seconds{what}``.

What a blocker shows: pid, user, application, client, state, how long its transaction has
been open, and the start of its query with every string literal blanked and DSN-shaped
passwords masked - a query text can hold a secret (``ALTER ROLE ... PASSWORD '...'``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass

import psycopg

from replica import metrics
from replica.connect import connect
from replica.errors import ReplicaError
from replica.secrets import redact_text
from replica.state import Phase, SidecarState

log = logging.getLogger("pgml_replica")

QUERY_CHARS = 80
_LITERAL = re.compile(r"'(?:[^']|'')*'?")
_DOLLAR = re.compile(r"\$(\w*)\$.*?(?:\$\1\$|\Z)", re.S)

#: application_name of our backends per step (replica.connect sets "pgml-replica <purpose>")
SLOT_CREATION = ("pgml-replica", "pgml-replica sync")
COPY = ("pgml-replica copy",)
PREFLIGHT = ("pgml-replica preflight",)  # creating or altering the publication takes locks

_WAITS = """
SELECT w.pid, w.wait_event_type, w.wait_event, b.pid, b.usename, b.application_name,
       b.client_addr::text, b.state, extract(epoch FROM now() - b.xact_start)::float8,
       left(b.query, 1000)
FROM pg_stat_activity w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
JOIN pg_stat_activity b ON b.pid = bp.pid
WHERE w.application_name = ANY(%s) AND w.datname = current_database()
  AND w.pid <> pg_backend_pid()
ORDER BY b.xact_start NULLS LAST, b.pid
"""


def query_start(text: str | None) -> str:
    """The start of a query, safe to show: literals blanked, passwords masked, one line."""
    text = _DOLLAR.sub("$$?$$", text or "")
    text = _LITERAL.sub("'?'", text)
    text = " ".join(redact_text(text).split())
    return text if len(text) <= QUERY_CHARS else text[:QUERY_CHARS - 1] + "…"


@dataclass(frozen=True)
class Blocker:
    """One source session our backend waits for."""

    pid: int
    user: str | None
    application: str | None
    client: str | None
    state: str | None
    transaction_seconds: float | None
    query: str
    waiter_pid: int
    wait_event: str

    def describe(self) -> str:
        age = ("no transaction" if self.transaction_seconds is None
               else f"transaction open {self.transaction_seconds:.0f} s")
        return (f"pid {self.pid} (user {self.user}, application {self.application!r}, "
                f"{self.state}, {age}): {self.query}")


def blockers(conn: psycopg.Connection, applications: tuple[str, ...]) -> list[Blocker]:
    """The sessions that block our backends named ``applications`` in this database."""
    rows = conn.execute(_WAITS, (list(applications),)).fetchall()
    return [Blocker(pid=r[3], user=r[4], application=r[5], client=r[6], state=r[7],
                    transaction_seconds=None if r[8] is None else round(r[8], 1),
                    query=query_start(r[9]), waiter_pid=r[0], wait_event=f"{r[1]}:{r[2]}")
            for r in rows]


class WaitWatcher:
    """``with WaitWatcher(dsn, state, "slot", SLOT_CREATION): rc.create_slot(...)`` - reports
    the wait while the body runs, and clears it (phase, status, metric) when it ends."""

    def __init__(self, dsn: str, state: SidecarState, what: str,
                 applications: tuple[str, ...], *, poll: float = 1.0, after: float = 2.0,
                 log_every: float = 10.0) -> None:
        self.dsn, self.state, self.what, self.applications = dsn, state, what, applications
        self.poll, self.after, self.log_every = poll, after, log_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wait-watcher-{what}",
                                        daemon=True)
        self._since: float | None = None
        self._logged = 0.0
        self._prev: Phase | None = None

    def __enter__(self) -> WaitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.wait(self.poll):
                try:
                    if conn is None:
                        conn = connect(self.dsn, "source", "wait watcher", timeout=5)
                    found = blockers(conn, self.applications)
                except (ReplicaError, psycopg.Error) as exc:  # seeing is best effort
                    log.debug("wait watcher: %s", type(exc).__name__)
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                if found:
                    now = time.monotonic()
                    self._since = self._since or now
                    if now - self._since >= self.after:
                        self._report(found, now - self._since)
                elif self._since is not None:
                    self._clear()
        finally:
            if self._since is not None:
                self._clear()
            if conn is not None:
                conn.close()

    def _report(self, found: list[Blocker], waited: float) -> None:
        state = self.state
        state.waiting = {"what": self.what, "seconds": round(waited, 1),
                         "blockers": [asdict(b) for b in found]}
        if state.phase != Phase.WAITING_FOR_TRANSACTIONS:
            self._prev = state.phase
            state.phase = Phase.WAITING_FOR_TRANSACTIONS
        metrics.WAIT_SECONDS.labels(self.what).set(waited)
        now = time.monotonic()
        if now - self._logged >= self.log_every:
            self._logged = now
            doing = "slot creation" if self.what == "slot" else self.what
            log.warning("%s has waited %.0f s for %d open transaction(s) on the source to end "
                        "(commit or roll them back, or wait): %s", doing, waited, len(found),
                        "; ".join(b.describe() for b in found))

    def _clear(self) -> None:
        waited = time.monotonic() - (self._since or time.monotonic())
        self._since = None
        if self.state.waiting is not None:
            log.info("%s waited %.0f s; it goes on", self.what, waited)
        self.state.waiting = None
        if self.state.phase == Phase.WAITING_FOR_TRANSACTIONS and self._prev is not None:
            self.state.phase = self._prev
        self._prev = None
        metrics.WAIT_SECONDS.labels(self.what).set(0)
