# The two commands of the README:   make demo   (the main job)   and   make test
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
FLOOR  ?= .venv-floor

.PHONY: demo test test-fast bench bench-fleet bench-ingest bench-edge bench-page bench-serve bench-runtime lint hooks test-floor system-deps clean

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

# The same tests with every dependency at the floor pyproject.toml declares (scripts/floors: `>=X` becomes `==X`), so
# a floor is a version that was tested, not a guess. The slow tests are left out: they exercise tvm and torch, pinned.
$(FLOOR)/.installed: pyproject.toml scripts/floors
	rm -rf $(FLOOR)
	$(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -m pip install -q --upgrade pip
	$(PYTHON) scripts/floors > $(FLOOR)/floors.txt
	$(FLOOR)/bin/python -m pip install -q -e '.[dev]' --constraint $(FLOOR)/floors.txt
	@touch $@

test-floor: system-deps $(FLOOR)/.installed
	$(FLOOR)/bin/python -m pytest -m 'not slow' -p no:cacheprovider

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

bench-ingest: system-deps $(VENV)/.installed
	$(PY) -m bench.fleet_ingest

bench-edge: system-deps $(VENV)/.installed
	$(PY) -m bench.edge

bench-page: system-deps $(VENV)/.installed
	$(PY) -m bench.page

bench-serve: $(VENV)/.installed
	$(PY) -m bench.serve

bench-runtime: $(VENV)/.installed
	$(PY) -m bench.runtime

clean:
	rm -rf $(FLOOR) build greengrass-build .pytest_cache
