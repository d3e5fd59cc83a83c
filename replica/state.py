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
from typing import Any

PHASES = ("starting", "snapshot", "streaming", "reconnecting", "stopping", "stopped", "failed")


@dataclass
class SidecarState:
    slot: str = "pgml_replica"
    publication: str = "pgml_replica"
    tables: list[str] = field(default_factory=list)
    phase: str = "starting"
    source_connected: bool = False
    target_connected: bool = False
    received_lsn: int = 0  # highest WAL end seen from the source (XLogData or keepalive)
    applied_lsn: int = 0  # end LSN of the last source transaction committed on the target
    flushed_lsn: int = 0  # last flush LSN sent to the source
    last_commit_time: datetime | None = None  # source commit time of applied_lsn
    last_message_at: float = 0.0  # monotonic time of the last message from the source
    snapshot: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> {rows, total}
    error: str | None = None  # secret-free text of the error that stopped or is retrying
    started_at: float = field(default_factory=time.time)
    status_provider: Callable[[], dict[str, Any]] | None = None

    def lag_bytes(self) -> int:
        return max(0, self.received_lsn - self.applied_lsn)

    def lag_seconds(self) -> float:
        """Seconds since the last applied commit happened on the source; 0 when caught up."""
        if self.last_commit_time is None or self.lag_bytes() == 0:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self.last_commit_time).total_seconds())

    def is_ready(self, max_lag_seconds: float) -> bool:
        return (self.phase == "streaming" and self.source_connected and self.target_connected
                and self.lag_seconds() <= max_lag_seconds)

    def to_dict(self) -> dict[str, Any]:
        from decoder import format_lsn

        return {
            "slot": self.slot,
            "publication": self.publication,
            "tables": list(self.tables),
            "phase": self.phase,
            "source_connected": self.source_connected,
            "target_connected": self.target_connected,
            "received_lsn": format_lsn(self.received_lsn),
            "applied_lsn": format_lsn(self.applied_lsn),
            "flushed_lsn": format_lsn(self.flushed_lsn),
            "lag_bytes": self.lag_bytes(),
            "lag_seconds": round(self.lag_seconds(), 3),
            "last_commit_time": self.last_commit_time.isoformat() if self.last_commit_time
            else None,
            "snapshot": self.snapshot,
            "error": self.error,
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }
