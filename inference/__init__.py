"""pgml's machine-learning library: what runs inside PL/Python on the ML replica.

Public surface (the contract with the SQL half): ``errors``, ``algorithms`` (registry),
``preprocess``, ``training`` (``train``, ``TrainResult``, ``key_metric``), ``search``,
``metrics``, ``onnx_export``, ``runtime`` (``providers``, ``Scorer``, ``load_scorer``).
The SQL half itself (``sql_api``, ``projects``, ``deployed``, ``store``, ``relations``,
``datasets``) imports ``plpy`` and runs only inside PL/Python; docs/inference.md maps it.
Submodules are imported on demand so a backend that only scores never loads scikit-learn's
training code or skl2onnx.
"""

import logging

from inference.errors import (
    InvalidData,
    InvalidHyperparams,
    NotDeployed,
    NotExportable,
    NotNumeric,
    PgmlError,
    UnknownAlgorithm,
    UnknownColumn,
    UnknownDataset,
    UnknownModel,
    UnknownProject,
    UnknownRelation,
)

# A library must not print: without this, Python's last-resort handler writes warnings from
# our loggers to the backend's stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["InvalidData", "InvalidHyperparams", "NotDeployed", "NotExportable", "NotNumeric",
           "PgmlError", "UnknownAlgorithm", "UnknownColumn", "UnknownDataset", "UnknownModel",
           "UnknownProject", "UnknownRelation"]
