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


_SLOT = ("SELECT slot_name, plugin, database, active, active_pid, confirmed_flush_lsn::text,"
         " restart_lsn::text, wal_status, pg_current_wal_lsn() - restart_lsn"
         " FROM pg_replication_slots WHERE slot_name = %s")


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    row = conn.execute(_SLOT, (slot,)).fetchone()
    if row is None:
        return None
    return SlotInfo(row[0], row[1], row[2], row[3], row[4],
                    parse_lsn(row[5]) if row[5] else None,
                    parse_lsn(row[6]) if row[6] else None, row[7],
                    int(row[8]) if row[8] is not None else None)


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
