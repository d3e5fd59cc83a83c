"""The error tree: every class the library raises is a PgmlError, and the SQLSTATE each one
reaches SQL with (its class attribute) is the one docs/pgml.md promises -- checked against
psycopg's own SQLSTATE table, which the SQL tests then catch by class."""

from __future__ import annotations

import inspect

import psycopg.errors
import pytest

from inference import errors

# The documented table (docs/pgml.md, Errors), written out independently of errors.py.
EXPECTED = {
    "PgmlError": psycopg.errors.InvalidParameterValue,
    "UnknownAlgorithm": psycopg.errors.InvalidParameterValue,
    "InvalidHyperparams": psycopg.errors.InvalidParameterValue,
    "UnknownDataset": psycopg.errors.InvalidParameterValue,
    "NotExportable": psycopg.errors.InvalidParameterValue,
    "InvalidData": psycopg.errors.DataException,
    "NotNumeric": psycopg.errors.DatatypeMismatch,
    "UnknownProject": psycopg.errors.UndefinedObject,
    "UnknownModel": psycopg.errors.UndefinedObject,
    "NotDeployed": psycopg.errors.ObjectNotInPrerequisiteState,
    "UnknownRelation": psycopg.errors.UndefinedTable,
    "UnknownColumn": psycopg.errors.UndefinedColumn,
}

CLASSES = {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
           if issubclass(cls, Exception) and cls.__module__ == errors.__name__}


def test_every_error_class_is_in_the_tree_and_in_the_table():
    assert set(CLASSES) == set(EXPECTED)
    assert all(issubclass(cls, errors.PgmlError) for cls in CLASSES.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_class_carries_the_documented_sqlstate(name):
    assert psycopg.errors.lookup(CLASSES[name].sqlstate) is EXPECTED[name]


def test_a_not_numeric_column_is_still_invalid_data():
    """Callers that catch InvalidData (bad rows) also catch a non-numeric column."""
    assert issubclass(errors.NotNumeric, errors.InvalidData)


def test_a_subclass_without_its_own_sqlstate_inherits_its_parents():
    class Narrower(errors.InvalidData):
        pass

    assert Narrower.sqlstate == errors.InvalidData.sqlstate
