"""Every Prometheus metric the sidecar exports, declared once.

Why one module: operators write alert rules and dashboards against these names
(deploy/prometheus/, deploy/grafana/, the Helm chart's PrometheusRule), so the names are an
interface. The streaming and snapshot code update them; replica.operate.api serves them.

A process-wide registry is fine: one sidecar process follows one slot. Tests that need a
clean slate read deltas, never absolute values.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from replica.errors import ReplicaError

REGISTRY = CollectorRegistry(auto_describe=True)

_NS = "pgml_replica"

BUILD_INFO = Info("build", "pgml-replica version, slot and publication", namespace=_NS,
                  registry=REGISTRY)


def package_version() -> str:
    """The installed distribution's version ("unknown" when run from a tree never installed)."""
    try:
        return version("pgml-replica")
    except PackageNotFoundError:
        return "unknown"


def set_build_info(slot: str = "", publication: str = "") -> None:
    """``pgml_replica_build_info{version, slot, publication}``: always carries the version, so
    an alert on ``absent(pgml_replica_build_info)`` and a dashboard's version panel work from
    the first scrape, before the runner knows its slot."""
    BUILD_INFO.info({"version": package_version(), "slot": slot, "publication": publication})

CONNECTED = Gauge("connected", "1 while the connection is up", ["peer"], namespace=_NS,
                  registry=REGISTRY)  # peer: source | target
RECONNECTS = Counter("reconnects_total", "Reconnect attempts after a lost connection",
                     ["peer"], namespace=_NS, registry=REGISTRY)

LAG_BYTES = Gauge("lag_bytes", "Source WAL end minus the LSN the target has committed",
                  namespace=_NS, registry=REGISTRY)
LAG_SECONDS = Gauge("lag_seconds",
                    "Now minus the source commit time of the last applied transaction "
                    "(0 when caught up and idle)", namespace=_NS, registry=REGISTRY)
APPLIED_LSN = Gauge("applied_lsn", "End LSN of the last source transaction committed on the "
                    "target", namespace=_NS, registry=REGISTRY)
FLUSHED_LSN = Gauge("flushed_lsn", "Flush LSN last confirmed to the source", namespace=_NS,
                    registry=REGISTRY)
RECEIVED_LSN = Gauge("received_lsn", "Highest WAL position received from the source",
                     namespace=_NS, registry=REGISTRY)

SLOT_RETAINED_WAL_BYTES = Gauge("slot_retained_wal_bytes",
                                "WAL the source keeps for the slot (current LSN minus "
                                "restart_lsn)", namespace=_NS, registry=REGISTRY)
SLOT_WAL_STATUS = Gauge("slot_wal_status", "1 for the slot's current wal_status "
                        "(reserved, extended, unreserved, lost)", ["status"], namespace=_NS,
                        registry=REGISTRY)

ROWS_APPLIED = Counter("rows_applied_total", "Row changes applied to the target",
                       ["table", "op"], namespace=_NS, registry=REGISTRY)  # op: insert|update|delete|truncate
HISTORY_VERSIONS = Counter("history_versions_total", "Row versions committed to the history "
                           "tables (--history)", ["table"], namespace=_NS, registry=REGISTRY)
HISTORY_BYTES = Counter("history_bytes_total", "Bytes of row versions committed to the history "
                        "tables (COPY payload)", ["table"], namespace=_NS, registry=REGISTRY)
HISTORY_STORED_VERSIONS = Gauge("history_stored_versions", "Row versions a history table holds "
                                "now (where: postgres - statistics estimate - or parquet)",
                                ["table", "where"], namespace=_NS, registry=REGISTRY)
HISTORY_STORED_BYTES = Gauge("history_stored_bytes", "Bytes a history table holds now (where: "
                             "postgres or parquet)", ["table", "where"], namespace=_NS,
                             registry=REGISTRY)
HISTORY_COMPACTIONS = Counter("history_compactions_total", "Compactions to Parquet seen by the "
                              "sidecar (the table's segment rewritten)", ["table"],
                              namespace=_NS, registry=REGISTRY)
HISTORY_LAST_COMPACTION = Gauge("history_last_compaction_timestamp_seconds", "When the table's "
                                "Parquet segment was last written", ["table"], namespace=_NS,
                                registry=REGISTRY)
TRANSACTIONS_APPLIED = Counter("transactions_applied_total",
                               "Source transactions committed on the target", namespace=_NS,
                               registry=REGISTRY)
TRANSACTIONS_SKIPPED = Counter("transactions_skipped_total",
                               "Source transactions at or below the target's progress LSN "
                               "(replayed after a restart) and skipped", namespace=_NS,
                               registry=REGISTRY)
BATCH_TRANSACTIONS = Histogram("batch_transactions", "Source transactions per target "
                               "transaction", namespace=_NS, registry=REGISTRY,
                               buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000))
BATCH_ROWS = Histogram("batch_rows", "Row changes per target transaction", namespace=_NS,
                       registry=REGISTRY,
                       buckets=(1, 10, 100, 1_000, 10_000, 100_000, 1_000_000))
APPLY_SECONDS = Histogram("apply_seconds", "Time to apply and commit one target transaction",
                          namespace=_NS, registry=REGISTRY,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                   1, 2.5, 5, 10, 30))
SCHEMA_CHANGES = Counter("schema_changes_total", "ALTER TABLEs applied from Relation messages",
                         ["table"], namespace=_NS, registry=REGISTRY)

SNAPSHOT_ROWS = Counter("snapshot_rows_total", "Rows copied by the initial snapshot",
                        ["table"], namespace=_NS, registry=REGISTRY)
SNAPSHOT_ROWS_PER_SECOND = Gauge("snapshot_rows_per_second",
                                 "Copy rate of the running (or last) snapshot",
                                 namespace=_NS, registry=REGISTRY)
SNAPSHOT_PROGRESS = Gauge("snapshot_progress_ratio",
                          "Fraction of the table copied (estimated from pg_class.reltuples)",
                          ["table"], namespace=_NS, registry=REGISTRY)

WAIT_SECONDS = Gauge("wait_seconds", "How long a step has waited for source sessions "
                     "(open transactions, locks); 0 when nothing waits", ["what"],
                     namespace=_NS, registry=REGISTRY)  # what: slot | copy

ERRORS = Counter("errors_total", "Errors by class (see replica.errors)", ["kind"],
                 namespace=_NS, registry=REGISTRY)


def error_kinds() -> list[str]:
    """Every ``kind`` a ReplicaError subclass declares (replica.errors), sorted."""
    kinds, todo = set(), [ReplicaError]
    while todo:
        cls = todo.pop()
        kinds.add(cls.kind)
        todo.extend(cls.__subclasses__())
    return sorted(kinds)


def zero_labelled_counters() -> None:
    """Create every ``errors_total{kind}`` and ``reconnects_total{peer}`` series at 0.

    Why: a series that first appears with value 1 has no earlier sample, so
    ``increase(...[10m]) > 0`` never sees the first error; a series present at 0 from the
    start turns that first error into an increase of 1."""
    for kind in error_kinds():
        ERRORS.labels(kind)
    for peer in ("source", "target"):
        RECONNECTS.labels(peer)


def set_wal_status(status: str | None) -> None:
    """One-hot the slot's wal_status so a rule can alert on `slot_wal_status{status="lost"}`."""
    for s in ("reserved", "extended", "unreserved", "lost"):
        SLOT_WAL_STATUS.labels(s).set(1 if s == status else 0)


set_build_info()
zero_labelled_counters()
