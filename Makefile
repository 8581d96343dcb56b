# `make demo` and `make test` work on a fresh machine: they create .venv and
# install relive with its test dependencies first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Python code that ruff checks and formats.
PY_DIRS := src tests demo benchmarks

.PHONY: demo test test-fast test-realworld coverage prepare bench lint format-check typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "make: $(PYTHON) cannot create $(VENV); install python3-venv (or run \`sudo make test\`)" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python demo/demo.py

# The whole suite, tests/realworld included (real programs from Debian or Ubuntu
# source packages, built once per user and cached in ~/.cache/relive/realworld:
# about 6 minutes cold, 20 s warm on 2 cores). First tests/prepare.sh: as root it
# installs what the tests need (clang, deb-src lines, bear, tmux, the programs' build
# dependencies); otherwise it says what is missing and those tests skip, one line each.
test: prepare
	@$(MAKE) --no-print-directory $(STAMP)
	RELIVE_REALWORLD=1 $(BIN)/python -m pytest -q

# Everything but the real programs (1-3 minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

# The fast suite with line coverage of src/relive, the CLI subprocesses the tests
# start included (pyproject.toml [tool.coverage.run]).
coverage: $(STAMP)
	$(BIN)/python -m pytest -q --cov --cov-report=term-missing:skip-covered

test-realworld: prepare
	@$(MAKE) --no-print-directory $(STAMP)
	RELIVE_REALWORLD=1 $(BIN)/python -m pytest -q tests/realworld

prepare:
	@PYTHON="$(PYTHON)" bash tests/prepare.sh

# Reload latency and the stall the target notices, next to a minimal ptrace floor;
# builds its own C targets; results in benchmarks/results/. BENCH_ARGS="--runs 9" etc.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/watch_latency.py
	RELIVE_KILL_RUNS=200 $(BIN)/python -m pytest -q tests/test_kill_safety.py -k random

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)

format-check: $(STAMP)
	$(BIN)/ruff format --check $(PY_DIRS)

# mypy --strict on src and tests (pyproject.toml [tool.mypy]).
typecheck: $(STAMP)
	$(BIN)/mypy

# What CI runs (.ci/run): lint, formatting, types, then the whole suite.
check: prepare lint format-check typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
