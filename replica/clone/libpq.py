"""The libpq psycopg itself runs on, as a ``ctypes.CDLL``: for the compiled copy relay.

Why: decoder._speedups ``copy_gather`` calls ``PQgetCopyData`` on psycopg's own ``PGconn``
(``pgconn.pgconn_ptr``), so its function pointers must come from the same copy of libpq -
another copy (the system's beside psycopg_binary's bundled one) has other internals, and
calling it on that connection would corrupt it. Which copy depends on ``pq.__impl__``:
"binary" loads the libpq bundled under ``psycopg_binary.libs``, "python" loads one with ctypes
(we take that very object), "c" links the system's. The loaded one is found in
/proc/self/maps and opened with ``RTLD_NOLOAD`` (the copy already in the process, never a new
one), and its version must be psycopg's. Anything uncertain - no /proc (not Linux), two
candidates, a version that differs - answers None: the relay runs its pure loop.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from typing import Any

from psycopg import pq


@cache
def loaded() -> Any:
    """psycopg's libpq as a ``ctypes.CDLL`` with ``PQgetCopyData`` and ``PQfreemem``, or None."""
    try:
        lib = _find(pq.__impl__)
        if lib is None or lib.PQlibVersion() != pq.version():
            return None
        lib.PQgetCopyData, lib.PQfreemem  # noqa: B018  (both there, or AttributeError)
    except (OSError, AttributeError, ImportError):
        return None
    return lib


def _find(impl: str) -> Any:
    if impl == "python":
        from psycopg.pq import _pq_ctypes  # the CDLL psycopg's ctypes wrapper loaded

        return _pq_ctypes.pq
    paths = mapped()
    if impl == "binary":
        import psycopg_binary  # type: ignore[import-not-found]

        libs = os.path.realpath(os.path.join(os.path.dirname(psycopg_binary.__file__),
                                             os.pardir, "psycopg_binary.libs"))
        paths = {p for p in paths if os.path.dirname(p) == libs}
    elif impl == "c":
        paths = {p for p in paths if "psycopg_binary" not in p}
    else:
        return None
    if len(paths) != 1:
        return None
    mode = getattr(os, "RTLD_NOLOAD", 0)
    if not mode:
        return None  # without it CDLL could load a second copy
    return ctypes.CDLL(paths.pop(), mode=mode | os.RTLD_LAZY)


def mapped() -> set[str]:
    """The libpq shared objects mapped into this process (real paths); empty without /proc."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return {os.path.realpath(p) for line in f
                    if (p := line.rstrip("\n").split(None, 5)[-1]).startswith("/")
                    and os.path.basename(p).startswith("libpq")}
    except OSError:
        return set()
