"""Parity check: does the ONNX graph answer like the native model on the test split?

The ONNX graph computes in float32 while scikit-learn computes in float64, so exact equality is
not the bar. The bars, and why (docs/inference.md has the longer version):

* Regression: ``max |onnx - native| <= RTOL * scale`` with ``RTOL = 1e-3`` and
  ``scale = max(std(y_train), mean |y_train|, max |native prediction|)`` — the target's scale,
  or the predictions' where a model predicts far outside it. float32 keeps ~7 significant digits
  (eps 1.2e-7); a prediction is a sum of up to thousands of terms (trees, support vectors,
  coefficients times features) whose magnitudes can exceed the result, so rounding can grow by
  three to four orders of magnitude — still far below 0.1 % of the target's spread, which in
  turn is far below any useful model's error.
* Classification: labels must be equal except on *boundary rows*, where the native model's
  two best classes are within ``BOUNDARY_MARGIN`` of each other (probability, or decision
  score for models without probabilities): float32 rounding can legitimately flip those and
  nothing else. At most ``MAX_BOUNDARY_FRACTION`` of the rows may differ. Probabilities, where
  the model has them, must agree within ``PROBA_ATOL`` on every row whose label agrees.

Which rows: the whole test split up to ``MAX_ROWS`` rows; a larger split is checked on a fixed
random sample of ``MAX_ROWS`` of its rows (seeded with the snapshot's random_state, so a retrain
checks the same rows), and the result records ``rows_checked`` and ``test_rows``. Why that is
enough: an export defect (a tree sent to the wrong class, preprocessing that disagrees, a
converter that drops an option) changes a large share of the rows and shows in any few hundred;
what a sample can miss is a rare row, and with none failing among 20,000 sampled rows, fewer
than 3 / 20,000 = 0.015 % of the split's rows fail at 95 % confidence (the rule of three).
Checking more costs time that grows with the split: scoring all 250,000 test rows of a 1M-row
snapshot with a 100-tree XGBoost graph took ~0.7-1.3 s of a pgml.train, the sample ~60 ms.
"""

from __future__ import annotations

import numpy as np

RTOL = 1e-3
PROBA_ATOL = 1e-3
BOUNDARY_MARGIN = 1e-3
MAX_BOUNDARY_FRACTION = 0.01
MAX_ROWS = 20_000
# Scorers built from a model's own trees (the tensor graph, compiled trees) compare in float32
# exactly as the library does, so they are held to far less than an ONNX converter's graph.
TREE_RTOL = 1e-5


def sample_rows(n: int, random_state: int) -> np.ndarray | None:
    """Sorted indexes of the test rows to check, or None to check all ``n``."""
    if n <= MAX_ROWS:
        return None
    return np.sort(np.random.default_rng(random_state).choice(n, MAX_ROWS, replace=False))


def target_scale(y_train: np.ndarray) -> float:
    y = np.asarray(y_train, dtype=np.float64)
    return float(max(np.std(y), np.mean(np.abs(y)), np.finfo(np.float32).tiny))


def regression_parity(native: np.ndarray, onnx: np.ndarray, y_train: np.ndarray) -> dict:
    native = np.asarray(native, dtype=np.float64)
    largest = float(np.max(np.abs(native))) if native.size else 0.0
    tolerance = RTOL * max(target_scale(y_train), largest if np.isfinite(largest) else 0.0)
    diff = float(np.max(np.abs(np.asarray(onnx) - np.asarray(native)))) if len(native) else 0.0
    ok = bool(np.isfinite(diff) and diff <= tolerance)
    reason = None if ok else (
        f"ONNX predictions differ from the native model by up to {diff:.6g} on the test split "
        f"(tolerance {tolerance:.6g} = {RTOL} x the target's scale)"
    )
    return _result(ok, diff, 0.0, tolerance, reason)


def classification_parity(
    native_labels: np.ndarray,
    onnx_labels: np.ndarray,
    native_scores: np.ndarray | None,
    native_proba: np.ndarray | None,
    onnx_proba: np.ndarray | None,
) -> dict:
    """``native_scores``: per-class probabilities or decision scores, for the boundary test."""
    n = len(native_labels)
    mismatch = np.asarray(native_labels) != np.asarray(onnx_labels)
    fraction = float(mismatch.mean()) if n else 0.0
    reason = None
    if mismatch.any():
        margins = _margins(native_scores)
        off_boundary = mismatch & ~(margins <= BOUNDARY_MARGIN) if margins is not None else mismatch
        if off_boundary.any():
            reason = (
                f"ONNX labels differ from the native model on {int(off_boundary.sum())} of {n} "
                "test rows that are not on a decision boundary"
            )
        elif fraction > MAX_BOUNDARY_FRACTION and mismatch.sum() > 1:
            reason = (
                f"ONNX labels differ on {fraction:.2%} of the test rows (boundary rows only), "
                f"above the {MAX_BOUNDARY_FRACTION:.0%} allowed"
            )
    diff = 0.0
    if native_proba is not None and onnx_proba is not None and n:
        agree = ~mismatch
        if agree.any():
            diff = float(np.max(np.abs(onnx_proba[agree] - native_proba[agree])))
        if reason is None and not diff <= PROBA_ATOL:
            reason = (
                f"ONNX probabilities differ from the native model by up to {diff:.6g} "
                f"(tolerance {PROBA_ATOL})"
            )
    return _result(reason is None, diff, fraction, PROBA_ATOL, reason)


def _margins(scores: np.ndarray | None) -> np.ndarray | None:
    """Gap between the best and second-best class per row (binary decision scores: |score|)."""
    if scores is None:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        return np.abs(scores)
    if scores.shape[1] < 2:
        return np.abs(scores[:, 0])
    top2 = np.sort(scores, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _result(ok: bool, diff: float, fraction: float, tolerance: float, reason: str | None) -> dict:
    return {
        "ok": ok,
        "max_abs_diff": diff if np.isfinite(diff) else None,
        "label_mismatch_fraction": fraction,
        "tolerance": tolerance,
        "reason": reason,
    }


def tree_parity(native: np.ndarray, ours: np.ndarray, labels_differ: np.ndarray | None = None,
                native_proba: np.ndarray | None = None) -> dict:
    """The record of a scorer built from the model's trees: ``max_rel_diff`` relative to
    max(1, |native|) within TREE_RTOL and, for classification (``labels_differ`` with the
    native probabilities), no label differing off the top-two boundary - a float32 sum may
    flip only the rows whose two best classes are within TREE_RTOL."""
    record: dict = {"rows_checked": len(native), "tolerance": TREE_RTOL}
    if labels_differ is not None and native_proba is not None:
        top2 = np.sort(native_proba, axis=1)[:, -2:] if native_proba.shape[1] > 1 \
            else native_proba
        boundary = (top2[:, -1] - top2[:, 0]) <= TREE_RTOL
        record["label_mismatches"] = int(np.sum(labels_differ & ~boundary))
    diff = np.abs(native - ours) / np.maximum(1.0, np.abs(native))
    record["max_rel_diff"] = float(diff.max()) if diff.size else 0.0
    record["ok"] = record["max_rel_diff"] <= TREE_RTOL and not record.get("label_mismatches")
    return record
