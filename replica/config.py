"""Settings of one sidecar: every command-line flag is also an environment variable.

Why one declared model: Kubernetes passes configuration as environment variables
(``PGML_REPLICA_SOURCE``, ``PGML_REPLICA_TARGET``, ...), people pass flags; one declaration
gives both, typed and validated, and the CLI only adds the flags that were given on top.
DSNs are excluded from ``repr`` so a settings object can be logged.

Why not pydantic (pydantic-settings until issue 14, then a pydantic model): a fresh replica is
measured from process start, and importing pydantic and building the model was ~65 ms of
`run`'s ~165 ms of CPU before the runner - for some 40 scalar fields. This module keeps the
same declarations (``Field(default, description=..., ge=...)``, ``model_fields`` with
``default``/``default_factory``/``description``/``validation_alias`` for the CLI's flags) and
pydantic's lax rules for what it accepted: integers from "8", " 8", "1_000" or "8.0"; numbers
from "1e3" or "inf"; booleans from 1/0/true/false/yes/no/on/off/t/f/y/n in any case. The
environment is read as pydantic-settings read it: ``PGML_REPLICA_<FIELD>`` in any letter case,
a field's validation aliases first, arguments over the environment, defaults validated. A bad
value raises ``ConfigError`` ("invalid settings:" and one entry per setting, as pydantic's
message named them). tests/replica/test_config.py holds these rules.
"""

from __future__ import annotations

import math
import os
import re
from typing import Literal

from replica.errors import ConfigError

ENV_PREFIX = "PGML_REPLICA_"
#: the Settings fields only `pgml-replica writeback` reads
WRITEBACK_FIELDS = ("project", "writeback_schema", "replica_host", "replica_port",
                    "replica_user", "password_env", "password_file", "fdw_server",
                    "materialize")


class AliasChoices:
    """Other names a field is read under, in order (unprefixed in the environment)."""

    def __init__(self, *choices: str) -> None:
        self.choices = list(choices)


class Field:
    """One setting's declaration: what the CLI shows (default, description) and checks."""

    __slots__ = ("default", "default_factory", "description", "repr", "validation_alias",
                 "ge", "gt", "le", "kind", "optional")

    def __init__(self, default: object = None, *, default_factory=None,
                 description: str | None = None, repr: bool = True,  # noqa: A002 - pydantic's
                 validation_alias: AliasChoices | None = None, ge: float | None = None,
                 gt: float | None = None, le: float | None = None) -> None:
        self.default, self.default_factory = default, default_factory
        self.description, self.repr, self.validation_alias = description, repr, validation_alias
        self.ge, self.gt, self.le = ge, gt, le
        self.kind, self.optional = "any", False  # from the annotation, by _declare

    def names(self, name: str) -> list[str]:
        """Names an argument may use: the aliases first, then the field's own."""
        alias = self.validation_alias
        return [*(alias.choices if alias is not None else []), name]


class _Invalid(ValueError):
    pass


_BOOL = {**dict.fromkeys(("0", "off", "f", "false", "n", "no"), False),
         **dict.fromkeys(("1", "on", "t", "true", "y", "yes"), True)}
_INTEGRAL = re.compile(r"[+-]?[0-9][0-9_]*(?:\.0+)?")


def _number(v: object, kind: str) -> int | float:
    """pydantic's lax int/float: the value, a string of one (spaces around allowed)."""
    what = "an integer" if kind == "int" else "a number"
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    if isinstance(v, str):
        text = v.strip()
        try:
            if not text.isascii() or (kind == "int" and not _INTEGRAL.fullmatch(text)):
                raise ValueError(text)
            return int(text.partition(".")[0]) if kind == "int" else float(text)
        except ValueError:
            raise _Invalid(f"Input should be a valid {'integer' if kind == 'int' else 'number'}"
                           f", unable to parse string as {what}") from None
    if isinstance(v, bool | int) and not isinstance(v, float):
        return int(v) if kind == "int" else float(v)
    if isinstance(v, float):
        if kind == "float":
            return v
        if not math.isfinite(v):
            raise _Invalid("Input should be a finite number")
        if not v.is_integer():
            raise _Invalid("Input should be a valid integer, got a number with a fractional "
                           "part")
        return int(v)
    raise _Invalid(f"Input should be a valid {'integer' if kind == 'int' else 'number'}")


