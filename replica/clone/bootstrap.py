"""Getting to the point where streaming can start: publication, slot, initial copy.

Why these decisions (docs/sidecar.md, "How the copy meets the stream"):
- No progress on the target and no slot: create the slot with an exported snapshot and copy
  every table inside it. The copy holds exactly what committed before the slot's consistent
  point; the stream starts there.
- No progress but the slot exists (handed over by a DBA, as on RDS, or left by a run that
  died during its copy): that slot's snapshot is gone, so the tables are copied inside the
  snapshot of a *temporary* slot created now, and each table records that slot's consistent
  point as its sync LSN. The stream then replays from the existing slot and applies a table's
  changes only from transactions committing at or after its sync LSN: what the copy holds is
  skipped, what it lacks is applied - nothing is replayed twice, so nothing has to be
  idempotent.
- Progress but a table not yet copied (added to the publication while the sidecar was down):
  the same temporary-slot copy, for that table.
- Progress but no slot, a slot whose ``wal_status`` is ``lost``, or progress from another
  source system: changes are gone for good; only ``--resnapshot`` repairs the target.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import psycopg

from decoder import format_lsn
from replica.clone import steps
from replica.clone.snapshot import Snapshot
from replica.config import Settings
from replica.connect import connect
from replica.errors import ConfigError, ResnapshotNeeded
from replica.history.recorder import recorder_for
from replica.source.activity import COPY, SLOT_CREATION, WaitWatcher
from replica.source.catalog import TableDef, TableKey
from replica.source.publication import publication_defs
from replica.source.replconn import ReplicationConnection
from replica.source.slots import drop_slot, invalidation_advice, slot_info, system_id
from replica.state import Phase, SidecarState
from replica.target import progress

log = logging.getLogger("pgml_replica")


def run_with_ticks(fn: Callable[[], object], tick: Callable[[], None] | None,
                   every: float = 1.0):
    """Run ``fn`` in a thread; call ``tick`` in this one meanwhile (stream feedback keeps the
    walsender from timing out while a slot is created or tables are copied)."""
    if tick is None:
        return fn()
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=target, name="table-sync", daemon=True)
    th.start()
    while th.is_alive():
        th.join(every)
        if th.is_alive():
            tick()
    if "error" in box:
        raise box["error"]
    return box.get("result")


class Bootstrap:
    """Decides how the target catches up with the slot, and does the copying."""

    def __init__(self, settings: Settings, state: SidecarState, stop: threading.Event) -> None:
        self.settings, self.state, self.stop = settings, state, stop

    def copy_beside_temporary_slot(self, tables: list[TableDef],
                                   tick: Callable[[], None] | None = None
                                   ) -> dict[TableKey, int]:
        """Copy ``tables`` inside a temporary slot's snapshot; their sync LSN is its point."""
        if not tables:
            return {}
        s = self.settings

        def work() -> dict[TableKey, int]:
            name = f"{s.slot}_sync_{os.getpid()}"[:63]
            created = self._slot_and_copy(tables, name, "pgml-replica sync", temporary=True)
            return {(t.schema, t.name): created["consistent_point"] for t in tables}

        return run_with_ticks(work, tick)

    def _slot_and_copy(self, tables: list[TableDef], name: str, application_name: str,
                       **slot_options: bool) -> dict:
        """Create slot ``name`` with an exported snapshot and copy ``tables`` inside it; the
        copy's target side is prepared meanwhile (Snapshot.prepare_early). The slot's
        creation result (consistent_point, snapshot_name)."""
        snap = self._snapshot()
        snap.prepare_early(tables)
        try:
            with ReplicationConnection(self.settings.source,
                                       application_name=application_name) as rc, \
                    self._watch("slot", SLOT_CREATION):
                created = rc.create_slot(name, snapshot="export", **slot_options)
                steps.mark("slot_created")
                self._copy(snap, tables, created["snapshot_name"], created["consistent_point"])
        finally:
            snap.close()
        return created

    def _snapshot(self) -> Snapshot:
        s = self.settings
        return Snapshot(s.source, s.target, slot=s.slot, state=self.state,
                        workers=s.snapshot_workers, chunk_pages=s.snapshot_chunk_pages,
                        stop=self.stop, history=recorder_for(s), watch=s.receive_timeout)

    def _watch(self, what: str, applications: tuple[str, ...]) -> WaitWatcher:
        """Says out loud (phase, /status, log, metric) whom the step waits for on the source
        (CREATE_REPLICATION_SLOT waits for every open transaction; a COPY for a lock)."""
        return WaitWatcher(self.settings.source, self.state, what, applications)

    def sync_keys(self, keys: set[TableKey], tick: Callable[[], None]) -> dict[TableKey, int]:
        """Mid-stream: copy these tables of the publication (new or to be re-copied)."""
        with connect(self.settings.source, "source", "table sync") as src:
            tables = publication_defs(src, self.settings.publication, keys)
        return self.copy_beside_temporary_slot(tables, tick)

    def _copy(self, snap: Snapshot, tables: list[TableDef], snapshot_name: str, lsn: int
              ) -> None:
        log.info("copying %d table(s) as of %s: %s", len(tables), format_lsn(lsn),
                 ", ".join(t.qualname for t in tables))
        prev = self.state.phase
        self.state.phase = Phase.COPYING
        watcher = self._watch("copy", COPY).__enter__()
        try:
            snap.run(tables, snapshot_name, lsn)
        finally:
            watcher.__exit__(None, None, None)
            self.state.phase = prev

    def prepare(self, source: psycopg.Connection, target: psycopg.Connection
                ) -> tuple[int, dict[TableKey, int]]:
        """(LSN to start streaming at, table -> sync LSN); copies whatever must be copied.
        ``target`` must be in autocommit mode."""
        s = self.settings
        progress.ensure(target)
        sysid = system_id(source)
        if s.resnapshot:
            self._forget(source, target)
        prog = progress.read(target, s.slot)
        slot = slot_info(source, s.slot)
        dbname = source.info.dbname
        if slot is not None and (slot.database != dbname or slot.plugin != "pgoutput"):
            raise ConfigError(f"slot {s.slot} exists but is not a pgoutput slot of database "
                              f"{dbname} (plugin {slot.plugin}, database {slot.database}): "
                              "choose another --slot")
        if slot is not None and slot.wal_status == "lost":
            raise ResnapshotNeeded(
                f"slot {s.slot} was invalidated (wal_status = lost, "
                f"{invalidation_advice(slot.invalidation_reason)}); the changes since are "
                "gone, so a new snapshot is needed: run again with --resnapshot")
        if prog is not None and prog.source_system not in (None, sysid):
            raise ResnapshotNeeded(
                f"the target's progress for slot {s.slot} came from another source system "
                f"({prog.source_system}, this one is {sysid}): run with --resnapshot")
        if prog is not None and slot is None:
            raise ResnapshotNeeded(
                f"the target has progress for slot {s.slot}, but the slot no longer exists "
                "on the source (dropped?): changes since are lost; run with --resnapshot")
        tables = publication_defs(source, s.publication)
        self.state.tables = [t.qualname for t in tables]
        synced = progress.synced_tables(target, s.slot)
        steps.mark("catalog_read")
        if prog is None and slot is None:
            created = self._slot_and_copy(tables, s.slot, "pgml-replica",
                                          failover=s.failover_slot)
            start = created["consistent_point"]
            progress.start(target, s.slot, start, sysid)
            return start, progress.synced_tables(target, s.slot)
        if s.failover_slot and slot.failover is False:  # a slot made before, or by a DBA
            with ReplicationConnection(s.source, application_name="pgml-replica") as rc:
                rc.alter_slot_failover(s.slot)
            log.info("slot %s is a failover slot now", s.slot)
        todo = [t for t in tables if (t.schema, t.name) not in synced]
        self.copy_beside_temporary_slot(todo)
        if prog is None:
            start = slot.confirmed_flush_lsn or 0
            progress.start(target, s.slot, start, sysid)
        else:
            start = prog.end_lsn
        return start, progress.synced_tables(target, s.slot)

    def _forget(self, source: psycopg.Connection, target: psycopg.Connection) -> None:
        """--resnapshot: drop the slot (if any) and everything the target knows about it."""
        s = self.settings
        drop_slot(source, s.slot)
        progress.forget(target, s.slot)
        s.resnapshot = False  # once per process, not again after a reconnect
