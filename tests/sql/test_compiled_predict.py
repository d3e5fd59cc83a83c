"""Compiled trees from SQL: pgml.train stores a tree model's C source with its parity record,
pgml.predict scores rows through it in a backend that never imports onnxruntime or the
training libraries, it answers like the ONNX graph (SET pgml.compiled_trees = off), and
pgml.runtime_info says which scorer scored."""

from __future__ import annotations

import statistics
import time

import pytest

from inference import compiled_scorer, compiled_trees
from tests.sql.helpers import connect, one

pytestmark = pytest.mark.skipif(compiled_scorer.compiler() is None, reason="no C compiler")

ROW = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02]
HEAVY = ("onnxruntime", "onnx", "sklearn", "xgboost", "lightgbm", "catboost", "scipy", "skl2onnx")


@pytest.fixture(scope="module")
def conn(shared_pgml_db):
    with connect(shared_pgml_db) as c:
        c.execute("SELECT pgml.load_dataset('iris'), pgml.load_dataset('diabetes')")
        c.execute("SELECT pgml.train('ct_reg', 'regression', 'pgml.diabetes', 'target',"
                  " 'xgboost', '{\"n_estimators\": 100}')")
        c.execute("SELECT pgml.train('ct_cls', 'classification', 'pgml.iris', 'target',"
                  " 'lightgbm', '{\"n_estimators\": 20}')")
        c.execute("SELECT pgml.train('ct_lin', 'regression', 'pgml.diabetes', 'target')")
        c.execute("CREATE OR REPLACE FUNCTION heavy_modules() RETURNS text[]"
                  " LANGUAGE plpython3u AS $$\nimport sys\n"
                  f"return sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n$$")
        yield c


def _parity(conn, project):
    return one(conn, "SELECT m.parity->'compiled_trees' FROM pgml.models m JOIN pgml.projects p"
                     " ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
               (project,))


def _has_source(conn, project) -> bool:
    return one(conn, "SELECT count(*) FROM pgml.files f JOIN pgml.models m ON m.id = f.model_id"
                     " JOIN pgml.projects p ON p.id = m.project_id WHERE p.name = %s"
                     " AND f.path = 'trees.c'", (project,)) > 0


def test_train_stores_the_source_of_tree_models_with_its_parity(conn):
    record = _parity(conn, "ct_reg")
    assert record["ok"] and record["max_rel_diff"] <= compiled_trees.RTOL
    assert record["rows_checked"] > 0 and _has_source(conn, "ct_reg")
    linear = _parity(conn, "ct_lin")
    assert not linear["ok"] and "not a tree model" in linear["reason"]
    assert not _has_source(conn, "ct_lin")


@pytest.mark.parametrize(("project", "features"), [
    ("ct_reg", ROW), ("ct_cls", [5.1, 3.5, 1.4, 0.2]), ("ct_cls", [6.7, 3.0, 5.2, 2.3]),
    ("ct_reg", [None] + ROW[1:])])
def test_compiled_trees_answer_like_the_onnx_graph(shared_pgml_db, project, features):
    with connect(shared_pgml_db) as compiled, connect(shared_pgml_db) as graph:
        graph.execute("SET pgml.compiled_trees = off")
        ours = one(compiled, "SELECT pgml.predict(%s, %s::float8[])", (project, features))
        theirs = one(graph, "SELECT pgml.predict(%s, %s::float8[])", (project, features))
        assert one(compiled, "SELECT pgml.runtime_info(%s)", (project,))["project"]["graph"] \
            == "compiled"
        assert one(graph, "SELECT pgml.runtime_info(%s)", (project,))["project"]["graph"] \
            == "default"
        assert abs(ours - theirs) <= 1e-5 * max(1.0, abs(theirs))
        if project == "ct_cls":
            p_ours = one(compiled, "SELECT pgml.predict_proba(%s, %s::float8[])",
                         (project, features))
            p_theirs = one(graph, "SELECT pgml.predict_proba(%s, %s::float8[])",
                           (project, features))
            assert max(abs(a - b) for a, b in zip(p_ours, p_theirs, strict=True)) <= 1e-5


def test_a_scoring_backend_imports_no_ml_library(shared_pgml_db, conn):
    with connect(shared_pgml_db) as fresh:
        fresh.execute("SELECT pgml.predict('ct_reg', %s::float8[])", (ROW,))
        fresh.execute("SELECT pgml.predict('ct_cls', ARRAY[5.1, 3.5, 1.4, 0.2])")
        assert one(fresh, "SELECT heavy_modules()") == []
        assert fresh.notices == []


def test_runtime_info_names_the_library_and_the_batch_graph(conn):
    conn.execute("SELECT pgml.predict('ct_reg', %s::float8[])", (ROW,))
    info = one(conn, "SELECT pgml.runtime_info('ct_reg')")
    batch = info["project"]["batch_graph"]
    assert batch["single_row"]["graph"] == "compiled"
    assert batch["single_row"]["library"].startswith(info["compiled_trees"]["cache_dir"])
    assert batch["batch_10000_rows_and_more"]["graph"] == "compiled"  # no CUDA device here
    assert info["compiled_trees"]["enabled"] is True


def test_first_predict_in_a_brand_new_backend_is_measured(shared_pgml_db, conn):
    """#1175: a 100-tree model's first pgml.predict in a brand-new backend after a deploy
    (bootstrap, imports, model load), median of 3; printed, never asserted (docs/benchmarks.md
    records it)."""
    conn.execute("SELECT pgml.deploy('ct_reg', 'most_recent')")
    times, answers = [], set()
    for _ in range(3):
        with connect(shared_pgml_db) as fresh:
            fresh.execute("SELECT 1")
            start = time.perf_counter()
            answers.add(one(fresh, "SELECT pgml.predict('ct_reg', %s::float8[])", (ROW,)))
            times.append(time.perf_counter() - start)
    assert len(answers) == 1
    print(f"\nfirst pgml.predict in a brand-new backend (compiled trees): median "
          f"{statistics.median(times) * 1000:.0f} ms of {[round(t * 1000) for t in times]} ms")
