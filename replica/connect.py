"""Every ordinary (non-replication) connection the sidecar opens, opened one way.

Why one place: the sidecar reads values as text in some places (a column's default from the
catalog, ``attmissingval::text``) and parses them on the other server, so every session must
speak the same dialect whatever ``ALTER ROLE ... SET`` or ``ALTER DATABASE ... SET`` says:
ISO dates, ``postgres`` intervals, floats that round-trip, UTF8, UTC. Options sent in the
startup packet outrank role and database settings (PGC_S_CLIENT), so pinning them here is
enough; the replication connection pins the same ones (``SESSION_OPTIONS``). Failures go
through ``errors.translate``, so a refused password stops and a reset connection retries.
The password is asked of ``replica.credentials`` at every connect (``resolve_password``): a
rotated file, a secret command or an IAM token that expires is read anew each time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from replica import credentials
from replica.errors import ConfigError, ReplicaError, translate
from replica.secrets import register

log = logging.getLogger("pgml_replica")

PINNED = {"datestyle": "ISO", "intervalstyle": "postgres", "extra_float_digits": "3",
          "timezone": "UTC"}
SESSION_OPTIONS = " ".join(f"-c {k}={v}" for k, v in PINNED.items())
CONNECT_TIMEOUT = 15
#: A peer that vanishes without a RST (a half-open TCP connection) is noticed by the kernel
#: within ~25 s while we wait for a reply (keepalives: 10 s idle + 3 x 5 s), and within 30 s
#: while data we sent goes unacknowledged (tcp_user_timeout); a DSN that sets any of these
#: keeps its own value. libpq applies them to TCP connections only.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
              "keepalives_count": "3", "tcp_user_timeout": "30000"}


def network_defaults(params: dict) -> dict:
    """The KEEPALIVES the DSN ``params`` do not set themselves."""
    return {k: v for k, v in KEEPALIVES.items() if k not in params}


def parse_dsn(dsn: str, peer: str) -> dict:
    """The DSN's parameters; an unparsable one is a ConfigError that does not repeat libpq's
    reason, because libpq quotes the offending text - a password included."""
    try:
        return dict(conninfo_to_dict(dsn))
    except psycopg.Error:
        raise ConfigError(f"the {peer} connection string cannot be parsed; check its "
                          "key=value quoting or URI escaping") from None


def with_pinned_options(params: dict) -> str:
    """``options`` for these parameters: ours, then the user's own DSN options, which win (of
    two ``-c`` for one setting the later wins) - an explicit choice in the DSN is honoured,
    while role and database defaults never reach us."""
    return f"{SESSION_OPTIONS} {params.get('options') or ''}".strip()


def resolve_password(peer: str, params: dict) -> dict:
    """``{"password": ...}`` from the peer's credential provider (registered with the scrubbing
    before it is used), or ``{}`` when the DSN, PGPASSWORD or .pgpass decide."""
    password = credentials.password(peer, params)
    if password is None:
        return {}
    register(password)
    return {"password": password}


def credential_params(dsn: str, peer: str) -> dict:
    """For code that opens its own psycopg connection (and keeps its own error handling):
    the password the peer's provider gives now, as a keyword for ``psycopg.connect``."""
    try:
        params = dict(conninfo_to_dict(dsn))
    except psycopg.Error:  # psycopg.connect reports it
        return {}
    return resolve_password(peer, params)


def connect(dsn: str, peer: str, purpose: str, *, autocommit: bool = True,
            timeout: float = CONNECT_TIMEOUT, statement_timeout: float | None = None
            ) -> psycopg.Connection:
    """A connection to ``peer`` ("source"/"target") for ``purpose`` (its application_name
    says it too, so the source's pg_stat_activity shows what each session is for).
    ``statement_timeout`` (seconds) bounds every statement of a connection that must never
    wait long, as the stream's catalog connection (a DSN's own options still win)."""
    params = parse_dsn(dsn, peer)
    options = with_pinned_options(params)
    if statement_timeout:
        options = f"-c statement_timeout={int(statement_timeout * 1000)} {options}"
    extra = {**network_defaults(params), **resolve_password(peer, params)}
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=max(1, int(timeout)),
                               application_name=f"pgml-replica {purpose}",
                               options=options, client_encoding="UTF8", **extra)
    except psycopg.Error as exc:
        raise translate(exc, peer, f"connecting to the {peer} for {purpose}") from None
    if peer == "target":
        _reap(conn, dsn)
    return conn


# Target sessions this process opened: (dsn, pid) -> (the connection, its backend_start).
_OPENED: dict[tuple[str, int], tuple[weakref.ref, object]] = {}
_OPENED_LOCK = threading.Lock()
REAP_WAIT_MS = 5000


def _reap(conn: psycopg.Connection, dsn: str) -> None:
    """End the target sessions this process gave up (their connection closed or lost) that
    the server still runs, then remember ``conn``'s. Why: a session whose client vanished
    without the server noticing (a dead path, a middlebox that keeps it open, a reply path
    gone silent) lives on until the server's own keepalive ends it - hours by default -
    holding what it locked (a copy's TRUNCATE takes the table's ACCESS EXCLUSIVE lock), and
    the copy or the apply that replaces it would wait on it without end; if its COMMIT
    still arrives later, it commits what the sidecar has already replayed elsewhere. Only
    sessions this process opened are ended, told apart by pid and backend_start (a pid the
    server reused is another session). On 14+ the reap waits until they are gone (up to
    ``REAP_WAIT_MS`` each): a COMMIT one of them was still running lands before the caller
    reads the progress row, never after it replays. The new session's first round trip
    does both."""
    with _OPENED_LOCK:
        gone = [k for k, (ref, _) in _OPENED.items()
                if k[0] == dsn and ((c := ref()) is None or c.closed)]
        stale = [(k[1], _OPENED.pop(k)[1]) for k in gone]
    try:
        wait = sql.SQL(", {}").format(REAP_WAIT_MS) if conn.info.server_version >= 140000 \
            else sql.SQL("")
        row = conn.execute(sql.SQL(
            "WITH t AS MATERIALIZED (SELECT pid, pg_terminate_backend(pid{}) AS ended"
            " FROM (SELECT a.pid FROM pg_stat_activity a JOIN unnest(%s::int[],"
            " %s::timestamptz[]) g(p, s) ON a.pid = g.p AND a.backend_start = g.s OFFSET 0) m)"
            " SELECT (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()),"
            " (SELECT array_agg(pid) FROM t WHERE ended),"
            " (SELECT array_agg(pid) FROM t WHERE NOT ended)").format(wait),
            ([p for p, _ in stale], [t for _, t in stale])).fetchone()
        if not conn.autocommit:
            conn.rollback()
    except psycopg.Error as exc:  # a role that may not: never a reason not to connect
        log.warning("could not end the target sessions this process gave up: %s",
                    exc.diag.message_primary or type(exc).__name__)
        if not conn.autocommit:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        return
    if row[1]:
        log.warning("ended target sessions this process had given up, still running there "
                    "(pids %s)", ", ".join(map(str, row[1])))
    if row[2]:  # stopped, or stuck in the kernel: they end when they run again
        log.warning("target sessions this process gave up did not end within %d ms of being"
                    " told to (pids %s)", REAP_WAIT_MS, ", ".join(map(str, row[2])))
    with _OPENED_LOCK:
        _OPENED[(dsn, conn.info.backend_pid)] = (weakref.ref(conn), row[0])


@contextlib.contextmanager
def bounded(conn: psycopg.Connection, seconds: float):
    """Shut the connection's socket down if the block takes longer than ``seconds``: the
    blocked read then fails (OperationalError, a lost connection). Why not only
    statement_timeout or keepalives: a peer that accepts bytes but never answers (a stuck
    proxy or pooler, a stopped server) is invisible to both."""
    timer = threading.Timer(seconds, _cut, (conn,))
    timer.daemon = True
    timer.start()
    try:
        yield conn
    finally:
        timer.cancel()


def _cut(conn: psycopg.Connection) -> None:
    """Shut the socket down under whoever waits on it: the wait fails as a lost connection."""
    with contextlib.suppress(OSError, psycopg.Error):
        socket.socket(fileno=os.dup(conn.fileno())).shutdown(socket.SHUT_RDWR)


# The backend of a session waiting on a reply: is it working on it? ('disabled' or NULL:
# track_activities is off or we may not see it - then nothing can be told, and it is left)
_BACKEND_SQL = ("SELECT state, now() - state_change > make_interval(secs => %s)"
                " FROM pg_stat_activity WHERE pid = %s")


