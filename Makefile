# Two commands for a newcomer: `make run` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint demo bench bench-quick clean

# The domain modules are compiled with mypyc (setup.py): editing one rebuilds.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml setup.py $(wildcard src/balance/domain/*.py) src/balance/views.py src/balance/engine/replies.py src/balance/engine/recovery.py src/balance/engine/lookups.py src/balance/engine/expiry_sweep.py src/balance/engine/shard.py src/balance/service.py src/balance/api/app.py src/balance/api/http1.py src/balance/storage/sqltext.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)  ## serve on 127.0.0.1:8080 (BALANCE_PORT, BALANCE_DATA_DIR, BALANCE_DB_URL, ...)
	$(BIN)/balance-service run

test: $(STAMP)  ## the whole suite (MariaDB tests run when MariaDB answers; in CI they must)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

demo: $(STAMP)
	$(BIN)/balance-service demo

bench: $(STAMP)
	$(BIN)/balance-service bench --json bench-results.json

bench-quick: $(STAMP)
	$(BIN)/balance-service bench --quick

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
