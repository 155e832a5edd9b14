# The two entry points of the README. Both create .venv and install into it first.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)  ## the main job on the embedded demo configuration
	$(VENV)/bin/python -m fisherlab demo --out results/demo

test: $(STAMP)  ## the whole test suite (what CI runs)
	$(VENV)/bin/python -m pytest

test-fast: $(STAMP)  ## the fast tests only
	$(VENV)/bin/python -m pytest -m "not slow"

bench: $(STAMP)  ## speed ratios P1-P3 (benchmarks/curvature.py)
	$(VENV)/bin/python benchmarks/curvature.py
