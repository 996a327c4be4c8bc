# Two entry points (README): `make demo` runs the pipeline on generated demo data,
# `make test` runs the test suite.  Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the local CPU wheel, never the CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/silentmine demo

test: $(STAMP)
	$(BIN)/ruff check pipeline classifiers tasks tests benchmarks
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf data/demo data/runs
