"""PostgresML 2.x's call forms, statement for statement as its classical examples use them:
array feature columns (digits' image SMALLINT[][]), several arrays and arrays beside scalars,
the model-id forms of predict / predict_proba / predict_joint / predict_batch, deploy by model
id (strategy 'specific'), a heterogeneous row, test_sampling 'stratified'."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from sklearn import datasets

from tests.sql.helpers import connect, latest_model, one


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        c.execute("SELECT pgml.load_dataset('digits')")
        c.execute("SELECT pgml.train('Handwritten Digits', 'classification', 'pgml.digits',"
                  " 'target', hyperparams => '{\"max_iter\": 300}')")
        yield c


def test_image_classification_example_statements(conn):
    model = latest_model(conn, "Handwritten Digits")
    assert model["runtime"] == "onnx" and model["metrics"]["f1"] > 0.9
    cols = one(conn, "SELECT columns FROM pgml.snapshots WHERE id = %s", (model["snapshot_id"],))
    assert cols[0]["name"] == "image" and cols[0]["width"] == 64
    got = conn.execute("SELECT target, pgml.predict('Handwritten Digits', image::FLOAT4[])"
                       " FROM pgml.digits LIMIT 50").fetchall()
    assert np.mean([t == p for t, p in got]) > 0.9
    # the smallint[][] itself, and predict_proba of it (implicitly float8[])
    same = conn.execute("SELECT pgml.predict('Handwritten Digits', image),"
                        " pgml.predict('Handwritten Digits', image::float8[])"
                        " FROM pgml.digits LIMIT 20").fetchall()
    assert all(a == b for a, b in same)
    proba = one(conn, "SELECT pgml.predict_proba('Handwritten Digits', image)"
                " FROM pgml.digits LIMIT 1")
    assert len(proba) == 10 and abs(sum(proba) - 1) < 1e-5
    assert not conn.notices


def test_model_id_forms_answer_as_the_project_forms(conn):
    model_id = latest_model(conn, "Handwritten Digits")["id"]
    row = conn.execute(
        "SELECT pgml.predict(%s::bigint, image), pgml.predict('Handwritten Digits', image),"
        " pgml.predict_proba(%s::bigint, image::float8[]),"
        " pgml.predict_proba('Handwritten Digits', image::float8[])"
        " FROM pgml.digits OFFSET 7 LIMIT 1", (model_id, model_id)).fetchone()
    assert row[0] == row[1] and row[2] == row[3]
    images = [r[0] for r in conn.execute("SELECT image FROM pgml.digits LIMIT 5")]
    flat = np.array(images, dtype=float).reshape(-1).tolist()
    batch = [r[0] for r in conn.execute("SELECT pgml.predict_batch(%s::bigint, %s::float8[])",
                                        (model_id, flat))]
    single = [one(conn, "SELECT pgml.predict(%s::bigint, %s::smallint[])", (model_id, img))
              for img in images]
    assert batch == single
    for literal in ("1", "2.5::numeric"):  # integer and numeric literals reach the id forms
        conn.execute(f"SELECT pgml.predict({model_id}, ARRAY[{', '.join([literal] * 64)}])")  # noqa: S608
    with pytest.raises(psycopg.errors.UndefinedObject, match="model 987654 does not exist"):
        conn.execute("SELECT pgml.predict(987654::bigint, ARRAY[1.0])")


def test_deploy_by_model_id_records_strategy_specific(conn):
    first = latest_model(conn, "Handwritten Digits")["id"]
    conn.execute("SELECT pgml.train('Handwritten Digits', algorithm => 'ridge')")
    assert conn.execute("SELECT * FROM pgml.deploy(%s::bigint)", (first,)).fetchone() == (
        "Handwritten Digits", "specific", "linear")
    assert conn.execute("SELECT model_id, strategy FROM pgml.deployments ORDER BY id DESC"
                        " LIMIT 1").fetchone() == (first, "specific")
    assert one(conn, "SELECT id FROM pgml.deployed_models WHERE name = 'Handwritten Digits'") == first
    # PostgresML's strategy forms are unchanged beside it
    assert conn.execute("SELECT * FROM pgml.deploy('Handwritten Digits', 'most_recent')"
                        ).fetchone()[2] == "ridge"
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT * FROM pgml.deploy(424242)")


def test_several_arrays_and_arrays_beside_scalars(conn):
    conn.execute("CREATE TABLE public.mixed AS SELECT image[1:4] AS top, image[5:8] AS bottom,"
                 " target::int % 2 = 0 AS even, target::float8 / 10 AS scaled, target"
                 " FROM pgml.digits")
    conn.execute("SELECT pgml.train('mixed arrays', 'classification', 'public.mixed', 'target',"
                 " 'random_forest', '{\"n_estimators\": 20}')")
    model = latest_model(conn, "mixed arrays")
    assert model["runtime"] == "onnx"
    n = one(conn, "SELECT num_features FROM pgml.models WHERE id = %s", (model["id"],))
    assert n == 32 + 32 + 2
    # the same row as one flat array and as a heterogeneous row (a record)
    flat, record = conn.execute(
        "SELECT pgml.predict('mixed arrays', ARRAY(SELECT unnest(top)::float8)"
        " || ARRAY(SELECT unnest(bottom)::float8) || ARRAY[even::int::float8, scaled]),"
        " pgml.predict('mixed arrays', (top, bottom, even, scaled)) FROM public.mixed LIMIT 1"
    ).fetchone()
    assert flat == record
    by_id = one(conn, "SELECT pgml.predict(%s::bigint, (top, bottom, even, scaled))"
                " FROM public.mixed LIMIT 1", (model["id"],))
    assert by_id == record
    analysis = one(conn, "SELECT analysis FROM pgml.snapshots WHERE id = %s",
                   (model["snapshot_id"],))
    assert "top[1]" in analysis and "bottom[32]" in analysis


def test_arrays_of_different_lengths_are_refused_naming_the_column(conn):
    conn.execute("CREATE TABLE public.ragged (v float8[], y float8)")
    conn.execute("INSERT INTO public.ragged SELECT ARRAY[i, i], i FROM generate_series(1, 9) i")
    conn.execute("INSERT INTO public.ragged VALUES (ARRAY[1.0], 1)")
    with pytest.raises(psycopg.errors.DataException, match="array column 'v' holds arrays of 1 to 2"):
        conn.execute("SELECT pgml.train('ragged', 'regression', 'public.ragged', 'y')")


def test_stratified_sampling_keeps_class_shares(conn):
    conn.execute("SELECT pgml.load_dataset('iris')")
    conn.execute("SELECT pgml.train('iris stratified', 'classification', 'pgml.iris', 'target',"
                 " test_sampling => 'stratified')")
    model = latest_model(conn, "iris stratified")
    assert one(conn, "SELECT test_sampling FROM pgml.snapshots WHERE id = %s",
               (model["snapshot_id"],)) == "stratified"
    bunch = datasets.load_iris()
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(150), test_size=0.25, random_state=0,
                               stratify=bunch.target)
    assert np.bincount(bunch.target[test]).tolist() == [13, 13, 12]
    assert model["metrics"]["accuracy"] > 0.8
