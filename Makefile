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
test: setup
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	@$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@$(PY) -m benchmarks.decoder
	@$(PY) -m benchmarks.replication
	@$(PY) -m benchmarks.predict
	@$(PY) -m benchmarks.writeback

lint: setup
	@$(PY) -m ruff check replica decoder inference tests benchmarks

clean:
	rm -rf .venv .pytest_cache build *.egg-info
