"""The app's defensive redaction: any password in a libpq DSN or a URI is masked, and nothing
else in the text changes."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from replica.secrets import MASK as REDACTED
from replica.secrets import redact, redact_text

# libpq unquoted values end at whitespace and may not start with a quote
unquoted = st.text(st.characters(codec="utf-8", exclude_categories=("Z", "C"),
                                 exclude_characters="'\\"), min_size=1, max_size=40)
anything = st.text(st.characters(codec="utf-8", exclude_categories=("C",)), min_size=1,
                   max_size=40)


@given(unquoted)
def test_conninfo_password(pw):
    dsn = f"host=db.example port=5432 user=app password={pw} dbname=app sslmode=verify-full"
    assert redact_text(dsn) == dsn.replace(f"password={pw}", f"password={REDACTED}")


@given(anything)
def test_quoted_conninfo_password(pw):
    escaped = pw.replace("\\", "\\\\").replace("'", "\\'")
    dsn = f"host=db user=app password = '{escaped}' dbname=app"
    assert redact_text(dsn) == f"host=db user=app password = {REDACTED} dbname=app"


@given(anything)
def test_uri_userinfo_percent_encoded(pw):
    uri = f"postgresql://app:{quote(pw, safe='')}@db.example:5432/app?sslmode=require"
    assert redact_text(uri) == f"postgresql://app:{REDACTED}@db.example:5432/app?sslmode=require"


@given(unquoted)
def test_uri_userinfo_not_encoded(pw):
    # '@', ':' and '/' left raw by a careless caller still must not leak
    uri = f"could not connect to postgres://app:{pw}@db.example/app: timeout"
    assert redact_text(uri) == f"could not connect to postgres://app:{REDACTED}@db.example/app: timeout"


@given(anything)
def test_uri_query_password(pw):
    uri = f"postgresql://db.example/app?user=app&password={quote(pw, safe='')}&sslmode=require"
    assert redact_text(uri) == (
        f"postgresql://db.example/app?user=app&password={REDACTED}&sslmode=require")


def test_text_without_secrets_is_unchanged():
    for text in ("host=db port=5432 user=app dbname=app", "postgresql://app@db/app",
                 "http://127.0.0.1:8000/metrics", "slot pgml_replica is lost", ""):
        assert redact_text(text) == text


def test_nested_values_and_secret_keys():
    value = {"source": "host=h password=pw1", "nested": [{"PGPASSWORD": "pw2"}],
             "target_password": "pw3", "password": None, "lag_bytes": 5,
             "tuple": ("user=u password=pw4",)}
    out = redact(value)
    assert out == {"source": f"host=h password={REDACTED}",
                   "nested": [{"PGPASSWORD": REDACTED}], "target_password": REDACTED,
                   "password": None, "lag_bytes": 5, "tuple": [f"user=u password={REDACTED}"]}
