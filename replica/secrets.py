"""Connection strings without their secrets, for logs, errors, /status and metrics.

Why parse instead of regex: libpq accepts key=value strings with quoting and URIs with
percent-escapes; ``psycopg.conninfo`` parses both exactly as libpq will, so what we mask is
what libpq would send. ``scrub`` goes further: it knows the actual passwords of the DSNs the
process was given and masks them wherever they turn up (an error message from a server, a
traceback), whatever the surrounding text looks like. ``redact`` is the last line of defence
for what leaves the process (/status, probes): it masks anything *shaped* like a DSN or URI
password, even one this process was never given.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "********"
_SECRET_KEYS = ("password", "sslpassword")


def _parts(dsn: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except Exception:  # unparsable: say nothing about it rather than echo it
        return {}


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


_REGISTERED: set[str] = set()


def register(secret: str | None) -> None:
    """Remember a secret this process obtained outside a DSN (a password file or command, an
    IAM token: replica.credentials) so ``scrub`` and ``redact`` mask it everywhere."""
    if secret and len(secret) >= 4:  # masking "ab" everywhere would mangle every message
        _REGISTERED.add(secret)


def scrub(text: str, secrets: list[str]) -> str:
    """Mask each known secret value (those given and those registered) wherever it appears."""
    for secret in sorted({*secrets, *_REGISTERED}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def with_options(dsn: str, **options: str) -> str:
    """The DSN with extra libpq parameters (application_name, connect_timeout, ...)."""
    return make_conninfo(dsn, **options)


# -- secrets we were never told about: anything shaped like a DSN or URI password ----------

# scheme://user:PASSWORD@host - greedy up to the last '@' before whitespace, so a password
# with an unescaped '@' is still covered (over-redacting a host is the safe side).
_URI_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s]*(?P<tail>@)")
# ?password=... / &password=... in a URI: the value ends at '&', '#' or whitespace.
_URI_PARAM = re.compile(r"(?P<head>[?&](?:password|sslpassword|passwd)=)[^&#\s]*", re.I)
# key=value conninfo (libpq): quoted value with escapes, or a run of non-space characters.
_KV_PASSWORD = re.compile(
    r"(?P<head>(?<![?&\w])(?:password|passwd|pwd|sslpassword|pgpassword)\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*'|[^\s]+)", re.I)
_SECRET_NAMES = re.compile(r"(^|_)(password|passwd|pgpassword|secret|token)$", re.I)


def redact_text(text: str) -> str:
    """Mask registered secrets, and passwords in anything that looks like a DSN or a URI."""
    text = scrub(text, [])
    text = _URI_USERINFO.sub(lambda m: m["head"] + MASK + m["tail"], text)
    text = _URI_PARAM.sub(lambda m: m["head"] + MASK, text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def redact(value: Any) -> Any:
    """Redact every string in a JSON-like value; keys named like a secret lose their value."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_NAMES.search(k)
                    and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
