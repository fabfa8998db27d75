# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Each installs what it needs by itself into a local virtual environment (.venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the releases this project is developed and tested with.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: venv data demo quickstart test lint typecheck docs clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[bench,test,perf,integrations,docs]"
	touch $@

venv: $(BIN)/.installed

# Debian's dataset-fashion-mnist package holds the original FashionMNIST idx files.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "dataset-fashion-mnist not installed: the benchmarks fall back to torchvision's download"; \
	  fi; \
	fi

# The main job: the paper's FashionMNIST experiment, quick preset (24 runs; see docs/benchmarks.md for its time).
demo: venv data
	$(BIN)/python -m benchmarks.ib_fmnist --preset quick

quickstart: venv
	$(BIN)/python examples/quickstart.py

test: venv data
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q -n 2

lint: venv
	$(BIN)/ruff check .

# mypy --strict on mograd/ (configuration in pyproject.toml)
typecheck: venv
	$(BIN)/mypy

# The documentation site (mkdocs.yml) into site/; --strict fails on a broken link or docstring.
docs: venv
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
