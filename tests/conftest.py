"""Test configuration: fixtures come from plugins, as psycopg's suite does it."""

pytest_plugins = ["tests.fix_pg", "tests.fix_stream"]
