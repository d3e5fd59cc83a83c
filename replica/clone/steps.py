"""Start-up step times: where the time from exec to the last copied row goes (issue 14).

Why its own module: the steps span the CLI, the runner and the copy, and a fresh replica's
time is only improved where it is measured. Each step logs one INFO line with the
monotonic clock (Linux CLOCK_MONOTONIC, the clock a parent's ``time.monotonic()`` reads
too), so a benchmark that notes its own clock before it starts the process can place every
step from exec on (benchmarks/replication.py ``fresh`` does), and a person reading the log
sees each step's time since the CLI module loaded.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("pgml_replica.steps")
LOADED = time.monotonic()  # first imported by the CLI, right after psycopg and pydantic


def mark(step: str, at: float | None = None) -> None:
    """Log that ``step`` finished now (or at ``at``, a monotonic time noted before logging was
    set up); one line, nothing when INFO is off."""
    if log.isEnabledFor(logging.INFO):
        now = time.monotonic() if at is None else at
        log.info("step %s at monotonic %.4f (+%.3f s)", step, now, now - LOADED)
