"""The sidecar's one error tree: the class says the policy, the message says what to do.

Why classes and not flags: the run loop decides by ``except`` clause alone whether to retry
(``TransientError``), stop and ask a person to change something (``ConfigError``,
``UnsupportedError``, ``ApplyError``), or stop and ask for a new snapshot
(``ResnapshotNeeded``). Nothing above this module matches message text.

Every class the sidecar raises lives here, and ``translate`` is the one place a psycopg error
becomes one of them (psycopg's own ``errors.lookup`` is the model: the class is chosen by
SQLSTATE in one place, never by callers matching text).

Messages never contain a password: DSNs are shown through ``replica.secrets.describe``.
"""

from __future__ import annotations

import psycopg


class ReplicaError(Exception):
    """Root of every error the sidecar raises on purpose."""

    #: label for the ``errors_total{kind}`` metric
    kind = "error"
    #: process exit status when this error stops ``pgml-replica``
    exit_code = 1


class TransientError(ReplicaError):
    """A connection dropped or a server restarted: reconnect with backoff and resume from the
    target's progress row. Nothing was acknowledged that was not committed."""

    kind = "transient"
    #: which side was lost: "source" or "target" (the ``reconnects_total{peer}`` label)
    peer = "source"

    def __init__(self, message: str = "", peer: str | None = None) -> None:
        super().__init__(message)
        if peer is not None:
            self.peer = peer


class ConfigError(ReplicaError):
    """Something on the source, the target or the command line must change before the
    sidecar can run; retrying will not help."""

    kind = "config"
    exit_code = 2


class PreflightError(ConfigError):
    """The source is not ready for logical replication; the message lists what to change."""

    kind = "preflight"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the source is not ready for logical replication:\n  - "
                         + "\n  - ".join(problems))


class ResnapshotNeeded(ReplicaError):
    """The slot cannot deliver what the target needs next (it was invalidated, dropped, or
    belongs to another source): only a fresh copy makes the target exact again."""

    kind = "resnapshot"
    exit_code = 3


class UnsupportedError(ReplicaError):
    """A table, column or type the apply path cannot mirror. Raised before anything about it
    is acknowledged, so fixing the cause and restarting loses nothing."""

    kind = "unsupported"
    exit_code = 4


class UnsupportedTypeError(UnsupportedError):
    """A column whose type cannot travel as COPY BINARY between the two servers."""

    def __init__(self, table: str, column: str, type_name: str, why: str) -> None:
        self.table, self.column, self.type_name = table, column, type_name
        super().__init__(f"table {table}, column {column}: type {type_name} is not supported "
                         f"({why}); exclude the table from the publication, or give the "
                         f"column a supported type (built-in types, enums, domains over "
                         f"them, arrays of built-in types)")


class UnsupportedColumns(UnsupportedError):
    """Several columns of one table, each unsupported: every one is named at once."""

    def __init__(self, problems: list[UnsupportedTypeError]) -> None:
        self.problems = problems
        super().__init__("; ".join(map(str, problems)))


class ApplyError(ReplicaError):
    """The target rejected a change that the source accepted (a constraint or a cast that
    differs between the two). The batch was rolled back; nothing was acknowledged."""

    kind = "apply"
    exit_code = 5


class NullRejected(ApplyError):
    """The target refused a NULL the source accepted: the source dropped a NOT NULL and the
    catalog did not say so in time. The runner relaxes the target and replays."""

    def __init__(self, schema: str, table: str, column: str, message: str) -> None:
        self.schema, self.table, self.column = schema, table, column
        super().__init__(message)


class ProtocolError(ReplicaError):
    """The stream held bytes the decoder rejects (corrupt, or a protocol it does not know).
    The open batch was rolled back; restarting replays from the last commit."""

    kind = "protocol"
    exit_code = 6


class ConnectionRejected(ConfigError):
    """A server refused us for a reason that waiting will not fix: a wrong password, a role
    or database that does not exist, a missing privilege or pg_hba.conf entry, a TLS
    certificate that does not verify. Stop and say which side and what to change."""

    kind = "rejected"
    exit_code = 7

    def __init__(self, message: str, peer: str = "source") -> None:
        super().__init__(message)
        self.peer = peer


class SnapshotInterrupted(ReplicaError):
    """Stopped on request; the tables not finished are copied again by the next run."""

    kind = "interrupted"
    exit_code = 0


class InstallError(ConfigError):
    """The pgml schema could not be installed; the message says what to change on the target."""

    kind = "install"


class HttpServerError(ConfigError):
    """The HTTP server could not start (port taken, address not local): fix the address."""

    kind = "http"


