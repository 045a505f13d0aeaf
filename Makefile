# Two commands for a newcomer: `make run` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint demo bench bench-quick clean fleet

# The hot modules are compiled with mypyc (setup.py's COMPILED): editing one rebuilds.
COMPILED_SOURCES := $(wildcard src/balance/domain/*.py) src/balance/views.py src/balance/service.py \
	$(addprefix src/balance/engine/,replies.py recovery.py lookups.py expiry_sweep.py shard.py) \
	$(addprefix src/balance/api/,answers.py parsing.py strict_json.py commands.py access.py app.py admission.py http1.py) \
	$(wildcard src/balance/api/routes_*.py) src/balance/storage/sqltext.py \
	$(addprefix src/balance/events/,catalogue.py states.py stream.py) src/balance/_untrack.c
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml setup.py $(COMPILED_SOURCES)
	@echo "make: setting up $(VENV) (the first time, or after a change to the dependencies or a compiled module)"
	@test -x $(BIN)/python || { echo "make: creating the virtual environment $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing the pinned dependencies (requirements-dev.txt, constraints.txt): a minute or two"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@echo "make: installing balance-service and compiling its hot path with mypyc (setup.py COMPILED): about a minute"
	@echo "      (BALANCE_PURE_PYTHON=1 skips the compilation: the same code runs interpreted)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)
	@echo "make: $(VENV) is ready"

run: $(STAMP)  ## serve on 127.0.0.1:8080 (BALANCE_PORT, BALANCE_DATA_DIR, BALANCE_DB_URL, ...)
	@echo "make: starting the service on http://$${BALANCE_HOST:-127.0.0.1}:$${BALANCE_PORT:-8080} (Ctrl-C stops it)"
	$(BIN)/balance-service run

test: $(STAMP)  ## the whole suite (MariaDB tests run when MariaDB answers; in CI they must)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy  # strict, over src (pyproject.toml [tool.mypy])
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

fleet: $(STAMP)  ## three nodes on 8081-8083, six shards on MariaDB (BALANCE_FLEET_BASE_PORT, BALANCE_DB_URL; docs/fleet.md)
	$(BIN)/balance-service fleet

demo: $(STAMP)
	$(BIN)/balance-service demo

bench: $(STAMP)
	$(BIN)/balance-service bench --json bench-results.json

bench-quick: $(STAMP)
	$(BIN)/balance-service bench --quick

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .mypy_cache .hypothesis
