"""`pgml-replica`: one subcommand per phase a user thinks in (run, status, drop, install, ...).

Why this shape: each subcommand is an ``add_<name>_parser(subparsers)`` function that builds
its parser and sets ``func``; ``SUBCOMMANDS`` below is the one place they are registered (a
module path each, imported lazily so ``pgml-replica status`` never imports FastAPI).
Settings-backed flags are generated from ``replica.config.Settings``: every flag is also the
environment variable ``PGML_REPLICA_<FLAG>`` and the help says so. Errors print one line (or
the preflight list) without a traceback and exit with the error class's code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
from pydantic import ValidationError

from replica.clone import steps
from replica.config import ENV_PREFIX, WRITEBACK_FIELDS, Settings
from replica.errors import ReplicaError
from replica.secrets import scrub, secrets_of

SUBCOMMANDS = (
    "replica.operate.cli:add_run_parser",
    "replica.operate.cli:add_status_parser",
    "replica.operate.cli:add_drop_parser",
    "replica.operate.cli:add_install_parser",
    "replica.operate.writeback_verb:add_parser",
    "replica.operate.check_verb:add_parser",
)

_FLAG = {"schema_name": "schema"}  # field -> flag where the field name had to differ
_BOOL_FIELDS = {"resnapshot", "failover_slot"}


def add_settings_flags(parser: argparse.ArgumentParser, fields: list[str]) -> None:
    """Flags for these Settings fields; absent flags stay absent so env and defaults apply."""
    for name in fields:
        info = Settings.model_fields[name]
        flag = "--" + _FLAG.get(name, name).replace("_", "-")
        env = ENV_PREFIX + _FLAG.get(name, name).upper()
        default = "" if info.default in (None, "") or info.default_factory else \
            f", default {info.default}"
        help_ = f"{info.description} [{env}{default}]"
        if name in _BOOL_FIELDS:
            parser.add_argument(flag, dest=name, action="store_true",
                                default=argparse.SUPPRESS, help=help_)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_,
                                metavar=_FLAG.get(name, name).upper())


def settings_from(args: argparse.Namespace) -> Settings:
    from replica import credentials

    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    settings = Settings(**given)
    credentials.install_from(settings)  # every later connect asks them for its password
    return settings


# -- run -------------------------------------------------------------------------------


def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="check the source, copy the tables, then stream changes",
                       description="Checks the source, creates the publication and slot when "
                       "missing, copies the tables when the target has no progress yet, then "
                       "streams until SIGTERM/SIGINT.")
    add_settings_flags(p, [f for f in Settings.model_fields if f not in WRITEBACK_FIELDS])
    p.add_argument("--log-level", default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO"),
                   help=f"logging level [{ENV_PREFIX}LOG_LEVEL, default INFO]")
    p.add_argument("--no-pgml-install", action="store_true",
                   default=bool(os.environ.get(ENV_PREFIX + "NO_PGML_INSTALL")),
                   help="do not install/upgrade the pgml schema on the target before streaming "
                   f"[{ENV_PREFIX}NO_PGML_INSTALL]")
    p.set_defaults(func=cmd_run)


def _install_pgml(target: str) -> None:
    """`run` installs pgml like `install` does (issue 4), but replication does not depend
    on it: a target without PL/Python still gets its mirror, with a warning saying why."""
    from replica.connect import credential_params
    from replica.errors import ReplicaError
    from replica.target.pgml_install import install, installed_state

    log = logging.getLogger("replica.operate.cli")
    try:
        # Keep the python path an earlier install chose (the ML replica's image knows where
        # its environment is; this process's site-packages may not exist on that host).
        # Skip the install (~2 s: PL/Python imports scikit-learn) when it is current.
        with psycopg.connect(target, autocommit=True, connect_timeout=15,
                             **credential_params(target, "target")) as conn:
            paths, current = installed_state(conn)
        if current:
            log.info("pgml is current on the target")
            return
        log.info("pgml %s installed on the target", install(target, python_path=paths))
    except psycopg.Error as exc:
        log.warning("pgml was not installed: cannot read the target's pgml settings (%s)",
                    type(exc).__name__)
    except ReplicaError as exc:  # InstallError: secret-free by construction
        log.warning("pgml was not installed (%s); replication continues. Fix that and run "
                    "`pgml-replica install --target ...`, or pass --no-pgml-install", exc)


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    settings.require("source", "target")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    steps.mark("psycopg_pydantic_imported", steps.LOADED)
    steps.mark("settings")
    # the pgml check waits on the target (a connection, one query) while this thread
    # imports the runner; it still ends before replication starts (issue 14)
    pgml = None
    if not args.no_pgml_install:
        one = ThreadPoolExecutor(1, thread_name_prefix="pgml-check")
        pgml = one.submit(_install_pgml, settings.target)
        one.shutdown(wait=False)  # no more jobs; ``pgml.result()`` below waits for this one
    from replica.operate import report
    from replica.operate.runner import Runner
    from replica.state import Phase, SidecarState

    steps.mark("runner_imported")
    state = SidecarState(slot=settings.slot, publication=settings.publication)
    state.status_provider = lambda: report.collect(
        settings.source, settings.target, slot=settings.slot, publication=settings.publication)
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if stop.is_set():  # asked twice: stop now, the target rolls back the open batch
            os._exit(128 + signum)
        state.phase = Phase.STOPPING
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if pgml is not None:
        pgml.result()  # raises what the check raised
        steps.mark("pgml_check")
    server = None
    if settings.http_port:
        from replica.operate import ml_report
        from replica.operate.api import HttpServer, create_app

        server = HttpServer(create_app(state, max_lag_seconds=settings.max_lag_seconds,
                                       ml_provider=lambda: ml_report.collect(settings.target)),
                            settings.http_host, settings.http_port).start()
    try:
        Runner(settings, state, stop).run()
    finally:
        if server is not None:
            server.stop()
    return 0


# -- status ----------------------------------------------------------------------------


def add_status_parser(sub) -> None:
    p = sub.add_parser("status", help="slot, positions, lag and row counts",
                       description="Reads the source's slot and the target's progress: "
                       "active or not, confirmed flush and applied LSN, lag in bytes and "
                       "seconds, WAL retained by the slot, wal_status, rows per table.")
    add_settings_flags(p, ["source", "target", "slot", "publication"])
    p.add_argument("--json", action="store_true", help="print JSON (no secrets in it)")
    p.add_argument("--exact", action="store_true",
                   help="count rows with count(*) instead of the statistics' estimate")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from replica.operate import report

    s = settings_from(args)
    if not (s.source or s.target):
        s.require("source")
    found = report.collect(s.source, s.target, slot=s.slot, publication=s.publication,
                            exact=args.exact)
    if args.json:
        print(json.dumps(found, indent=2, default=str))
    else:
        _print_status(found)
    return 1 if "source_error" in found or "target_error" in found else 0


def _print_status(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    head = Table.grid(padding=(0, 2))
    for key in ("source", "target", "slot", "publication", "slot_exists", "active",
                "wal_status", "confirmed_flush_lsn", "applied_lsn", "applied_commit_time",
                "current_lsn", "lag_bytes", "lag_seconds", "retained_wal_bytes",
                "source_error", "target_error"):
        if key in report:
            head.add_row(key, str(report[key]))
    console.print(head)
    tables = Table("table", "source rows", "target rows", "copied", "sync LSN")
    for name, t in report.get("tables", {}).items():
        est = "" if "source_rows" in t else "~"  # n_live_tup unless --exact
        tables.add_row(name, est + str(t.get("source_rows", t.get("source_rows_estimate"))),
                       est + str(t.get("target_rows", t.get("target_rows_estimate"))),
                       "yes" if t.get("synced") else "no", str(t.get("sync_lsn") or ""))
    console.print(tables)


# -- drop ------------------------------------------------------------------------------


def add_drop_parser(sub) -> None:
    p = sub.add_parser("drop", help="remove the slot and publication from the source",
                       description="Drops what `run` created on the source: the replication "
                       "slot (an abandoned slot keeps WAL and fills the source's disk) and the "
                       "publication. With --target also forgets the target's progress for "
                       "the slot, so the next run copies everything anew.")
    add_settings_flags(p, ["source", "target", "slot", "publication"])
    p.add_argument("--keep-publication", action="store_true",
                   help="drop only the slot (the publication was made by a DBA)")
    p.set_defaults(func=cmd_drop)


def cmd_drop(args: argparse.Namespace) -> int:
    from replica.connect import connect
    from replica.source.publication import drop_publication
    from replica.source.slots import drop_slot
    from replica.target import progress

    s = settings_from(args)
    s.require("source")
    with connect(s.source, "source", "drop") as conn:
        dropped = drop_slot(conn, s.slot)
        print(f"slot {s.slot}: {'dropped' if dropped else 'did not exist'}")
        if not args.keep_publication:
            existed = drop_publication(conn, s.publication)
            print(f"publication {s.publication}: {'dropped' if existed else 'did not exist'}")
    if s.target:
        with connect(s.target, "target", "drop") as conn:
            if progress.exists(conn):
                progress.forget(conn, s.slot)
            print(f"target progress for {s.slot}: forgotten (tables kept)")
    return 0


# -- install, demo ---------------------------------------------------------------------


def add_install_parser(sub) -> None:
    p = sub.add_parser("install", help="install or upgrade the pgml schema on the ML replica")
    add_settings_flags(p, ["target"])
    p.add_argument("--python-path", action="append", default=None, metavar="DIR",
                   help="directory PL/Python imports from (repeatable; default: this "
                   "installation's site-packages)")
    p.set_defaults(func=cmd_install)


def cmd_install(args: argparse.Namespace) -> int:
    from replica.target.pgml_install import install

    s = settings_from(args)
    s.require("target")
    paths = [d for arg in args.python_path for d in arg.split(os.pathsep) if d] \
        if args.python_path else None
    print(f"pgml {install(s.target, python_path=paths)} installed")
    return 0


# -- entry point -----------------------------------------------------------------------


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand's parser; given the ``command`` about to run, only this module's own
    when it is one of them. Why: the other verbs' modules import what only they need (rich
    tables for `check`), and `run`'s start-up is measured from exec (issue 14)."""
    if command is not None:
        own = _parser([p for p in SUBCOMMANDS if p.partition(":")[0] == __name__])
        if command in own[1].choices:
            return own[0]
    return _parser(list(SUBCOMMANDS))[0]


