"""The feature rows a scorer takes: one shape check for every scorer (compiled trees and ONNX),
so a wrong width says the same thing whichever scores."""

from __future__ import annotations

from inference.errors import InvalidData


def feature_rows(X, n_features: int):
    """``X`` as a 2-D array ``n_features`` wide; InvalidData says expected vs given."""
    import numpy as np  # here, not above: compiled trees score single rows without numpy

    X = np.asarray(X)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2 or X.shape[1] != n_features:
        given = X.shape[-1] if X.ndim else 0
        raise InvalidData(f"expected {n_features} features, got {given}")
    return X
