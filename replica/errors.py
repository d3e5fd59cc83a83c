"""The sidecar's one error tree: the class says the policy, the message says what to do.

Why classes and not flags: the run loop decides by ``except`` clause alone whether to retry
(``TransientError``), stop and ask a person to change something (``ConfigError``,
``UnsupportedError``, ``ApplyError``), or stop and ask for a new snapshot
(``ResnapshotNeeded``). Nothing above this module matches message text.

Messages never contain a password: DSNs are shown through ``replica.secrets.describe``.
"""

from __future__ import annotations


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
