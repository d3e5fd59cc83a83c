"""The recorder with its per-version step compiled (decoder._speedups.HistoryStep).

Why a subclass: ``Recorder.change`` runs once per applied change, and its Python (about half
a microsecond a version) was the sidecar's main extra cost with ``--history``. The compiled
step appends exactly the tuples the pure method does, so the state that method reads and
writes per change - the relation-id map, the packed commit time and LSN, the sequence
number, the buffered count, the writer and its hand-over flag - lives in the step, and the
recorder's attributes of those names are properties onto it: every other method (begin,
truncate, take, write, forget, the streamed recorder's) stays the pure code, unchanged, and
sees one state. ``change`` is the step's method itself, set on the instance (no Python frame
per change); whatever the step does not handle it hands to the pure ``Recorder.change``
(the reference; tests/replica/test_history_encode.py compares the two version by version).

``recorder_for`` picks this class when decoder.accel runs the compiled hot path
(``PGML_REPLICA_PURE=1`` or no compiler: the pure Recorder).
"""

from __future__ import annotations

from typing import Any

from decoder import accel
from replica.history import recorder as _rec
from replica.history.recorder import Recorder
from replica.history.staged import StagedRecorder


def _on_step(member: str) -> property:
    """The recorder's attribute as the step's member ``member``."""

    def get(self: Any) -> Any:
        return getattr(self._step, member)

    def put(self: Any, value: Any) -> None:
        setattr(self._step, member, value)

    return property(get, put, doc=f"HistoryStep.{member}")


class CompiledRecorder(Recorder):
    """A Recorder whose ``change`` is decoder._speedups.HistoryStep.change."""

    _by_rel = _on_step("by_rel")
    _time = _on_step("time")
    _lsn = _on_step("lsn")
    _seq = _on_step("seq")
    _buffered = _on_step("buffered")
    _free = _on_step("free")
    writer = _on_step("writer")

    def __init__(self, tables: frozenset[str], retention) -> None:
        fast = accel.fast
        if fast is None:
            raise RuntimeError("the compiled history step needs decoder._speedups selected")
        self._step = fast.HistoryStep(self, Recorder.change)
        self._step.spill_at = _rec.SPILL
        super().__init__(tables, retention)
        self.change = self._step.change  # type: ignore[method-assign]  # the compiled step

    def streamed(self) -> Recorder:
        """A recorder for one streamed transaction, compiled too."""
        return CompiledStagedRecorder(self.tables, self.retention)


class CompiledStagedRecorder(CompiledRecorder, StagedRecorder):
    """StagedRecorder (replica/history/staged.py) with the compiled step."""


def recorder_class() -> type[Recorder]:
    """CompiledRecorder when decoder.accel runs the compiled hot path, else Recorder."""
    return CompiledRecorder if accel.fast is not None else Recorder


_built = accel.compiled()
if _built is not None:  # accel loads it only with every function, setup_history included
    _built.setup_history(_rec._Table, ("tw", "images", "keyed", "key_pos", "columns"))
