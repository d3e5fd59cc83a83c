"""PostgresML 2.9.3's signatures where a script sees them: pgml.train's and train_joint's
argument list and result columns (runtime, materialize_snapshot, preprocess by name),
pgml.deploy's result columns, feature importances in pgml.models, and pgml.load_dataset of a
Hugging Face dataset through the ``datasets`` library (a local dataset directory: the hub is
not reachable here) with PostgresML's column types, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import psycopg
import pytest

from tests.sql.helpers import connect, latest_model, one, reference, split

# PostgresML 2.9.3 pgml-extension/src/api.rs: train's arguments in order, with their types
# (its enums task/algorithm/search/sampling/runtime are text here) and the result columns.
TRAIN_ARGS = ["project_name", "task", "relation_name", "y_column_name", "algorithm",
              "hyperparams", "search", "search_params", "search_args", "test_size",
              "test_sampling", "runtime", "automatic_deploy", "materialize_snapshot",
              "preprocess"]
TRAIN_TYPES = ["text", "text", "text", "text", "text", "jsonb", "text", "jsonb", "jsonb", "real",
               "text", "text", "boolean", "boolean", "jsonb"]
TRAIN_RESULT = [("project", "text"), ("task", "text"), ("algorithm", "text"),
                ("deployed", "boolean")]


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        for name in ("diabetes", "iris", "linnerud"):
            c.execute("SELECT pgml.load_dataset(%s)", (name,))
        yield c


def _signature(conn, name: str, first_type: str):
    rows = conn.execute(
        "SELECT unnest(p.proargnames), unnest(p.proargmodes), format_type(unnest("
        " p.proallargtypes), NULL) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'pgml' AND p.proname = %s"
        " AND format_type(p.proargtypes[1], NULL) = 'text'"
        " AND format_type(p.proargtypes[3], NULL) = %s", (name, first_type)).fetchall()
    args = [(n, t) for n, m, t in rows if m == "i"]
    result = [(n, t) for n, m, t in rows if m == "t"]
    return args, result


@pytest.mark.parametrize(("name", "y_type"), [("train", "text"), ("train_joint", "text[]")])
def test_train_has_postgresml_29_arguments_and_result_columns(conn, name, y_type):
    args, result = _signature(conn, name, y_type)
    types = [y_type if a == "y_column_name" else t for a, t in zip(TRAIN_ARGS, TRAIN_TYPES,
                                                                     strict=True)]
    # PostgresML's 15 in its order; as_of (docs/history.md) only after them
    assert args[:15] == list(zip(TRAIN_ARGS, types, strict=True))
    assert [a for a, _ in args[15:]] == (["as_of"] if name == "train" else [])
    assert result == TRAIN_RESULT


def test_train_takes_every_postgresml_argument_by_name(conn):
    row = conn.execute(
        "SELECT * FROM pgml.train(project_name => 'all args', task => 'regression',"
        " relation_name => 'pgml.diabetes', y_column_name => 'target', algorithm => 'ridge',"
        " hyperparams => '{\"alpha\": 0.5}', search => 'grid',"
        " search_params => '{\"alpha\": [0.1, 1.0]}', search_args => '{\"cv\": 2}',"
        " test_size => 0.25, test_sampling => 'random', runtime => 'python',"
        " automatic_deploy => true, materialize_snapshot => true,"
        " preprocess => '{\"bmi\": {\"scale\": \"standard\"}}')").fetchone()
    assert row == ("all args", "regression", "ridge", True)
    model = latest_model(conn, "all args")
    assert model["hyperparams"]["alpha"] in (0.1, 1.0) and len(model["search_results"]["params"]) == 2
    assert model["preprocess"]["columns"][2]["scale"] == "standard"
    # positionally, PostgresML's order: runtime is the 12th argument, automatic_deploy the 13th
    row = conn.execute("SELECT * FROM pgml.train('all args', NULL, NULL, NULL, 'lasso', '{}',"
                       " NULL, '{}', '{}', 0.25, 'random', 'rust', false)").fetchone()
    assert row == ("all args", "regression", "lasso", False)
    assert one(conn, "SELECT algorithm FROM pgml.deployed_models WHERE name = 'all args'") == (
        "ridge")


def test_runtime_other_than_python_or_rust_is_refused(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="runtime 'gpu' is not one"):
        conn.execute("SELECT * FROM pgml.train('rt', 'regression', 'pgml.diabetes', 'target',"
                     " runtime => 'gpu')")
    assert one(conn, "SELECT count(*) FROM pgml.projects WHERE name = 'rt'") == 0


def test_automatic_deploy_null_deploys_as_postgresml_does(conn):
    row = conn.execute("SELECT * FROM pgml.train('null deploy', 'classification', 'pgml.iris',"
                       " 'target', automatic_deploy => NULL)").fetchone()
    assert row[3] is True
    assert one(conn, "SELECT count(*) FROM pgml.deployed_models WHERE name = 'null deploy'") == 1


def test_train_joint_result_and_deploy_result_columns(conn):
    row = conn.execute("SELECT * FROM pgml.train_joint('joint 29', 'regression',"
                       " 'pgml.linnerud', ARRAY['weight', 'waist', 'pulse'],"
                       " runtime => 'python', materialize_snapshot => false)").fetchone()
    assert row == ("joint 29", "regression", "linear", True)
    cur = conn.execute("SELECT * FROM pgml.deploy('joint 29', 'most_recent')")
    assert [d.name for d in cur.description] == ["project", "strategy", "algorithm"]
    assert cur.fetchone() == ("joint 29", "most_recent", "linear")


# -- feature importances ---------------------------------------------------------------------


def _importances(conn, project: str) -> dict | None:
    return one(conn, "SELECT m.feature_importances FROM pgml.models m JOIN pgml.projects p"
               " ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id DESC LIMIT 1", (project,))


DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@pytest.mark.parametrize("algorithm", ["random_forest", "xgboost", "lightgbm"])
def test_tree_models_record_their_feature_importances(conn, algorithm):
    hyper = {"n_estimators": 10}
    conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', %s, %s)",
                 (f"fi {algorithm}", algorithm, json.dumps(hyper)))
    got = _importances(conn, f"fi {algorithm}")
    est, _ = reference("diabetes", "regression", algorithm, hyper)
    want = dict(zip(DIABETES, np.asarray(est.feature_importances_, dtype=float), strict=True))
    assert set(got) == set(DIABETES)
    assert all(got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-9) for k in DIABETES)


def test_linear_models_record_coefficient_magnitudes(conn):
    conn.execute("SELECT * FROM pgml.train('fi linear', 'regression', 'pgml.diabetes', 'target')")
    got = _importances(conn, "fi linear")
    est, _ = reference("diabetes", "regression", "linear")
    assert [got[k] for k in DIABETES] == pytest.approx(np.abs(est.coef_).tolist(), rel=1e-6)
    # multi-class: the mean magnitude over the classes' coefficient rows
    conn.execute("SELECT * FROM pgml.train('fi logistic', 'classification', 'pgml.iris',"
                 " 'target')")
    iris = _importances(conn, "fi logistic")
    assert list(iris) and all(v >= 0 for v in iris.values())
    assert set(iris) == {"sepal_length", "sepal_width", "petal_length", "petal_width"}


def test_models_without_importances_record_null_and_sql_can_rank_them(conn):
    conn.execute("SELECT * FROM pgml.train('fi svm', 'regression', 'pgml.diabetes', 'target',"
                 " 'svm')")  # an RBF kernel has no coefficients
    assert _importances(conn, "fi svm") is None
    # joint models (one estimator per target) average them; ranked in plain SQL
    conn.execute("SELECT * FROM pgml.train_joint('fi joint', 'regression', 'pgml.linnerud',"
                 " ARRAY['weight', 'waist', 'pulse'], 'random_forest', '{\"n_estimators\": 5}')")
    ranked = conn.execute(
        "SELECT f.key, f.value::float8 FROM pgml.models m JOIN pgml.projects p"
        " ON p.id = m.project_id, jsonb_each(m.feature_importances) f"
        " WHERE p.name = 'fi joint' ORDER BY f.value::float8 DESC").fetchall()
    assert {k for k, _ in ranked} == {"chins", "situps", "jumps"}
    assert sum(v for _, v in ranked) == pytest.approx(1.0)
    assert split("diabetes").X_train.shape[1] == len(DIABETES)


# -- Hugging Face datasets ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def readable_dir():
    """A directory the server (the postgres OS user) can read; pytest's tmp_path is 0700."""
    path = tempfile.mkdtemp(prefix="pgml_hf_", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _readable(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def _columns(conn, table: str) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,)).fetchall()


