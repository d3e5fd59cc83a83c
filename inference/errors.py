"""One error tree for the inference library.

Callers (the PL/Python wrappers in ``inference/sql_api.py``) catch these classes and never
match message text; the class says the policy, the message says what was wrong and what
to do about it.
"""

from __future__ import annotations


class PgmlError(Exception):
    """Root of every error the inference library raises on purpose."""


class UnknownAlgorithm(PgmlError):
    """The algorithm name does not exist for the task; the message lists the valid names."""


class InvalidHyperparams(PgmlError):
    """A hyperparameter name or value was rejected; the message carries the estimator's own."""


class InvalidData(PgmlError):
    """The training or scoring data cannot be used as given (empty, NaN target, one class...)."""


class NotExportable(PgmlError):
    """The model cannot be exported to ONNX; training keeps it and scores it natively."""
