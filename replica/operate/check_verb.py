"""`pgml-replica check`: everything `run` would check, and what it would create - changing
nothing on either side.

Why a verb of its own: before a tool may create a publication and a slot on a production
database, its operators want to see what is missing and what would be done, in one go (on
RDS each fix is a parameter-group change or a ticket). So `check` runs the very preflight
`run` runs (``source.preflight.findings`` wraps ``preflight``), reads the target's state
(reachable? PL/Python? pgml installed and current? progress for this slot?) and says what
`run` would create or copy - as a table, each problem with its fix - and exits 0 when ready,
2 when something must change first, so a deployment script can gate on it.

Reads only: catalog queries on the source (no publication, slot or temporary slot is made),
and on the target only ``to_regclass``-guarded reads (the progress schema is not created).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import psycopg
from rich.console import Console
from rich.table import Table

from replica.errors import ReplicaError

READY, PROBLEMS = 0, 2
_CRED_FIELDS = ["source_password_file", "source_password_command", "source_iam",
                "source_iam_host", "source_iam_port", "target_password_file",
                "target_password_command"]


@dataclass(frozen=True)
class Row:
    side: str
    area: str
    status: str  # ok | problem | warning
    found: str
    fix: str = ""


def add_parser(sub) -> None:
    from replica.config import Settings
    from replica.operate.cli import add_settings_flags

    p = sub.add_parser("check", help="check the source and target the way run would, and "
                       "say what run would create; changes nothing",
                       description="Runs every preflight of `run` (parameters, slots, WAL "
                       "senders, privileges, publication, tables, types, replica identity) and "
                       "reads the target (PL/Python, pgml, progress), then prints what `run` "
                       "would create and copy. Creates nothing on either side. Exit status: 0 "
                       "ready, 2 something to fix first.")
    fields = ["source", "target", "slot", "publication", "tables", "schema_name",
              "failover_slot", *_CRED_FIELDS]
    add_settings_flags(p, [f for f in fields if f in Settings.model_fields])
    p.set_defaults(func=cmd_check)


def source_rows(conn: psycopg.Connection, settings) -> tuple[list[Row], list[str], list[tuple]]:
    """(findings as rows, plan lines, candidate tables) from the source."""
    from replica.source.preflight import findings
    from replica.source.publication import candidate_tables, publication_exists
    from replica.source.slots import slot_info

    tables = candidate_tables(conn, settings.publication, settings.table_list(),
                              settings.schema_name)
    rows = [Row("source", f.area, "warning" if f.warning else "ok" if f.ok else "problem",
                f.found, f.fix)
            for f in findings(conn, publication=settings.publication, slot=settings.slot,
                              tables=tables,
                              failover_slot=getattr(settings, "failover_slot", False))]
    names = ", ".join(f"{s}.{t}" for s, t in tables) or "(none)"
    plan = []
    if publication_exists(conn, settings.publication):
        plan.append(f"use publication {settings.publication} (exists); replicate {names}")
    else:
        plan.append(f"create publication {settings.publication} for {names}")
    slot = slot_info(conn, settings.slot)
    if slot is None:
        plan.append(f"create slot {settings.slot} (pgoutput) with an exported snapshot; it "
                    "waits for every transaction open at that moment")
    else:
        plan.append(f"use slot {settings.slot} (exists, wal_status {slot.wal_status})")
    return rows, plan, tables


def target_rows(dsn: str, slot: str, tables: list[tuple]) -> tuple[list[Row], list[str]]:
    from replica.connect import connect
    from replica.target import progress
    from replica.target.pgml_install import installed_state

    rows: list[Row] = []
    try:
        conn = connect(dsn, "target", "check", timeout=10)
    except ReplicaError as exc:
        return [Row("target", "connection", "problem", str(exc),
                    "check the target DSN, its network path and credentials")], []
    with conn:
        plpython = conn.execute(
            "SELECT (SELECT true FROM pg_available_extensions WHERE name = 'plpython3u'),"
            " (SELECT true FROM pg_extension WHERE extname = 'plpython3u')").fetchone()
        if not plpython[0]:
            rows.append(Row("target", "PL/Python", "warning", "plpython3u is not available: "
                            "tables are mirrored, but the pgml functions cannot be installed",
                            "install the PL/Python package of the server (postgresql-NN-"
                            "plpython3) or use the project's replica image"))
        else:
            rows.append(Row("target", "PL/Python", "ok", "plpython3u " +
                            ("installed" if plpython[1] else "available")))
        paths, current = installed_state(conn)
        if paths is None:
            rows.append(Row("target", "pgml", "ok", "not installed: run installs it"))
        else:
            rows.append(Row("target", "pgml", "ok", "installed" + ("" if current else
                                                                  ", older: run upgrades it")))
        synced = {}
        if progress.exists(conn) and progress.read(conn, slot) is not None:
            synced = progress.synced_tables(conn, slot)
            plan_head = f"resume streaming slot {slot} from the target's progress"
        else:
            plan_head = "start the target's progress for this slot"
    todo = [f"{s}.{t}" for s, t in tables if (s, t) not in synced]
    plan = [plan_head, ("copy " + ", ".join(todo)) if todo else "copy nothing (all copied)"]
    return rows, plan


def render(rows: list[Row], plan: list[str], console: Console) -> None:
    table = Table(title="pgml-replica check", show_lines=False)
    for col in ("side", "area", "status", "found", "fix"):
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "problem": "bold red", "warning": "yellow"}
    for r in rows:
        table.add_row(r.side, r.area, f"[{style[r.status]}]{r.status}[/]", r.found, r.fix)
    console.print(table)
    console.print("[bold]run would:[/]")
    for line in plan:
        console.print(f"  - {line}", highlight=False)
    problems = sum(r.status == "problem" for r in rows)
    console.print(f"[bold red]{problems} problem(s) to fix first[/]" if problems
                  else "[green]ready[/]")


def cmd_check(args: argparse.Namespace) -> int:
    from replica.connect import connect
    from replica.operate.cli import settings_from

    settings = settings_from(args)
    settings.require("source")
    with connect(settings.source, "source", "check") as src:
        rows, plan, tables = source_rows(src, settings)
    if settings.target:
        more, target_plan = target_rows(settings.target, settings.slot, tables)
        rows += more
        plan += target_plan
    else:
        rows.append(Row("target", "connection", "warning", "no --target given: not checked"))
    render(rows, plan, Console(soft_wrap=False, width=max(100, Console().width)))
    return PROBLEMS if any(r.status == "problem" for r in rows) else READY
