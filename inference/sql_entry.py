"""How every SQL entry point reports errors: a library error (inference.errors) becomes a
PostgreSQL error with its message and the SQLSTATE its class carries - nothing else decides a
code. Shared by sql_api.py and the modules beside it (sql_scale.py, sql_history.py).
"""

from __future__ import annotations

import functools
import json

import plpy

from inference.errors import PgmlError


def _raise(exc: PgmlError):
    """Re-raise a library error as a PostgreSQL error: its message, its class's SQLSTATE."""
    plpy.error(str(exc), sqlstate=exc.sqlstate)


def _entry(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PgmlError as exc:
            _raise(exc)
    return wrapper


def _json(value: str | None):
    """A jsonb argument (PL/Python passes its text) as a Python value; NULL as {}."""
    return json.loads(value) if value else {}
