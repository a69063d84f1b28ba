# The two commands of the README: `make demo` and `make test`. Both create/refresh .venv by themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@# torchvision must never be present: Lightning imports it when installed, and the PyPI build is CUDA-only.
	@! $(BIN)/python -m pip show -q torchvision 2>/dev/null || { echo "torchvision is installed in $(VENV); remove it (pip uninstall torchvision)"; exit 1; }
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/cellresponse demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# A test process per core, at most 4 (pytest-xdist), each test module kept on one process so that its fixtures
# (a trained run, a measured plate) are built once: on 2 cores 5 min 30 s - 7 min 10 s (367-370 tests, 2026-12-07;
# 7 min 30 s - 8 min 45 s on a slower machine, where each command starting a fresh interpreter took 12 min 17 s for 350).
# `python -m pytest` alone runs in one process.
test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadscope $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
