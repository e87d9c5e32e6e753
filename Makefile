# Install, run and test distasks from a fresh clone: `make lint` and `make test` are all CI does (.ci/run).
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
# Sets DATABASE_URL, REDIS_URL and DISTASKS_PG_ADMIN_DSN only where the caller has not:
# `DATABASE_URL=... make run` runs against that database (README, "Two checkouts").
SERVICES_ENV := . .local/services.env

.DEFAULT_GOAL := help
.PHONY: help venv services migrate run test test-cluster fuzz bench bench-compare lint docs image clean distclean

help:
	@echo 'make venv       create .venv and install distasks with [test,dev] extras'
	@echo 'make services   reuse or start PostgreSQL and Redis, write .local/services.env'
	@echo 'make migrate    apply database migrations'
	@echo 'make run        run the daemon (distasks serve) in the foreground'
	@echo 'make test       run pytest (PYTEST_ARGS, default -q)'
	@echo 'make test-cluster  the tests that matter on a private 6-node Redis Cluster'
	@echo 'make fuzz       schemathesis against a live daemon, new random seed'
	@echo 'make bench      run bench/throughput.py'
	@echo 'make bench-compare  bench/compare_taskiq.py: distasks beside Taskiq (COMPARE_ARGS)'
	@echo 'make lint       ruff check, mypy and the strict docs build'
	@echo 'make docs       build the docs site into site/ (mkdocs build --strict)'
	@echo 'make dist       build dist/distasks: one executable zipapp with every dependency'
	@echo 'make install    (root) install dist/distasks, the systemd units and the config'
	@echo 'make image      (root) build the container image localhost/distasks (podman, mmdebstrap)'
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

# The Lua scripts, the broker, and the system tests that matter (walkthrough, faults,
# rate limits, schedules) on a private Redis Cluster the tests start and remove
# (three masters, three replicas of redis-server; tests/conftest.py).
CLUSTER_TESTS ?= tests/integration/test_broker_scripts.py tests/integration/test_recovery.py \
	tests/integration/test_rate_limits.py tests/integration/test_queue_rates.py \
	tests/integration/test_queue_limits.py tests/integration/test_worker.py \
	tests/system/test_walkthrough.py tests/system/test_faults.py \
	tests/system/test_schedules.py tests/system/test_access.py::test_a_rate_limit_holds_across_two_daemons \
	tests/system/test_limit_faults.py tests/integration/test_cluster.py
test-cluster: venv services
	$(SERVICES_ENV) && DISTASKS_TEST_REDIS=cluster $(VENV)/bin/pytest $(PYTEST_ARGS) $(CLUSTER_TESTS)

bench: venv services
	$(SERVICES_ENV) && $(VENV)/bin/python bench/throughput.py

# distasks beside Taskiq, same handler (one Redis write), same box: issue 17's table.
# COMPARE_ARGS passes options, e.g. `make bench-compare COMPARE_ARGS='--handler sync'`.
COMPARE_ARGS ?=
bench-compare: venv services
	$(VENV)/bin/python -m pip install --quiet -e '.[test,dev,bench]'
	$(SERVICES_ENV) && $(VENV)/bin/python bench/compare_taskiq.py $(COMPARE_ARGS)

# Schemathesis against a live daemon with a fresh random seed and more examples.
fuzz: venv services
	$(SERVICES_ENV) && DISTASKS_FUZZ_SEED=$$(od -An -N8 -tu8 /dev/urandom | tr -d ' ') \
		DISTASKS_FUZZ_EXAMPLES=200 $(VENV)/bin/pytest -q tests/system/test_schemathesis.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy distasks
	$(MAKE) docs

