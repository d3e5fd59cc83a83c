"""`pgml-replica writeback`: the verb over ``replica.writeback.setup.writeback``.

Why here and not in ``replica.writeback``: the operate layer owns the command line. Flags come
from ``replica.config.Settings`` like every other verb's (each also ``PGML_REPLICA_<NAME>``);
``replica.operate.cli.main`` prints errors and picks the exit code from the error's class
(``WritebackError`` is a ``ConfigError``: exit 2). This module only builds the parser and
prints what was done. Two flags keep names that differ from their settings, because those
names were taken by other verbs' settings: ``--schema`` is ``writeback_schema``
(``PGML_REPLICA_WRITEBACK_SCHEMA``) and ``--server`` is ``fdw_server``
(``PGML_REPLICA_FDW_SERVER``).
"""

from __future__ import annotations

import argparse

from replica.config import ENV_PREFIX, Settings
from replica.operate.cli import add_settings_flags, settings_from

_RENAMED = {"writeback_schema": "--schema", "fdw_server": "--server"}


def _help(field: str) -> str:
    info = Settings.model_fields[field]
    shown = f", default {info.default}" if info.default not in (None, "") else ""
    return f"{info.description} [{ENV_PREFIX}{field.upper()}{shown}]"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "writeback", help="make a project's predictions readable on the source (postgres_fdw)",
        description="Sets up postgres_fdw on the source so that it reads the project's "
                    "pgml_out views on the ML replica (create them there with pgml.expose); "
                    "--drop removes it again. Idempotent.")
    add_settings_flags(p, ["source", "target", "project"])
    for field, flag in _RENAMED.items():
        p.add_argument(flag, dest=field, default=argparse.SUPPRESS, help=_help(field),
                       metavar=flag[2:].upper())
    add_settings_flags(p, ["replica_host", "replica_port", "replica_user", "password_env",
                           "password_file"])
    p.add_argument("--materialize", dest="materialize", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help=_help("materialize"))
    p.add_argument("--drop", action="store_true", help="remove what writeback set up")
    p.set_defaults(func=cmd_writeback)
    return p


def cmd_writeback(args: argparse.Namespace) -> int:
    """Print what was done and the SQL to run next on the source."""
    from replica.writeback.setup import writeback

    s = settings_from(args)
    s.require("source", "target", "project")
    result = writeback(s.source, s.target, s.project, schema=s.writeback_schema,
                       replica_host=s.replica_host, replica_port=s.replica_port,
                       replica_user=s.replica_user, password_env=s.password_env,
                       password_file=s.password_file, materialize=s.materialize,
                       drop=args.drop, server=s.fdw_server)
    if args.drop:
        print("removed: " + (", ".join(result.removed) or "nothing (nothing was set up)"))
    else:
        mode = "materialized" if s.materialize else "live"
        print(f"write-back ready ({mode} predictions): " + ", ".join(
            result.foreign_tables + result.joined_views))
        if result.removed:
            print("removed (no longer exposed): " + ", ".join(result.removed))
    for note in result.notes:
        print(f"note: {note}")
    if result.next_sql:
        print("\nNext, on the source:\n" + result.next_sql)
    return 0