def test_a_saved_hugging_face_dataset_loads_with_postgresml_column_types(conn, readable_dir):
    hf = pytest.importorskip("datasets")
    features = hf.Features({
        "text": hf.Value("string"), "label": hf.ClassLabel(names=["neg", "pos"]),
        "score": hf.Value("float32"), "weight": hf.Value("float64"),
        "count": hf.Value("int32"), "small": hf.Value("int16"), "flag": hf.Value("bool"),
        "tokens": hf.Sequence(hf.Value("int64")),
    })
    rows = {"text": ["good", "bad", "fine ünïcode"], "label": [1, 0, 1],
            "score": [0.5, 0.25, 1.0], "weight": [1.5, 2.5, 3.5], "count": [1, 2, 3],
            "small": [4, 5, 6], "flag": [True, False, True], "tokens": [[1, 2], [3], []]}
    path = os.path.join(readable_dir, "reviews")
    hf.DatasetDict({
        "train": hf.Dataset.from_dict({k: v[:2] for k, v in rows.items()}, features=features),
        "test": hf.Dataset.from_dict({k: v[2:] for k, v in rows.items()}, features=features),
    }).save_to_disk(path)
    _readable(path)
    assert conn.execute("SELECT * FROM pgml.load_dataset(%s)", (path,)).fetchone() == (
        "reviews", 3)
    assert _columns(conn, 'pgml."reviews"') == [
        ("text", "text"), ("label", "bigint"), ("score", "real"),
        ("weight", "double precision"), ("count", "integer"), ("small", "smallint"),
        ("flag", "boolean"), ("tokens", "jsonb")]
    got = conn.execute("SELECT text, label, score, weight, count, small, flag, tokens"
                       " FROM pgml.reviews").fetchall()  # train, then test, in order
    assert got == [tuple(rows[k][i] for k in rows) for i in range(3)]
    # limit keeps the first rows; loading again replaces the table
    assert conn.execute("SELECT * FROM pgml.load_dataset(%s, \"limit\" => 2)",
                        (path,)).fetchone() == ("reviews", 2)
    assert one(conn, "SELECT count(*) FROM pgml.reviews") == 2
    assert not conn.notices