# The docs site (mkdocs.yml): any warning, such as a broken link or anchor, fails it.
docs: venv
	$(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	bash scripts/services.sh purge
	rm -rf .local

# The container image (docs/deployment.md): a Debian root filesystem from mmdebstrap, the
# wheels from `pip wheel`, `podman build --isolation chroot`; cached in .local/image and
# podman's store by a hash of the sources, so a second run builds nothing.
image: venv
	PYTHON=$(VENV)/bin/python bash scripts/image.sh build

# --- Deployment: `make dist`, then `sudo make install` (docs/deployment.md) -----------------

# shiv builds the zipapp: pip installs distasks and its pinned dependencies into one
# archive with a #! line; on first start it unpacks them to $SHIV_ROOT (default ~/.shiv).
SHIV_VERSION := 1.0.8
# redis needs async-timeout on Python < 3.11.3 (Debian 12 ships 3.11.2) but pip leaves it
# out when the build's Python is newer: always include it, it is inert where unused.
DIST_EXTRA_REQUIREMENTS := async-timeout==5.0.1
# The zipapp carries compiled extensions (psycopg-binary, hiredis, pydantic-core) for the
# venv's Python minor version, so its #! line asks for exactly that version on the target.
# Empty means `/usr/bin/env python3.X` with the venv's X.
DIST_PYTHON ?=
DIST_SOURCES := pyproject.toml $(shell find distasks -name '*.py' -o -name '*.sql' -o -name '*.lua')

# `make install DESTDIR=/tmp/stage PREFIX=/usr` stages files for a package instead;
# only a real install (no DESTDIR) creates the system user.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DESTDIR ?=
UNITDIR := /etc/systemd/system
CONFDIR := /etc/distasks
SERVICE_USER := distasks

.PHONY: dist install

dist: dist/distasks

dist/distasks: $(STAMP) $(DIST_SOURCES)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check shiv==$(SHIV_VERSION)
	@# setuptools reuses build/lib, where a module deleted from distasks/ would linger.
	rm -rf build
	@mkdir -p dist
	interpreter='$(DIST_PYTHON)'; \
	if [ -z "$$interpreter" ]; then \
		interpreter="/usr/bin/env python$$($(VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
	fi; \
	$(VENV)/bin/shiv --quiet --reproducible --compressed --python "$$interpreter" \
		--entry-point distasks.cli:main --output-file $@.tmp \
		--disable-pip-version-check . $(DIST_EXTRA_REQUIREMENTS)
	mv $@.tmp $@
	@echo "built $@ ($$(du -h $@ | cut -f1)): run it as $@ serve --config PATH"

install:
	@test -x dist/distasks || { echo 'make install: no dist/distasks: run `make dist` first' >&2; exit 1; }
	install -D -m 0755 dist/distasks $(DESTDIR)$(BINDIR)/distasks
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	sed 's|^ExecStart=/usr/local/bin/distasks |ExecStart=$(BINDIR)/distasks |' \
		systemd/distasks.service >$(DESTDIR)$(UNITDIR)/distasks.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/distasks.service
	@# The template for several daemons behind one port (distasks@1 ... distasks@N).
	sed 's|^ExecStart=/usr/local/bin/distasks |ExecStart=$(BINDIR)/distasks |' \
		systemd/distasks@.service >$(DESTDIR)$(UNITDIR)/distasks@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/distasks@.service
	@# The config may hold passwords: readable by root and the service's group only.
	@if [ -e $(DESTDIR)$(CONFDIR)/distasks.toml ]; then \
		echo "kept the existing $(DESTDIR)$(CONFDIR)/distasks.toml (compare with config/distasks.toml)"; \
	else \
		echo "install -m 0640 config/distasks.toml $(DESTDIR)$(CONFDIR)/distasks.toml"; \
		install -m 0640 config/distasks.toml $(DESTDIR)$(CONFDIR)/distasks.toml; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
		if ! getent passwd $(SERVICE_USER) >/dev/null; then \
			echo "useradd --system $(SERVICE_USER)"; \
			useradd --system --user-group --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin --comment 'distasks daemon' $(SERVICE_USER); \
		fi; \
		chgrp $(SERVICE_USER) $(CONFDIR)/distasks.toml; \
	fi
	@echo
	@echo 'Next steps:'
	@echo '  edit $(CONFDIR)/distasks.toml, and put DATABASE_URL=... and REDIS_URL=... in $(CONFDIR)/env (mode 0600)'
	@echo '  $(BINDIR)/distasks check-config --config $(CONFDIR)/distasks.toml'
	@echo '  systemctl daemon-reload && systemctl enable --now distasks'
	@echo '  (or one daemon per core behind one port: systemctl enable --now distasks@{1..4})'
	@echo '  systemctl status distasks; journalctl -u distasks -o cat -f'
