# The two entry points of the README. Both create .venv and install into it first.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-miniature bench

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)  ## the whole pipeline on the embedded demo configuration
	$(VENV)/bin/snakemake --configfile configs/demo.yaml --cores 2

test: $(STAMP)  ## the whole test suite (what CI runs), config.yaml in miniature included
	$(VENV)/bin/python -m pytest

test-miniature: $(STAMP)  ## only snakemake all of config.yaml in miniature, every artifact checked (~8 min on 2 cores)
	$(VENV)/bin/python -m pytest -m miniature

test-fast: $(STAMP)  ## the fast tests only
	$(VENV)/bin/python -m pytest -m "not slow"

bench: $(STAMP)  ## speed ratios E1, E2 (E3 with BENCH_ARGS="--device cuda", SWEEP with BENCH_ARGS="--only SWEEP"): benchmarks/curvature.py
	$(VENV)/bin/python benchmarks/curvature.py $(BENCH_ARGS)
