# `make demo` and `make test` work on a fresh machine: they create .venv and
# install relive with its test dependencies first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-realworld realworld-prepare bench lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python demo/demo.py

# `make test` includes tests/realworld (real programs from Debian source packages,
# built once and cached in /var/tmp/relive-realworld): about 6 minutes cold, 20 s
# warm on 2 cores, well within CI's 90. A plain `pytest` skips them.
test: $(STAMP) realworld-prepare
	RELIVE_REALWORLD=1 $(BIN)/python -m pytest -q

test-realworld: $(STAMP) realworld-prepare
	RELIVE_REALWORLD=1 $(BIN)/python -m pytest -q tests/realworld

# deb-src lines and the build tools and libraries (apt-get, as root); quiet no-op when present.
realworld-prepare:
	@bash tests/realworld/prepare.sh

# Reload latency and the stall the target notices, next to a minimal ptrace floor;
# builds its own C targets; results in benchmarks/results/. BENCH_ARGS="--runs 9" etc.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests demo

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
