# licentia — `make run` and `make test` each set up everything they need on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck contracts imports pytest bench setup system native pure clean

setup: system $(STAMP) native

system:
	@bash scripts/system-packages.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[runtime,token,central,tmr,dev]'
	@touch $(STAMP)

# the license path compiled with mypyc (pure Python when no compiler is at hand)
native: $(STAMP)
	@$(BIN)/python scripts/build_native.py

pure: $(STAMP)
	@$(BIN)/python scripts/build_native.py --remove

run: setup
	@$(BIN)/licentia demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

# no private module of the standard library or of another package (scripts/check_public_imports.py)
imports: $(STAMP)
	$(BIN)/python scripts/check_public_imports.py

pytest: setup
	$(BIN)/python -m pytest -q

test: setup lint typecheck contracts imports pytest

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	-@test -x $(BIN)/python && $(BIN)/python scripts/build_native.py --remove
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
