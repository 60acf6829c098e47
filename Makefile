# Loop Sync: `make demo` and `make test` are all the set-up a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PostgreSQL used by the test suite (production is PostgreSQL); `make test` skips it, saying so, if absent.
TEST_PG_URL ?= postgres://postgres@127.0.0.1:5432/loopsync
DEMO_ENV := DEBUG=true LOG_LEVEL=warning

.PHONY: demo test test-postgres test-sqlite lint format bench bench-cgm sandbox migrate clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

migrate: $(STAMP)
	$(DEMO_ENV) $(PY) manage.py migrate --noinput -v 0
	$(DEMO_ENV) $(PY) manage.py sync_schedules

## demo: install, migrate the SQLite default, sync 20 sandbox users over the last 7 days, print the summary
demo: migrate
	$(DEMO_ENV) $(PY) manage.py sync_wearables --sandbox --sandbox-users 20 --lookback-days 7
	# Direct providers: connect sandbox WHOOP, Dexcom and Libre users (real OAuth / login flows), run both jobs.
	$(DEMO_ENV) $(PY) manage.py run_job sync-whoop-data --sandbox --sandbox-users 5
	$(DEMO_ENV) $(PY) manage.py run_job sync-cgm-readings --sandbox --sandbox-users 5

## test: the suite against PostgreSQL (when reachable) and against SQLite
test: $(STAMP)
	@if $(PY) scripts/pg_available.py "$(TEST_PG_URL)"; then \
		$(MAKE) --no-print-directory test-postgres; \
	else \
		if [ -n "$$REQUIRE_POSTGRES" ]; then echo "FATAL: PostgreSQL required but not reachable at $(TEST_PG_URL)"; exit 1; fi; \
		echo "PostgreSQL is not reachable at $(TEST_PG_URL): SKIPPING the PostgreSQL run (SQLite only)"; \
	fi
	@$(MAKE) --no-print-directory test-sqlite

test-postgres: $(STAMP)
	@echo "== tests on PostgreSQL =="
	DATABASE_URL=$(TEST_PG_URL) $(PY) -m pytest -q $(PYTEST_ARGS)

test-sqlite: $(STAMP)
	@echo "== tests on SQLite =="
	DATABASE_URL=sqlite:///$(CURDIR)/.test.sqlite3 $(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: sync throughput on PostgreSQL (see bench/README in the README's Performance section)
bench: $(STAMP)
	DATABASE_URL=$(TEST_PG_URL)_bench $(PY) bench/sync_throughput.py --users 100 --days 7

## bench-cgm: one sync-cgm-readings run over 2,000 sandbox CGM connections on PostgreSQL (budget 90 s)
bench-cgm: $(STAMP)
	DATABASE_URL=$(TEST_PG_URL)_bench_cgm $(PY) bench/cgm_sync.py --connections 2000 --concurrency 16

sandbox: $(STAMP)
	$(DEMO_ENV) $(PY) manage.py sandbox --port 8765

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-* .test.sqlite3

.PHONY: bench-aggregate
## bench-aggregate: daily statistics and retention on PostgreSQL (5M readings, 500 patients; ~4 minutes)
bench-aggregate: $(STAMP)
	DATABASE_URL=$(TEST_PG_URL)_bench $(PY) bench/aggregate.py --patients 500 --days 60
