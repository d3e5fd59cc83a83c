"""What PostgresML 2.9.3's classical examples (pgml-extension/examples: regression,
binary_classification, multi_classification, joint_regression, image_classification,
preprocessing) call, call form for call form: each function, argument, hyperparameter,
search and dataset they use, with the examples' own project names and values. Clustering and
decomposition are test_unsupervised.py's; digits' array forms test_postgresml_compat.py's.

Written here from the examples' facts (their files are not copied). The full algorithm lists
run under ``-m slow``; the default run keeps a representative part of each.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import psycopg
import pytest

from tests.sql.helpers import connect, latest_model, one

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

DIABETES = "ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6]"
BREAST = ("ARRAY[" + ", ".join(f'"{c}"' for c in (
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
    "mean fractal dimension", "radius error", "texture error", "perimeter error", "area error",
    "smoothness error", "compactness error", "concavity error", "concave points error",
    "symmetry error", "fractal dimension error", "worst radius", "worst texture",
    "worst perimeter", "worst area", "worst smoothness", "worst compactness",
    "worst concavity", "worst concave points", "worst symmetry", "worst fractal dimension"))
          + "]")
IRIS = "ARRAY[sepal_length, sepal_width, petal_length, petal_width]"

# (algorithm, hyperparams) as the examples train them after the first model
REGRESSION = [
    ("ridge", None), ("lasso", None), ("elastic_net", None), ("least_angle", None),
    ("lasso_least_angle", None), ("orthogonal_matching_pursuit", None),
    ("bayesian_ridge", None), ("automatic_relevance_determination", None),
    ("stochastic_gradient_descent", None), ("passive_aggressive", None), ("ransac", None),
    ("theil_sen", {"max_iter": 10, "max_subpopulation": 100}), ("huber", None),
    ("svm", {"max_iter": 100}), ("nu_svm", {"max_iter": 10}), ("linear_svm", {"max_iter": 100}),
    ("ada_boost", {"n_estimators": 5}), ("bagging", {"n_estimators": 5}),
    ("extra_trees", {"n_estimators": 5}), ("gradient_boosting_trees", {"n_estimators": 5}),
    ("random_forest", {"n_estimators": 5}), ("xgboost", {"n_estimators": 10}),
    ("catboost", {"n_estimators": 10}),
]
JOINT = REGRESSION[:-2]  # the joint example leaves the gradient boosting libraries out
CLASSIFICATION = [
    ("ridge", None), ("stochastic_gradient_descent", None), ("perceptron", None),
    ("passive_aggressive", None), ("svm", None), ("nu_svm", None), ("linear_svm", None),
    ("ada_boost", None), ("bagging", None), ("extra_trees", {"n_estimators": 10}),
    ("gradient_boosting_trees", {"n_estimators": 10}), ("random_forest", {"n_estimators": 10}),
    ("xgboost", {"n_estimators": 10}), ("catboost", {"n_estimators": 10}),
]
DEFAULT_RUN = {"theil_sen", "nu_svm", "catboost"}  # hyperparams the examples pass


def _cases(pairs):
    return [pytest.param(a, h, id=a, marks=() if a in DEFAULT_RUN else pytest.mark.slow)
            for a, h in pairs]


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        for name in ("diabetes", "breast_cancer", "iris", "linnerud", "digits"):
            c.execute("SELECT pgml.load_dataset(%s)", (name,))
        c.execute("SELECT * FROM pgml.train('Diabetes Progression', 'regression',"
                  " 'pgml.diabetes', 'target')")
        c.execute("SELECT * FROM pgml.train('Breast Cancer Detection', 'classification',"
                  " 'pgml.breast_cancer', 'malignant')")
        c.execute("CREATE VIEW pgml.iris_view AS SELECT * FROM pgml.iris ORDER BY random()"
                  " LIMIT 100")
        c.execute("SELECT * FROM pgml.train('Iris Flower Types', 'classification',"
                  " 'pgml.iris_view', 'target')")
        c.execute("SELECT * FROM pgml.train_joint('Exercise vs Physiology', 'regression',"
                  " 'pgml.linnerud', ARRAY['weight', 'waist', 'pulse'])")
        yield c


def _train(conn, project, algorithm, hyperparams, joint=False):
    fn = "train_joint" if joint else "train"
    if hyperparams is None:
        return conn.execute(f"SELECT * FROM pgml.{fn}(%s, algorithm => %s)",  # noqa: S608
                            (project, algorithm)).fetchone()
    return conn.execute(f"SELECT * FROM pgml.{fn}(%s, algorithm => %s,"  # noqa: S608
                        " hyperparams => %s)", (project, algorithm, json.dumps(hyperparams))
                        ).fetchone()


@pytest.mark.parametrize(("algorithm", "hyperparams"), _cases(REGRESSION))
def test_regression_example_algorithms(conn, algorithm, hyperparams):
    row = _train(conn, "Diabetes Progression", algorithm, hyperparams)
    assert row[:3] == ("Diabetes Progression", "regression", algorithm)
    model = latest_model(conn, "Diabetes Progression")
    assert {k: model["hyperparams"][k] for k in hyperparams or {}} == (hyperparams or {})
    assert np.isfinite(model["metrics"]["mean_squared_error"])
    got = one(conn, f"SELECT pgml.predict(%s::bigint, {DIABETES}) FROM pgml.diabetes LIMIT 1",  # noqa: S608
              (model["id"],))
    assert np.isfinite(got)


@pytest.mark.parametrize(("algorithm", "hyperparams"), _cases(JOINT))
def test_joint_regression_example_algorithms(conn, algorithm, hyperparams):
    row = _train(conn, "Exercise vs Physiology", algorithm, hyperparams, joint=True)
    assert row[:3] == ("Exercise vs Physiology", "regression", algorithm)
    model = latest_model(conn, "Exercise vs Physiology")
    got = one(conn, "SELECT pgml.predict_joint(%s::bigint, ARRAY[chins, situps, jumps])"
              " FROM pgml.linnerud LIMIT 1", (model["id"],))
    assert len(got) == 3 and all(np.isfinite(got))


@pytest.mark.parametrize(("algorithm", "hyperparams"), _cases(CLASSIFICATION))
@pytest.mark.parametrize("project", ["Breast Cancer Detection", "Iris Flower Types"])
def test_classification_example_algorithms(conn, project, algorithm, hyperparams):
    row = _train(conn, project, algorithm, hyperparams)
    assert row[:3] == (project, "classification", algorithm)
    model = latest_model(conn, project)
    assert 0 <= model["metrics"]["f1"] <= 1
    features, table = (BREAST, "pgml.breast_cancer") if project.startswith("Breast") else (
        IRIS, "pgml.iris_view")
    got = one(conn, f"SELECT pgml.predict(%s::bigint, {features}) FROM {table} LIMIT 1",  # noqa: S608
              (model["id"],))
    assert got in ((0.0, 1.0) if project.startswith("Breast") else (0.0, 1.0, 2.0))


def test_regression_example_statements(conn):
    # predictions of the project and of a model id from a lateral join, as the example does
    rows = conn.execute(
        f"SELECT target, pgml.predict('Diabetes Progression', {DIABETES}) FROM pgml.diabetes"  # noqa: S608
        " LIMIT 10").fetchall()
    assert len(rows) == 10 and all(np.isfinite(p) for _, p in rows)
    by_id = conn.execute(
        f"SELECT model_id, target, pgml.predict(model_id, {DIABETES}) AS prediction"  # noqa: S608
        " FROM pgml.diabetes CROSS JOIN LATERAL (SELECT pgml.models.id AS model_id"
        " FROM pgml.models INNER JOIN pgml.projects ON pgml.models.project_id = pgml.projects.id"
        " WHERE pgml.projects.name = 'Diabetes Progression' LIMIT 1) models LIMIT 10").fetchall()
    assert len(by_id) == 10
    for runtime in ("python", "rust"):
        assert conn.execute("SELECT * FROM pgml.train('Diabetes Progression', algorithm =>"
                            " 'linear', runtime => %s)", (runtime,)).fetchone()[2] == "linear"
    _train(conn, "Diabetes Progression", "random_forest", {"n_estimators": 5})
    _train(conn, "Diabetes Progression", "svm", {"max_iter": 100})
    worst = conn.execute(
        "SELECT trained_models.* FROM pgml.trained_models JOIN pgml.models"
        " ON models.id = trained_models.id ORDER BY models.metrics->>'mean_squared_error' DESC"
        " LIMIT 5").fetchall()
    assert len(worst) == 5
    assert conn.execute("SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent',"
                        " 'random_forest')").fetchone() == (
        "Diabetes Progression", "most_recent", "random_forest")
    assert one(conn, "SELECT algorithm FROM pgml.deployed_models ORDER BY deployed_at DESC"
               " LIMIT 5") == "random_forest"
    # the grid search, with a fixed hyperparameter beside the grid
    row = conn.execute("""SELECT pgml.train(
        'Diabetes Progression',
        algorithm => 'xgboost',
        hyperparams => '{"eval_metric": "rmse"}'::JSONB,
        search => 'grid',
        search_params => '{"max_depth": [1, 2], "n_estimators": [20, 40]}')""").fetchone()[0]
    assert row[:3] == ("Diabetes Progression", "regression", "xgboost")
    model = latest_model(conn, "Diabetes Progression")
    assert model["hyperparams"]["eval_metric"] == "rmse"
    assert model["hyperparams"]["max_depth"] in (1, 2) and len(model["search_results"]["params"]) == 4
    for strategy, algorithm in (("best_score", None), ("most_recent", None), ("rollback", None),
                                ("best_score", "svm")):
        args = (strategy,) if algorithm is None else (strategy, algorithm)
        got = conn.execute(f"SELECT * FROM pgml.deploy('Diabetes Progression',"  # noqa: S608
                           f" {', '.join(['%s'] * len(args))})", args).fetchone()
        assert got[:2] == ("Diabetes Progression", strategy)
    assert got[2] == "svm"
    assert one(conn, "SELECT algorithm FROM pgml.deployed_models"
               " WHERE name = 'Diabetes Progression'") == "svm"


def test_classification_examples_statements(conn):
    # Which model the projects have deployed depends on the algorithms tried before and on
    # their scores on a random split; probabilities need one that has them (ridge, svm
    # without probability=true and friends have none): deploy such a model first.
    for project in ("Breast Cancer Detection", "Iris Flower Types"):
        _train(conn, project, "random_forest", {"n_estimators": 10})
        conn.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", (project,))
    got = conn.execute(f"SELECT malignant, pgml.predict('Breast Cancer Detection', {BREAST})"  # noqa: S608
                       " FROM pgml.breast_cancer ORDER BY random() LIMIT 10").fetchall()
    assert all(p in (0.0, 1.0) for _, p in got)
    proba = conn.execute(f"SELECT malignant, pgml.predict_proba('Breast Cancer Detection',"  # noqa: S608
                         f" {BREAST}) FROM pgml.breast_cancer ORDER BY random() LIMIT 10"
                         ).fetchall()
    assert all(len(p) == 2 and abs(sum(p) - 1) < 1e-5 for _, p in proba)
    iris = conn.execute(f"SELECT target, pgml.predict_proba('Iris Flower Types', {IRIS})"  # noqa: S608
                        " FROM pgml.iris_view LIMIT 10").fetchall()
    assert all(len(p) == 3 for _, p in iris)
    conn.execute("""SELECT pgml.train(
        'Breast Cancer Detection', algorithm => 'xgboost', search => 'grid',
        search_params => '{"n_estimators": [2, 4], "max_depth": [1, 2, 3]}')""")
    assert len(latest_model(conn, "Breast Cancer Detection")["search_results"]["params"]) == 6
    conn.execute("""SELECT pgml.train(
        'Iris Flower Types', algorithm => 'gradient_boosting_trees',
        hyperparams => '{"random_state": 0}', search => 'grid',
        search_params => '{"n_estimators": [10, 20], "max_leaf_nodes": [2, 4],
                           "criterion": ["friedman_mse", "squared_error"]}')""")
    model = latest_model(conn, "Iris Flower Types")
    assert model["hyperparams"]["criterion"] in ("friedman_mse", "squared_error")
    assert len(model["search_results"]["params"]) == 8
    best = conn.execute("SELECT trained_models.* FROM pgml.trained_models JOIN pgml.models"
                        " ON models.id = trained_models.id ORDER BY models.metrics->>'f1' DESC"
                        " LIMIT 5").fetchall()
    assert len(best) == 5
    for project in ("Breast Cancer Detection", "Iris Flower Types"):
        _train(conn, project, "svm", None)
        _train(conn, project, "random_forest", {"n_estimators": 10})
        conn.execute("SELECT * FROM pgml.deploy(%s, 'most_recent', 'random_forest')", (project,))
        for strategy in ("best_score", "most_recent", "rollback"):
            conn.execute("SELECT * FROM pgml.deploy(%s, %s)", (project, strategy))
        assert conn.execute("SELECT * FROM pgml.deploy(%s, 'best_score', 'svm')",
                            (project,)).fetchone() == (project, "best_score", "svm")


