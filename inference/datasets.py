"""pgml.load_dataset: PostgresML's toy datasets, table for table, and Hugging Face datasets.

The six names PostgresML's ``load_dataset`` knows without a network -- breast_cancer, diabetes,
digits, iris, linnerud, wine -- are built from the copies scikit-learn ships inside its wheel,
into exactly the tables PostgresML 2.x creates (its pgml-extension ``src/orm/dataset.rs``):
the same table names, column names, column order, column types and row order, so a script or
dashboard written against PostgresML finds what it expects:

================  ===========================================================================
pgml.breast_cancer  the 30 features under scikit-learn's own names ("mean radius", ...) FLOAT4;
                    ``malignant`` BOOLEAN (scikit-learn's target 0 -- PostgresML's label)
pgml.diabetes       age, sex, bmi, bp, s1..s6 FLOAT4 (scikit-learn's scaled values); target FLOAT4
pgml.digits         image SMALLINT[][] (the 8 x 8 picture); target SMALLINT
pgml.iris           sepal_length, sepal_width, petal_length, petal_width FLOAT4; target INT4
pgml.linnerud       chins, situps, jumps, weight, waist, pulse FLOAT4 (three targets, for
                    pgml.train_joint)
pgml.wine           13 features FLOAT4 in PostgresML's column order (hue before
                    color_intensity; "od280/od315_of_diluted_wines" keeps its slash); target INT4
================  ===========================================================================

One deliberate difference: PostgresML's wine loader inserts each row's hue value into the
color_intensity column and the other way round (its INSERT lists the two columns in the other
order than its values). Here every value is under its own name; docs/pgml.md says so.

FLOAT4 features are what PostgresML stores, so a model trained here sees the same numbers as
one trained there. ``limit`` keeps the first rows; loading again replaces the table (as
PostgresML's DROP/CREATE does), without a NOTICE.

Any other name is a Hugging Face dataset: with the ``datasets`` library installed (the
``hf`` extra) it is loaded -- a hub name, or a local dataset directory -- into
``pgml."<name>"``, every split one after another, one column per feature typed as PostgresML
types it (string TEXT, int64 BIGINT, float32 REAL, bool BOOLEAN, lists and dicts JSONB, ...);
without the library, or when the hub cannot be reached, the error says so and what to do.
"""

from __future__ import annotations

import numpy as np
import plpy

from inference.errors import UnknownDataset

_WINE = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
         "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "hue", "color_intensity",
         "od280/od315_of_diluted_wines", "proline"]
# name -> scikit-learn's loader
DATASETS = {
    "breast_cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
    "iris": "load_iris",
    "linnerud": "load_linnerud",
    "wine": "load_wine",
}


def load(source: str, subset: str | None = None, limit: int | None = None,
         kwargs: dict | None = None) -> tuple[str, int]:
    """Create the dataset's table; (table name as PostgresML reports it, rows)."""
    if limit is not None and limit < 0:
        raise UnknownDataset(f"limit must be zero or more, got {limit}")
    if source in DATASETS:
        columns, rows = toy_dataset(source)
        if limit is not None:
            rows = rows[:limit]
        _create(f"pgml.{source}", source, columns, rows)
        return f"pgml.{source}", len(rows)
    return _hugging_face(source, subset, limit, kwargs or {})


