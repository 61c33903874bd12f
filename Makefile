# Every target uses the project virtualenv; `make install` does nothing when pyproject.toml and
# constraints.txt have not changed since the last install (the stamp file records that).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs on this many worker processes (pytest-xdist), each with its own PostgreSQL and Redis: most of its
# time is e2e tests waiting on service processes, so two workers on two cores take about two thirds of the time.
TEST_WORKERS ?= 2

.PHONY: install run test lint fmt bench bench-proxy bench-proxy-instructions bench-auth bench-bank-lines bench-replicas

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

# The whole stack on this machine: project-local PostgreSQL (and Redis when installed) unless
# DATABASE_URL / REDIS_URL are set. Ctrl+C stops everything.
run: install
	$(BIN)/apgms dev

# The suite starts its own PostgreSQL and Redis (or uses TEST_DATABASE_URL / TEST_REDIS_URL);
# `python -m apgms.devservers` installs their binaries when missing and allowed (root + apt-get).
test: install
	$(BIN)/python -m apgms.devservers
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks print ratios against references measured in the same run; see docs/benchmarks.md.
bench: bench-proxy bench-auth bench-bank-lines bench-replicas

bench-proxy: install
	$(BIN)/python bench/proxy.py

bench-proxy-instructions: install
	$(BIN)/python bench/proxy_instructions.py

bench-auth: install
	$(BIN)/python bench/auth.py

bench-bank-lines: install
	$(BIN)/python bench/bank_lines.py

bench-replicas: install
	$(BIN)/python bench/replicas.py
