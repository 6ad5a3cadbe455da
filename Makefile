# desertmind: every target installs what it needs first (through the .venv stamp).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/offroad
DEMO_DATA ?= data/synthetic
LOGS ?= lightning_logs
REPORTS ?= reports
DM := $(BIN)/desertmind
# extra configs after each phase's own (make demo uses -c configs/demo.yaml), and overrides
CONFIGS ?=
FIT_ARGS ?=
PHASE1_ARGS ?=
RUN_ARGS = --data.root $(DATA) --trainer.logger.init_args.save_dir $(LOGS) $(FIT_ARGS)
# a phase make runs is not done (no .done stamp): a failed attempt's checkpoints are replaced
# as the new run saves its own (kept until then)
PHASE_ARGS = $(RUN_ARGS) --overwrite
# RECIPE=study: the study's four phases exactly as it ran them (configs/study, logs under
# study/); "seed" means randomness only (SEEDS=, --seed_everything)
RECIPE ?=
ifeq ($(RECIPE),study)
PHASE_CONFIGS := configs/study
PHASE_LOGS := $(LOGS)/study
else ifeq ($(RECIPE),seed)
$(error RECIPE=seed is now RECIPE=study (the study's own phases); SEEDS="1 2" repeats a chain over random seeds)
else ifeq ($(RECIPE),)
PHASE_CONFIGS := configs
PHASE_LOGS := $(LOGS)
else
$(error RECIPE=$(RECIPE): leave it unset for the corrected chain, or use RECIPE=study)
endif
P1 := $(PHASE_LOGS)/phase1/checkpoints/best.ckpt
P21 := $(PHASE_LOGS)/phase2_1_head/checkpoints/best.ckpt
P22 := $(PHASE_LOGS)/phase2_2_backbone/checkpoints/best.ckpt
P3 := $(PHASE_LOGS)/phase3/checkpoints/best.ckpt
# a phase is done when its stamp exists: written by the fit itself when it ends (so a phase
# trained by hand with `desertmind fit` counts too), so a failed or killed phase keeps its
# checkpoints (to resume: make resume) and is run again by the next make
DONE = $(dir $(patsubst %/,%,$(dir $(1)))).done
D1 := $(call DONE,$(P1))
D21 := $(call DONE,$(P21))
D22 := $(call DONE,$(P22))
D3 := $(call DONE,$(P3))
# the study's phase 3 started from COCO weights, not from its phase 2.2
P3_INIT := $(if $(filter study,$(RECIPE)),,--model.init_from $(P22))
# self-supervised pretraining (make pretrain; PRETRAINED=1: phase 1 starts from its encoder) on
# DATA's train images and the folders of UNLABELLED (spaces between folders)
UNLABELLED ?=
PRETRAINED ?=
PRE := $(LOGS)/pretrain/checkpoints/pretrained.ckpt
DPRE := $(call DONE,$(PRE))
comma := ,
empty :=
space := $(empty) $(empty)
PRETRAIN_ARGS = --data.root $(DATA) --trainer.logger.init_args.save_dir $(LOGS) --overwrite \
	$(if $(strip $(UNLABELLED)),--data.unlabelled_dirs "[$(subst $(space),$(comma),$(strip $(UNLABELLED)))]")
P1_INIT := $(if $(PRETRAINED),--model.init_from $(PRE))

.DEFAULT_GOAL := help
.PHONY: help install test test-full test-lowest test-browser app lint demo check-data bench gpu-check gpu-wheels clean docs-serve postgres-binaries pretrain phase1 phase2 phase3 phases \
	scores report resume tensorboard tensorboard-eval clean-logs docs screenshots notebook

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

# TORCH_INDEX=https://download.pytorch.org/whl/cpu: CPU-only torch, without the CUDA libraries
# that are most of the venv's 7 GB; empty: PyPI's torch, a CUDA build on Linux (runs on a CPU too)
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install desertmind with the dev extra

test: $(STAMP) ## the fast tier of the test suite (everything but the slow and browser tests)
	$(BIN)/pytest -q

test-full: $(STAMP) ## the whole suite but the browser tests: make test plus the slow tests (CI)
	$(BIN)/pytest -q -m "not browser"

LOWEST ?= .venv-lowest
$(LOWEST)/.installed: pyproject.toml .ci/lowest_constraints.py
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --upgrade pip
	$(PYTHON) .ci/lowest_constraints.py > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/pip install -c $(LOWEST)/constraints.txt -e '.[dev]'
	touch $@

test-lowest: $(LOWEST)/.installed ## the full suite on the lowest versions pyproject.toml allows (own venv)
	$(LOWEST)/bin/pytest -q -m "not browser"

CHROMIUM ?= $(shell command -v chromium)
test-browser: $(STAMP) ## the viewer in a real browser (Playwright + Debian chromium; apt-installs it as root)
	@if [ -z "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "make test-browser needs chromium: sudo apt-get install chromium (or CHROMIUM=/path/to/chromium)"; exit 2; fi; \
	fi
	DESERTMIND_SCREENSHOTS=$(abspath $(DOCS_SITE))/screenshots \
	DESERTMIND_CHROMIUM="$(or $(CHROMIUM),$$(command -v chromium))" $(BIN)/pytest -q -m browser tests/browser

# the sweep tests start their own throwaway PostgreSQL cluster (tests/test_sweep.py) from
# Debian's server binaries; nothing here starts a server
postgres-binaries: ## install Debian's PostgreSQL binaries for the sweep tests, as root, when missing
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
		else echo "the sweep's PostgreSQL tests need: sudo apt-get install postgresql"; exit 2; fi; \
	fi

app: $(STAMP) ## the viewer for CKPT (default: the demo's phase 3) on DEMO_DATA, port 7860
	$(DM) app --ckpt_path $(or $(CKPT),$(LOGS)/demo/phase3/checkpoints/best.ckpt) --data.root $(DEMO_DATA)

notebook: $(STAMP) ## run notebooks/phase_analysis.ipynb on LOGS/demo (make demo first), outputs kept in it
	cd notebooks && DESERTMIND_LOGS=../$(LOGS)/demo ../$(BIN)/jupyter nbconvert --to notebook \
		--execute --inplace phase_analysis.ipynb

screenshots: $(STAMP) ## refresh the README's pictures (docs/images) from the demo's phase 3 (make demo first)
	DESERTMIND_CHROMIUM="$(or $(CHROMIUM),$$(command -v chromium))" $(BIN)/python \
		docs/make_screenshots.py --ckpt $(LOGS)/demo/phase3/checkpoints/best.ckpt \
		--root $(DEMO_DATA) --report $(REPORTS)

DOCS_SITE ?= .docs-site
$(VENV)/.docs-installed: $(STAMP)
	$(BIN)/pip install -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed ## build the docs site (docs/, mkdocs-material, strict) into DOCS_SITE
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -f docs/mkdocs.yml -d $(abspath $(DOCS_SITE))
	@echo "docs built: open $(DOCS_SITE)/index.html (works from disk), or serve it: make docs-serve"

docs-serve: $(VENV)/.docs-installed ## serve the docs site with live reload at http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -f docs/mkdocs.yml

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check desertmind tests benchmarks

$(DEMO_DATA)/train: | $(STAMP)
	$(DM) synth $(DEMO_DATA) --n-train 96 --n-val 24 --height 144 --width 256 --seed 0
# the shifted desert (darker, rocky, three classes absent), labelled, for scoring the gap
$(DEMO_DATA)/test_shifted: | $(STAMP)
	$(DM) synth $(DEMO_DATA) --n-train 0 --n-val 0 --n-shifted 24 --height 144 --width 256 \
		--seed 0

demo: $(STAMP) $(DEMO_DATA)/train $(DEMO_DATA)/test_shifted ## synthetic data (if absent), the four phases, scores on val and a shifted desert
	$(DM) check-data $(DEMO_DATA) --splits train val test_shifted
	$(MAKE) --no-print-directory phases DATA=$(DEMO_DATA) LOGS=$(LOGS)/demo \
		CONFIGS="-c configs/demo.yaml" PHASE1_ARGS="--trainer.max_epochs 14"
	$(DM) test --ckpt_path $(LOGS)/demo/phase3/checkpoints/best.ckpt \
		--data.test_dir test_shifted --trainer.enable_progress_bar false
	$(DM) report --logs $(LOGS)/demo --out $(REPORTS) --print

# Each phase starts from the previous phase's best checkpoint; finished phases are skipped.
$(DPRE): | $(STAMP)
	$(DM) pretrain -c configs/pretrain/dino.yaml $(CONFIGS) $(PRETRAIN_ARGS)
	touch $@
$(D1): $(if $(PRETRAINED),$(DPRE)) | $(STAMP)
	$(DM) fit -c $(PHASE_CONFIGS)/phase1.yaml $(CONFIGS) $(P1_INIT) $(PHASE_ARGS) $(PHASE1_ARGS)
	touch $@
$(D21): $(D1)
	$(DM) fit -c $(PHASE_CONFIGS)/phase2_1_head.yaml $(CONFIGS) --model.init_from $(P1) \
		$(PHASE_ARGS)
	touch $@
$(D22): $(D21)
	$(DM) fit -c $(PHASE_CONFIGS)/phase2_2_backbone.yaml $(CONFIGS) --model.init_from $(P21) \
		$(PHASE_ARGS)
	touch $@
$(D3): $(D22)
	$(DM) fit -c $(PHASE_CONFIGS)/phase3.yaml $(CONFIGS) $(P3_INIT) $(PHASE_ARGS)
	touch $@

pretrain: $(DPRE) ## self-supervised pretraining (DINO) on DATA's train images and UNLABELLED="dir ..." (docs/pretrain.md)
phase1: $(D1) ## phase 1 baseline on DATA (RECIPE=study: the study's own; PRETRAINED=1: from make pretrain)
phase2: $(D22) ## phase 2.1 (head only) then 2.2 (backbone), earlier phases first
phase3: $(D3) ## phase 3 (weighted CE + Dice + crops), earlier phases first
# SEEDS="1 2 3": the chain once per random seed, under $(LOGS)/random_seed_N (runs.py)
phases: $(if $(SEEDS),$(STAMP),$(D3)) ## all four phases (RECIPE=study: the study's; SEEDS="1 2 3": repeated)
ifneq ($(SEEDS),)
	@for s in $(SEEDS); do \
		$(MAKE) --no-print-directory phases SEEDS= LOGS=$(LOGS)/random_seed_$$s \
			FIT_ARGS="$(FIT_ARGS) --seed_everything $$s" || exit 1; \
	done
endif
	$(DM) scores --logs $(LOGS)

resume: $(STAMP) ## resume PHASE (e.g. PHASE=phase1) from its last.ckpt after a crash
	@test -n "$(PHASE)" || { echo "usage: make resume PHASE=phase1|phase2_1_head|phase2_2_backbone|phase3"; exit 2; }
	$(DM) fit -c $(PHASE_CONFIGS)/$(PHASE).yaml $(CONFIGS) $(RUN_ARGS) --ckpt_path last

report: $(STAMP) ## summary.md/.csv and charts of every run under LOGS, in REPORTS
	$(DM) report --logs $(LOGS) --out $(REPORTS) --print

scores: $(STAMP) ## best score of each phase under LOGS, and the metric it monitored
	$(DM) scores --logs $(LOGS)

# the training runs found at start (eval/ runs left out; restart it to see runs started later)
tensorboard: $(STAMP) ## TensorBoard on the training runs under LOGS (port 6006)
	$(BIN)/tensorboard --port 6006 --logdir_spec "$$(find $(LOGS) -type d -name 'version_*' \
		-not -path '*/eval/*' | sort | sed 's|^$(LOGS)/||' | \
		awk '{printf "%s%s:$(LOGS)/%s", (NR > 1 ? "," : ""), $$0, $$0}')"

tensorboard-eval: $(STAMP) ## TensorBoard on the validate/test/predict runs under LOGS (port 6007)
	$(BIN)/tensorboard --port 6007 --logdir_spec "$$(find $(LOGS) -type d -name 'version_*' \
		-path '*/eval/*' | sort | sed 's|^$(LOGS)/||' | \
		awk '{printf "%s%s:$(LOGS)/%s", (NR > 1 ? "," : ""), $$0, $$0}')"

check-data: $(STAMP) ## check the dataset at DATA=path (default data/offroad)
	$(BIN)/desertmind check-data $(DATA)

# the prepared GPU check: the project's venv when there is one; on a GPU image that already has
# torch (a lent machine, no network), the source tree plus the wheels `make gpu-wheels` put in .whl/
GPU_WHEELS ?= .whl
GPU_SITE ?= /tmp/desertmind-site
GPU_OUT ?= $(if $(OUT),$(OUT),$(REPORTS)/gpu-check)
gpu-check: ## the prepared GPU check, 9 minutes on one GPU (JSON: stdout and $OUT or reports/gpu-check); DRY_RUN=1: CPU, tiny
	@set -e; if [ -x $(BIN)/python ]; then py=$(BIN)/python; \
	elif python3 -c "import torch, lightning" 2>/dev/null; then py=python3; \
		if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index \
			--no-deps --no-compile --upgrade --target $(GPU_SITE) $(GPU_WHEELS)/*.whl; fi; \
		export PYTHONPATH=$$PWD:$(GPU_SITE); \
	else $(MAKE) --no-print-directory install; py=$(BIN)/python; fi; \
	$$py benchmarks/gpu_check.py $(if $(DRY_RUN),--dry-run) --out $(GPU_OUT)

gpu-wheels: ## download the wheels a bare GPU image lacks (benchmarks/gpu_wheels.txt) into .whl/, to carry
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(GPU_WHEELS) -r benchmarks/gpu_wheels.txt

bench: $(STAMP) ## run the benchmarks, CPU-sized (JSON on stdout; figures in docs/benchmarks.md)
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/eval_throughput.py
	$(BIN)/python benchmarks/inference_latency.py
	$(BIN)/python benchmarks/dashboard_overhead.py
	$(BIN)/python benchmarks/domain_gap.py

clean: ## remove the virtual environment and caches (keeps data and logs)
	rm -rf $(VENV) $(LOWEST) .pytest_cache .ruff_cache *.egg-info

clean-logs: ## delete every run under lightning_logs (keeps its README)
	find $(LOGS) -mindepth 1 ! -name README.md -delete
