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

import psycopg
from psycopg.conninfo import conninfo_to_dict

from replica import credentials
from replica.errors import ConfigError, translate
from replica.secrets import register

PINNED = {"datestyle": "ISO", "intervalstyle": "postgres", "extra_float_digits": "3",
          "timezone": "UTC"}
SESSION_OPTIONS = " ".join(f"-c {k}={v}" for k, v in PINNED.items())
CONNECT_TIMEOUT = 15


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


def connect(dsn: str, peer: str, purpose: str, *, autocommit: bool = True,
            timeout: float = CONNECT_TIMEOUT) -> psycopg.Connection:
    """A connection to ``peer`` ("source"/"target") for ``purpose`` (its application_name
    says it too, so the source's pg_stat_activity shows what each session is for)."""
    params = parse_dsn(dsn, peer)
    options = with_pinned_options(params)
    extra = resolve_password(peer, params)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=max(1, int(timeout)),
                               application_name=f"pgml-replica {purpose}",
                               options=options, client_encoding="UTF8", **extra)
    except psycopg.Error as exc:
        raise translate(exc, peer, f"connecting to the {peer} for {purpose}") from None
