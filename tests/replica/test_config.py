"""Settings read the environment as they did under pydantic-settings (issue 14 dropped it
from the start-up path): the names, their letter case, aliases, precedence and the errors
that name the bad setting, with no secret in them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from replica.config import Settings


@pytest.fixture
def env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.upper().startswith("PGML_REPLICA_") or name.upper() == "SCHEMA_NAME":
            monkeypatch.delenv(name)
    return monkeypatch


def test_every_field_is_an_environment_variable_in_any_letter_case(env):
    env.setenv("PGML_REPLICA_SOURCE", "host=a")
    env.setenv("pgml_replica_slot", "lower")
    env.setenv("Pgml_Replica_Http_Port", "0")
    env.setenv("PGML_REPLICA_RESNAPSHOT", "yes")
    env.setenv("PGML_REPLICA_PROTOCOL", "AUTO")
    env.setenv("PGML_REPLICA_SNAPSHOT_WORKERS", "3")
    env.setenv("PGML_REPLICA_UNKNOWN", "ignored")
    s = Settings()
    assert (s.source, s.slot, s.http_port, s.resnapshot, s.protocol, s.snapshot_workers) == (
        "host=a", "lower", 0, True, "auto", 3)
    assert s.publication == "pgml_replica" and s.decoding_work_mem == "16MB"  # defaults


def test_arguments_win_over_the_environment(env):
    env.setenv("PGML_REPLICA_SLOT", "from_env")
    env.setenv("PGML_REPLICA_HTTP_PORT", "not a number")  # never read: the flag was given
    s = Settings(slot="from_flag", http_port="8001")
    assert (s.slot, s.http_port) == ("from_flag", 8001)


def test_the_schema_is_read_under_its_aliases_first(env):
    env.setenv("PGML_REPLICA_SCHEMA_NAME", "by_field_name")
    assert Settings().schema_name == "by_field_name"
    env.setenv("PGML_REPLICA_SCHEMA", "by_alias")
    assert Settings().schema_name == "by_alias"
    env.setenv("SCHEMA_NAME", "first_alias")
    assert Settings().schema_name == "first_alias"
    assert Settings(schema_name="flag").schema_name == "flag"


def test_a_bad_value_is_an_error_naming_the_setting_without_secrets(env):
    env.setenv("PGML_REPLICA_SOURCE", "host=a password=hunter2")
    env.setenv("PGML_REPLICA_HTTP_PORT", "70000")
    env.setenv("PGML_REPLICA_PROTOCOL", "9")
    with pytest.raises(ValidationError) as err:
        Settings()
    text = str(err.value)
    assert "2 validation errors for Settings" in text
    assert "http_port\n  Input should be less than or equal to 65535" in text
    assert "protocol\n  Value error, protocol must be auto or 1-4, not '9'" in text
    assert "hunter2" not in text and "hunter2" not in repr(Settings(http_port=1, protocol=2))


def test_an_empty_variable_is_a_value_not_an_absence(env):
    env.setenv("PGML_REPLICA_ORIGIN", "")
    assert Settings().origin is None  # the field's own rule: '' means unset
    env.setenv("PGML_REPLICA_HTTP_PORT", "")
    with pytest.raises(ValidationError, match="http_port"):
        Settings()
