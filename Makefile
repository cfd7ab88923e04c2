# Taskyard's developer commands. `make` alone lists them; `.ci/run` runs `make check`.
# Targets call the virtualenv's programs by path, so no shell needs activating.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Written after a successful install; pyproject.toml being newer means "reinstall".
STAMP := $(VENV)/.installed
# Integration-style suites that exist so far (both need RabbitMQ and PostgreSQL).
INTEGRATION_TESTS := $(wildcard tests/integration tests/reliability)

# bash, for `wait -n` in `run`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help install lint format typecheck test-unit test-integration test-dramatiq test check \
	migrate worker scheduler web run demo bench docs clean

help: ## List the targets with what they do
	@echo "Usage: make <target>   (VENV=$(VENV), PYTHON=$(PYTHON))"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,bench]'
	@touch $@

install: $(STAMP) ## Create .venv if missing; reinstall -e '.[dev,bench]' when pyproject.toml changed

lint: install ## Check the code with ruff (lint rules and formatting), changing nothing
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Fix what ruff can fix safely, then format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## Type-check the packages with mypy (strict, configured in pyproject.toml)
	$(BIN)/mypy

test-unit: install ## Run the unit tests (nothing needs to be running)
	$(BIN)/python -m pytest tests/unit

test-integration: install ## Run the integration tests (RabbitMQ and PostgreSQL on localhost)
ifeq ($(strip $(INTEGRATION_TESTS)),)
	@echo "No integration tests yet (tests/integration, tests/reliability)."
else
	$(BIN)/python -m pytest $(INTEGRATION_TESTS)
endif

test-dramatiq: install ## Run Dramatiq's own tests on its plain broker and on Taskyard's (~5 min)
	$(BIN)/python -m pytest tests/dramatiq_suite

test: install ## Run the whole test suite in one pytest run on 2 processes (Dramatiq's own tests included)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=30

check: lint typecheck test ## Lint, type-check and run the whole suite: exactly what .ci/run runs

migrate: install ## Create the database if missing and upgrade it to the newest revision
	$(BIN)/taskyard migrate

worker: install ## Run one worker process in the foreground (dramatiq actors)
	$(BIN)/dramatiq actors --processes 1 --threads 8

scheduler: install ## Run the scheduler in the foreground (periodiq schedules)
	$(BIN)/periodiq schedules

web: install ## Serve the web console in the foreground (taskyard web, 127.0.0.1:9292)
	$(BIN)/taskyard web

# The programs are children of one shell. Ctrl-C reaches every process of the
# terminal's group, and Dramatiq stops gracefully on it (a second signal would
# make it kill its workers instead), but a background job of a script ignores
# SIGINT, so the INT trap stops the scheduler and the console. A TERM is forwarded
# once to all three; if any program exits, the others are stopped.
run: install migrate ## Migrate, then run a worker, the scheduler and the web console until Ctrl-C
	@$(BIN)/dramatiq actors --processes 1 --threads 8 & worker=$$!; \
	$(BIN)/periodiq schedules & scheduler=$$!; \
	$(BIN)/taskyard web & web=$$!; \
	trap 'kill -TERM $$scheduler $$web 2>/dev/null; wait' INT; \
	trap 'kill -TERM $$worker $$scheduler $$web 2>/dev/null; wait' TERM; \
	wait -n; kill -TERM $$worker $$scheduler $$web 2>/dev/null; wait

demo: install ## Run the demo in one process (SQLite and an in-process broker)
	$(BIN)/taskyard demo

bench: install ## Measure Taskyard beside bare Dramatiq, Celery, procrastinate; write BENCHMARKS.md (its notes give the sizes)
	$(BIN)/python -m bench

docs: install ## Regenerate docs/reference from the code, then build the site into docs/_build/html
	$(BIN)/python -m docgen
	$(BIN)/python -m sphinx -W --keep-going -n -q -b html docs docs/_build/html

clean: ## Delete caches and build output (keeps .venv)
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .metrics docs/_build
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) \
		-type d -prune -exec rm -rf {} +
