# Install, run and test distasks from a fresh clone: `make test` is all CI does (.ci/run).
# PostgreSQL and Redis come from scripts/services.sh, which writes .local/services.env.

# The first interpreter that satisfies requires-python (>=3.11,<3.14) and can make a venv. Each
# name is run, not just looked up: pyenv puts shims on PATH for versions that are not selected,
# and Debian's python3.11 lacks ensurepip unless python3-venv is installed.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	$$p -c 'import sys, ensurepip, venv; sys.exit(not (3, 11) <= sys.version_info < (3, 14))' \
	>/dev/null 2>&1 && { echo $$p; break; }; done)
PYTEST_ARGS ?= -q
CONFIG ?= config/distasks.toml

VENV := .venv
STAMP := $(VENV)/.installed
SERVICES_ENV := . .local/services.env

.DEFAULT_GOAL := help
.PHONY: help venv services migrate run test bench lint clean distclean

help:
	@echo 'make venv       create .venv and install distasks with [test,dev] extras'
	@echo 'make services   reuse or start PostgreSQL and Redis, write .local/services.env'
	@echo 'make migrate    apply database migrations'
	@echo 'make run        run the daemon (distasks serve) in the foreground'
	@echo 'make test       run pytest (PYTEST_ARGS, default -q)'
	@echo 'make bench      run bench/throughput.py'
	@echo 'make lint       ruff check and mypy'
	@echo 'make clean      remove .venv and build artefacts'
	@echo 'make distclean  clean, stop private services and remove .local'

venv: $(STAMP)

# An existing .venv is kept (a venv made over another interpreter's breaks it): only the
# install is redone when pyproject.toml changes. `make clean` starts afresh.
$(STAMP): pyproject.toml
	@if [ ! -x $(VENV)/bin/python ]; then \
		test -n "$(PYTHON)" || { echo 'no python 3.11-3.13 with venv found (set PYTHON=...)' >&2; exit 1; }; \
		echo '$(PYTHON) -m venv $(VENV)'; $(PYTHON) -m venv $(VENV); \
	fi
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test,dev]'
	touch $@

services:
	bash scripts/services.sh

migrate: venv services
	$(SERVICES_ENV) && $(VENV)/bin/distasks migrate --config $(CONFIG)

run: venv services
	$(SERVICES_ENV) && exec $(VENV)/bin/distasks serve --config $(CONFIG)

test: venv services
	$(SERVICES_ENV) && $(VENV)/bin/pytest $(PYTEST_ARGS)

bench: venv services
	$(SERVICES_ENV) && $(VENV)/bin/python bench/throughput.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy distasks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	bash scripts/services.sh purge
	rm -rf .local
