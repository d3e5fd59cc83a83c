"""Replication slots on the source, read and dropped in one place.

Why one module: bootstrap (does the slot exist, is it ours, is it lost?), the runner's poll
(retained WAL), preflight (free slots), status and ``drop`` all ask ``pg_replication_slots``
the same questions; one query answers them all, so they cannot disagree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from decoder import parse_lsn


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: int | None
    restart_lsn: int | None
    wal_status: str | None
    #: WAL the slot keeps on the source's disk (current position - restart_lsn)
    retained_wal_bytes: int | None
    #: PostgreSQL 17+: synchronized to standbys (CREATE_REPLICATION_SLOT ... FAILOVER)
    failover: bool | None = None
    #: PostgreSQL 17+: why the slot was invalidated (wal_removed, rows_removed,
    #: wal_level_insufficient; 18: idle_timeout), None while it is valid or on older servers
    invalidation_reason: str | None = None


_SLOT = ("SELECT slot_name, plugin, database, active, active_pid, confirmed_flush_lsn::text,"
         " restart_lsn::text, wal_status, pg_current_wal_lsn() - restart_lsn{}"
         " FROM pg_replication_slots WHERE slot_name = %s")
#: the columns PostgreSQL 17 added (selected only from servers that have them)
_SLOT_17 = ", failover, invalidation_reason"


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    v17 = conn.info.server_version >= 170000
    row = conn.execute(_SLOT.format(_SLOT_17 if v17 else ""), (slot,)).fetchone()
    if row is None:
        return None
    return SlotInfo(row[0], row[1], row[2], row[3], row[4],
                    parse_lsn(row[5]) if row[5] else None,
                    parse_lsn(row[6]) if row[6] else None, row[7],
                    int(row[8]) if row[8] is not None else None,
                    *(row[9:11] if v17 else ()))


#: pg_replication_slots.invalidation_reason -> what happened and how to keep it from
#: happening again (the stop message of a lost slot says it)
INVALIDATION_ADVICE: dict[str, str] = {
    "wal_removed": "the source removed WAL the slot still needed, because the slot held back "
                   "more than max_slot_wal_keep_size while the sidecar was stopped or behind; "
                   "raise max_slot_wal_keep_size (-1: no limit, then watch the disk) and keep "
                   "the sidecar running (alert on pgml_replica_slot_retained_wal_bytes)",
    "idle_timeout": "the slot was unused for longer than idle_replication_slot_timeout "
                    "(PostgreSQL 18); keep the sidecar running, or raise that setting (0 "
                    "turns it off) above the longest time the sidecar may be down",
    "rows_removed": "the server removed catalog rows the slot still needed (a slot on a "
                    "standby whose primary vacuumed them); on the standby set "
                    "hot_standby_feedback = on and primary_slot_name to a physical slot",
    "wal_level_insufficient": "wal_level dropped below logical (on a standby: the "
                              "primary's); keep wal_level = logical (on RDS "
                              "rds.logical_replication = 1)",
}


def invalidation_advice(reason: str | None) -> str:
    """Why a lost slot was lost and how to avoid it; servers before 17 do not say why."""
    if reason in INVALIDATION_ADVICE:
        return f"invalidation_reason = {reason}: {INVALIDATION_ADVICE[reason]}"
    if reason:
        return f"invalidation_reason = {reason}"
    return ("the source removed WAL it still needed, see max_slot_wal_keep_size (before "
            "PostgreSQL 17 the server does not record why)")


def free_slots(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT current_setting('max_replication_slots')::int - count(*)"
                        " FROM pg_replication_slots").fetchone()[0]


def system_id(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def drop_slot(conn: psycopg.Connection, slot: str, wait: float = 10.0) -> bool:
    """Drop a slot, ending the walsender that holds it (a sidecar killed a moment ago may
    still have one). True if it existed."""
    deadline = time.monotonic() + wait
    while True:
        info = slot_info(conn, slot)
        if info is None:
            return False
        if info.active_pid:
            conn.execute("SELECT pg_terminate_backend(%s)", (info.active_pid,))
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return True
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        except psycopg.errors.UndefinedObject:
            return False
