# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Each installs what it needs by itself into a local virtual environment (.venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the releases this project is developed and tested with.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: venv data demo quickstart test lint typecheck docs docs-browser wheel-test test-torch-oldest clean

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

# The suite includes tests/integration/test_wheel.py (the built wheel, installed outside the
# checkout: `make wheel-test`) and tests/integration/test_docs.py (the site's math rendered
# in headless Chromium); then the oldest torch the package admits.
test: venv data docs-browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q -n 2
	$(MAKE) test-torch-oldest

# Headless Chromium (Debian's package) for the docs test; the site's KaTeX comes from the npm
# registry at build time (tools/mkdocs_hooks.py), so npm is needed too.
docs-browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "chromium not installed: tests/integration/test_docs.py skips its browser check"; \
	  fi; \
	fi

# Build the sdist and the wheel, install the wheel into a fresh venv outside the checkout and
# run the quickstart and the installed package's doctests there (part of `make test`).
wheel-test: venv
	$(BIN)/python -m pytest -q -p no:xdist tests/integration/test_wheel.py

# The oldest torch that pyproject.toml admits (torch>=2.13), tested: the library's own tests
# (tests/unit, tests/wrapper and the doctests, not the framework integrations: PyPI's
# torchvision, which lightning imports, is built for the pinned torch) in a venv that sees
# .venv's packages behind its own torch 2.13.0 (CPU build).
TORCH_OLDEST ?= torch==2.13.0+cpu
OLDEST := $(VENV)/torch-oldest

$(OLDEST)/.installed: $(BIN)/.installed
	rm -rf $(OLDEST)
	$(BIN)/python -m venv --without-pip $(OLDEST)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_path('purelib'))" \
	  > "$$($(OLDEST)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/base_env.pth"
	$(BIN)/python -m pip --python $(OLDEST)/bin/python install -q --no-deps "$(TORCH_OLDEST)"
	touch $@

test-torch-oldest: venv $(OLDEST)/.installed
	$(OLDEST)/bin/python -c "import torch; v = torch.__version__; print('torch', v); assert v.startswith('2.13.')"
	$(OLDEST)/bin/python -m pytest -q -n 2 tests/unit tests/wrapper mograd \
	  --ignore=mograd/integrations

lint: venv
	$(BIN)/ruff check .

# mypy --strict on mograd/ (configuration in pyproject.toml)
typecheck: venv
	$(BIN)/mypy

# The documentation site (mkdocs.yml) into site/; --strict fails on a broken link or docstring.
docs: venv
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site build dist