def toy_dataset(name: str) -> tuple[list[tuple[str, str]], list[tuple]]:
    """([(column, SQL type)], rows as tuples of Python values) exactly as PostgresML's table.

    Pure (no database): the tests build the expected table from it and from scikit-learn.
    """
    from sklearn import datasets

    bunch = getattr(datasets, DATASETS[name])()
    X = np.asarray(bunch.data, dtype=np.float32).astype(np.float64)  # FLOAT4, as PostgresML
    if name == "digits":
        images = np.asarray(bunch.images, dtype=np.int16).tolist()
        return ([("image", "smallint[]"), ("target", "smallint")],
                [(img, int(t)) for img, t in zip(images, bunch.target, strict=True)])
    if name == "linnerud":
        Y = np.asarray(bunch.target, dtype=np.float32).astype(np.float64)
        names = list(bunch.feature_names) + list(bunch.target_names)
        cols = [(n.lower(), "real") for n in names]
        return cols, [tuple(r) for r in np.hstack([X, Y]).tolist()]
    if name == "breast_cancer":
        cols = [(str(f), "real") for f in bunch.feature_names] + [("malignant", "boolean")]
        return cols, [(*x, bool(t == 0)) for x, t in zip(X.tolist(), bunch.target, strict=True)]
    if name == "diabetes":
        y = np.asarray(bunch.target, dtype=np.float32).astype(np.float64)
        cols = [(str(f), "real") for f in bunch.feature_names] + [("target", "real")]
        return cols, [(*x, t) for x, t in zip(X.tolist(), y.tolist(), strict=True)]
    if name == "wine":  # PostgresML's column order: hue before color_intensity
        order = [list(bunch.feature_names).index(c) for c in _WINE]
        X = X[:, order]
        cols = [(c, "real") for c in _WINE] + [("target", "integer")]
        return cols, [(*x, int(t)) for x, t in zip(X.tolist(), bunch.target, strict=True)]
    # iris: scikit-learn's names without units, 'sepal length (cm)' -> sepal_length
    feats = [f.replace(" (cm)", "").replace(" ", "_") for f in bunch.feature_names]
    cols = [(c, "real") for c in feats] + [("target", "integer")]
    return cols, [(*x, int(t)) for x, t in zip(X.tolist(), bunch.target, strict=True)]


def _create(table: str, name: str, columns: list[tuple[str, str]], rows: list[tuple]) -> None:
    """Replace ``table`` (schema pgml, relation ``name``) with ``rows``, in row order."""
    found = plpy.execute(plpy.prepare(
        "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace"
        " WHERE s.nspname = 'pgml' AND c.relname = $1", ["text"]), [name])[0]["n"]
    if found:  # (IF EXISTS would send the client a NOTICE; so would CASCADE, hence the level)
        level = plpy.execute("SELECT current_setting('client_min_messages') AS v")[0]["v"]
        plpy.execute("SELECT set_config('client_min_messages', 'warning', true)")
        plpy.execute(f"DROP TABLE {table} CASCADE")
        plpy.execute(plpy.prepare("SELECT set_config('client_min_messages', $1, true)",
                                  ["text"]), [level])
    ddl = ", ".join(f"{plpy.quote_ident(c)} {t}" for c, t in columns)
    plpy.execute(f"CREATE TABLE {table} ({ddl})")
    if not rows:
        return
    names = ", ".join(plpy.quote_ident(c) for c, _ in columns)
    if any(t.endswith("[]") for _, t in columns):  # multi-dimensional arrays: a row at a time
        params = ", ".join(f"${i + 1}" for i in range(len(columns)))
        plan = plpy.prepare(f"INSERT INTO {table} ({names}) VALUES ({params})",  # noqa: S608 - quoted
                            [t for _, t in columns])
        for row in rows:
            plpy.execute(plan, list(row))
        return
    params = ", ".join(f"${i + 1}" for i in range(len(columns)))
    plan = plpy.prepare(
        f"INSERT INTO {table} ({names}) SELECT * FROM unnest({params})",  # noqa: S608 - quoted
        [f"{t}[]" for _, t in columns])
    plpy.execute(plan, [list(col) for col in zip(*rows, strict=True)])


# -- Hugging Face ----------------------------------------------------------------------------

# A feature's dtype -> the column type PostgresML 2.9 creates for it (its
# bindings/transformers load_dataset); a ClassLabel is int64 there too.
_HF_TYPES = {"string": "text", "large_string": "text", "int64": "bigint", "int32": "integer",
             "int16": "smallint", "int8": "smallint", "uint8": "smallint", "uint16": "integer",
             "uint32": "bigint", "float64": "double precision", "float32": "real",
             "float16": "real", "bool": "boolean", "list": "jsonb", "dict": "jsonb"}


