# licentia — `make run` and `make test` each set up everything they need on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck contracts imports pytest bench fuzz setup system native pure clean

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
	$(BIN)/ruff check src tests bench fuzz

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

# every fuzz target under atheris for FUZZ_TIME seconds each (fuzz/README.md); atheris sees
# only Python code, so this runs the pure build (`make native` compiles again)
FUZZ_TIME ?= 60
fuzz: pure
	@$(BIN)/python -m pip install -q -e '.[fuzz]'
	@mkdir -p fuzz/logs
	@for t in $$($(BIN)/python fuzz/run.py --list); do \
		echo "== $$t ($(FUZZ_TIME) s)"; \
		$(BIN)/python fuzz/run.py $$t -max_total_time=$(FUZZ_TIME) > fuzz/logs/$$t.log 2>&1; rc=$$?; \
		grep -E "^Done|Uncaught|crash-" fuzz/logs/$$t.log; \
		test $$rc -eq 0 || { echo "$$t: a finding, see fuzz/logs/$$t.log and fuzz/crashes/"; exit 1; }; \
	done