def test_image_classification_example_svm_grid(conn):
    conn.execute("SELECT * FROM pgml.train('Handwritten Digits', 'classification', 'pgml.digits',"
                 " 'target', 'linear', '{\"max_iter\": 300}')")
    conn.execute("""SELECT pgml.train(
        'Handwritten Digits', algorithm => 'svm', hyperparams => '{"random_state": 0}',
        search => 'grid',
        search_params => '{"kernel": ["linear", "poly", "sigmoid"], "shrinking": [true, false]}')""")
    model = latest_model(conn, "Handwritten Digits")
    assert model["hyperparams"]["kernel"] in ("linear", "poly", "sigmoid")
    assert len(model["search_results"]["params"]) == 6
    conn.execute("SELECT * FROM pgml.train('Handwritten Digits', algorithm => 'xgboost',"
                 " runtime => 'rust', hyperparams => '{\"n_estimators\": 10}')")
    assert conn.execute("SELECT * FROM pgml.deploy('Handwritten Digits', 'best_score', 'svm')"
                        ).fetchone() == ("Handwritten Digits", "best_score", "svm")
    got = conn.execute("SELECT target, pgml.predict('Handwritten Digits', image) FROM pgml.digits"
                       " LIMIT 10").fetchall()
    assert np.mean([t == p for t, p in got]) >= 0.8


