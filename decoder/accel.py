"""Which implementation of the hot path runs: compiled (decoder._speedups) or pure Python.

Why two: the sidecar's catch-up speed is bound by the Python it runs per change, and a C
extension does the same splitting and encoding several times faster - but it needs a
compiler at install time, and the pure code must stay the reference (psycopg's pattern:
``psycopg`` and the optional ``psycopg_c``). The compiled module is built by setup.py when a
compiler is present (``pip install .`` succeeds either way); ``PGML_REPLICA_PURE=1`` forces
the pure path. Both give the same results and raise the same errors (the compiled code hands
anything malformed back to the pure code), and tests/decoder runs against both.

Callers read ``accel.fast`` (the compiled module or None) and ``accel.copy_rows`` /
``accel.binary_array`` / ``accel.column_arrays`` at call time, so ``select`` switches every caller at once.
Besides decoding, the compiled module has ``frame_change`` (a change read straight out of
the CopyData buffer libpq filled, no copy of the frame) and ``net`` (replica/stream/batch.py's
TableBatch netting, registered there with ``setup_batch`` through ``compiled()``) and
``HistoryStep`` (the history recorder's per-version step: replica/history/compiled.py,
registered with ``setup_history``; ``recorder_for`` picks it while ``fast`` is set).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from decoder import copyfmt

#: The compiled module when it is in use, else None.
fast: ModuleType | None = None
#: "c" or "python".
IMPLEMENTATION = "python"
copy_rows: Callable[..., bytes] = copyfmt.copy_rows
binary_array: Callable[[int, Sequence[bytes | None]], bytes] = copyfmt.binary_array
column_arrays: Callable[..., list[bytes]] = copyfmt.column_arrays


_loaded: list[ModuleType] = []  # the compiled module once set up
_FUNCTIONS = ("setup", "change", "frame_change", "setup_batch", "net", "split", "copy_rows",
              "binary_array", "column_arrays", "setup_history", "HistoryStep")


def _load() -> ModuleType | None:
    if _loaded:
        return _loaded[0]
    try:
        from decoder import _speedups  # type: ignore[attr-defined]  # built by setup.py
    except ImportError:
        return None
    if not all(hasattr(_speedups, name) for name in _FUNCTIONS):
        return None  # built from an older _speedups.c: run pure rather than half
    from decoder.messages import Delete, Insert, Update
    from decoder.tuples import TupleData

    def names(cls: Any) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)

    _speedups.setup(TupleData, names(TupleData), Insert, names(Insert), Update, names(Update),
                    Delete, names(Delete))
    _loaded.append(_speedups)
    return _speedups  # type: ignore[no-any-return]


def available() -> bool:
    """Whether the compiled module is built (whichever is selected)."""
    return _load() is not None


def compiled() -> ModuleType | None:
    """The compiled module whether or not it is selected (None if not built): for a caller
    that registers its own classes with it once (``setup_batch``)."""
    return _load()


def select(name: str) -> None:
    """Use the "c" or the "python" implementation from now on (tests run both)."""
    global fast, IMPLEMENTATION, copy_rows, binary_array, column_arrays
    if name == "python":
        fast, copy_rows, binary_array = None, copyfmt.copy_rows, copyfmt.binary_array
        column_arrays = copyfmt.column_arrays
    elif name == "c":
        mod = _load()
        if mod is None:
            raise RuntimeError("decoder._speedups is not built (no compiler at install?)")
        fast, copy_rows, binary_array = mod, mod.copy_rows, mod.binary_array
        column_arrays = mod.column_arrays
    else:
        raise ValueError(f"implementation must be 'c' or 'python', not {name!r}")
    IMPLEMENTATION = name


def describe() -> str:
    """For the start-up log and /status: which one runs, and why."""
    if IMPLEMENTATION == "c":
        return "c (decoder._speedups)"
    if os.environ.get("PGML_REPLICA_PURE", "") not in ("", "0"):
        return "python (PGML_REPLICA_PURE set)"
    return "python (decoder._speedups not built)"


# -- the copy relay's entry (replica/clone/relay.py) ---------------------------------------
_relay_lib: list[int] = []  # the libpq handle copy_gather was set up with


def relay_gather(libpq: Any) -> Callable[[int, int], tuple[bytes, int, int]] | None:
    """The compiled ``copy_gather(pgconn_ptr, limit)`` (every CopyData message libpq has
    buffered, in one call) set up with ``libpq``'s functions, while the compiled path is
    selected; None means the relay's pure loop (replica/clone/relay.py ``gather``, the
    reference). ``libpq`` is a ``ctypes.CDLL`` of the very libpq the connection runs on,
    found by the caller (decoder/ knows no driver), or None when it could not be found."""
    mod = fast
    if mod is None or libpq is None or not hasattr(mod, "copy_gather"):
        return None  # (an older build without the relay: pure, the rest still compiled)
    import ctypes

    handle = int(getattr(libpq, "_handle", 0) or 0)
    if _relay_lib != [handle]:
        mod.setup_relay(ctypes.cast(libpq.PQgetCopyData, ctypes.c_void_p).value,
                        ctypes.cast(libpq.PQfreemem, ctypes.c_void_p).value)
        _relay_lib[:] = [handle]
    return mod.copy_gather  # type: ignore[no-any-return]


if os.environ.get("PGML_REPLICA_PURE", "") in ("", "0") and available():
    select("c")
