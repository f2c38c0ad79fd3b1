# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := build/demo

.PHONY: venv demo test lint bench docs dist clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,docs,datachain,lightning,accelerate]'
	touch $@

demo: venv
	$(VENV)/bin/zarr-torch synth $(DEMO_DIR) --stores 8 --frames 48 --size 64 --chunk 8 --overwrite
	$(PY) examples/train_classifier.py $(DEMO_DIR) --epochs 1 --workers 2

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: venv
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,datachain,lightning,accelerate,bench]'
	$(VENV)/bin/zarr-torch bench throughput
	$(VENV)/bin/zarr-torch bench index
	$(VENV)/bin/zarr-torch bench loaders --write

# The documentation site, in build/site (NO_MKDOCS_2_WARNING: Material's notice, not a warning).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The sdist and wheel, in dist/, checked as PyPI would render them.
dist: venv
	rm -rf dist
	$(PY) -m build
	$(VENV)/bin/twine check dist/*

clean:
	rm -rf $(VENV) build dist .pytest_cache
