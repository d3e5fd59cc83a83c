# pgml-replica: two set-up commands, `make demo` and `make test`; the rest is for developers.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
# Tools the setup puts in the environment (promtool) come first on PATH.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo test test-all bench lint clean

setup:
	@bash deploy/setup-host.sh

demo: setup
	@$(PY) -m devtools.demo

# The representative suite: everything except the long chaos and soak runs (marked slow).
# The replication core streams from a PostgreSQL 15 and a 17 source here, from 15-18 in
# test-all (tests/fix_pg.py; $PGML_REPLICA_TEST_SOURCE_VERSIONS overrides either list).
test: setup
	@$(PY) -m pytest -m "not slow" --source-versions "$${PGML_REPLICA_TEST_SOURCE_VERSIONS:-15,17}" $(PYTEST_ARGS)

test-all: setup
	@$(PY) -m pytest --source-versions "$${PGML_REPLICA_TEST_SOURCE_VERSIONS:-15,16,17,18}" $(PYTEST_ARGS)

bench: setup
	@$(PY) -m benchmarks.decoder
	@$(PY) -m benchmarks.replication
	@$(PY) -m benchmarks.predict
	@$(PY) -m benchmarks.writeback

lint: setup
	@$(PY) -m ruff check replica decoder inference devtools tests benchmarks
	@.venv/bin/lint-imports
	@$(PY) -m mypy

clean:
	rm -rf .venv .pytest_cache build *.egg-info
