"""Per-process CPU accounting for the replication benchmark's catch-up phases (issue 14).

Why: a catch-up phase's rows/s says who is faster, not who is the bound. Reading each
involved process's CPU seconds (``/proc/<pid>/stat`` utime + stime for the sidecar, all its
threads; ``/proc/<pid>/schedstat`` for the one-thread PostgreSQL processes, finer than
stat's 10 ms ticks) and the time it was runnable without a core, before and after a phase,
divided by the phase's wall time, says which process was busy, which wanted a core and had
none, and which waited on the others: a source walsender near 100% of one core while the applier
idles means the phase is source-bound and no subscriber can go faster than it feeds.

The processes are found through the servers' own views: the walsender by its slot
(``pg_replication_slots.active_pid``), native's apply worker by ``pg_stat_subscription``,
our sidecar by its process id and its target backends by ``application_name``
(``pgml-replica <purpose>``, replica/connect.py). A backend that exits inside the phase
is not counted (its last reading is gone); one that appears inside it counts from zero.

The walsender's ceiling (``decode_ceiling``): the same WAL decoded by pgoutput through
``pg_logical_slot_get_binary_changes`` in an ordinary backend, with each side's options,
time only - the rate no subscriber fed by that walsender can beat.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Each side's pgoutput options as its walsender gets them: ours from replica/stream/
# negotiate.py for a PostgreSQL 15 source (protocol 2, binary, streaming on, 16MB decoding
# memory from replica/config.py); native's from PostgreSQL 15's apply worker for a
# subscription with the defaults (protocol 3, text values, no streaming).
OURS_OPTIONS = {"proto_version": "2", "binary": "true", "streaming": "on"}
NATIVE_OPTIONS = {"proto_version": "3"}
OURS_DECODING_MEM = "16MB"


def stat_cpu_seconds(stat: str, clk_tck: int = CLK_TCK) -> float:
    """utime + stime in seconds from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may itself hold spaces and
    parentheses ("postgres: walsender ..." does not, a thread name may), so the fields are
    counted from the last ``)``: state is field 3, utime field 14, stime field 15."""
    rest = stat[stat.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / clk_tck


def cpu_seconds(pid: int) -> float | None:
    """The process's CPU seconds so far, or None when it is gone."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def schedstat_seconds(schedstat: str) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable without one) from the text of a task's
    ``schedstat`` (nanoseconds; the third field, time slices, is left out)."""
    on_cpu, waited = schedstat.split()[:2]
    return int(on_cpu) / 1e9, int(waited) / 1e9


def backend_cpu_seconds(pid: int) -> float | None:
    """A single-threaded process's (a PostgreSQL backend's) CPU seconds to the nanosecond,
    from ``/proc/<pid>/schedstat``: the decoding ceiling lasts tenths of a second, where
    stat's clock ticks (10 ms) would be a few per cent off."""
    try:
        return schedstat_seconds(Path(f"/proc/{pid}/schedstat").read_text())[0]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def runqueue_wait_seconds(pid: int) -> float | None:
    """Seconds the process's live threads have waited for a CPU while runnable (second field
    of ``/proc/<pid>/task/*/schedstat``, nanoseconds), or None when it is gone: on a shared
    machine, the share of a phase a process wanted a core and had none."""
    try:
        total = 0.0
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += schedstat_seconds((task / "schedstat").read_text())[1]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return total


def utilisation(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float],
                wall: float) -> dict[str, float]:
    """CPU seconds per label over ``wall`` seconds (1.0 = one core busy all the time).

    ``before``/``after`` map (label, pid) to CPU seconds; processes of one label (a side's
    several target backends) add up. A pid only in ``after`` started inside the phase and
    counts from zero; one only in ``before`` exited and cannot be counted."""
    if wall <= 0:
        raise ValueError("a phase's wall time must be positive")
    used: dict[str, float] = {}
    for (label, pid), end in after.items():
        used[label] = used.get(label, 0.0) + max(0.0, end - before.get((label, pid), 0.0))
    return {label: seconds / wall for label, seconds in used.items()}


