# Loop Sync: `make demo` and `make test` are all the set-up a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two stamps: the demo needs only the runtime dependencies (requirements.txt); tests, lint and benchmarks also
# need the development ones (requirements-dev.txt: pytest, schemathesis, playwright...). Each is redone when its
# requirements file changes, so `make demo` never pulls in Playwright and `make test` always has what it needs.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
# pip prints what it collects and installs (no --quiet): the first run takes a while and should say why.
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check --progress-bar off
# PostgreSQL used by the test suite; when it is not reachable, `make test` runs on the embedded server
# (loopsync/embedded_db.py) instead, saying so. CI sets REQUIRE_POSTGRES to fail rather than fall back.
TEST_PG_URL ?= postgres://postgres@127.0.0.1:5432/loopsync
DEMO_ENV := DEBUG=true LOG_LEVEL=warning

.PHONY: demo look test test-postgres test-embedded db-stop lint format bench bench-cgm sandbox migrate clean

$(PY):
	@echo "== creating $(VENV) with $(PYTHON) =="
	$(PYTHON) -m venv $(VENV)
	@# The pip bundled with the venv can be too old for current wheels; upgraded once, at creation.
	$(PIP_INSTALL) --quiet --upgrade pip

$(RUNTIME_STAMP): requirements.txt | $(PY)
	@echo "== installing runtime dependencies (requirements.txt) into $(VENV) =="
	$(PIP_INSTALL) -r requirements.txt
	@touch $@

$(DEV_STAMP): requirements-dev.txt $(RUNTIME_STAMP)
	@echo "== installing development dependencies (requirements-dev.txt: test runner, lint, browser driver) =="
	$(PIP_INSTALL) -r requirements-dev.txt
	@touch $@

migrate: $(RUNTIME_STAMP)
	$(DEMO_ENV) $(PY) manage.py migrate --noinput -v 0
	$(DEMO_ENV) $(PY) manage.py sync_schedules

## demo: install, migrate the embedded PostgreSQL (or DATABASE_URL's), sync 20 sandbox users over the last
## 7 days, print the summary. The embedded server keeps running for later commands: `make db-stop` stops it.
demo: migrate
	$(DEMO_ENV) $(PY) manage.py sync_wearables --sandbox --sandbox-users 20 --lookback-days 7
	# Direct providers: connect sandbox WHOOP, Dexcom and Libre users (real OAuth / login flows), run both jobs.
	$(DEMO_ENV) $(PY) manage.py run_job sync-whoop-data --sandbox --sandbox-users 5
	$(DEMO_ENV) $(PY) manage.py run_job sync-cgm-readings --sandbox --sandbox-users 5
	# Webhooks: new sandbox Junction users announced and their data delivered by signed webhooks through the
	# inbox; then the daily pull over them, as reconciliation, stores nothing new.
	$(DEMO_ENV) $(PY) manage.py webhook_demo --users 1

## look: the demo in a browser: the sandbox, the django-q2 worker and the web server together (Ctrl-C stops all
## three), on the embedded PostgreSQL or DATABASE_URL; seeds a failing, a stale, a revoked and an inactive
## connection and the demo superuser, and prints its login. Providers point at the sandbox (SANDBOX_URL).
## LOOK_PORT (8000) and SANDBOX_PORT (8765) move them.
look: migrate
	@PY=$(PY) scripts/look.sh

## test: the suite on TEST_PG_URL's PostgreSQL when reachable, else on the embedded server
test: $(DEV_STAMP)
	@if $(PY) scripts/pg_available.py "$(TEST_PG_URL)"; then \
		$(MAKE) --no-print-directory test-postgres; \
	else \
		if [ -n "$$REQUIRE_POSTGRES" ]; then echo "FATAL: PostgreSQL required but not reachable at $(TEST_PG_URL)"; exit 1; fi; \
		echo "PostgreSQL is not reachable at $(TEST_PG_URL): running on the embedded server instead"; \
		$(MAKE) --no-print-directory test-embedded; \
	fi

# PYTHONHASHSEED: the schemathesis test generates the same cases on every run (tests/test_api_schema.py).
test-postgres: $(DEV_STAMP)
	@echo "== tests on PostgreSQL at $(TEST_PG_URL) =="
	DATABASE_URL=$(TEST_PG_URL) PYTHONHASHSEED=0 $(PY) -m pytest -q $(PYTEST_ARGS)

test-embedded: $(DEV_STAMP)
	@url=$$($(PY) -m loopsync.embedded_db url) && echo "== tests on the embedded PostgreSQL at $$url ==" && \
		DATABASE_URL=$$url PYTHONHASHSEED=0 $(PY) -m pytest -q $(PYTEST_ARGS)

## db-stop: stop the embedded PostgreSQL (its data stays in .pgdata/)
db-stop:
	@if [ -x $(PY) ]; then $(PY) -m loopsync.embedded_db stop; fi

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: sync throughput on PostgreSQL (see bench/README in the README's Performance section)
bench: $(DEV_STAMP)
	DATABASE_URL=$(TEST_PG_URL)_bench $(PY) bench/sync_throughput.py --users 100 --days 7

## bench-cgm: one sync-cgm-readings run over 2,000 sandbox CGM connections on PostgreSQL (budget 90 s)
bench-cgm: $(DEV_STAMP)
	DATABASE_URL=$(TEST_PG_URL)_bench_cgm $(PY) bench/cgm_sync.py --connections 2000 --concurrency 16

sandbox: $(RUNTIME_STAMP)
	$(DEMO_ENV) $(PY) manage.py sandbox --port 8765

clean: db-stop
	rm -rf $(VENV) .pgdata

.PHONY: bench-aggregate
## bench-aggregate: daily statistics and retention on PostgreSQL (5M readings, 500 patients; about 2 minutes)
bench-aggregate: $(DEV_STAMP)
	DATABASE_URL=$(TEST_PG_URL)_bench $(PY) bench/aggregate.py --patients 500 --days 60

.PHONY: bench-glucose
## bench-glucose: consensus CGM metrics of 2,000 patients against a plain GROUP BY, and a 90-day AGP (about 5 minutes)
bench-glucose: $(DEV_STAMP)
	DATABASE_URL=$(TEST_PG_URL)_bench_glucose $(PY) bench/glucose.py --patients 2000
