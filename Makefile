# Two commands for a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bkdsearch-installed
EXTRAS := dashboard,postgres,mysql,plots,dev
SPEC   ?= specs/quickstart.yaml
PYTEST_ARGS ?=

.PHONY: setup run test lint bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes, so a second `make setup` is instant.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

run: setup
	$(BIN)/bkdsearch run $(SPEC)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check bkdsearch tests bench

bench: setup
	$(BIN)/python bench/step_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