class WritebackError(ConfigError):
    """Write-back could not be set up or removed; nothing was half-made on the side that failed.

    Policy: stop and fix what the message says (a flag, a grant, the network path from the
    source to the replica), then run the command again; it is idempotent.
    """

    kind = "writeback"


# -- the replication connection -------------------------------------------------------


class ReplicationError(ReplicaError):
    """Root of the replication connection's errors."""


class ReplicationCommandError(ReplicationError):
    """The server refused a replication command (``sqlstate`` says why, e.g. 42704 no such
    slot, 42710 slot exists)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)


class SlotInUse(ReplicationCommandError, TransientError):
    """55006: another process (often our own previous incarnation, not yet timed out on the
    source) still holds the slot: wait and try again."""


class ReplicationConnectionError(ReplicationError, TransientError, psycopg.OperationalError):
    """The connection could not be opened or dropped mid-stream: reconnect and resume from
    the last flushed LSN."""


class ReplicationDsnError(ReplicationError, ConfigError):
    """The connection string cannot be parsed; libpq's reason is not repeated because it
    quotes the string, secrets included."""


class ReplicationStreamEnded(ReplicationError, TransientError):
    """The server ended the COPY BOTH stream (shutdown, or a walsender error such as
    wal_sender_timeout); ``sqlstate`` is set when it said why."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)


def command_error(message: str, sqlstate: str | None) -> ReplicationCommandError:
    """The class for a refused replication command, chosen by SQLSTATE here only."""
    cls = SlotInUse if sqlstate == "55006" else ReplicationCommandError
    return cls(message, sqlstate)


# -- psycopg errors into the tree -------------------------------------------------------

# SQLSTATE classes and codes after which waiting and reconnecting can succeed.
_TRANSIENT_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator, system
_PERMANENT_CODES = {
    "28000": "the server refused the role (no pg_hba.conf entry, or login not allowed)",
    "28P01": "the password was refused",
    "3D000": "the database does not exist",
    "42501": "the role lacks a privilege it needs",
}
# A failed *connection attempt* carries no SQLSTATE in libpq (there is no result to read it
# from), only the server's FATAL text; these are the English forms of the permanent ones.
# Kept here, beside the codes they stand for, so no caller ever matches message text.
_PERMANENT_CONNECT_TEXT = (
    ("password authentication failed", "28P01"),
    ("no password supplied", "28P01"),
    ("authentication failed", "28000"),
    ("no pg_hba.conf entry", "28000"),
    ("is not permitted to log in", "28000"),
    ("does not exist", "3D000"),  # database "x" / role "x" does not exist
    ("permission denied", "42501"),
    ("must be superuser or replication role", "42501"),
    ("certificate verify failed", "28000"),
    ("server certificate for", "28000"),  # host name does not match the certificate
    ("root certificate file", "28000"),
)


def _connect_sqlstate(exc: psycopg.Error) -> str | None:
    if exc.sqlstate:
        return exc.sqlstate
    return permanent_connect_code(str(exc))


def permanent_connect_code(message: str) -> str | None:
    """The SQLSTATE a failed connection attempt stands for, if waiting will not fix it."""
    for fragment, code in _PERMANENT_CONNECT_TEXT:
        if fragment in message:
            return code
    return None


def rejected(code: str, peer: str, doing: str, detail: str) -> ConnectionRejected:
    return ConnectionRejected(f"{doing} on the {peer}: {_PERMANENT_CODES[code]} ({detail}); "
                              f"fix the {peer} connection settings or grants and start again",
                              peer)


def translate(exc: BaseException, peer: str, doing: str) -> BaseException:
    """The ReplicaError whose class says what to do about ``exc``, raised while ``doing``
    something on ``peer`` ("source" or "target"). Anything that is not a psycopg error is
    returned unchanged. The message is psycopg's, which may quote a DSN: callers scrub it."""
    if isinstance(exc, ReplicaError) or not isinstance(exc, psycopg.Error):
        return exc
    detail = str(exc).strip()
    sqlstate = _connect_sqlstate(exc) if isinstance(exc, psycopg.OperationalError) \
        else exc.sqlstate
    if sqlstate in _PERMANENT_CODES:
        return rejected(sqlstate, peer, doing, detail)
    if isinstance(exc, psycopg.OperationalError) or (sqlstate or "")[:2] in _TRANSIENT_CLASSES:
        return TransientError(f"{doing}: lost the {peer}: {detail}", peer)
    if isinstance(exc, psycopg.errors.NotNullViolation):
        d = exc.diag
        return NullRejected(d.schema_name or "", d.table_name or "", d.column_name or "",
                            f"{doing}: the {peer} rejected a NULL: {d.message_primary}")
    return ApplyError(f"{doing}: the {peer} refused it: {exc.diag.message_primary or detail}")
