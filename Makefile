# Baton: `make demo` and `make test` work on a fresh Debian machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench bench-peers bench-tasks bench-scale chaos screenshots clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	@bash scripts/demo.sh

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: install
	$(BIN)/mypy

# On pytest-xdist workers, two per core (at most 8): the tests wait on servers, agents and flow processes about half
# their time, so one per core left the cores idle (2 cores: 398 s with 2 workers, 310 s with 4). tests/conftest.py's
# scheduler groups the tests (one unit per file, and the reliability tests together). PYTEST_ARGS="-n 0" runs them
# in one process. Load tests (marked `load`) run in `make chaos`, not here: PYTEST_MARKS="" runs them too.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(8, 2 * (os.cpu_count() or 1)))')
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist loadfile
PYTEST_MARKS ?= not load
# Byte-code caching on (here, in chaos and in screenshots), whatever the shell says (PYTHONDONTWRITEBYTECODE): the
# suite starts hundreds of interpreters (servers, agents, flow runs, CLI calls) that import the same sources, and
# pytest rewrites the asserts of ~500 modules (its plugins' packages too) in each worker. Without the cache: ~10 s of CPU per worker to collect instead
# of ~5.5, and ~0.1 s more per process. The files go to __pycache__ (ignored by git), as Python's default.
unit: install
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q --durations=25 -m "$(PYTEST_MARKS)" $(PYTEST_ARGS)

test: lint typecheck unit

# The README's pictures of the web UI, taken by its browser tests (Debian's chromium).
screenshots: install
	BATON_SCREENSHOTS=docs/screenshots env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q -n 0 tests/ui/test_browser.py

bench: install
	$(BIN)/python bench/dispatch.py

# Baton and Prefect 3 on the same workloads, one table of ratios (bench/peers.py). Prefect comes from PyPI into its
# own virtual environment, made once and kept (pins in bench/peers/requirements.txt). Not part of `make test`.
# BENCH_PEERS_ARGS="--runs 20 --latency-runs 5" for a quick check.
PEERS_VENV := .cache/peers-venv
PEERS_STAMP := $(PEERS_VENV)/.installed
BENCH_PEERS_ARGS ?=
$(PEERS_STAMP): bench/peers/requirements.txt
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers/requirements.txt
	@touch $(PEERS_STAMP)

bench-peers: install $(PEERS_STAMP)
	$(BIN)/python bench/peers.py --prefect-python $(PEERS_VENV)/bin/python $(BENCH_PEERS_ARGS)

# Issue 14: 1,000 tiny mapped tasks on each executor, beside Prefect 3's task runners from the same environment.
bench-tasks: install $(PEERS_STAMP)
	$(BIN)/python bench/tasks.py $(BENCH_TASKS_ARGS)

# Does history slow the API? Latencies of create, claim, logs, get and lists on an empty database, then with
# 1,000,000 finished runs and 10,000,000 log lines seeded, on SQLite and PostgreSQL (bench/scale.py; ~45 min at full
# size). SCALE_ARGS="--runs 20000 --log-lines 200000" for a quick check.
SCALE_ARGS ?= --runs 1000000 --log-lines 10000000 --database both
bench-scale: install
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

# The load version of tests/reliability: agents x runs while the server is SIGKILLed twice (see bench/chaos.py).
CHAOS_ARGS ?= --agents 8 --runs-per-agent 250
chaos: install
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q -n 0 -m load tests
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS) --database postgresql --replicas 2

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
