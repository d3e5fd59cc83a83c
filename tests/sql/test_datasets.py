"""pgml.load_dataset: scikit-learn's bundled datasets as pgml.<name>, one column per feature and
a target column, values exactly scikit-learn's."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from sklearn import datasets

from tests.sql.helpers import connect, one

SHAPES = {"diabetes": (442, 10, "double precision"), "iris": (150, 4, "integer"),
          "breast_cancer": (569, 30, "integer"), "digits": (1797, 64, "integer"),
          "wine": (178, 13, "integer")}


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        yield c


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_dataset_layout_and_values(conn, name):
    rows, n_features, target_type = SHAPES[name]
    assert conn.execute("SELECT * FROM pgml.load_dataset(%s)", (name,)).fetchone() == (
        f"pgml.{name}", rows)
    cols = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                        " WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
                        (f"pgml.{name}",)).fetchall()
    assert len(cols) == n_features + 1
    assert cols[-1] == ("target", target_type)
    assert all(t == "double precision" for _, t in cols[:-1])
    bunch = getattr(datasets, f"load_{name}")()
    got = np.array(conn.execute(f"SELECT * FROM pgml.{name}").fetchall(), dtype=float)  # noqa: S608
    assert np.array_equal(got[:, :-1], bunch.data)
    assert np.array_equal(got[:, -1], bunch.target)
    assert not conn.notices


def test_column_names_are_plain_identifiers(conn):
    conn.execute("SELECT pgml.load_dataset('iris'), pgml.load_dataset('breast_cancer')")
    iris = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE"
                                       " table_schema = 'pgml' AND table_name = 'iris'"
                                       " ORDER BY ordinal_position")]
    assert iris == ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    assert one(conn, "SELECT count(mean_radius) FROM pgml.breast_cancer") == 569


def test_linnerud_has_three_targets_for_joint_training(conn):
    conn.execute("SELECT pgml.load_dataset('linnerud')")
    cols = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE"
                                       " table_schema = 'pgml' AND table_name = 'linnerud'"
                                       " ORDER BY ordinal_position")]
    assert cols == ["chins", "situps", "jumps", "weight", "waist", "pulse"]
    assert one(conn, "SELECT count(*) FROM pgml.linnerud") == 20


def test_reloading_replaces_the_table_and_unknown_names_list_the_choices(conn):
    conn.execute("SELECT pgml.load_dataset('wine')")
    conn.execute("DELETE FROM pgml.wine WHERE target = 0")
    assert conn.execute("SELECT * FROM pgml.load_dataset('wine')").fetchone()[1] == 178
    assert one(conn, "SELECT count(*) FROM pgml.wine") == 178
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match="choose one of breast_cancer, diabetes, digits, iris, linnerud, wine"):
        conn.execute("SELECT pgml.load_dataset('titanic')")
