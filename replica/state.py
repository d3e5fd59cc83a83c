"""What the running sidecar knows about itself, shared between the stream loop and HTTP.

Why a plain object: the replication loop is the only writer (one thread); the HTTP app only
reads, so simple attribute reads are safe under the GIL and nobody waits on a lock. /readyz,
/status and the dashboard are answered from here without touching the databases on the hot
path; ``status_provider`` (set by the CLI) adds the database-backed view for /status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """Where the sidecar is; the values are what /status, /readyz and the dashboard show."""

    STARTING = "starting"
    WAITING_FOR_TRANSACTIONS = "waiting_for_transactions"  # source sessions block a step
    COPYING = "copying"  # the initial copy (or a table re-copied mid-stream)
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    STOPPING = "stopping"  # SIGTERM/SIGINT: finishing or rolling back the batch in hand
    STOPPED = "stopped"
    FAILED = "failed"


def replication_lag(source_lsn: int, applied_lsn: int, applied_commit_time: datetime | None,
                    now: datetime | None = None) -> tuple[int, float]:
    """(bytes, seconds) the target is behind the source - the one formula for the live state,
    ``status`` and the metrics. Seconds are measured from the source commit time of the last
    applied transaction, and are 0 only when no byte is outstanding."""
    behind = max(0, source_lsn - applied_lsn)
    if behind == 0 or applied_commit_time is None:
        return behind, 0.0
    now = now or datetime.now(UTC)
    return behind, max(0.0, (now - applied_commit_time).total_seconds())


@dataclass
class SidecarState:
    slot: str = "pgml_replica"
    publication: str = "pgml_replica"
    tables: list[str] = field(default_factory=list)
    phase: Phase = Phase.STARTING
    source_connected: bool = False
    target_connected: bool = False
    received_lsn: int = 0  # highest WAL end seen from the source (XLogData or keepalive)
    source_lsn: int = 0  # the source's WAL position when last asked (pg_current_wal_lsn)
    applied_lsn: int = 0  # end LSN of the last source transaction committed on the target
    flushed_lsn: int = 0  # last flush LSN sent to the source
    last_commit_time: datetime | None = None  # source commit time of applied_lsn
    last_message_at: float = 0.0  # monotonic time of the last message from the source
    snapshot: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> {rows, total}
    error: str | None = None  # secret-free text of the error that stopped or is retrying
    waiting: dict[str, Any] | None = None  # what waits on which source sessions (activity.py)
    protocol: int | None = None  # pgoutput proto_version this session negotiated
    stream_options: dict[str, str] = field(default_factory=dict)  # streaming, origin, ...
    started_at: float = field(default_factory=time.time)
    status_provider: Callable[[], dict[str, Any]] | None = None

    def _lag(self) -> tuple[int, float]:
        # the source's own position too, not only what arrived: a silent connection must not
        # look caught up
        return replication_lag(max(self.received_lsn, self.source_lsn), self.applied_lsn,
                               self.last_commit_time)

    def lag_bytes(self) -> int:
        return self._lag()[0]

    def lag_seconds(self) -> float:
        """Seconds since the last applied commit happened on the source; 0 when caught up."""
        return self._lag()[1]

    def is_ready(self, max_lag_seconds: float) -> bool:
        return (self.phase == Phase.STREAMING and self.source_connected and self.target_connected
                and self.lag_seconds() <= max_lag_seconds)

    def to_dict(self) -> dict[str, Any]:
        from decoder import format_lsn

        return {
            "slot": self.slot,
            "publication": self.publication,
            "tables": list(self.tables),
            "phase": str(self.phase),
            "source_connected": self.source_connected,
            "target_connected": self.target_connected,
            "received_lsn": format_lsn(self.received_lsn),
            "source_lsn": format_lsn(self.source_lsn),
            "applied_lsn": format_lsn(self.applied_lsn),
            "flushed_lsn": format_lsn(self.flushed_lsn),
            "lag_bytes": self.lag_bytes(),
            "lag_seconds": round(self.lag_seconds(), 3),
            "last_commit_time": self.last_commit_time.isoformat() if self.last_commit_time
            else None,
            "snapshot": self.snapshot,
            "error": self.error,
            "waiting": self.waiting,
            "protocol": self.protocol,
            "stream_options": dict(self.stream_options),
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }
