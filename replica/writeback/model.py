"""What write-back knows and reports: an exposure as the source needs it, the result of a run,
and the names it creates.

Why one module: the replica side, the source side and removal all speak in these terms; the
defaults are the ``writeback`` fields of ``replica.config.Settings`` (declared there once, so
the command line, the environment and a direct call agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from replica.config import Settings

_SETTINGS = Settings.model_fields
DEFAULT_PASSWORD_ENV: str = _SETTINGS["password_env"].default
DEFAULT_SERVER: str = _SETTINGS["fdw_server"].default
DEFAULT_SCHEMA: str = _SETTINGS["writeback_schema"].default
DEFAULT_READER: str = _SETTINGS["replica_user"].default
JOINED_SUFFIX = "_joined"
# Comments that record what writeback created, so --drop removes only that: a schema or a
# postgres_fdw extension that was there before (e.g. installed by rds_superuser) stays.
MADE_SCHEMA = "pgml-replica write-back: created by pgml-replica writeback"
MADE_SERVER = "pgml-replica write-back server"
MADE_SERVER_AND_EXTENSION = MADE_SERVER + " (writeback created the postgres_fdw extension)"


@dataclass(frozen=True)
class Exposure:
    """One pgml_out view on the replica, as the source needs to know it."""

    view_name: str
    project_name: str
    base_schema: str
    base_table: str
    key_columns: tuple[str, ...]
    task: str
    materialized: bool
    columns: tuple[tuple[str, str], ...]  # (name, SQL type) of the view, in order

    @property
    def joined_name(self) -> str:
        """The source view that puts each prediction next to its base row."""
        return self.view_name + JOINED_SUFFIX

    @property
    def prediction_columns(self) -> list[str]:
        """The view's columns that are not the key: what a prediction adds to a row."""
        return [n for n, _ in self.columns if n not in self.key_columns]


@dataclass
class WritebackResult:
    """What was set up (or removed), and the SQL a user runs next on the source."""

    schema: str
    server: str
    exposures: list[Exposure]
    foreign_tables: list[str] = field(default_factory=list)
    joined_views: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    next_sql: str = ""
