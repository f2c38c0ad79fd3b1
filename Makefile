# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := build/demo

# The newest Python here (pyenv's 3.12), which gets the newest zarr (3.11 stops at zarr 3.1).
PYTHON_NEWEST ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python $(HOME)/.pyenv/versions/3.12*/bin/python) \
	$(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null))
VENV_NEWEST := .venv-3.12
EXTRAS := dev,docs,datachain,lightning,accelerate
# The suite runs on every core, a test file a worker (its module fixtures run once): much of
# it waits on subprocesses and servers (on two cores: 20 minutes a Python, not 30).
PYTEST := -m pytest -q -n auto --dist loadfile

.PHONY: venv demo test test-newest bench docs dist clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

demo: venv
	$(VENV)/bin/zarr-torch synth $(DEMO_DIR) --stores 8 --frames 48 --size 64 --chunk 8 --overwrite
	$(PY) examples/train_classifier.py $(DEMO_DIR) --epochs 1 --workers 2

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) $(PYTEST)
	$(MAKE) --no-print-directory test-newest

# The whole suite again under the newest Python and zarr; said, never silently skipped.
test-newest:
	@if [ -z "$(PYTHON_NEWEST)" ]; then \
		echo "test-newest: SKIPPED: no Python 3.12 on this machine (pyenv install 3.12), so the suite ran under $$($(PY) -V) only"; \
	else \
		$(MAKE) --no-print-directory $(VENV_NEWEST)/.installed && \
		echo "test-newest: $$($(VENV_NEWEST)/bin/python -c 'import sys, zarr; print("Python", sys.version.split()[0], "zarr", zarr.__version__)')" && \
		$(VENV_NEWEST)/bin/python $(PYTEST) -p no:cacheprovider; \
	fi

$(VENV_NEWEST)/.installed: pyproject.toml constraints.txt
	test -x $(VENV_NEWEST)/bin/python || $(PYTHON_NEWEST) -m venv $(VENV_NEWEST)
	$(VENV_NEWEST)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_NEWEST)/bin/python -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

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
	rm -rf $(VENV) $(VENV_NEWEST) build dist .pytest_cache
