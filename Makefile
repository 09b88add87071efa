# The two commands of the README:   make demo   (the main job)   and   make test
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast bench bench-fleet bench-edge bench-page bench-serve bench-runtime lint hooks system-deps clean

system-deps:
	@scripts/system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: system-deps $(VENV)/.installed
	$(VENV)/bin/edgekit demo

test: system-deps $(VENV)/.installed lint
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m 'not slow'

# what the pre-commit hooks run (.pre-commit-config.yaml), on the whole tree
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check edgekit tests bench
	$(VENV)/bin/ruff format --check edgekit tests bench
	$(VENV)/bin/mypy edgekit tests

hooks: $(VENV)/.installed
	$(VENV)/bin/pre-commit install

bench: system-deps $(VENV)/.installed
	$(PY) -m bench.compile

bench-fleet: system-deps $(VENV)/.installed
	$(PY) -m bench.fleet

bench-edge: system-deps $(VENV)/.installed
	$(PY) -m bench.edge

bench-page: system-deps $(VENV)/.installed
	$(PY) -m bench.page

bench-serve: $(VENV)/.installed
	$(PY) -m bench.serve

bench-runtime: $(VENV)/.installed
	$(PY) -m bench.runtime

clean:
	rm -rf build greengrass-build .pytest_cache
