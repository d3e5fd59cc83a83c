"""Install or upgrade the pgml schema on the ML replica: ``pgml-replica install --target DSN``.

What it does, in one transaction (so a failed install or upgrade changes nothing):
the SQL files of the ``sql`` package -- 10_pgml_schema.sql, 20_pgml_api.sql, then any other
*.sql there (e.g. expose.sql, which builds on pgml) in name order; the version and the Python
path into ``pgml.settings``; then a check that PL/Python, in a backend of the target, really
imports the ``inference`` package and its libraries from that path.

The Python path is the one place that tells PL/Python where the project's environment is: a
JSON array of directories in ``pgml.settings``, read by ``pgml._bootstrap()`` once per backend.
By default it is the directory holding this ``inference`` package (when that is not already
site-packages) followed by the installing interpreter's site-packages, which is right when the
database server runs on this machine with the same Python (PL/Python embeds the system
python3.11, so the environment must be built with it).

Idempotent: every file is CREATE ... IF NOT EXISTS / CREATE OR REPLACE, so installing again
upgrades in place and keeps projects, snapshots, models and deployments.

Why a fingerprint: `pgml-replica run` installs on every start, and the full install (DDL plus
PL/Python importing scikit-learn and onnxruntime in a fresh backend) costs ~2 s before the
first row is copied. The install records ``fingerprint()`` (the version and a digest of the
SQL it ran) as the comment on ``pgml.settings``; ``installed_state`` reads it back in one round trip, and
``run`` skips the install when it matches. ``pgml-replica install`` always does the full job.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import sys
import sysconfig
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from replica.connect import credential_params
from replica.errors import InstallError
from replica.secrets import describe, scrub, secrets_of

CORE_FILES = ("10_pgml_schema.sql", "20_pgml_api.sql")
PACKAGE = "pgml-replica"
FINGERPRINT_PREFIX = "pgml-replica installed: "


def package_version() -> str:
    return importlib.metadata.version(PACKAGE)


def default_python_path() -> list[str]:
    """The directory holding ``inference`` (when it is not site-packages) and site-packages."""
    import inference

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    parent = Path(inference.__file__).resolve().parent.parent
    return [str(site)] if parent == site else [str(parent), str(site)]


def sql_files() -> list[tuple[str, str]]:
    """(name, text) of the files to run: the pgml core in order, then the rest by name."""
    root = importlib.resources.files("sql")
    found = {p.name: p for p in root.iterdir() if p.name.endswith(".sql")}
    missing = [name for name in CORE_FILES if name not in found]
    if missing:
        raise InstallError(f"this installation of {PACKAGE} lacks {', '.join(missing)} in its "
                           "sql package; reinstall it")
    order = list(CORE_FILES) + sorted(set(found) - set(CORE_FILES))
    return [(name, found[name].read_text(encoding="utf-8")) for name in order]


def fingerprint(files: list[tuple[str, str]] | None = None) -> str:
    """The version plus a digest of the SQL files: equal means nothing to upgrade."""
    digest = hashlib.sha256()
    for name, text in files if files is not None else sql_files():
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return f"{package_version()}+{digest.hexdigest()[:16]}"


def installed_state(conn: psycopg.Connection) -> tuple[list[str] | None, bool]:
    """(the python path an earlier install chose, whether that install is current), in one
    round trip on an autocommit connection; (None, False) where pgml is not installed."""
    try:
        row = conn.execute(
            "SELECT (SELECT value FROM pgml.settings WHERE name = 'python_path'),"
            " obj_description('pgml.settings'::regclass, 'pg_class')").fetchone()
    except psycopg.errors.UndefinedTable:
        return None, False
    paths, found = row if row else (None, None)
    return paths, paths is not None and found == FINGERPRINT_PREFIX + fingerprint()


def install(target_dsn: str, python_path: list[str] | None = None) -> str:
    """Install or upgrade pgml on ``target_dsn``; returns the installed version."""
    version = package_version()
    paths = [str(p) for p in (python_path or default_python_path())]
    where = describe(target_dsn)
    secrets = secrets_of(target_dsn)
    try:
        with psycopg.connect(target_dsn, autocommit=False, connect_timeout=15,
                             **credential_params(target_dsn, "target")) as conn:
            # Two installers at once would race on CREATE ... IF NOT EXISTS.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgml-replica install'))")
            files = sql_files()
            for name, text in files:
                try:
                    conn.execute(text)
                except psycopg.Error as exc:
                    raise InstallError(f"installing pgml on {where} failed in sql/{name}: "
                                       f"{scrub(_message(exc), secrets)}") from None
            conn.execute(
                "INSERT INTO pgml.settings (name, value) VALUES ('version', %s),"
                " ('python_path', %s) ON CONFLICT (name) DO UPDATE"
                " SET value = EXCLUDED.value, updated_at = clock_timestamp()",
                (Jsonb(version), Jsonb(paths)))
            env = _verify(conn, paths, where, secrets)
            if python_path is None:
                _same_python(env, where)
            # Written last, in the same transaction: only a verified install is current.
            conn.execute(sql.SQL("COMMENT ON TABLE pgml.settings IS {}").format(
                sql.Literal(FINGERPRINT_PREFIX + fingerprint(files))))
    except psycopg.OperationalError as exc:
        raise InstallError(f"cannot install pgml on {where}: "
                           f"{scrub(_message(exc), secrets)}") from None
    return version


def _verify(conn: psycopg.Connection, paths: list[str], where: str, secrets: list[str]) -> dict:
    """Make PL/Python import the package now, so a bad path fails the install, not a query."""
    try:
        with conn.transaction():  # a savepoint: the failure is reported, then rolled back
            env = conn.execute("SELECT pgml._environment()").fetchone()[0]
    except psycopg.Error as exc:
        raise InstallError(
            f"PL/Python on {where} cannot import the project's Python package from "
            f"{json.dumps(paths)}: {scrub(_message(exc), secrets)}. The server runs PL/Python "
            "as its own OS user (usually 'postgres'): every directory must exist on the "
            "database host and be readable by that user, and the environment must be built "
            "for the server's python3 (pass python_path / --python-path to choose another)"
        ) from None
    return env


def _same_python(env: dict, where: str) -> None:
    """The default path is this interpreter's environment: PL/Python must embed the same."""
    mine = ".".join(map(str, sys.version_info[:2]))
    theirs = ".".join(env["python"].split(".")[:2])
    if theirs != mine:
        raise InstallError(f"PL/Python on {where} embeds Python {theirs} but this environment "
                           f"is Python {mine}; build the environment with python{theirs}")


def _message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    return primary or str(exc).strip()