@pytest.fixture
def diamonds(conn):
    """A stand-in for the Hugging Face dataset jdxcosta/diamonds (the hub is not reachable
    here): its columns, in a directory of that relative name in the server's working
    directory, where ``datasets.load_dataset('jdxcosta/diamonds')`` looks first."""
    pytest.importorskip("datasets")
    datadir = one(conn, "SELECT current_setting('data_directory')")
    owner = os.path.join(datadir, "jdxcosta")
    os.makedirs(os.path.join(owner, "diamonds"))
    rng = np.random.default_rng(3)
    cuts, colors, clarities = ["Fair", "Good", "Ideal"], list("DEFG"), ["SI1", "VS1", "IF"]
    with open(os.path.join(owner, "diamonds", "diamonds.csv"), "w") as f:
        f.write(",carat,cut,color,clarity,depth,table,price,x,y,z\n")
        for i in range(300):
            carat = round(float(rng.uniform(0.2, 2.5)), 2)
            cut, color, clarity = (int(rng.integers(n)) for n in (3, 4, 3))
            x = round(carat ** (1 / 3) * 6.5, 2)
            price = int(4000 * carat ** 1.7 * (1 + 0.1 * cut) * (1 - 0.05 * color)
                        * (1 + 0.1 * clarity))
            f.write(f"{i + 1},{carat},{cuts[cut]},{colors[color]},{clarities[clarity]},"
                    f"{round(float(rng.normal(61.7, 1.4)), 1)},{round(float(rng.normal(57, 2)), 1)},"
                    f"{price},{x},{round(x * 1.01, 2)},{round(x * 0.62, 2)}\n")
    for root, _dirs, files in os.walk(owner):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    yield
    shutil.rmtree(owner, ignore_errors=True)


