# kdlab — `make demo` and `make test` are all the set-up a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdlab-installed

.DEFAULT_GOAL := help
.PHONY: help install demo test test-slow lint sweep dashboard reproduce bench reliability clean
PORT ?= 8080

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install kdlab (editable) with its pinned dependencies; runs once

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: install  ## teacher -> baseline student -> KD student on MNIST-1D, then the three accuracies side by side
	$(BIN)/python -m kdlab.demo

test: install  ## the test suite (fast, CPU-only, no downloads, no W&B account)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install  ## the slow tests too
	$(BIN)/python -m pytest -q

reproduce: install  ## the MNIST-1D tables into docs/results.md, 3 seeds: paper baselines (kdlab vs the paper's code vs published) + distillation, ~9 min
	$(BIN)/python -m kdlab.reproduce

bench: install  ## step time (kdlab vs a bare loop vs a peer-style loop), the teacher cache, the data pipelines, the MNIST-1D paper protocol into docs/benchmarks.md, ~9 min
	$(BIN)/python -m kdlab.bench $(if $(DEVICE),--device $(DEVICE))

reliability: install  ## kill -9 a 30-epoch run at random epochs, resume it, check it ends as the uninterrupted run into docs/reliability.md, ~3 min
	$(BIN)/python -m kdlab.reliability

sweep: install  ## the default Optuna sweep (KD temperature and weight on MNIST-1D), a few minutes
	$(BIN)/kdlab-sweep sweeps=kd_temperature_alpha

dashboard: install  ## optuna-dashboard on the local study database at http://127.0.0.1:8080 (PORT=...)
	@mkdir -p outputs/sweeps
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(PORT) sqlite:///$(CURDIR)/outputs/sweeps/optuna.db

lint: install  ## ruff
	$(BIN)/ruff check kdlab tests
	$(BIN)/ruff format --check kdlab tests

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache
