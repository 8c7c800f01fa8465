# The two commands of the README, plus benchmarks. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
JS := tests/js

.PHONY: demo test lint typecheck unit bench soak clean

$(VENV)/.installed-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-base

# The real front-end clients (AG-UI, AI SDK) the interop tests drive, pinned by the lockfile.
$(JS)/node_modules/.package-lock.json: $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund
	touch $@

## make demo: the demo gateway with the example workflow on http://127.0.0.1:8080
demo: $(VENV)/.installed-base
	$(PY) -m streaming_module demo $(ARGS)

## make test: lint, type check and the whole test suite
test: $(VENV)/.installed-dev $(JS)/node_modules/.package-lock.json lint typecheck
	$(PY) -m pytest -q $(ARGS)

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check src tests bench examples
	$(PY) -m ruff format --check src tests bench examples

typecheck: $(VENV)/.installed-dev
	$(PY) -m mypy

## make bench: benchmarks against same-run baselines -> bench/results.json
bench: $(VENV)/.installed-dev
	$(PY) bench/run.py $(ARGS)

## make soak [DURATION=10m]: the demo server under thousands of short runs for DURATION,
## sampled for growth; fails on any lost token or growth past its bound (not part of make test)
DURATION ?= 10m
soak: $(VENV)/.installed-dev
	$(PY) bench/soak.py --duration $(DURATION) $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(JS)/node_modules
