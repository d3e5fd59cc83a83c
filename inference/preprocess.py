"""Per-column imputation and scaling, PostgresML 2.x style, fitted once and stored as JSON.

The user writes ``{"col": {"impute": "median", "scale": "standard"}}``; fitting turns that into
plain numbers per column (fill value, offset, factor) computed on the training split only.
The numbers are what get stored with the snapshot/model, re-applied at predict time and
written into the ONNX graph (see onnx_export), so the three can never disagree.

Every scaler here is ``(x - offset) * factor``: standard (mean, 1/std), min_max (min, 1/range),
max_abs (0, 1/max|x|), robust (median, 1/IQR), preserve (0, 1). A constant column gets factor 1,
as scikit-learn's scalers do. Scale statistics are taken after imputation, as a
``Pipeline([imputer, scaler])`` would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from inference.errors import InvalidData, PgmlError

KIND = "pgml.preprocessor"
IMPUTE = ("mean", "median", "mode", "min", "max", "zero", "error")
SCALE = ("preserve", "standard", "min_max", "max_abs", "robust")
DEFAULT = {"impute": "mean", "scale": "preserve"}


def as_float_matrix(X, feature_names: Sequence[str], what: str = "features") -> np.ndarray:
    """``X`` as a 2-D float64 array, or InvalidData naming the column that is not numeric.

    NULL arrives as None or NaN and stays NaN (imputation handles it); infinities are refused
    because no estimator can use them and they would poison scaling statistics.
    """
    try:
        out = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.asarray(X, dtype=object)
        if arr.ndim != 2:
            raise InvalidData(f"{what} must be a 2-D table of numbers") from None
        for j in range(arr.shape[1]):
            try:
                np.asarray([np.nan if v is None else v for v in arr[:, j]], dtype=np.float64)
            except (TypeError, ValueError):
                name = feature_names[j] if j < len(feature_names) else f"#{j + 1}"
                raise InvalidData(
                    f"feature column {name!r} is not numeric; cast it to a number or leave it "
                    "out of the relation (encoding text columns is not supported yet)"
                ) from None
        out = np.array([[np.nan if v is None else v for v in row] for row in arr], dtype=float)
    if out.ndim == 1:
        out = out.reshape(-1, 1) if len(feature_names) == 1 else out.reshape(1, -1)
    if out.ndim != 2:
        raise InvalidData(f"{what} must be a 2-D table of numbers, got {out.ndim} dimensions")
    if len(feature_names) and out.shape[1] != len(feature_names):
        raise InvalidData(
            f"{what} have {out.shape[1]} columns but {len(feature_names)} feature names were given"
        )
    sums = out.sum(axis=0)  # one pass, no temporaries: a finite sum means no NaN and no inf
    for j in np.flatnonzero(~np.isfinite(sums)):
        if np.isinf(out[:, j]).any():
            name = feature_names[j] if len(feature_names) else f"#{j + 1}"
            raise InvalidData(
                f"feature column {name!r} contains infinity; replace it with a number or NULL"
            )
    return out


def fit_preprocessor(X: np.ndarray, feature_names: list[str], preprocess: dict | None) -> dict:
    """Fit per-column fill values and scaling on ``X`` (the training split, NaN for NULL)."""
    X = as_float_matrix(X, feature_names)
    options = _column_options(feature_names, preprocess or {})
    means = X.sum(axis=0) / max(len(X), 1)  # finite exactly where a column has no NULL
    columns = []
    for j, name in enumerate(feature_names):
        impute, scale = options[name]["impute"], options[name]["scale"]
        if np.isfinite(means[j]) and impute == "mean" and scale == "preserve":
            fill, offset, factor = float(means[j]), 0.0, 1.0  # the default: no column copy
        else:
            fill, offset, factor = _fit_column(X[:, j], name, impute, scale)
        columns.append(
            {"name": name, "impute": impute, "scale": scale, "fill": fill,
             "offset": offset, "factor": factor}
        )
    return {"kind": KIND, "version": 1, "columns": columns}


def apply_preprocessor(spec: dict, X: np.ndarray) -> np.ndarray:
    """Impute and scale ``X`` with a fitted spec; InvalidData for NULL in an 'error' column."""
    fill, offset, factor, error_cols = arrays(spec)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.shape[1] != len(fill):
        raise InvalidData(f"expected {len(fill)} features, got {X.shape[1]}")
    missing = np.isnan(X)
    if error_cols.size and missing[:, error_cols].any():
        j = int(error_cols[np.argmax(missing[:, error_cols].any(axis=0))])
        name = spec["columns"][j]["name"]
        raise InvalidData(
            f"feature column {name!r} is NULL and its preprocess impute is 'error'; "
            "pass a value for it"
        )
    if missing.any():
        X = np.where(missing, fill, X)
    if np.all(offset == 0.0) and np.all(factor == 1.0):
        return X  # 'preserve' everywhere: no copy of a possibly large matrix
    return (X - offset) * factor


def arrays(spec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fill, offset, factor, error column indexes) as arrays; 'error' columns fill with NaN."""
    if not is_fitted_spec(spec):
        raise PgmlError("not a fitted preprocessor spec; build one with fit_preprocessor()")
    cols = spec["columns"]
    fill = np.array([np.nan if c["fill"] is None else c["fill"] for c in cols], dtype=np.float64)
    offset = np.array([c["offset"] for c in cols], dtype=np.float64)
    factor = np.array([c["factor"] for c in cols], dtype=np.float64)
    error_cols = np.array([j for j, c in enumerate(cols) if c["impute"] == "error"], dtype=np.int64)
    return fill, offset, factor, error_cols