def _parser(paths: list[str]) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="pgml-replica", description="Mirror Postgres "
                                     "tables into an ML replica over logical replication.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for path in paths:
        module, _, func = path.partition(":")
        getattr(importlib.import_module(module), func)(sub)
    return parser, sub


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but a usage error never repeats a connection string: argparse quotes the
    arguments it did not expect, and a DSN there may hold a password."""
    import contextlib
    import io

    argv = sys.argv[1:] if argv is None else argv
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return build_parser(argv[0] if argv else None).parse_args(argv)
    except SystemExit:
        text = said.getvalue()
        for a in argv:
            if "=" in a or "://" in a:
                text = text.replace(a, "<connection string hidden>")
        sys.stderr.write(text)
        raise


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    secrets = secrets_of(*(getattr(args, k, None) for k in ("source", "target")),
                         os.environ.get(ENV_PREFIX + "SOURCE"),
                         os.environ.get(ENV_PREFIX + "TARGET"))
    try:
        return args.func(args)
    except ValidationError as exc:
        print(f"pgml-replica {args.command}: invalid settings:\n{scrub(str(exc), secrets)}",
              file=sys.stderr)
        return 2
    except ReplicaError as exc:
        print(f"pgml-replica {args.command}: {scrub(str(exc), secrets)}", file=sys.stderr)
        return exc.exit_code
    except psycopg.Error as exc:  # a connection refused, a privilege missing, ...
        print(f"pgml-replica {args.command}: {scrub(str(exc).strip(), secrets)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
