"""SQL entry points of sql/40_pgml_scale.sql and pgml.runtime_info: exporting a model's ONNX
graphs, scoring a whole relation (inference/bulk.py), and which runtime scores what.
"""

from __future__ import annotations

import json

from inference import deployed, store
from inference.errors import PgmlError
from inference.sql_entry import _entry


@_entry
def runtime_info(project_name=None) -> str:
    """What onnxruntime offers here and which providers sessions in this backend really got."""
    import onnxruntime as ort

    from inference import routing, runtime

    info = {
        "onnxruntime": ort.__version__,
        "gpu_min_rows": routing.GPU_MIN_ROWS,
        "available_providers": ort.get_available_providers(),
        "requested_providers": runtime.providers(),
        "probe_session_providers": runtime.probe_providers(runtime.providers()),
        "sessions": [{"model_id": model_id, "runtime": s.runtime, "providers": list(s.providers),
                      "graph": getattr(s, "graph", None)}
                     for model_id, s in deployed.cached_scorers().items()],
        "compiled_trees": _compiled_trees_info(),
    }
    if project_name is not None:
        model_id = store.deployed_model(project_name)
        s = deployed.loaded(model_id).scorer
        info["project"] = {"name": project_name, "model_id": model_id, "runtime": s.runtime,
                           "providers": list(s.providers), "graph": getattr(s, "graph", None),
                           "batch_graph": _batch_graph(s)}
    from inference.bulk import LAST_RUN

    if LAST_RUN:
        info["last_predict_relation"] = dict(LAST_RUN)
    return json.dumps(info)


@_entry
def export_onnx(project_name, graph):
    """The deployed model's ONNX bytes: 'default' (scores single rows) or 'tensor' (GPU)."""
    from inference.errors import NotExportable

    files = {"default": "model.onnx", "tensor": "tensor.onnx"}
    if graph not in files:
        raise PgmlError(f"graph {graph!r} is not one of {', '.join(files)}")
    model_id = store.deployed_model(project_name)
    data = store.model_file(model_id, files[graph])
    if data is None and graph == "tensor":  # built at training only on a CUDA host
        from inference.tree_graph_on_demand import tensor_graph_of

        data = tensor_graph_of(model_id)
    if data is None:
        why = ("only tree models (xgboost, lightgbm, random_forest, ...) have a tensor graph"
               if graph == "tensor" else "its runtime is python: it did not export or pass parity")
        raise NotExportable(f"model {model_id} of project {project_name!r} has no {graph} ONNX "
                            f"graph; {why} (see pgml.models.parity)")
    return data


@_entry
def predict_relation(project_name, relation_name, key_columns, into):
    from inference import bulk
    from inference.sql_api import _batch_threads

    return bulk.predict_relation(project_name, relation_name, key_columns, into,
                                 threads=_batch_threads(BULK_THREAD_ROWS))


BULK_THREAD_ROWS = 1 << 30  # predict_relation always asks for Postgres' per-query parallelism


def _compiled_trees_info() -> dict:
    """Whether this backend can build and load compiled trees (routing.CompiledScorer)."""
    from inference import compiled_scorer

    return {"enabled": deployed.compiled_trees_enabled(), "compiler": compiled_scorer.compiler(),
            "cache_dir": compiled_scorer.cache_dir(),
            "gpu_min_rows": compiled_scorer.GPU_MIN_ROWS}


def _batch_graph(scorer) -> dict:
    """Which graph and providers score one row and a large batch (routing.choose_graph);
    a CompiledScorer's are its compiled trees (its ``library``) but a GPU's large batches."""
    from inference.routing import GPU_MIN_ROWS

    trees = getattr(scorer, "trees", None)
    if trees is not None:
        compiled = {"graph": "compiled", "providers": list(scorer.providers),
                    "library": trees.path}
        big = _batch_graph(scorer.onnx)[f"batch_{GPU_MIN_ROWS}_rows_and_more"] \
            if scorer.cuda else compiled
        return {"single_row": compiled, f"batch_{GPU_MIN_ROWS}_rows_and_more": big}

    routed = getattr(scorer, "tensor", None)
    default = getattr(scorer, "default", scorer)
    big = routed if routed is not None and getattr(scorer, "cuda", False) else default
    return {"single_row": {"graph": getattr(default, "graph", None),
                           "providers": list(default.providers)},
            f"batch_{GPU_MIN_ROWS}_rows_and_more": {"graph": getattr(big, "graph", None),
                                                    "providers": list(big.providers)}}