def is_fitted_spec(spec) -> bool:
    """Whether ``spec`` came from fit_preprocessor (as opposed to the user's options)."""
    return isinstance(spec, dict) and spec.get("kind") == KIND and "columns" in spec


class Preprocessor(TransformerMixin, BaseEstimator):
    """The fitted spec as the first step of a scikit-learn Pipeline.

    It is frozen: ``fit`` does not refit, so the statistics stay the ones taken on the training
    split. Its class path is part of the stored model format (pickles name it), and
    onnx_export registers an ONNX converter for it.
    """

    def __init__(self, spec: dict | None = None):
        self.spec = spec

    def fit(self, X, y=None):
        self.n_features_in_ = len(self.spec["columns"])
        return self

    def transform(self, X):
        return apply_preprocessor(self.spec, X)

    def __sklearn_is_fitted__(self) -> bool:
        return is_fitted_spec(self.spec)


def _column_options(feature_names: list[str], preprocess: dict) -> dict[str, dict[str, str]]:
    if not isinstance(preprocess, dict):
        raise PgmlError("preprocess must be a JSON object of {column: {impute, scale}}")
    unknown = sorted(set(preprocess) - set(feature_names))
    if unknown:
        raise PgmlError(
            f"preprocess names unknown column(s) {', '.join(map(repr, unknown))}; "
            f"feature columns are: {', '.join(feature_names)}"
        )
    out = {}
    for name in feature_names:
        given = preprocess.get(name) or {}
        if not isinstance(given, dict):
            raise PgmlError(f"preprocess for column {name!r} must be an object like {DEFAULT}")
        extra = sorted(set(given) - {"impute", "scale", "encode"})
        if extra:
            raise PgmlError(
                f"preprocess for column {name!r} has unknown option(s) {', '.join(extra)}; "
                "supported: impute, scale"
            )
        if given.get("encode") not in (None, "native"):
            raise PgmlError(
                f"preprocess encode for column {name!r} is not supported yet; "
                "feature columns must be numeric"
            )
        opts = {**DEFAULT, **{k: given[k] for k in ("impute", "scale") if given.get(k)}}
        for key, allowed in (("impute", IMPUTE), ("scale", SCALE)):
            if opts[key] not in allowed:
                raise PgmlError(
                    f"preprocess {key} {opts[key]!r} for column {name!r} is not supported; "
                    f"use one of {', '.join(allowed)}"
                )
        out[name] = opts
    return out


def _fit_column(col: np.ndarray, name: str, impute: str, scale: str):
    missing = np.isnan(col)
    if impute == "error":
        if missing.any():
            raise InvalidData(
                f"feature column {name!r} has {int(missing.sum())} NULL values in the training "
                "split and its preprocess impute is 'error'; clean the data or choose "
                f"another impute ({', '.join(IMPUTE)})"
            )
        fill = None
    else:
        fill = _fill_value(col[~missing], impute, name)
    filled = np.where(missing, fill, col) if fill is not None and missing.any() else col
    offset, factor = _scaling(filled, scale)
    return fill, offset, factor


def _fill_value(present: np.ndarray, impute: str, name: str) -> float:
    if impute == "zero":
        return 0.0
    if present.size == 0:
        raise InvalidData(
            f"feature column {name!r} has no non-NULL values in the training split, so its "
            f"{impute} cannot be computed; drop the column or set its impute to 'zero'"
        )
    if impute == "mode":
        values, counts = np.unique(present, return_counts=True)
        return float(values[np.argmax(counts)])  # ties: the smallest value, as scipy's mode
    return float({"mean": np.mean, "median": np.median, "min": np.min, "max": np.max}[impute](present))


def _scaling(col: np.ndarray, scale: str) -> tuple[float, float]:
    if scale == "preserve" or col.size == 0:
        return 0.0, 1.0
    present = col[~np.isnan(col)]  # only 'error' columns can still hold NaN here: none do
    if scale == "standard":
        offset, spread = float(np.mean(present)), float(np.std(present))
    elif scale == "min_max":
        offset, spread = float(np.min(present)), float(np.ptp(present))
    elif scale == "max_abs":
        offset, spread = 0.0, float(np.max(np.abs(present)))
    else:  # robust
        q25, q50, q75 = np.percentile(present, [25, 50, 75])
        offset, spread = float(q50), float(q75 - q25)
    return offset, (1.0 / spread if spread > 0 and np.isfinite(spread) else 1.0)
