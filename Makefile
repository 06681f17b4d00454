# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export ACPIPELINE_HOME ?= $(CURDIR)/.acpipeline
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: demo test dev lint install node clean

$(BIN)/acpipeline: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 not found: install it or run 'make PYTHON=python3 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
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

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/acpipeline demo --serve

test: install node
	$(BIN)/ruff check acpipeline acpipeline_tests
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check acpipeline acpipeline_tests

clean:
	rm -rf $(VENV) $(ACPIPELINE_HOME) $(DAGSTER_HOME) acpipeline/localpds/*/node_modules