def test_preprocessing_example(conn, diamonds):
    assert conn.execute("SELECT * FROM pgml.load_dataset('jdxcosta/diamonds')").fetchone() == (
        "jdxcosta/diamonds", 300)
    assert one(conn, 'SELECT count(*) FROM pgml."jdxcosta/diamonds"') == 300
    conn.execute('ALTER TABLE pgml."jdxcosta/diamonds" DROP COLUMN "Unnamed: 0"')
    row = conn.execute("""SELECT pgml.train(
        project_name => 'Diamond prices', task => 'regression',
        relation_name => 'pgml.jdxcosta/diamonds', y_column_name => 'price',
        algorithm => 'lightgbm',
        preprocess => '{
            "carat": {"scale": "standard"}, "depth": {"scale": "standard"},
            "table": {"scale": "standard"},
            "cut": {"encode": "target", "scale": "standard"},
            "color": {"encode": "target", "scale": "standard"},
            "clarity": {"encode": "target", "scale": "standard"}}')""").fetchone()[0]
    assert row[:3] == ("Diamond prices", "regression", "lightgbm")
    got = conn.execute('SELECT price, pgml.predict(\'Diamond prices\', (carat, cut, color,'
                       ' clarity, depth, "table", x, y, z)) FROM pgml."jdxcosta/diamonds"'
                       " LIMIT 10").fetchall()
    assert len(got) == 10 and all(np.isfinite(p) for _, p in got)
    assert latest_model(conn, "Diamond prices")["metrics"]["r2"] > 0.5
    # the unquoted form names only that table; a missing one still says so
    with pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM pgml.train('nope', 'regression', 'pgml.jdxcosta/nothing',"
                     " 'price')")
