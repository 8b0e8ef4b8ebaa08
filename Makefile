# coinstream: the commands a developer or operator types. Everything runs from .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help install up down status demo bench bench-scale docs lint test test-unit test-integration test-e2e chaos
.PHONY: prereqs prereqs-stack

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

# What the system itself must provide (Python's venv module, Java, Maven, PostgreSQL's
# server) is checked before anything starts, with plain sh and python3 (there may be no
# .venv yet); missing packages are installed with apt-get where we may (root, or sudo
# without a password), else the command to run is printed. COINSTREAM_NO_INSTALL=1:
# never install. scripts/prereqs, devstack/prereqs.py.
PREREQS := PYTHON=$(PYTHON) sh scripts/prereqs

prereqs: ## check (and where allowed, apt-get install) what make test needs from the system
	@$(PREREQS) test

prereqs-stack:
	@$(PREREQS) stack

$(VENV)/.installed: pyproject.toml
	@$(PREREQS) venv
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies

up: prereqs-stack install ## start Kafka, PostgreSQL and the four services in the background (ready on return)
	$(PY) -m devstack up

down: install ## stop what `make up` started, and nothing else
	$(PY) -m devstack down

status: install ## what runs, and whether it answers
	$(PY) -m devstack status

# The services `demo` starts trace to .stack/default/logs/traces.jsonl (docs/operations.md#traces);
# those `make up` started already run as they were.
demo: prereqs-stack install ## the whole journey on the running stack: purchases, gifts, payouts, audit, one gift's trace
	COINSTREAM_STACK_TRACES=1 $(PY) -m devstack up
	$(PY) -m devstack.demo

bench: up ## purchases end to end; gifts next to their hand-written ceiling, same run (not a test)
	$(PY) -m benchmarks.recharge --count 20000
	$(PY) -m benchmarks.recharge --count 20000 --rate 1000
	$(PY) -m benchmarks.compare --count 10000

CPU_LIMIT ?= 0.25
bench-scale: up ## two replicas against one, each gifting and wallet process held to CPU_LIMIT cores (root)
	$(PY) -m benchmarks.scale --count 10000 --cpu-limit $(CPU_LIMIT)

ROUNDS ?= 20
SEED   ?= 1
chaos: install ## seeded fault injection under load, then an outside check (ROUNDS=20 SEED=1)
	$(PY) -m chaos --rounds $(ROUNDS) --seed $(SEED)

docs: install ## regenerate docs/asyncapi.json, docs/schemas/*.json and docs/openapi.json from the code
	$(PY) -m devstack.asyncapi
	$(PY) -m devstack.openapi

lint: install ## ruff (lint + format) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: prereqs lint ## the whole suite against real Kafka and PostgreSQL (sets up what it needs)
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install
	$(PY) -m pytest tests/integration

test-e2e: install
	$(PY) -m pytest tests/e2e
