"""pgml.load_dataset: PostgresML 2.x's tables, exactly -- names, column names and types, column
order, row order -- with scikit-learn's values (FLOAT4 as PostgresML stores them)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from sklearn import datasets

from tests.sql.helpers import connect, one

# PostgresML's pgml-extension src/orm/dataset.rs, table by table: (rows, [(column, type)])
_BC = ["mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
       "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
       "mean fractal dimension", "radius error", "texture error", "perimeter error",
       "area error", "smoothness error", "compactness error", "concavity error",
       "concave points error", "symmetry error", "fractal dimension error", "worst radius",
       "worst texture", "worst perimeter", "worst area", "worst smoothness",
       "worst compactness", "worst concavity", "worst concave points", "worst symmetry",
       "worst fractal dimension"]
_WINE = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
         "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "hue", "color_intensity",
         "od280/od315_of_diluted_wines", "proline"]
LAYOUT = {
    "breast_cancer": (569, [(c, "real") for c in _BC] + [("malignant", "boolean")]),
    "diabetes": (442, [(c, "real") for c in ("age", "sex", "bmi", "bp", "s1", "s2", "s3",
                                             "s4", "s5", "s6", "target")]),
    "digits": (1797, [("image", "smallint[]"), ("target", "smallint")]),
    "iris": (150, [(c, "real") for c in ("sepal_length", "sepal_width", "petal_length",
                                         "petal_width")] + [("target", "integer")]),
    "linnerud": (20, [(c, "real") for c in ("chins", "situps", "jumps", "weight", "waist",
                                            "pulse")]),
    "wine": (178, [(c, "real") for c in _WINE] + [("target", "integer")]),
}


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        yield c


def _columns(conn, table):
    return conn.execute("SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
                        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
                        " ORDER BY attnum", (table,)).fetchall()


def _f4(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).astype(np.float64)


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_dataset_has_postgresml_layout(conn, name):
    rows, columns = LAYOUT[name]
    assert conn.execute("SELECT * FROM pgml.load_dataset(%s)", (name,)).fetchone() == (
        f"pgml.{name}", rows)
    assert _columns(conn, f"pgml.{name}") == columns
    assert one(conn, f"SELECT count(*) FROM pgml.{name}") == rows  # noqa: S608 - fixed names
    assert not conn.notices


@pytest.mark.parametrize("name", ["breast_cancer", "diabetes", "iris", "wine", "linnerud"])
def test_values_and_row_order_are_scikit_learns(conn, name):
    conn.execute("SELECT pgml.load_dataset(%s)", (name,))
    bunch = getattr(datasets, f"load_{name}")()
    # (real arrives as its shortest decimal text: compare in float32, the stored type)
    got = np.array(conn.execute(f"SELECT * FROM pgml.{name}").fetchall(),  # noqa: S608
                   dtype=float).astype(np.float32).astype(np.float64)
    if name == "linnerud":
        assert np.array_equal(got, _f4(np.hstack([bunch.data, bunch.target])))
        return
    X = _f4(bunch.data)
    if name == "wine":  # PostgresML's column order; each value under its own name
        order = [list(bunch.feature_names).index(c) for c in _WINE]
        X = X[:, order]
    assert np.array_equal(got[:, :-1], X)
    if name == "breast_cancer":
        assert np.array_equal(got[:, -1], bunch.target == 0)
    else:
        assert np.array_equal(got[:, -1], _f4(bunch.target))


def test_wine_hue_and_color_intensity_hold_their_own_values(conn):
    conn.execute("SELECT pgml.load_dataset('wine')")
    bunch = datasets.load_wine()
    hue = bunch.data[:, list(bunch.feature_names).index("hue")]
    got = np.array([r[0] for r in conn.execute("SELECT hue::float8 FROM pgml.wine")])
    assert np.array_equal(got, _f4(hue))


def test_digits_images_are_8x8_smallint_arrays_in_order(conn):
    conn.execute("SELECT pgml.load_dataset('digits')")
    assert one(conn, "SELECT array_dims(image) FROM pgml.digits LIMIT 1") == "[1:8][1:8]"
    got = conn.execute("SELECT image, target FROM pgml.digits").fetchall()
    bunch = datasets.load_digits()
    assert np.array_equal(np.array([g[0] for g in got]), bunch.images)
    assert [g[1] for g in got] == bunch.target.tolist()


def test_limit_keeps_the_first_rows_and_reloading_replaces_the_table(conn):
    assert conn.execute('SELECT * FROM pgml.load_dataset(\'iris\', "limit" => 10)').fetchone() == (
        "pgml.iris", 10)
    assert one(conn, "SELECT count(*) FROM pgml.iris") == 10
    conn.execute("CREATE VIEW public.iris_view AS SELECT * FROM pgml.iris")
    assert conn.execute("SELECT * FROM pgml.load_dataset('iris')").fetchone()[1] == 150
    assert one(conn, "SELECT to_regclass('public.iris_view') IS NULL")  # CASCADE, as PostgresML
    assert not conn.notices


def test_an_unknown_name_without_the_datasets_library_says_what_to_do(conn):
    pytest.importorskip("sklearn")
    try:
        import datasets as hf  # noqa: F401
    except ImportError:
        with pytest.raises(psycopg.errors.InvalidParameterValue,
                           match="Hugging Face 'datasets' library is not installed"):
            conn.execute("SELECT pgml.load_dataset('jdxcosta/diamonds')")
    else:  # the library is there but the hub is not reachable from the test machine
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="could not be loaded"):
            conn.execute("SELECT pgml.load_dataset('no-such-owner/no-such-dataset')")