def _hugging_face(source: str, subset, limit, kwargs) -> tuple[str, int]:
    """``datasets.load_dataset(source, subset, **kwargs)`` into pgml."<source>".

    As PostgresML: every split one after another (it re-splits when training), one column
    per feature typed by the feature's dtype, nested values as jsonb; ``limit`` keeps the
    first rows. A name that is a local directory (CSV, Parquet, JSON files, or a directory
    ``Dataset.save_to_disk`` wrote) loads without the hub.
    """
    if not source:
        raise UnknownDataset("load_dataset needs a dataset name")
    try:
        import datasets as hf
    except ImportError:
        raise UnknownDataset(
            f"dataset {source!r} is not one of the built-in datasets "
            f"({', '.join(sorted(DATASETS))}) and the Hugging Face 'datasets' library is not "
            "installed in the replica's Python environment; install it (pip install "
            "'pgml-replica[hf]' or pip install datasets) to load Hugging Face datasets or "
            "local dataset directories") from None
    loaded = _hf_load(hf, source, subset, limit, kwargs)
    splits = [loaded[k] for k in loaded] if hasattr(loaded, "keys") else [loaded]
    features = splits[0].features if splits else {}
    records: list[dict] = []
    for part in splits:
        for record in part:
            if limit is not None and len(records) >= limit:
                break
            records.append(record)
    names = list(features)
    columns = [(n, _hf_type(features[n], [r.get(n) for r in records])) for n in names]
    rows = [tuple(_sql_value(r.get(n), t) for n, t in columns) for r in records]
    name = _table_name(source)
    _create(f"pgml.{plpy.quote_ident(name)}", name, columns, rows)
    return name, len(rows)


def _table_name(source: str) -> str:
    """PostgresML's table name, pgml."<source>" (a hub name keeps its slash, also when a
    directory of that relative name stands in for it); a path (/..., ./..., ../..., ~/...)
    gives its last component, so the path does not become the table's name."""
    import os

    is_path = source.startswith(("/", "./", "../", "~")) and os.path.isdir(
        os.path.expanduser(source))
    name = os.path.basename(os.path.normpath(os.path.expanduser(source))) if is_path else source
    if len(name.encode()) > 63:  # PostgreSQL would truncate it (NAMEDATALEN)
        raise UnknownDataset(f"dataset name {name!r} is longer than a PostgreSQL table name "
                             "(63 bytes); load it from a directory with a shorter name")
    return name


def _hf_load(hf, source: str, subset, limit, kwargs):
    """The dataset: a directory ``save_to_disk`` wrote, else ``datasets.load_dataset`` --
    with a limit, of the first rows of the train split only, as PostgresML asks for them
    (``split='train[:limit]'``), so a big dataset is not downloaded whole for a sample."""
    import os

    source = os.path.expanduser(source)
    try:
        if os.path.isdir(source) and any(
                os.path.exists(os.path.join(source, marker))
                for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return hf.load_from_disk(source)
        if "engine" not in kwargs and os.path.isdir(source) and any(
                f.endswith((".csv", ".tsv")) for _, _, files in os.walk(source) for f in files):
            kwargs = {**kwargs, "engine": "python"}  # (see below)
        if limit is not None and "split" not in kwargs:
            kwargs = {**kwargs, "split": f"train[:{limit}]"}
        try:
            return hf.load_dataset(source, subset, **kwargs)
        except Exception as exc:
            # pandas' C CSV tokenizer fails inside a PostgreSQL backend ("C error: out of
            # memory", whatever the size); the csv builder's python engine reads the same file
            if "engine" in kwargs or "C error: out of memory" not in _causes(exc):
                raise
            return hf.load_dataset(source, subset, **kwargs, engine="python")
    except Exception as exc:  # the library raises many kinds: offline hub, unknown name, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnknownDataset(
            f"dataset {source!r} could not be loaded by the Hugging Face datasets library: "
            f"{first} (is the hub reachable from the database server? a local dataset "
            "directory works offline)") from None


def _causes(exc: BaseException) -> str:
    """The messages of an exception and of everything it was raised from."""
    seen: list[str] = []
    while exc is not None and len(seen) < 20:
        seen.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(seen)


def _hf_type(feature, values: list) -> str:
    dtype = getattr(feature, "dtype", None)
    if isinstance(dtype, str) and dtype in _HF_TYPES:
        return _HF_TYPES[dtype]
    if isinstance(feature, dict | list):
        return "jsonb"
    return _sql_type(values)


_SQL_TYPES = ((bool, "boolean"), (int, "bigint"), (float, "double precision"), (str, "text"))


def _sql_type(values: list) -> str:
    present = [v for v in values if v is not None]
    for py, sql in _SQL_TYPES:
        if present and all(isinstance(v, py) and (py is bool or not isinstance(v, bool))
                           for v in present):
            return sql
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "double precision"
    return "jsonb"


def _sql_value(value, sql_type: str):
    if value is None or sql_type != "jsonb":
        return value
    import json

    return json.dumps(value, default=str)
