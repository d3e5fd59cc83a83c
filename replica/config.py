"""Settings of one sidecar: every command-line flag is also an environment variable.

Why pydantic-settings: Kubernetes passes configuration as environment variables
(``PGML_REPLICA_SOURCE``, ``PGML_REPLICA_TARGET``, ...), people pass flags; one declared
model gives both, typed and validated, and the CLI only adds the flags that were given on top.
DSNs are excluded from ``repr`` so a settings object can be logged.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from replica.errors import ConfigError

ENV_PREFIX = "PGML_REPLICA_"
#: the Settings fields only `pgml-replica writeback` reads
WRITEBACK_FIELDS = ("project", "writeback_schema", "replica_host", "replica_port",
                    "replica_user", "password_env", "password_file", "fdw_server",
                    "materialize")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, populate_by_name=True,
                                      extra="ignore")

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

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_auto_or_version(cls, v: object) -> object:
        text = str(v).strip().lower()
        if text == "auto":
            return "auto"
        if text not in ("1", "2", "3", "4"):
            raise ValueError(f"protocol must be auto or 1-4, not {v!r}")
        return int(text)

    @field_validator("origin", mode="before")
    @classmethod
    def _origin_unset(cls, v: object) -> object:
        return None if v in ("", None) else str(v).strip().lower()

    @field_validator("tables")
    @classmethod
    def _tables_are_qualified(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for name in (t.strip() for t in v.split(",")):
            if name and name.count(".") > 1:
                raise ValueError(f"table {name!r}: expected schema.table or table")
        return v

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
