"""Feast's get_historical_features over Parquet files: the other side of benchmarks/history.py.

Runs in Feast's own environment (never the project's .venv; its pins clash), as a subprocess:

    <feast-venv>/bin/python benchmarks/history_feast.py WORKDIR STORE [RESULT.parquet]

WORKDIR holds ``spine.parquet`` (id, event_timestamp, label) and one ``<name>.parquet`` per
feature relation (id, the feature columns x, cnt (the relation's y: Feast's DuckDB store loses
a feature named ``y``), t, event_timestamp, created: the version order, for
Feast's tie-break of versions with the same timestamp; whole seconds apart: Feast
does not tell apart created times a few microseconds apart). STORE is ``file`` (Feast's dask file
offline store) or ``duckdb`` (its DuckDB/ibis offline store). Prints one JSON line: seconds for
``apply`` and for ``get_historical_features(...).to_df()``, rows, and per feature column the
count of non-NULL values and their sum (checked against pgml.point_in_time by the caller).
Standard library and Feast only: this file imports nothing from the project.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path


def main() -> int:
    work, store_kind = Path(sys.argv[1]), sys.argv[2]
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig
    from feast.types import Float64, Int64, String

    if store_kind == "duckdb":
        from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig as Offline
    else:
        from feast.infra.offline_stores.dask import DaskOfflineStoreConfig as Offline
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    config = RepoConfig(project="bench", provider="local", registry=str(work / "registry.db"),
                        offline_store=Offline(),
                        online_store=SqliteOnlineStoreConfig(path=str(work / "online.db")),
                        entity_key_serialization_version=3)
    store = FeatureStore(config=config)
    entity = Entity(name="id", join_keys=["id"])
    views, refs = [], []
    for path in sorted(work.glob("*.parquet")):
        if path.stem == "spine":
            continue
        source = FileSource(path=str(path), timestamp_field="event_timestamp",
                            created_timestamp_column="created")
        fields = [Field(name="x", dtype=Float64), Field(name="cnt", dtype=Int64),
                  Field(name="t", dtype=String)]
        views.append(FeatureView(name=path.stem, entities=[entity], schema=fields,
                                 source=source, ttl=timedelta(days=3650)))
        refs += [f"{path.stem}:{f.name}" for f in fields]
    t0 = time.perf_counter()
    store.apply([entity, *views])
    t_apply = time.perf_counter() - t0
    spine = pd.read_parquet(work / "spine.parquet")
    t0 = time.perf_counter()
    df = store.get_historical_features(entity_df=spine, features=refs,
                                       full_feature_names=True).to_df()
    t_get = time.perf_counter() - t0
    if len(sys.argv) > 3:  # a path: the result, to compare row by row
        df.to_parquet(sys.argv[3])
    checks = {}
    for col in df.columns:
        if col.endswith(("__x", "__cnt")):
            values = df[col].dropna()
            checks[col.replace("__cnt", "__y")] = [int(values.count()), float(values.sum())]
    print(json.dumps({"apply_s": t_apply, "get_historical_features_s": t_get,
                      "rows": len(df), "checks": checks}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
