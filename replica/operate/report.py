"""What `pgml-replica status` and HTTP /status report, read from the two databases.

Why from the databases and not the process: status must work with the sidecar stopped (is
the slot still pinning WAL? how far did the target get?), and a running sidecar's view of
itself is in ``SidecarState`` already. Nothing here carries a secret: servers are named by
``dsn.describe`` (user@host:port/db), errors are scrubbed of the DSNs' passwords.
"""

from __future__ import annotations

from typing import Any

import psycopg

from decoder import format_lsn, parse_lsn
from replica.connect import credential_params
from replica.secrets import describe, scrub, secrets_of
from replica.source.slots import slot_info
from replica.state import replication_lag
from replica.target import progress


def _lsn(text: str | None) -> int | None:
    return parse_lsn(text) if text else None


def _text(lsn: int | None) -> str | None:
    return format_lsn(lsn) if lsn is not None else None


def _source(conn: psycopg.Connection, slot: str, publication: str, exact: bool
            ) -> dict[str, Any]:
    current, = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    info = slot_info(conn, slot)
    out: dict[str, Any] = {"current_lsn": current, "slot_exists": info is not None}
    if info is not None:
        out.update(active=info.active, active_pid=info.active_pid,
                   confirmed_flush_lsn=_text(info.confirmed_flush_lsn),
                   restart_lsn=_text(info.restart_lsn), wal_status=info.wal_status,
                   retained_wal_bytes=info.retained_wal_bytes)
    # the bound the retained WAL is measured against (-1: unlimited, the slot is never
    # invalidated and only the source's disk bounds it)
    keep, = conn.execute("SELECT CASE WHEN setting::bigint < 0 THEN -1 ELSE"
                         " pg_size_bytes(setting || coalesce(unit, '')) END FROM pg_settings"
                         " WHERE name = 'max_slot_wal_keep_size'").fetchone()
    out["max_slot_wal_keep_size_bytes"] = int(keep) if keep is not None else None
    rows = conn.execute(
        "SELECT p.schemaname, p.tablename, s.n_live_tup FROM pg_publication_tables p"
        " LEFT JOIN pg_stat_user_tables s ON s.schemaname = p.schemaname AND"
        " s.relname = p.tablename WHERE p.pubname = %s ORDER BY 1, 2", (publication,)).fetchall()
    out["tables"] = {f"{s}.{t}": _count(conn, s, t) if exact else n for s, t, n in rows}
    return out


def _count(conn: psycopg.Connection, schema: str, table: str) -> int | None:
    from psycopg import sql

    try:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, table))).fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return None


def _target(conn: psycopg.Connection, slot: str, tables: list[str], exact: bool
            ) -> tuple[dict[str, Any], progress.Progress | None]:
    out: dict[str, Any] = {}
    exists = progress.exists(conn)
    prog = progress.read(conn, slot) if exists else None
    synced = progress.synced_tables(conn, slot) if exists else {}
    out["applied_lsn"] = format_lsn(prog.end_lsn) if prog else None
    out["applied_commit_time"] = prog.commit_time.isoformat() if prog and prog.commit_time \
        else None
    counts = {}
    for qual in tables:
        schema, _, name = qual.partition(".")
        if exact:
            n = _count(conn, schema, name)
        else:
            r = conn.execute("SELECT n_live_tup FROM pg_stat_user_tables WHERE schemaname = %s"
                             " AND relname = %s", (schema, name)).fetchone()
            n = r[0] if r else None
        counts[qual] = {"rows": n, "synced": (schema, name) in synced,
                        "sync_lsn": format_lsn(synced[(schema, name)])
                        if (schema, name) in synced else None}
    out["tables"] = counts
    return out, prog


def collect(source_dsn: str | None, target_dsn: str | None, *, slot: str, publication: str,
            exact: bool = False, timeout: int = 5) -> dict[str, Any]:
    """Slot, positions, lag and per-table rows; a side that cannot be reached is reported
    as an ``error`` entry instead of failing the whole report. Rows are ``source_rows`` /
    ``target_rows`` with ``exact`` (count(*)), else ``source_rows_estimate`` /
    ``target_rows_estimate`` (pg_stat_user_tables.n_live_tup, as of the last ANALYZE or
    stats report)."""
    secrets = secrets_of(source_dsn, target_dsn)
    report: dict[str, Any] = {"slot": slot, "publication": publication,
                              "source": describe(source_dsn) if source_dsn else None,
                              "target": describe(target_dsn) if target_dsn else None}
    src: dict[str, Any] = {}
    if source_dsn:
        try:
            with psycopg.connect(source_dsn, autocommit=True, connect_timeout=timeout,
                                 **credential_params(source_dsn, "source")) as c:
                src = _source(c, slot, publication, exact)
        except psycopg.Error as exc:
            report["source_error"] = scrub(str(exc).strip(), secrets)
    report.update({k: v for k, v in src.items() if k != "tables"})
    prog = None
    tgt: dict[str, Any] = {"tables": {}}
    if target_dsn:
        try:
            with psycopg.connect(target_dsn, autocommit=True, connect_timeout=timeout,
                                 **credential_params(target_dsn, "target")) as c:
                tgt, prog = _target(c, slot, list(src.get("tables", {})), exact)
        except psycopg.Error as exc:
            report["target_error"] = scrub(str(exc).strip(), secrets)
    report["applied_lsn"] = tgt.get("applied_lsn")
    report["applied_commit_time"] = tgt.get("applied_commit_time")
    current = _lsn(src.get("current_lsn"))
    done = max(filter(None, (prog.end_lsn if prog else None,
                             _lsn(src.get("confirmed_flush_lsn")))), default=None)
    lag_bytes = lag_seconds = None
    if current is not None and done is not None:
        lag_bytes, lag_seconds = replication_lag(current, done,
                                                 prog.commit_time if prog else None)
        lag_seconds = round(lag_seconds, 3)
    report["lag_bytes"] = lag_bytes
    report["lag_seconds"] = lag_seconds
    # count(*) when exact, else the statistics' n_live_tup: named *_rows_estimate then, so
    # nobody reads a planner statistic as the number of rows
    suffix = "" if exact else "_estimate"
    report["row_counts"] = "exact" if exact else "estimate"
    report["tables"] = {
        t: {f"source_rows{suffix}": n, **tgt["tables"].get(t, {"rows": None, "synced": False}),
            } for t, n in src.get("tables", {}).items()}
    for info in report["tables"].values():
        info[f"target_rows{suffix}"] = info.pop("rows", None)
    return report
