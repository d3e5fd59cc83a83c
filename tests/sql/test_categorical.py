"""Text categorical features (encode native / ordinal / target / one_hot) and text labels,
as PostgresML 2.x's preprocess JSON gives them; predictions as the class (inference/encoding.py).

The data: a class decided by a text column ``color`` alone, a noise number beside it, some NULL
colors, and a text label. Every encoding must learn the rule, predict from a heterogeneous row,
and pgml.predict_label must return the class text.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.sql.helpers import connect, one

COLORS = ["red", "green", "blue", "ünïcode"]
RULE = {"red": "hot", "green": "cold", "blue": "cold", "ünïcode": "hot", None: "cold"}


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        c.execute("CREATE TABLE fruit (color text, size float8, grade varchar(8), label text)")
        rows = []
        for i in range(240):
            color = None if i % 17 == 0 else COLORS[i % 4]
            grade = ["low", "mid", "high"][i % 3]
            rows.append((color, float(i % 7), grade, RULE[color]))
        with c.cursor() as cur:
            cur.executemany("INSERT INTO fruit VALUES (%s, %s, %s, %s)", rows)
        yield c


def _train(conn, project, algorithm, preprocess):
    return conn.execute(
        "SELECT deployed FROM pgml.train(%s, 'classification', 'fruit', 'label', %s,"
        " preprocess => %s::jsonb)", (project, algorithm, json.dumps(preprocess))).fetchone()[0]


ENCODINGS = {
    "native": {"color": {"encode": "native"}},
    "ordinal": {"color": {"encode": {"ordinal": ["blue", "green", "red", "ünïcode"]}},
                "grade": {"encode": {"ordinal": ["low", "mid", "high"]}}},
    "target": {"color": {"encode": "target"}},
    "one_hot": {"color": {"encode": "one_hot"}},
}


@pytest.mark.parametrize("encode", list(ENCODINGS))
@pytest.mark.parametrize("algorithm", ["xgboost", "random_forest"])
def test_every_encoding_learns_and_predicts_the_class(conn, encode, algorithm):
    project = f"fruit_{encode}_{algorithm}"
    assert _train(conn, project, algorithm, ENCODINGS[encode]) is True
    runtime = one(conn, "SELECT runtime FROM pgml.models m JOIN pgml.projects p"
                  " ON p.id = m.project_id WHERE p.name = %s", (project,))
    assert runtime == "onnx"  # the graph takes the encoded features
    for color in [*COLORS, None]:
        got = one(conn, "SELECT pgml.predict_label(%s, (%s::text, 3.0::float8, 'mid'::varchar))",
                  (project, color))
        assert got == RULE[color], (encode, color)
    # pgml.predict returns the label's code (PostgresML returns REAL): 'cold' 1, 'hot' 2
    assert one(conn, "SELECT pgml.predict(%s, ('red'::text, 3.0::float8, 'mid'::varchar))",
               (project,)) == 2.0


def test_codes_and_maps_are_stored_with_snapshot_and_model(conn):
    _train(conn, "fruit_maps", "xgboost", ENCODINGS["one_hot"])
    columns = one(conn, "SELECT s.columns FROM pgml.snapshots s JOIN pgml.models m"
                  " ON m.snapshot_id = s.id JOIN pgml.projects p ON p.id = m.project_id"
                  " WHERE p.name = 'fruit_maps'")
    by_name = {c["name"]: c for c in columns}
    assert by_name["color"]["categories"] == sorted(COLORS)  # byte order, NULL is code 0
    assert by_name["label"]["categories"] == ["cold", "hot"]
    encoding = one(conn, "SELECT m.preprocess->'encoding' FROM pgml.models m JOIN"
                   " pgml.projects p ON p.id = m.project_id WHERE p.name = 'fruit_maps'")
    assert encoding["label_categories"] == ["cold", "hot"]
    color = next(e for e in encoding["inputs"] if e["name"] == "color")
    assert color["features"] == [f"color={v}" for v in sorted(COLORS)]
    # the encoded vector form: one-hot color (4), size, grade's native code
    vector = [0.0, 0.0, 1.0, 0.0, 3.0, 3.0]  # red; grade mid is code 3 of high, low, mid
    assert one(conn, "SELECT pgml.predict_label('fruit_maps', %s::float8[])", (vector,)) == "hot"
    # an unknown category is all zeros (one-hot): the model still answers
    assert one(conn, "SELECT pgml.predict_label('fruit_maps', ('mauve'::text, 1.0::float8,"
               " 'low'::varchar))") in ("hot", "cold")


def test_retrain_from_the_snapshot_reuses_the_codes(conn):
    _train(conn, "fruit_retrain", "xgboost", ENCODINGS["native"])
    conn.execute("SELECT pgml.train('fruit_retrain', algorithm => 'random_forest')")
    got = one(conn, "SELECT pgml.predict_label('fruit_retrain', ('green'::text, 1.0::float8,"
              " 'low'::varchar))")
    assert got == "cold"


def test_bad_encodings_are_refused_naming_the_column(conn):
    with pytest.raises(psycopg.Error, match="'color'.*not in its ordinal list"):
        _train(conn, "fruit_bad1", "xgboost", {"color": {"encode": {"ordinal": ["red"]}}})
    with pytest.raises(psycopg.Error, match="no average category"):
        _train(conn, "fruit_bad2", "xgboost", {"color": {"impute": "mean"}})
    with pytest.raises(psycopg.Error, match="'size'.*text categoricals only"):
        _train(conn, "fruit_bad3", "xgboost", {"size": {"encode": "one_hot"}})
    with pytest.raises(psycopg.Error, match="is not one of"):
        _train(conn, "fruit_bad4", "xgboost", {"color": {"encode": "hashing"}})
    with pytest.raises(psycopg.Error, match="only classification takes text labels"):
        conn.execute("SELECT pgml.train('fruit_reg', 'regression', 'fruit', 'label')")


def test_numeric_label_predict_label_is_the_number(conn):
    conn.execute("CREATE TABLE fruit_num AS SELECT color, size,"
                 " CASE label WHEN 'hot' THEN 1 ELSE 0 END AS y FROM fruit")
    conn.execute("SELECT pgml.train('fruit_num', 'classification', 'fruit_num', 'y', 'xgboost')")
    assert one(conn, "SELECT pgml.predict_label('fruit_num', ('red'::text, 2.0::float8))") == "1"


@pytest.mark.parametrize("encode", ["native", "one_hot", "target"])
def test_predict_relation_encodes_text_columns_like_predict(conn, encode):
    project = f"fruit_bulk_{encode}"
    _train(conn, project, "xgboost", ENCODINGS[encode])
    conn.execute("CREATE TABLE IF NOT EXISTS fruit_in AS SELECT row_number() OVER () AS id,"
                 " color, size, grade FROM fruit"
                 " UNION ALL SELECT -1, 'mauve', 1.0, 'low'")  # an unknown category too
    into = f"scored_{encode}"
    n = one(conn, "SELECT pgml.predict_relation(%s, 'fruit_in', ARRAY['id'], %s)",
            (project, into))
    assert n == 241
    got = dict(conn.execute(f"SELECT id, prediction FROM {into}").fetchall())  # noqa: S608
    for i, color, size, grade in conn.execute("SELECT id, color, size, grade FROM fruit_in"):
        row = one(conn, "SELECT pgml.predict(%s, (%s::text, %s::float8, %s::varchar))",
                  (project, color, size, grade))
        assert got[i] == row, (i, color)


def test_text_beside_an_array_column_in_a_row(conn):
    conn.execute("CREATE TABLE fruit_arr AS SELECT ARRAY[size, size * 2] AS dims, color, label"
                 " FROM fruit")
    conn.execute("SELECT pgml.train('fruit_arr', 'classification', 'fruit_arr', 'label',"
                 " 'xgboost')")
    for color in COLORS:
        got = one(conn, "SELECT pgml.predict_label('fruit_arr', (ARRAY[1.0, 2.0]::float8[],"
                  " %s::text))", (color,))
        assert got == RULE[color]
