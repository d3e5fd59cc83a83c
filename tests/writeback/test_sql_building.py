"""Write-back's pure parts, without a server: the SQL the source side runs, the DO block that
carries the secret, where the source reaches the replica, and where the password comes from."""

from __future__ import annotations

import pytest

from replica.errors import WritebackError
from replica.writeback import source_sql
from replica.writeback.model import Exposure, WritebackResult
from replica.writeback.secret_ddl import SECRET_SETTING, read_password, secret_block
from replica.writeback.setup import source_reaches

EXPOSURE = Exposure(view_name="churn", project_name="Churn", base_schema="public",
                    base_table="Customers", key_columns=("id", "region"), task="regression",
                    materialized=False,
                    columns=(("id", "bigint"), ("region", "text"),
                             ("prediction", "double precision")))


def render(composable) -> str:
    return composable.as_string(None)


def test_secret_block_carries_the_setting_name_never_a_value_and_clears_it():
    body = render(secret_block("CREATE USER MAPPING FOR PUBLIC SERVER %I OPTIONS (user %L, "
                               "password %L)", ["srv", "o'reader"]))
    assert body == ("BEGIN EXECUTE format('CREATE USER MAPPING FOR PUBLIC SERVER %I OPTIONS "
                    "(user %L, password %L)', 'srv', 'o''reader', "
                    f"current_setting('{SECRET_SETTING}')); "
                    f"PERFORM set_config('{SECRET_SETTING}', '', true); END")


def test_server_options_create_lists_them_alter_sets_the_known_and_adds_the_new():
    where = {"host": "ml.internal", "port": "5433", "dbname": "app"}
    assert render(source_sql.server_options(where)) == \
        "\"host\" 'ml.internal', \"port\" '5433', \"dbname\" 'app'"
    assert render(source_sql.server_options(where, {"host", "dbname"})) == \
        "SET \"host\" 'ml.internal', ADD \"port\" '5433', SET \"dbname\" 'app'"


def test_foreign_table_reads_the_pgml_out_view_with_its_columns_and_says_its_mode():
    assert render(source_sql.create_foreign_table("ml", "pgml_replica", EXPOSURE)) == (
        'CREATE FOREIGN TABLE "ml"."churn" ("id" bigint, "region" text, '
        '"prediction" double precision) SERVER "pgml_replica" '
        "OPTIONS (schema_name 'pgml_out', table_name 'churn')")
    assert render(source_sql.comment_foreign_table("ml", EXPOSURE)) == (
        'COMMENT ON FOREIGN TABLE "ml"."churn" IS \'pgml-replica write-back: live predictions '
        "of project Churn from pgml_out.churn'")


def test_joined_view_adds_only_prediction_columns_and_joins_on_every_key():
    body = render(source_sql.joined_view_body("ml", EXPOSURE, {"id", "region", "age"}))
    assert body == ('SELECT b.*, p."prediction" FROM "public"."Customers" AS b LEFT JOIN '
                    '"ml"."churn" AS p ON p."id" = b."id" AND p."region" = b."region"')


def test_joined_view_refuses_a_base_column_named_like_a_prediction():
    with pytest.raises(WritebackError, match=r"public\.Customers .*\(prediction\)"):
        source_sql.joined_view_body("ml", EXPOSURE, {"id", "prediction"})


@pytest.mark.parametrize("joined", [True, False], ids=["with-joined", "without-joined"])
def test_next_sql_filters_by_every_key_and_names_only_what_exists(joined):
    result = WritebackResult(schema="ml", server="s", exposures=[EXPOSURE],
                             foreign_tables=["ml.churn"],
                             joined_views=["ml.churn_joined"] if joined else [])
    names = source_sql.next_sql_names(result)
    text = source_sql.render_next_sql(result, {n: n for n in names})
    lines = text.splitlines()
    assert "SELECT prediction FROM ml.churn WHERE id = $1 AND region = $1;" in lines
    assert ("SELECT * FROM ml.churn_joined WHERE id = $1 AND region = $1;" in lines) is joined
    assert lines[-2:] == ["GRANT USAGE ON SCHEMA ml TO app_role;",
                          "GRANT SELECT ON ALL TABLES IN SCHEMA ml TO app_role;"]


def test_next_sql_uses_the_quoting_it_is_given():
    result = WritebackResult(schema="ml", server="s", exposures=[EXPOSURE])
    quoted = {n: f'"{n}"' for n in source_sql.next_sql_names(result)}
    assert 'SELECT "prediction" FROM "ml"."churn" WHERE "id" = $1 AND "region" = $1;' in \
        source_sql.render_next_sql(result, quoted)


def test_source_reaches_the_replica_as_told_and_notes_a_guess():
    here = {"host": "10.0.0.5", "port": "5432", "dbname": "app"}
    where, note = source_reaches(here, "ml.internal", 6432)
    assert where == {"host": "ml.internal", "port": "6432", "dbname": "app"} and note is None
    where, note = source_reaches(here, None, None)
    assert where == here and "10.0.0.5:5432" in note and "--replica-host" in note
    where, note = source_reaches(here, "ml.internal", None)
    assert where["host"] == "ml.internal" and "ml.internal:5432" in note
    assert here == {"host": "10.0.0.5", "port": "5432", "dbname": "app"}  # not changed


def test_a_unix_socket_is_not_a_way_for_the_source_to_reach_the_replica():
    with pytest.raises(WritebackError, match="Unix socket"):
        source_reaches({"host": "/run/postgresql", "port": "5432", "dbname": "app"}, None, 5432)
    where, _ = source_reaches({"host": "/run/postgresql", "port": "5432", "dbname": "a"},
                              "ml.internal", None)
    assert where["host"] == "ml.internal"


def test_password_file_wins_over_the_variable_and_loses_its_newline(tmp_path, monkeypatch):
    monkeypatch.setenv("WB_TEST_PW", "from-env")
    secret = tmp_path / "pw"
    secret.write_text("from-file\r\n")
    assert read_password("WB_TEST_PW", secret) == "from-file"
    assert read_password("WB_TEST_PW") == "from-env"


def test_a_missing_password_names_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("WB_TEST_PW", raising=False)
    with pytest.raises(WritebackError, match="WB_TEST_PW"):
        read_password("WB_TEST_PW")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(WritebackError, match="is empty"):
        read_password("WB_TEST_PW", empty)
    with pytest.raises(WritebackError, match="cannot read the password file"):
        read_password("WB_TEST_PW", tmp_path / "absent")
