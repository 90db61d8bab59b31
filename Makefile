# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   set up, then run the nightly DAG end to end on the embedded defaults
#   make test   set up, then lint and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pmg-installed

.PHONY: setup demo test test-nights lint bench clean

setup: $(STAMP)

# torch goes in first, alone, so the CPU build on disk is the one the constraint then holds.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(BIN)/pmg demo run

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

# Also the whole nights: CeleryExecutor, S3 through a fault proxy, the fault drills, Chromium (most of an hour).
test-nights: lint
	PMG_TEST_NIGHTS=1 $(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf .pmg .pytest_cache .ruff_cache