def format_utilisation(use: dict[str, float]) -> str:
    """``walsender 98%, sidecar 41% (+12% wait)`` in the order given: a ``<label> waited``
    entry (runnable without a core) joins its process's; busy + wait under 100% is idle."""
    return ", ".join(
        f"{label} {u:.0%}" + (f" (+{use[label + ' waited']:.0%} wait)"
                              if label + " waited" in use else "")
        for label, u in use.items() if not label.endswith(" waited"))


def side_pids(side, src) -> list[tuple[str, int]]:
    """(label, pid) of the processes working for ``side``'s catch-up now: its walsender on
    the source, and native's apply worker or our sidecar plus its target backends."""
    found: list[tuple[str, int]] = []
    with src.connect("bench") as c:
        row = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                        (side.slot,)).fetchone()
    if row and row[0]:
        found.append(("walsender", row[0]))
    with side.target() as c:
        if side.name == "native":
            found += [("apply worker", pid) for (pid,) in c.execute(
                "SELECT pid FROM pg_stat_subscription WHERE subname = 'native_sub' AND"
                " relid IS NULL AND pid IS NOT NULL")]
        else:
            if side.proc is not None:
                found.append(("sidecar", side.proc.pid))
            found += [("target backends", pid) for (pid,) in c.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name"
                " LIKE 'pgml-replica%%' AND pid <> pg_backend_pid()", (side.db,))]
    return found


def snapshot(pids: list[tuple[str, int]], read=None) -> dict[tuple[str, int], float]:
    """``read(pid)`` (runqueue_wait_seconds, say) of each (label, pid) that is still there;
    by default CPU seconds: a PostgreSQL process's (one thread) to the nanosecond, the
    sidecar's (threads; some may have exited) in clock ticks."""
    got = {}
    for label, pid in pids:
        s = (read or (cpu_seconds if label == "sidecar" else backend_cpu_seconds))(pid)
        if s is not None:
            got[(label, pid)] = s
    return got


def create_ceiling_slots(src) -> None:
    """One pgoutput slot per side's options, made before a workload so it decodes it."""
    with src.connect("bench") as c:
        for name in ("ceil_ours", "ceil_native"):
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def decode_ceiling(src, upto_lsn: str) -> dict[str, tuple[float, float]]:
    """Decode each ceiling slot up to ``upto_lsn`` (pgoutput, each side's options and
    publication), then drop it: {side: (wall seconds, the decoding backend's CPU seconds, its
    seconds runnable without a core)}."""
    out = {}
    for side, opts, pub in (("ours", OURS_OPTIONS, "pgml_replica"),
                            ("native", NATIVE_OPTIONS, "native_pub")):
        args: list[str] = ["publication_names", pub]
        for k, v in opts.items():
            args += [k, v]
        with src.connect("bench") as c:
            if side == "ours":
                c.execute("SELECT set_config('logical_decoding_work_mem', %s, false)",
                          (OURS_DECODING_MEM,))
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            wait0 = runqueue_wait_seconds(pid)
            cpu0, t0 = backend_cpu_seconds(pid), time.perf_counter()
            c.execute("SELECT count(*) FROM pg_logical_slot_get_binary_changes(%s,"
                      " %s::pg_lsn, NULL, VARIADIC %s::text[])", (f"ceil_{side}", upto_lsn, args))
            wall = time.perf_counter() - t0
            cpu1, wait1 = backend_cpu_seconds(pid), runqueue_wait_seconds(pid)
            c.execute("SELECT pg_drop_replication_slot(%s)", (f"ceil_{side}",))
        out[side] = (wall, (cpu1 or 0.0) - (cpu0 or 0.0), (wait1 or 0.0) - (wait0 or 0.0))
    return out
