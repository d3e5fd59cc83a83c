"""Connection strings without their secrets, for logs, errors, /status and metrics.

Why parse instead of regex: libpq accepts key=value strings with quoting and URIs with
percent-escapes; ``psycopg.conninfo`` parses both exactly as libpq will, so what we mask is
what libpq would send. ``scrub`` goes further: it knows the actual passwords of the DSNs the
process was given and masks them wherever they turn up (an error message from a server, a
traceback), whatever the surrounding text looks like.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "********"
_SECRET_KEYS = ("password", "sslpassword")


def _parts(dsn: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except Exception:  # unparsable: say nothing about it rather than echo it
        return {}


def redact(dsn: str) -> str:
    """The DSN as libpq key=value text with every secret replaced by a mask."""
    parts = _parts(dsn)
    if not parts:
        return "<unparsable connection string>"
    for key in _SECRET_KEYS:
        if key in parts:
            parts[key] = MASK
    return make_conninfo("", **parts)


def describe(dsn: str) -> str:
    """``user@host:port/dbname`` - what a person needs to know which server is meant."""
    p = _parts(dsn)
    if not p:
        return "<unparsable connection string>"
    host = p.get("host") or p.get("hostaddr") or "localhost"
    port = p.get("port", "5432")
    user = p.get("user", "")
    return f"{user + '@' if user else ''}{host}:{port}/{p.get('dbname', user)}"


def secrets_of(*dsns: str | None) -> list[str]:
    """The secret values inside the given DSNs (for ``scrub``)."""
    found = []
    for dsn in dsns:
        if dsn:
            found += [v for k, v in _parts(dsn).items() if k in _SECRET_KEYS and v]
    return found


def scrub(text: str, secrets: list[str]) -> str:
    """Mask each known secret value wherever it appears in ``text``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def with_options(dsn: str, **options: str) -> str:
    """The DSN with extra libpq parameters (application_name, connect_timeout, ...)."""
    return make_conninfo(dsn, **options)
