"""pgml.load_dataset: scikit-learn's bundled toy datasets as tables in the pgml schema.

Only the datasets scikit-learn ships inside its wheel (no download, the ML replica may have no
internet). Layout as PostgresML's: ``pgml.<name>``, one column per feature and a ``target``
column (linnerud: its three targets weight, waist, pulse, for pgml.train_joint). Column names
are scikit-learn's feature names made into plain identifiers (lower case, units dropped,
other characters as ``_``: 'sepal length (cm)' -> sepal_length, 'mean radius' -> mean_radius).
Features are double precision, so what pgml trains on is bit-for-bit what scikit-learn
returns; classification targets are integer, regression targets double precision. Loading a
dataset again replaces its table.
"""

from __future__ import annotations

import re

import plpy

from inference.errors import UnknownDataset

# name -> (scikit-learn loader, SQL type of the target columns)
DATASETS = {
    "diabetes": ("load_diabetes", "float8"),
    "iris": ("load_iris", "integer"),
    "breast_cancer": ("load_breast_cancer", "integer"),
    "digits": ("load_digits", "integer"),
    "wine": ("load_wine", "integer"),
    "linnerud": ("load_linnerud", "float8"),
}


def column_name(feature: str) -> str:
    name = re.sub(r"\s*\(.*?\)", "", str(feature)).strip().lower()
    return re.sub(r"[^a-z0-9_]+", "_", name).strip("_")


def load(source: str) -> tuple[str, int]:
    """Create pgml.<source> from scikit-learn's copy; (table name, rows)."""
    from sklearn import datasets

    key = (source or "").strip().lower()
    if key not in DATASETS:
        raise UnknownDataset(f"dataset {source!r} is not available; choose one of "
                             f"{', '.join(sorted(DATASETS))}")
    loader, target_type = DATASETS[key]
    bunch = getattr(datasets, loader)()
    features = [column_name(f) for f in bunch.feature_names]
    X = bunch.data
    Y = bunch.target.reshape(len(X), -1)
    targets = [column_name(t) for t in bunch.target_names] if key == "linnerud" else ["target"]
    table = f"pgml.{key}"  # key is one of our own names
    columns = [(name, "float8") for name in features] + [(name, target_type) for name in targets]
    if plpy.execute(f"SELECT to_regclass('{table}') IS NOT NULL AS found")[0]["found"]:
        plpy.execute(f"DROP TABLE {table}")  # (IF EXISTS would send the client a NOTICE)
    plpy.execute(f"CREATE TABLE {table} ("
                 + ", ".join(f"{plpy.quote_ident(n)} {t}" for n, t in columns) + ")")
    params = ", ".join(f"${i + 1}" for i in range(len(columns)))
    plan = plpy.prepare(f"INSERT INTO {table} SELECT * FROM unnest({params})",  # noqa: S608 - our names
                        [f"{t}[]" for _, t in columns])
    arrays = [X[:, j].tolist() for j in range(X.shape[1])]
    arrays += [(Y[:, j].astype(int) if target_type == "integer" else Y[:, j]).tolist()
               for j in range(Y.shape[1])]
    plpy.execute(plan, arrays)
    return table, len(X)
