# bookfeed: `make demo` and `make test` are the whole setup on a machine with Python 3.11+.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bookfeed-installed
DEMO_SECONDS ?= 150
WORKERS ?= 2

.PHONY: venv demo demo-live up test test-unit test-integration test-e2e test-embedded bench chaos lint migrate clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bookfeed needs Python 3.11 or newer (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,local]'
	@touch $(STAMP)

venv: $(STAMP)

## Everything on this machine against the built-in Binance-compatible simulator; embedded PostgreSQL/Redis
## unless DATABASE_URL/REDIS_URL are set. A few malformed frames show rejected_messages at work. Ctrl-C stops it.
demo: $(STAMP)
	$(BIN)/bookfeed up --simulate --malformed-fraction 0.002 --speed 100ms --workers $(WORKERS) --duration $(DEMO_SECONDS)

## The same against the live Binance streams (needs internet access to stream.binance.com).
demo-live: $(STAMP)
	$(BIN)/bookfeed up --workers $(WORKERS)

up: $(STAMP)
	$(BIN)/bookfeed up --workers $(WORKERS)

## Unit, integration and end-to-end tests: DATABASE_URL/REDIS_URL when set, embedded servers otherwise.
test: $(STAMP)
	$(BIN)/pytest

test-unit: $(STAMP)
	$(BIN)/pytest -m unit

test-integration: $(STAMP)
	$(BIN)/pytest -m integration

test-e2e: $(STAMP)
	$(BIN)/pytest -m e2e

## The whole suite on embedded servers even where DATABASE_URL/REDIS_URL are set.
test-embedded: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(BIN)/pytest

## The whole-market scenario (1,500 symbols at depth20@100ms), the bare COPY limit and the naive design, with the
## ratios; JSON and PNG in bench-results/. More: make bench BENCH_ARGS="--workers 1,2,4 --shards 1,2" (--help).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

migrate: $(STAMP)
	$(BIN)/bookfeed migrate

clean:
	rm -rf $(VENV) .bookfeed *.egg-info .pytest_cache .hypothesis .ruff_cache
