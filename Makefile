# Day-to-day commands. Every target runs in the active Python environment (see README: Quickstart).
PY ?= python

.PHONY: install lint format test test-fast gpu bench docs

install:            ## CPU torch + the package with the test, serving, bench and dev extras, editable
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test,serve,bench,faces,hub,dev]'

lint:               ## ruff lint + format check (what CI runs)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:             ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test:               ## the whole suite (CI runs exactly this)
	$(PY) -m pytest -q

test-fast:          ## everything but the slow full-size network runs: a few minutes on two cores
	$(PY) -m pytest -q -m "not slow"

gpu:                ## the CUDA copies of the tests (on a GPU machine)
	$(PY) -m pytest -q -m gpu

bench:              ## the quick benchmark, tables in the terminal
	flashtalk bench --quick

docs:               ## the documentation site, strict (a broken link or a page outside the nav fails)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site
