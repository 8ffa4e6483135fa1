# glacierxr — the two commands that set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch==2.13.0 resolves to the CPU wheel through pip's configured find-links.
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[ml,dev,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glacierxr demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/run.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

clean:
	rm -rf build demo-out .pytest_cache