class Watchdog:
    """Bounds how long ``conn`` may wait on a server that accepts bytes but never answers
    (a stuck proxy or pooler, a reply path gone silent while the kernel still ACKs, a
    backend stopped with SIGSTOP). Keepalives and tcp_user_timeout cannot see these (the
    bytes are acknowledged), and statement_timeout runs on the server that is stuck.

    Why not a plain timeout on every statement: a statement may rightly run long (an ALTER
    that rewrites a big table, a lock wait up to lock_timeout). So the watchdog asks the
    server, over a new session, what the backend is doing once a wait has lasted
    ``seconds``: working on a statement ('active') - busy, look again later; idle for longer
    than ``seconds`` while we wait for it, gone, or no answer from a new session within
    ``seconds`` either - stuck. Then it terminates that backend (so that what it holds can
    never commit after the sidecar has moved on: a stopped backend dies of it as soon as
    it runs again, before it reads another statement) and shuts the socket down: the wait
    fails as a lost connection, and the caller reconnects and replays. A wait is noticed
    between ``seconds`` and 3.25 x ``seconds`` after it began (sampling at a quarter, plus
    the probe's own bounds: connecting, then its query). Not bounded: a backend frozen in the middle of a statement
    ('active' forever, indistinguishable from a long statement).

    Psycopg holds ``conn.lock`` while a statement or a COPY waits on the server: the
    watchdog only looks at that, so it needs no hook in the code that uses the connection.
    Its thread ends when the connection is closed or after it cut it.
    """

    def __init__(self, conn: psycopg.Connection, dsn: str, peer: str, seconds: float) -> None:
        self.conn, self.dsn, self.peer, self.seconds = conn, dsn, peer, seconds
        self.pid = conn.info.backend_pid
        self.cut = threading.Event()  # set once it cut the connection
        self.moved_at = 0.0  # the last sign of life a caller reported (moved)
        threading.Thread(target=self._run, name=f"watchdog-{peer}-{self.pid}",
                         daemon=True).start()

    def _run(self) -> None:
        held_at = since = None
        while not self.conn.closed and not self.cut.wait(self.seconds / 4):
            if not self.conn.lock.locked():
                held_at = since = None
                continue
            now = time.monotonic()
            if held_at is None:
                held_at = since = now
            elif now - max(held_at, self.moved_at) >= self.seconds:
                if not self._stuck(now - (since or now)):
                    held_at = now  # busy: look again a bound later
                    continue
                _cut(self.conn)
                self.cut.set()

    def moved(self) -> None:
        """Bytes arrived: a wait still going on counts from now. For a caller that holds
        ``conn.lock`` across a long exchange (the copy's relay): a COPY TO whose backend has
        sent everything ('idle in transaction') while a slow path still delivers it is not
        stuck."""
        self.moved_at = time.monotonic()

    def _stuck(self, waited: float) -> bool:
        why = "no answer from a new session either"
        try:
            with connect(self.dsn, self.peer, "watchdog", timeout=self.seconds) as probe, \
                    bounded(probe, self.seconds):
                row = probe.execute(_BACKEND_SQL, (self.seconds, self.pid)).fetchone()
                if row is not None and (row[0] in (None, "active", "disabled") or not row[1]):
                    if row[0] == "active":  # busy, not stuck - but never silent about it
                        log.warning("the %s has worked on one statement for %.0f s (backend"
                                    " pid %s); still waiting - a slow plan, a lock wait or a"
                                    " big rewrite", self.peer, waited, self.pid)
                    return False
                why = "its session is gone" if row is None else f"its backend is {row[0]}"
                if row is not None:
                    probe.execute("SELECT pg_terminate_backend(%s)", (self.pid,))
                    why += ", terminated"
        except (ReplicaError, psycopg.Error, OSError) as exc:
            why += f" ({type(exc).__name__})"
        if self.conn.closed or not self.conn.lock.locked():
            return False  # the wait ended while we asked (its session gone: closed by its owner)
        log.warning("the %s has not answered a statement for over %g s (backend pid %s: %s);"
                    " dropping the connection", self.peer, self.seconds, self.pid, why)
        return True
