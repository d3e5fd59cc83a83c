"""`pgml-replica run`: preflight, then sessions of bootstrap + stream, reconnecting on loss.

Why sessions: any connection can drop (source failover, target restart, network). A session
opens everything afresh and resumes exactly where the target's progress row says, so
recovery is the same code path as a normal start. Between sessions the runner waits with
exponential backoff and full jitter (0.5 s doubling up to 30 s), so a fleet of sidecars does
not hammer a recovering server in step.

Policies by error class (replica.errors): TransientError and lost connections are retried;
everything else stops the process with the error's exit code and a message that says what to
change. SIGTERM/SIGINT set ``stop``: the stream finishes or rolls back the batch in hand,
sends final feedback and the process exits 0.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict

from replica import metrics
from replica.clone import steps
from replica.clone.bootstrap import Bootstrap
from replica.config import Settings
from replica.connect import connect
from replica.errors import (
    NullRejected,
    ReplicaError,
    SnapshotInterrupted,
    TransientError,
    translate,
)
from replica.secrets import scrub, secrets_of, with_options
from replica.source.activity import PREFLIGHT, WaitWatcher
from replica.source.preflight import preflight
from replica.source.publication import (
    candidate_tables,
    drop_publication,
    ensure_publication,
    publication_exists,
    publication_tables_unless_locked,
)
from replica.source.replconn import ReplicationConnection
from replica.source.slots import drop_slot, slot_info
from replica.state import Phase, SidecarState
from replica.target import progress

log = logging.getLogger("pgml_replica")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
CATALOG_TIMEOUT = 30.0  # s: the stream's catalog queries (_poll, Relation lookups) never hang


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(max, first * 2**attempt)]."""
    return (rng or random).uniform(0, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt))


