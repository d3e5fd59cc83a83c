"""Preflight on the source: everything logical replication needs, checked before any change.

Why up front and all at once: on a managed database each fix is a ticket or a parameter-group
change plus a reboot, so a user wants the whole list in one go, each item saying what to
change - not one failure per restart. Only what RDS grants is assumed: a role with
REPLICATION (``rds_replication`` on RDS) and SELECT on the published tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from replica.errors import PreflightError, UnsupportedError
from replica.source.catalog import TypeResolver, read_table
from replica.source.slots import free_slots, slot_info

log = logging.getLogger("pgml_replica")

FAILOVER_SINCE = 170000
#: what only the standby can show; the primary cannot see these settings
STANDBY_SIDE = ("on the standby that may take over: sync_replication_slots = on, "
                "hot_standby_feedback = on, primary_slot_name = <its physical slot> and a "
                "dbname in primary_conninfo (RDS Multi-AZ DB clusters on 17+: set "
                "sync_replication_slots and hot_standby_feedback in the cluster parameter "
                "group)")


def failover_readiness(conn: psycopg.Connection, slot: str, wanted: bool
                       ) -> tuple[list[str], list[str]]:
    """(problems, warnings) about a failover slot: problems stop the run (it cannot be made),
    warnings say what is missing for the slot to survive a failover. What the primary can
    show: its version, the slot's ``failover`` flag, ``synchronized_standby_slots`` and the
    physical slots it names (held with hot_standby_feedback: an xmin)."""
    version = conn.info.server_version
    if version < FAILOVER_SINCE:
        if wanted:
            return [f"--failover-slot needs a PostgreSQL 17+ source (this one is "
                    f"{version // 10000}): before 17 a logical slot never survives a "
                    "failover - leave it off and plan a --resnapshot after one "
                    "(docs/sidecar.md, Failover)"], []
        return [], []
    info = slot_info(conn, slot)
    standby_slots = conn.execute("SELECT current_setting('synchronized_standby_slots')"
                                 ).fetchone()[0].strip()
    warnings: list[str] = []
    if not wanted:
        if info is not None and info.failover:
            warnings.append(f"slot {slot} is a failover slot, but --failover-slot is not "
                            "set (it stays one)")
        elif standby_slots:
            warnings.append(f"this source syncs slots to standbys ({standby_slots}) but slot "
                            f"{slot} would not follow a failover: pass --failover-slot")
        return [], warnings
    if info is not None and info.failover is False:
        warnings.append(f"slot {slot} exists without failover: it is made a failover slot "
                        "(ALTER_REPLICATION_SLOT ... (FAILOVER true)) before streaming")
    if not standby_slots:
        warnings.append("synchronized_standby_slots is empty: set it to the physical slot of "
                        "each standby that may take over, so the sidecar is never sent a "
                        "change the standby's copy of the slot has not reached (else, after "
                        "a failover, the new primary may resend or lack changes the sidecar "
                        "already has)")
    for name in (n.strip().strip('"') for n in standby_slots.split(",") if n.strip()):
        row = conn.execute("SELECT slot_type, xmin IS NOT NULL, active FROM pg_replication_slots"
                           " WHERE slot_name = %s", (name,)).fetchone()
        if row is None or row[0] != "physical":
            warnings.append(f"synchronized_standby_slots names {name}, which is not a physical "
                            "slot here: create it (pg_create_physical_replication_slot) and "
                            "set primary_slot_name on the standby")
        elif not row[2]:
            warnings.append(f"physical slot {name} is not in use: no standby streams from it")
        elif not row[1]:
            warnings.append(f"physical slot {name} holds no xmin: set hot_standby_feedback = "
                            "on on its standby")
    warnings.append("cannot be checked from the primary - " + STANDBY_SIDE)
    return [], warnings


def preflight(conn: psycopg.Connection, *, publication: str, slot: str,
              tables: list[tuple[str, str]], failover_slot: bool = False) -> list[str]:
    """Raise PreflightError listing every problem found; when ready, return the warnings
    (logged here too: what works now but not in every case, such as a failover)."""
    problems, warnings = failover_readiness(conn, slot, failover_slot)
    settings = dict(conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level',"
        " 'max_replication_slots', 'max_wal_senders')").fetchall())
    if settings.get("wal_level") != "logical":
        problems.append(f"wal_level is {settings.get('wal_level')!r}, logical replication "
                        "needs 'logical': on RDS set rds.logical_replication = 1 in the DB "
                        "parameter group and reboot; elsewhere ALTER SYSTEM SET wal_level = "
                        "logical and restart")
    # the slot itself (unless it exists) plus one temporary slot while a table is copied
    need = 1 if slot_info(conn, slot) is not None else 2
    free = free_slots(conn)
    if free < need:
        problems.append(f"only {free} free replication slot(s), need {need}: raise "
                        "max_replication_slots (an RDS parameter group setting) or drop "
                        "unused slots (listed in the view pg_replication_slots)")
    free_senders = conn.execute("SELECT current_setting('max_wal_senders')::int - count(*)"
                                " FROM pg_stat_replication").fetchone()[0]
    if free_senders < 2:
        problems.append(f"only {free_senders} free WAL sender(s), need 2 (the stream and a "
                        "table copy): raise max_wal_senders")
    role = conn.execute(
        "SELECT r.rolname, r.rolsuper, r.rolreplication, EXISTS (SELECT 1 FROM pg_roles"
        " WHERE rolname = 'rds_replication') AND pg_has_role(current_user, 'rds_replication',"
        " 'MEMBER') FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    if not (role[1] or role[2] or role[3]):
        problems.append(f"role {role[0]} may not replicate: ALTER ROLE {role[0]} REPLICATION "
                        f"(on RDS: GRANT rds_replication TO {role[0]})")
    pub = conn.execute("SELECT pubupdate OR pubdelete FROM pg_publication WHERE pubname = %s",
                       (publication,)).fetchone()
    if pub is None and not conn.execute(
            "SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]:
        problems.append(f"publication {publication} does not exist and role {role[0]} may "
                        f"not create it: have it created (CREATE PUBLICATION {publication} "
                        "FOR TABLE ...) and pass --publication, or GRANT CREATE ON DATABASE")
    needs_identity = pub is None or pub[0]
    if not tables:
        problems.append("no tables to replicate: name them with --tables, or create tables "
                        "in the --schema (default public)")
    resolver = TypeResolver(conn)
    for schema, name in tables:
        qual = f"{schema}.{name}"
        rel = conn.execute(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT'),"
            " pg_has_role(current_user, c.relowner, 'USAGE')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
        if rel is None:
            problems.append(f"table {qual} does not exist on the source")
            continue
        if not rel[1]:
            problems.append(f"no SELECT on {qual}: GRANT SELECT ON {qual} TO {role[0]}")
        if pub is None and not rel[2] and not role[1]:
            problems.append(f"publication {publication} must be created by the owner of "
                            f"{qual} (or a superuser): create it beforehand and pass "
                            "--publication")
        try:
            t = read_table(conn, schema, name, resolver)
        except UnsupportedError as exc:  # every column of it (UnsupportedColumns)
            problems.extend(map(str, getattr(exc, "problems", None) or [exc]))
            continue
        if needs_identity and not t.key and t.replica_identity != "f":
            problems.append(f"table {qual} has no primary key, so the source cannot publish "
                            f"its UPDATEs and DELETEs: add a primary key, or ALTER TABLE {qual}"
                            " REPLICA IDENTITY FULL")
    if problems:
        raise PreflightError(problems)
    for warning in warnings:
        log.warning("preflight: %s", warning)
    return warnings


# -- the same checks as data, for `pgml-replica check` ---------------------------------

#: area -> words that mark a preflight problem as belonging to it (first match wins);
#: the areas are the rows `check` prints, in this order
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("parameters", ("wal_level",)),
    ("slots", ("replication slot",)),
    ("senders", ("WAL sender",)),
    ("failover", ("failover", "synchronized_standby_slots")),
    ("privileges", ("may not replicate", "no SELECT", "GRANT CREATE")),
    ("publication", ("publication",)),
    ("replica identity", ("primary key", "REPLICA IDENTITY")),
    ("types", ("type",)),
    ("tables", ("table",)),
)


@dataclass(frozen=True)
class Finding:
    """One row of ``check``: an area, whether it is ready, what was found, how to fix it."""

    area: str
    ok: bool
    found: str
    fix: str = ""
    warning: bool = False


def area_of(problem: str) -> str:
    return next((area for area, words in AREAS if any(w in problem for w in words)), "other")


def _split(problem: str) -> tuple[str, str]:
    """"<what is wrong>: <what to change>" - the shape every preflight message has."""
    found, sep, fix = problem.partition(": ")
    return (found, fix) if sep else (problem, "")


def findings(conn: psycopg.Connection, *, publication: str, slot: str,
             tables: list[tuple[str, str]], failover_slot: bool = False) -> list[Finding]:
    """Every check ``run``'s preflight makes, as data: one failed Finding per problem (with
    its fix), one passed Finding per area without a problem, and the warnings. Runs the very
    ``preflight`` that ``run`` runs, so the two cannot disagree; reads only."""
    try:
        wanted = {"failover_slot": True} if failover_slot else {}
        warnings = preflight(conn, publication=publication, slot=slot, tables=tables,
                             **wanted) or []
        problems: list[str] = []
    except PreflightError as exc:
        problems, warnings = list(exc.problems), []
    out = [Finding(area_of(p), False, *_split(p)) for p in problems]
    failed = {f.area for f in out}
    out += [Finding(area, True, "ready") for area, _ in AREAS
            if area not in failed and area != "failover"]
    out += [Finding(area_of(w), True, *_split(w), warning=True) for w in warnings]
    order = [a for a, _ in AREAS] + ["other"]
    return sorted(out, key=lambda f: (order.index(f.area), f.ok))
