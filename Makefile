# desertmind: every target installs what it needs first (through the .venv stamp).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/offroad
DEMO_DATA ?= data/synthetic

.DEFAULT_GOAL := help
.PHONY: help install test lint demo check-data bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install desertmind with the dev extra

test: $(STAMP) ## run the test suite
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check desertmind tests benchmarks

$(DEMO_DATA)/train:
	$(BIN)/desertmind synth $(DEMO_DATA) --n-train 48 --n-val 16 --height 135 --width 240 --seed 0

demo: $(STAMP) $(DEMO_DATA)/train ## generate a synthetic dataset (if absent) and check it
	$(BIN)/desertmind check-data $(DEMO_DATA)

check-data: $(STAMP) ## check the dataset at DATA=path (default data/offroad)
	$(BIN)/desertmind check-data $(DATA)

bench: $(STAMP) ## run the benchmarks (JSON on stdout)
	$(BIN)/python benchmarks/data_throughput.py

clean: ## remove the virtual environment and caches (keeps data and logs)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