def test_a_local_csv_directory_loads_and_trains(conn, readable_dir):
    pytest.importorskip("datasets")
    path = os.path.join(readable_dir, "house_prices")
    os.makedirs(path)
    rng = np.random.default_rng(0)
    with open(os.path.join(path, "train.csv"), "w") as f:
        f.write("rooms,area,price\n")
        for _ in range(60):
            rooms, area = int(rng.integers(1, 6)), float(rng.uniform(30, 200))
            f.write(f"{rooms},{area:.3f},{1000 * rooms + 20 * area:.3f}\n")
    _readable(path)
    # a limit reads the train split's first rows (PostgresML's split='train[:limit]')
    assert conn.execute("SELECT * FROM pgml.load_dataset(%s, \"limit\" => 5)",
                        (path,)).fetchone() == ("house_prices", 5)
    assert conn.execute("SELECT * FROM pgml.load_dataset(%s)", (path,)).fetchone() == (
        "house_prices", 60)
    assert _columns(conn, "pgml.house_prices") == [
        ("rooms", "bigint"), ("area", "double precision"), ("price", "double precision")]
    row = conn.execute("SELECT * FROM pgml.train('hf prices', 'regression', 'pgml.house_prices',"
                       " 'price')").fetchone()
    assert row[3] is True and latest_model(conn, "hf prices")["metrics"]["r2"] > 0.99


def test_an_unreachable_hub_says_so(conn):
    pytest.importorskip("datasets")
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match="could not be loaded by the Hugging Face datasets library.*"
                             "is the hub reachable"):
        conn.execute("SELECT pgml.load_dataset('no-such-owner/no-such-dataset')")


def test_without_the_datasets_library_the_error_says_how_to_install_it(shared_pgml_db):
    with connect(shared_pgml_db) as fresh:  # a backend where importing datasets fails
        fresh.execute("DO $$ import sys; sys.modules['datasets'] = None $$"
                      " LANGUAGE plpython3u")
        with pytest.raises(psycopg.errors.InvalidParameterValue,
                           match=r"'datasets' library is not installed.*pgml-replica\[hf\]"):
            fresh.execute("SELECT pgml.load_dataset('jdxcosta/diamonds')")
