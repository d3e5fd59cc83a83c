"""The tensor graph of a stored tree model, built when it is asked for instead of at training.

Why: the tensor graph (tree_graph.py) only scores on a CUDA device -- on the CPU the compiled
trees and the TreeEnsemble graph are faster at every batch size (routing.choose_graph) -- so on
a host without one, building and checking it in every ``pgml.train`` (0.12-0.13 s of a 1M-row
XGBoost train, issue 12) bought nothing but ``pgml.export_onnx(..., 'tensor')``. pgml.train
now builds it only where a CUDA device is present (``tree_graph.built_at_training``); elsewhere
``pgml.export_onnx(project, 'tensor')`` builds it here from the model's stored native pickle.

Parity still holds for every tensor graph handed out, against the stored native model, at the
same bar (tree_graph.RTOL, relative 1e-5; labels off the top-two boundary) on
``parity.MAX_ROWS`` rows. The test split is not at hand at export time (an in-place snapshot's
relation may have changed or be gone), so the rows are made from the model's own trees
(``parity_rows``): for every feature, values in each interval between its split thresholds
(midpoints, and beyond the outermost ones), the thresholds themselves and their float32
neighbours where the preprocessing is the identity (so the float32 comparison at the exact
boundary is exercised -- rows the test split rarely has), and NaN where the model accepts it.
Each row picks one value per feature at random (seeded): every interval of every feature is
visited thousands of times. The record says ``rows: "thresholds"`` and ``built: "on demand"``.
Nothing is stored (export_onnx may run on a read-only standby); a repeat builds it again.
"""

from __future__ import annotations

import json
import pickle

import numpy as np

from inference import parity

SEED = 0
NAN_SHARE = 0.05


def tensor_graph_of(model_id: int) -> bytes | None:
    """The checked tensor graph of stored model ``model_id``, or None where it has none (not
    a tree model, not served from ONNX, or the graph failed parity)."""
    import onnx

    from inference import store, tree_graph
    from inference.errors import NotExportable
    from inference.tree_graph_models import ensemble_of

    rows = store.query(
        "SELECT m.runtime, m.num_features, m.classes::text AS classes, p.task,"
        " (SELECT string_agg(f.data, ''::bytea ORDER BY f.part) FROM pgml.files f"
        "   WHERE f.model_id = m.id AND f.path = 'model.pkl') AS native"
        " FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id WHERE m.id = $1",
        ("int8",), (model_id,))
    if not rows.nrows() or rows[0]["runtime"] != "onnx" or rows[0]["native"] is None:
        return None
    row = rows[0]
    task, n_features = row["task"], int(row["num_features"])
    if task not in ("regression", "classification"):
        return None
    classes = json.loads(row["classes"]) if row["classes"] else None
    pipeline = pickle.loads(bytes(row["native"]))  # noqa: S301 - our own model file
    spec, final = tree_graph.unwrap(pipeline)
    columns = (spec or {}).get("columns", [])
    names = [c["name"] for c in columns] if len(columns) == n_features else \
        [f"x{j}" for j in range(n_features)]
    error_columns = [j for j, c in enumerate(columns) if c.get("impute") == "error"]
    try:
        ens = ensemble_of(final, n_features, None if task != "classification" else len(classes))
    except NotExportable:
        return None
    X = parity_rows(ens, spec, n_features, error_columns)
    data, record = tree_graph.checked(pipeline, X, task=task, classes=classes,
                                      has_proba=task == "classification",
                                      error_columns=error_columns, feature_names=names, ens=ens)
    if data is None:
        return None
    record.update(rows="thresholds", built="on demand")
    model = onnx.load_from_string(data)
    entry = model.metadata_props.add()
    entry.key, entry.value = "pgml.parity", json.dumps(record)
    return model.SerializeToString()


def parity_rows(ens, spec: dict | None, n_features: int, error_columns: list[int],
                n: int = parity.MAX_ROWS, seed: int = SEED) -> np.ndarray:
    """``n`` float32 rows made from the trees' split thresholds (the module docstring says
    which values and why), in the raw feature space the graph takes."""
    offset, factor = np.zeros(n_features), np.ones(n_features)
    if spec is not None:
        from inference.preprocess import arrays

        _, offset, factor, _ = arrays(spec)
    identity = bool(np.all(offset == 0) and np.all(factor == 1))
    rng = np.random.default_rng(seed)
    X = np.empty((n, n_features), dtype=np.float32)
    for j in range(n_features):
        found = [t.threshold[(t.feature == j) & (t.left >= 0)] for t in ens.trees]
        cut = np.unique(np.concatenate(found).astype(np.float64)) if found else np.empty(0)
        cut = cut[np.isfinite(cut)]
        if cut.size and factor[j] != 0:  # the graph compares after (x - offset) * factor
            cut = np.unique(cut / factor[j] + offset[j])
        values = [np.array([0.0])] if not cut.size else [
            (cut[:-1] + cut[1:]) / 2, cut[:1] - 1.0 - np.abs(cut[:1]), cut[-1:] + 1.0 + np.abs(cut[-1:])]
        if identity and cut.size:
            f32 = cut.astype(np.float32)
            values += [f32, np.nextafter(f32, np.float32(np.inf)),
                       np.nextafter(f32, np.float32(-np.inf))]
        pool = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
        X[:, j] = rng.choice(pool, n).astype(np.float32)
        if j not in error_columns:  # NaN in 1 row of 20: the branch the library sends it
            X[rng.random(n) < NAN_SHARE, j] = np.nan
    return X