def _coerce(f: Field, v: object) -> object:
    if v is None and f.optional:
        return None
    if f.kind == "str":
        if isinstance(v, bytes):
            return v.decode(errors="replace")
        if not isinstance(v, str):
            raise _Invalid("Input should be a valid string")
        return v
    if f.kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, int | str | bytes) or isinstance(v, float) and v.is_integer():
            text = v.decode(errors="replace") if isinstance(v, bytes) else v
            if isinstance(text, str) and text.lower() in _BOOL:
                return _BOOL[text.lower()]
            if not isinstance(text, str) and text in (0, 1):
                return bool(text)
            raise _Invalid("Input should be a valid boolean, unable to interpret input")
        raise _Invalid("Input should be a valid boolean")
    if f.kind in ("int", "float"):
        n = _number(v, f.kind)
        if f.le is not None and not n <= f.le:  # pydantic's order: what nan reports
            raise _Invalid(f"Input should be less than or equal to {f.le}")
        if f.ge is not None and not n >= f.ge:
            raise _Invalid(f"Input should be greater than or equal to {f.ge}")
        if f.gt is not None and not n > f.gt:
            raise _Invalid(f"Input should be greater than {f.gt}")
        return n
    return v


#: annotation (a string: ``from __future__ import annotations``) -> (kind, None allowed)
_KINDS = {"str": ("str", False), "str | None": ("str", True), "int": ("int", False),
          "int | None": ("int", True), "float": ("float", False), "bool": ("bool", False)}


def environment(fields: dict[str, Field]) -> dict[str, str]:
    """The environment's values for these fields, by field name: the field's validation
    aliases (unprefixed), then ``ENV_PREFIX`` + the name, the first found winning, matched
    without regard to letter case."""
    env = {k.lower(): v for k, v in os.environ.items()}
    found = {}
    for name, info in fields.items():
        for env_name in [*info.names(name)[:-1], ENV_PREFIX + name]:
            if env_name.lower() in env:
                found[name] = env[env_name.lower()]
                break
    return found


