"""One error tree for the inference library; the class is the policy.

Every error the library raises on purpose is a ``PgmlError``. Callers catch classes and never
match message text; the class says what kind of mistake it was, the message what was wrong
and what to do about it. Each class carries the SQLSTATE it reaches SQL with as a class
attribute, given in the class line (as psycopg's ``errors.py`` ties each class to its
SQLSTATE where the class is declared): the PL/Python adapter (``inference/sql_api.py``) raises ``plpy.error(str(exc), sqlstate=exc.sqlstate)`` and
decides nothing else, so a client can catch e.g. ``undefined_table`` or
``invalid_parameter_value`` in PL/pgSQL or as ``psycopg.errors.UndefinedTable``.

This module imports nothing: the pure library (training, runtime) and the tests use it
outside PostgreSQL.

    PgmlError                  22023 invalid_parameter_value (an argument is wrong)
    +-- UnknownAlgorithm       22023
    +-- InvalidHyperparams     22023
    +-- UnknownDataset         22023
    +-- NotExportable          22023 (handled inside training; never reaches SQL on its own)
    +-- InvalidData            22000 data_exception (the rows cannot be used as given)
    |   +-- NotNumeric         42804 datatype_mismatch
    +-- UnknownProject         42704 undefined_object
    +-- UnknownModel           42704 undefined_object
    +-- NotDeployed            55000 object_not_in_prerequisite_state
    +-- UnknownRelation        42P01 undefined_table
    +-- UnknownColumn          42703 undefined_column
"""

from __future__ import annotations


class PgmlError(Exception):
    """Root of every error the inference library raises on purpose: a wrong argument.

    A subclass names its SQLSTATE in its class line (``class X(PgmlError, sqlstate="42704")``)
    and otherwise inherits its parent's.
    """

    sqlstate = "22023"  # invalid_parameter_value

    def __init_subclass__(cls, sqlstate: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if sqlstate is not None:
            cls.sqlstate = sqlstate


class UnknownAlgorithm(PgmlError):
    """The algorithm name does not exist for the task; the message lists the valid names."""


class InvalidHyperparams(PgmlError):
    """A hyperparameter name or value was rejected; the message carries the estimator's own."""


class UnknownDataset(PgmlError):
    """pgml.load_dataset was asked for a dataset scikit-learn does not bundle."""


class NotExportable(PgmlError):
    """The model cannot be exported to ONNX; training keeps it and scores it natively."""


class InvalidData(PgmlError, sqlstate="22000"):  # data_exception
    """The training or scoring data cannot be used as given (empty, NaN target, one class...)."""


class NotNumeric(InvalidData, sqlstate="42804"):  # datatype_mismatch
    """A feature or label column has a type that is not a number."""


class UnknownProject(PgmlError, sqlstate="42704"):  # undefined_object
    """No project by that name (or it has no snapshot yet to train from again)."""


class UnknownModel(PgmlError, sqlstate="42704"):  # undefined_object
    """No model with that id."""


class NotDeployed(PgmlError, sqlstate="55000"):  # object_not_in_prerequisite_state
    """The project has no deployed model, or no model a deploy strategy could choose."""


class UnknownRelation(PgmlError, sqlstate="42P01"):  # undefined_table
    """The relation name does not resolve to a table, view, materialized or foreign table."""


class UnknownColumn(PgmlError, sqlstate="42703"):  # undefined_column
    """A y column the caller named is not a column of the relation."""