class Runner:
    def __init__(self, settings: Settings, state: SidecarState | None = None,
                 stop: threading.Event | None = None) -> None:
        settings.require("source", "target")
        self.settings = settings
        self.state = state or SidecarState(slot=settings.slot, publication=settings.publication)
        self.stop = stop or threading.Event()
        self.secrets = secrets_of(settings.source, settings.target)
        self.bootstrap = Bootstrap(settings, self.state, self.stop)
        # what this process created on the source, undone if the first run fails
        self.created_publication = False
        self.slot_existed: bool | None = None  # at preflight; None before it ran

    def _say(self, exc: BaseException) -> str:
        return scrub(str(exc), self.secrets)

    def run(self) -> None:
        """Until stopped; raises the ReplicaError that ended it (never a transient one)."""
        s, state = self.settings, self.state
        metrics.set_build_info(slot=s.slot, publication=s.publication)
        attempt, prepared = 0, False
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if not prepared:  # a source not reachable yet is retried like a lost one
                    self._preflight()
                    steps.mark("preflight")
                    prepared = True
                self._session()
                break
            except SnapshotInterrupted:
                break
            except NullRejected as exc:
                if not self._relax(exc):
                    metrics.ERRORS.labels(exc.kind).inc()
                    state.error = self._say(exc)
                    self._disconnected(Phase.FAILED)
                    self._undo_first_run()
                    raise
                attempt = 0  # replay at once: the batch was rolled back
            except TransientError as exc:
                peer = exc.peer
                metrics.ERRORS.labels("transient").inc()
                metrics.RECONNECTS.labels(peer).inc()
                state.error = self._say(exc)
                attempt = 0 if time.monotonic() - started > 60 else attempt + 1
                delay = backoff(attempt)
                log.warning("lost the %s (%s); retrying in %.1fs", peer, state.error, delay)
                self._disconnected(Phase.RECONNECTING)
                self.stop.wait(delay)
            except ReplicaError as exc:
                metrics.ERRORS.labels(exc.kind).inc()
                state.error = self._say(exc)
                self._disconnected(Phase.FAILED)
                self._undo_first_run()
                raise
        self._disconnected(Phase.STOPPED)

    def _preflight(self) -> None:
        s = self.settings
        with connect(s.source, "source", "preflight") as src:
            preflight(src, publication=s.publication, slot=s.slot,
                      tables=candidate_tables(src, s.publication, s.table_list(),
                                              s.schema_name), failover_slot=s.failover_slot)
            existed = publication_exists(src, s.publication)
            if self.slot_existed is None:
                self.slot_existed = slot_info(src, s.slot) is not None
            # CREATE/ALTER PUBLICATION locks each table: a session holding one (a migration's
            # ACCESS EXCLUSIVE) holds it up, said out loud like the slot's and the copy's waits
            with WaitWatcher(s.source, self.state, "publication", PREFLIGHT):
                published = ensure_publication(src, s)
            self.state.tables = [f"{a}.{b}" for a, b in published]
            self.created_publication = self.created_publication or not existed

    def _undo_first_run(self) -> None:
        """A run that stops before the target has any progress leaves nothing on the source:
        the publication and the slot this process created are dropped (never ones that
        existed before it - a DBA's publication, a slot handed over). With progress on the
        target, or when the target cannot say, both stay and the log says how to remove
        them (`pgml-replica drop`)."""
        s = self.settings
        made_slot = self.slot_existed is False
        if not (self.created_publication or made_slot):
            return
        try:
            with connect(s.target, "target", "cleanup") as tgt:
                started = progress.exists(tgt) and progress.read(tgt, s.slot) is not None
        except ReplicaError as exc:
            log.warning("could not read the target's progress (%s): left what this run made "
                        "on the source; `pgml-replica drop` removes it", self._say(exc))
            return
        if started:
            return
        try:
            with connect(s.source, "source", "cleanup") as src:
                gone = []
                if made_slot and drop_slot(src, s.slot):
                    gone.append(f"slot {s.slot}")
                if self.created_publication and drop_publication(src, s.publication):
                    gone.append(f"publication {s.publication}")
        except (ReplicaError, psycopg.Error) as exc:
            log.warning("the first run failed and could not remove what it made on the "
                        "source (%s): run `pgml-replica drop`", self._say(exc))
            return
        self.created_publication, self.slot_existed = False, None
        if gone:
            log.warning("the first run failed before anything reached the target: dropped "
                        "%s, which it had created on the source", " and ".join(gone))

    def _relax(self, exc: NullRejected) -> bool:
        """Drop the target's NOT NULL the source no longer has (never on the key)."""
        from replica.target import schema

        with connect(self.settings.target, "target", "relax NOT NULL") as c:
            target = schema.read_target(c, exc.schema, exc.table)
            if target is None or exc.column not in target.not_null or exc.column in target.key:
                return False
            schema.relax_not_null(c, exc.schema, exc.table, [exc.column])
        log.warning("%s.%s.%s: the source accepts NULL there now; dropped NOT NULL on the "
                    "target and replaying", exc.schema, exc.table, exc.column)
        return True

    def _disconnected(self, phase: Phase) -> None:
        self.state.phase = phase
        self.state.source_connected = self.state.target_connected = False
        metrics.CONNECTED.labels("source").set(0)
        metrics.CONNECTED.labels("target").set(0)

    def _session(self) -> None:
        s, state = self.settings, self.state
        state.phase = Phase.STARTING
        src = connect(s.source, "source", "catalog", statement_timeout=CATALOG_TIMEOUT)
        try:
            tgt = connect(s.target, "target", "apply")
        except BaseException:
            src.close()
            raise
        # both ends answer from here on, the initial copy included (the stream sets these
        # again; _disconnected clears them when the session ends)
        steps.mark("session_connected")
        state.source_connected = state.target_connected = True
        metrics.CONNECTED.labels("source").set(1)
        metrics.CONNECTED.labels("target").set(1)
        try:
            with src, tgt:
                self._stream(src, tgt)
        except psycopg.Error as exc:
            peer = "target" if tgt.broken else "source"
            raise translate(exc, peer, "streaming") from exc

    def _stream(self, src: psycopg.Connection, tgt: psycopg.Connection) -> None:
        s, state = self.settings, self.state
        start_lsn, synced = self.bootstrap.prepare(src, tgt)
        tgt.autocommit = False
        state.applied_lsn = state.flushed_lsn = start_lsn
        prog = progress.read(tgt, s.slot)
        tgt.commit()
        state.last_commit_time = prog.commit_time if prog else None
        state.error = None
        dsn = s.source
        if s.decoding_work_mem and s.protocol != 1:  # auto or 2+: large ones stream
            dsn = with_options(dsn, options=" ".join(filter(None, (
                conninfo_to_dict(dsn).get("options"),
                f"-c logical_decoding_work_mem={s.decoding_work_mem}"))))
        # imported here, not at the top: a fresh replica's copy does not wait for the
        # stream's modules (issue 14 measures from exec to the last copied row)
        from replica.stream.loop import Stream

        with ReplicationConnection(dsn) as repl:
            Stream(repl=repl, source=src, target=tgt, settings=s, state=state,
                   start_lsn=start_lsn, synced=synced, stop=self.stop,
                   sync_tables=self.bootstrap.sync_keys,
                   poll=lambda: self._poll(src)).run()

    def _poll(self, src: psycopg.Connection) -> set[tuple[str, str]]:
        """Every few seconds while streaming: the slot's health and the publication's tables."""
        s = self.settings
        slot = slot_info(src, s.slot)
        self.state.source_lsn = int(src.execute(
            "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
        if slot is not None:
            metrics.set_wal_status(slot.wal_status)
            if slot.retained_wal_bytes is not None:
                metrics.SLOT_RETAINED_WAL_BYTES.set(float(slot.retained_wal_bytes))
        tables = publication_tables_unless_locked(src, s.publication)
        if tables is None:  # a table's lock is held: new tables wait for the next poll
            return set()  # (the caller only adds tables it has not seen)
        self.state.tables = [f"{a}.{b}" for a, b in tables]
        return set(tables)