class Settings:
    """The sidecar's settings; ``Settings(**flags)`` reads the environment for the rest."""

    model_fields: dict[str, Field]  # declared order; filled in below the class

    def __init__(self, **given: object) -> None:
        """Arguments (flags) over the environment over the defaults; every bad value is
        reported at once, as pydantic did."""
        fields = type(self).model_fields
        env = environment(fields)
        errors, values = [], {}
        for name, f in fields.items():
            raw = next((given[n] for n in f.names(name) if n in given), _MISSING)
            if raw is _MISSING:
                raw = env.get(name, _MISSING)
            if raw is _MISSING:
                raw = f.default_factory() if f.default_factory is not None else f.default
            try:
                check = _BEFORE.get(name)
                value = _coerce(f, check(raw) if check else raw)
                check = _AFTER.get(name)
                values[name] = check(value) if check else value
            except _Invalid as exc:
                errors.append((name, str(exc), raw))
            except ValueError as exc:  # a validator's own rule
                errors.append((name, f"Value error, {exc}", raw))
        if errors:
            raise ConfigError("invalid settings:\n" + f"{len(errors)} validation error"
                              f"{'s' if len(errors) > 1 else ''} for Settings\n" + "\n".join(
                                  f"{n}\n  {m} [input_value={v!r}, input_type="
                                  f"{type(v).__name__}]" for n, m, v in errors))
        self.__dict__.update(values)

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n, f in self.model_fields.items()
                          if f.repr)
        return f"Settings({shown})"

    source: str | None = Field(None, repr=False, description="source Postgres DSN")
    target: str | None = Field(None, repr=False, description="ML replica Postgres DSN")
    tables: str | None = Field(None, description="comma list of schema.table to replicate")
    schema_name: str | None = Field(
        None, validation_alias=AliasChoices("schema_name", "pgml_replica_schema"),
        description="replicate every table of this schema (default public)")
    publication: str = Field("pgml_replica", description="publication on the source")
    slot: str = Field("pgml_replica", description="logical replication slot on the source")
    http_host: str = Field("127.0.0.1", description="address of the HTTP endpoint")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 = no HTTP")
    max_lag_seconds: float = Field(30.0, gt=0, description="/readyz fails above this lag")
    resnapshot: bool = Field(False, description="drop slot + progress and copy everything anew")

    # Tuning; the defaults are what the benchmarks were run with.
    batch_max_rows: int = Field(200_000, ge=1, description="row changes per target commit")
    batch_max_seconds: float = Field(0.5, gt=0, description="age of a batch before commit")
    segment_rows: int = Field(50_000, ge=1, description="changes buffered before they are "
                              "written into the open target transaction")
    snapshot_workers: int = Field(
        default_factory=lambda: max(1, min(4, (os.cpu_count() or 2) // 2)), ge=1, le=64,
        description="parallel COPY streams (default: half the CPUs, at most 4)")
    snapshot_chunk_pages: int = Field(8192, ge=1, description="ctid range per COPY of a "
                                      "big table (8 kB pages)")
    status_interval: float = Field(10.0, gt=0, le=60, description="seconds between "
                                   "feedback messages at most")
    receive_timeout: float = Field(60.0, ge=2, description="seconds without any message from "
                                   "the source before the connection counts as dead and is "
                                   "reopened (a ping is sent at half of it), as PostgreSQL's "
                                   "own wal_receiver_timeout); also the target's bound: an apply "
                                   "statement waiting this long on a backend that is not "
                                   "working on it gets the backend ended and the batch "
                                   "replayed (connect.Watchdog)")
    lock_timeout: float = Field(60.0, gt=0, description="seconds a target write may wait for "
                                "a lock before its batch is rolled back and replayed (a wait "
                                "PostgreSQL cannot see as a deadlock: a streamed transaction's "
                                "lock held until the stream reads its commit)")
    publication_poll_seconds: float = Field(10.0, gt=0, description="how often to look for "
                                            "tables added to the publication")
    protocol: Literal["auto"] | int = Field(
        "auto", description="pgoutput protocol version: auto (4 with streaming 'parallel' "
        "on PostgreSQL 16+, 2 with streaming 'on' on 14-15, 1 before), or 1-4 to force one; "
        "2+ streams large transactions as they happen")
    origin: Literal["any", "none"] | None = Field(
        None, description="pgoutput origin option (PostgreSQL 16+): 'none' publishes only "
        "changes made on the source itself, 'any' also those it replicated from elsewhere; "
        "unset: not sent (the server publishes every change)")
    failover_slot: bool = Field(False, description="create the slot with FAILOVER so a "
                                "standby synchronizes it (PostgreSQL 17+, docs/sidecar.md)")
    history: str | None = Field(None, description="keep every version of these tables on the "
                                "replica (comma list of schema.table, or all; docs/history.md)")
    history_retention: str | None = Field(None, description="drop history versions replaced "
                                          "longer ago than this (90d, 12h; default: keep)")
    decoding_work_mem: str | None = Field(
        "16MB", description="logical_decoding_work_mem for the walsender; with protocol 2 "
        "a transaction bigger than this streams before its commit")

    # Where passwords come from, asked at every connect (replica/credentials.py); none of
    # them: the DSN's password, PGPASSWORD or ~/.pgpass.
    source_password_file: str | None = Field(None, description="file holding the source's "
                                             "password, re-read at each connect")
    source_password_command: str | None = Field(
        None, repr=False, description="command printing the source's password, run at each "
        "connect (its output is never logged)")
    source_iam: str | None = Field(None, description="AWS region: log in to the source with "
                                   "RDS IAM tokens, one per connection (needs the aws extra)")
    source_iam_host: str | None = Field(None, description="RDS instance host the IAM token "
                                        "is signed for (default: the source DSN's host)")
    source_iam_port: int | None = Field(None, ge=1, le=65535, description="RDS instance port "
                                        "for the IAM token (default: the source DSN's)")
    target_password_file: str | None = Field(None, description="file holding the target's "
                                             "password, re-read at each connect")
    target_password_command: str | None = Field(
        None, repr=False, description="command printing the target's password, run at each "
        "connect (its output is never logged)")

    # `writeback`: postgres_fdw on the source over the replica's pgml_out views
    # (docs/writeback.md). Only that verb reads these (WRITEBACK_FIELDS).
    project: str | None = Field(None, description="pgml project whose exposed views to read")
    writeback_schema: str = Field("ml", description="schema on the source for the foreign "
                                  "tables")
    replica_host: str | None = Field(None, description="host the *source* reaches the replica "
                                     "at (default: the target DSN's)")
    replica_port: int | None = Field(None, ge=1, le=65535, description="port the source "
                                     "reaches the replica at (default: the target DSN's)")
    replica_user: str = Field("pgml_reader", description="login role on the replica that "
                              "reads pgml_out and nothing else")
    password_env: str = Field(ENV_PREFIX + "READER_PASSWORD", description="environment "
                              "variable that holds the reader's password")
    password_file: str | None = Field(None, description="file that holds the reader's "
                                      "password (wins over --password-env)")
    fdw_server: str = Field("pgml_replica", description="name of the foreign server on the "
                            "source")
    materialize: bool = Field(False, description="keep predictions in a table on the replica, "
                              "scored as rows replicate, instead of scoring on every read")

    def table_list(self) -> list[tuple[str, str]]:
        """``--tables`` as (schema, table) pairs; unqualified names are in ``public``."""
        out = []
        for name in (self.tables or "").split(","):
            name = name.strip()
            if name:
                schema, _, table = name.rpartition(".")
                out.append((schema or "public", table))
        return out

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            flags = ", ".join(f"--{n} (or {ENV_PREFIX}{n.upper()})" for n in missing)
            raise ConfigError(f"missing {flags}")


def _protocol_auto_or_version(v: object) -> object:
    text = str(v).strip().lower()
    if text == "auto":
        return "auto"
    if text not in ("1", "2", "3", "4"):
        raise ValueError(f"protocol must be auto or 1-4, not {v!r}")
    return int(text)


def _origin_unset(v: object) -> object:
    return None if v in ("", None) else str(v).strip().lower()


def _origin_known(v: object) -> object:
    if v not in (None, "any", "none"):
        raise _Invalid("Input should be 'any' or 'none'")
    return v


def _tables_are_qualified(v: str | None) -> str | None:
    if v is None:
        return v
    for name in (t.strip() for t in v.split(",")):
        if name and name.count(".") > 1:
            raise ValueError(f"table {name!r}: expected schema.table or table")
    return v


_MISSING = object()
_BEFORE = {"protocol": _protocol_auto_or_version, "origin": _origin_unset}
_AFTER = {"origin": _origin_known, "tables": _tables_are_qualified}


def _declare(cls: type) -> None:
    """``model_fields`` in declaration order, each with its kind from its annotation."""
    fields = {}
    for name, annotation in cls.__annotations__.items():
        f = cls.__dict__.get(name)
        if not isinstance(f, Field):
            continue
        f.kind, f.optional = _KINDS.get(annotation, ("any", "None" in annotation))
        fields[name] = f
    cls.model_fields = fields


_declare(Settings)
