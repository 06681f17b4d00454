# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export ACPIPELINE_HOME ?= $(CURDIR)/.acpipeline
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast coverage dev lint install node browser postgres redis clean

$(BIN)/acpipeline: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: install it, or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "acpipeline needs Python >= 3.11 ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(BIN)/acpipeline

node: install
	$(BIN)/acpipeline pds --install-only

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/acpipeline demo $(ARGS)
	@echo
	@echo "Next: 'make dev' opens the Dagster UI (http://127.0.0.1:3000) with this history."

# The UI over the demo's world: brought back first if it stopped (`acpipeline demo up`), which it leaves running.
dev: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/acpipeline demo up
	$(BIN)/python -m dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The UI test drives Debian's chromium with Playwright (no browser download from the internet).
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the UI test"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

# The Postgres tests start a throwaway cluster of Debian's server (acpipeline_tests/postgres.py): pg_ctl on
# PATH, or in /usr/lib/postgresql/N/bin where the package puts it. Installing it starts no server.
postgres:
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the deployment tests"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }

# The Celery layout's tests start a throwaway Redis of Debian's server (acpipeline/bench/redis.py) with
# deploy/celery/redis.conf. Installing it starts no server here (no init system in a container).
redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing Debian's redis-server for the Celery layout's tests"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }

# The suite on TEST_WORKERS pytest-xdist workers (each starts its own PDS and PostgreSQL when a test needs
# them); a module's tests stay on one worker. Many tests wait on servers and the backfill daemon, so workers
# beyond the cores pay (see the README for the figures). Modules start in collection order (the longest
# first, see acpipeline_tests/conftest.py), not xdist's default of the most tests first, which left the
# one-test benches to end the suite alone.
TEST_WORKERS ?= 5

test: install node browser postgres redis
	$(BIN)/ruff check acpipeline acpipeline_tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

# The product code's coverage (branches; the CLI, Dagster's services and the runs the tests start included):
# the whole suite under coverage, then the report (data under .coverage/).
coverage: install node browser postgres redis
	rm -rf .coverage && mkdir -p .coverage
	$(BIN)/python -m coverage run -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)
	$(BIN)/python -m coverage combine -q
	$(BIN)/python -m coverage report --precision=1 | grep "^TOTAL"

# The tests that need no server (marked `unit` in acpipeline_tests/conftest.py), about a minute; they are
# CPU-bound: one worker per core.
test-fast: install
	$(BIN)/python -m pytest -m unit -n 2 --dist loadfile --no-loadscope-reorder $(ARGS)

lint: install
	$(BIN)/ruff check acpipeline acpipeline_tests
	$(BIN)/mypy

clean:
	@[ ! -x $(BIN)/acpipeline ] || $(BIN)/acpipeline demo down
	rm -rf $(VENV) $(ACPIPELINE_HOME) $(DAGSTER_HOME) acpipeline/localpds/*/node_modules
