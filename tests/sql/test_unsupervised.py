"""Tasks clustering and decomposition, as PostgresML 2.9's clustering.sql and decomposition.sql
examples run them: a view of the digits' image column, pgml.train without a y column,
pgml.predict (cluster number) and pgml.decompose (components), deploy strategies."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from sklearn import datasets
from sklearn.decomposition import PCA

from tests.sql.helpers import connect, latest_model, one


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        c.execute("SELECT pgml.load_dataset('digits')")
        c.execute("CREATE VIEW pgml.digit_vectors AS SELECT image FROM pgml.digits")
        c.execute("CREATE VIEW digit_vectors AS SELECT image FROM pgml.digits")
        yield c


def test_clustering_example(conn):
    row = conn.execute("SELECT * FROM pgml.train('Handwritten Digit Clusters', 'clustering',"
                       " 'pgml.digit_vectors', hyperparams => '{\"n_clusters\": 10}')").fetchone()
    assert row == ("Handwritten Digit Clusters", "clustering", "kmeans", True)
    model = latest_model(conn, "Handwritten Digit Clusters")
    assert model["runtime"] == "onnx", model["parity"]
    assert -1 <= model["metrics"]["silhouette"] <= 1 and model["metrics"]["num_clusters"] == 10
    got = [r[0] for r in conn.execute("SELECT pgml.predict('Handwritten Digit Clusters', image)"
                                      " FROM pgml.digits LIMIT 30")]
    assert set(got) <= set(map(float, range(10)))
    for algorithm, params in (("birch", '{"n_clusters": 10}'),
                              ("mini_batch_kmeans", '{"n_clusters": 10}')):
        conn.execute("SELECT * FROM pgml.train('Handwritten Digit Clusters', algorithm => %s,"
                     " hyperparams => %s)", (algorithm, params))
        model = latest_model(conn, "Handwritten Digit Clusters")
        assert model["algorithm"] == algorithm
        assert model["runtime"] == ("python" if algorithm == "birch" else "onnx"), model["parity"]
        assert "scored natively" in (model["parity"]["reason"] or "") or algorithm != "birch"
        assert one(conn, "SELECT pgml.predict(%s::bigint, image) FROM pgml.digits LIMIT 1",
                   (model["id"],)) in set(map(float, range(10)))
    conn.execute("SELECT * FROM pgml.deploy('Handwritten Digit Clusters', 'best_score')")
    assert not [n for n in conn.notices if "WARNING" in n]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["affinity_propagation", "mean_shift", "spectral",
                                       "dbscan", "optics"])
def test_other_clustering_algorithms_train_and_predict(conn, algorithm):
    project = f"clusters {algorithm}"
    # Spectral clustering's default rbf affinity (gamma 1) on pixel values 0-16 leaves the
    # graph all but disconnected, and ARPACK then takes minutes (386 s measured): a k-NN graph
    # is what the algorithm needs on this data.
    params = '{"affinity": "nearest_neighbors"}' if algorithm == "spectral" else "{}"
    conn.execute("SELECT * FROM pgml.train(%s, 'clustering', 'pgml.digit_vectors',"
                 " algorithm => %s, hyperparams => %s)",
                 (project, algorithm, params))
    model = latest_model(conn, project)
    got = one(conn, "SELECT pgml.predict(%s, image) FROM pgml.digits LIMIT 1", (project,))
    assert got == int(got)
    if algorithm in ("dbscan", "optics", "spectral"):  # nearest training row: exported k-NN
        assert model["runtime"] == "onnx", model["parity"]


def test_dbscan_noise_and_nearest_row_labels():
    """The nearest-training-row rule, without a database: every training row keeps its label."""
    from sklearn.cluster import DBSCAN

    from inference.unsupervised import NearestCluster

    X = np.vstack([np.zeros((5, 2)), np.ones((5, 2)) * 10, [[50, 50]]])
    model = NearestCluster(DBSCAN(eps=1, min_samples=3)).fit(X)
    assert model.predict(X).tolist() == model.labels_.tolist() == [0] * 5 + [1] * 5 + [-1]
    assert model.predict([[9.5, 9.5], [49, 49]]).tolist() == [1, -1]


def test_decomposition_example(conn):
    row = conn.execute("SELECT * FROM pgml.train('Handwritten Digits Reduction', 'decomposition',"
                       " 'digit_vectors')").fetchone()
    assert row == ("Handwritten Digits Reduction", "decomposition", "pca", True)
    conn.execute("SELECT * FROM pgml.train('Handwritten Digits Reduction',"
                 " hyperparams => '{\"n_components\": 3}')")
    model = latest_model(conn, "Handwritten Digits Reduction")
    assert model["runtime"] == "onnx", model["parity"]
    assert len(model["metrics"]["explained_variance"]) == 3
    # the 3-component model explains less than all 64: the first stays deployed; deploy it
    conn.execute("SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'most_recent', 'pca')")
    vectors = conn.execute("SELECT target, pgml.decompose('Handwritten Digits Reduction', image)"
                           " FROM pgml.digits LIMIT 10").fetchall()
    assert all(len(v) == 3 for _, v in vectors)
    # the same numbers as scikit-learn's PCA fitted on the same training split
    images = datasets.load_digits().data.astype(np.float32).astype(np.float64)
    from sklearn.model_selection import train_test_split

    train, _ = train_test_split(np.arange(len(images)), test_size=0.25, random_state=0)
    ref = PCA(n_components=3, random_state=0).fit(images[train]).transform(images[:10])
    got = np.array([v for _, v in vectors])
    assert np.allclose(np.abs(got), np.abs(ref), atol=1e-3 * np.abs(ref).max())
    first = one(conn, "SELECT pgml.predict('Handwritten Digits Reduction', image)"
                " FROM pgml.digits LIMIT 1")
    assert first == pytest.approx(vectors[0][1][0])
    conn.execute("SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'best_score')")
    conn.execute("SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'rollback')")
    conn.execute("SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'best_score', 'pca')")
    assert one(conn, "SELECT count(*) FROM pgml.trained_models"
                     " WHERE name = 'Handwritten Digits Reduction'") == 2


def test_a_y_column_is_refused_for_unsupervised_tasks(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="without a label"):
        conn.execute("SELECT pgml.train('c', 'clustering', 'pgml.digits', 'target')")
