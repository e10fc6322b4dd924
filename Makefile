# Every target runs inside a project-local virtualenv that it builds itself when missing or
# when requirements change. `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_DATA := ../shared/datasets/dog_emotion
DATA ?= data/dog_emotion
WEIGHTS ?= weights/dog_emotion.pkl
RAW ?=
OUT ?= artifacts/prepared_data
# prepare-data: 100 images a class in val and in test, the rest train (the shipped layout);
# SPLIT="--val-frac 0.1 --test-frac 0.1" splits by share instead
SPLIT ?= --val-count 100 --test-count 100
ARGS ?=
NPROC ?= 2
# The shipped model's recipe is the train command's own defaults (`make train`; `python -m
# train.dog_emotion train --help` lists them). RECIPE=recipes/<name>.toml gives train, train-quick
# and train-ddp any other; SEED=N another seed of it.
RECIPE ?=
SEED ?=
RECIPE_ARGS = $(if $(RECIPE),--config $(RECIPE)) $(if $(SEED),--seed $(SEED))

# glibc's allocator settings that make an epoch faster are applied inside the training command
# (train.common.keep_freed_memory), so `python -m train.dog_emotion train` runs at the same speed.

.DEFAULT_GOAL := help
.PHONY: help venv venv-litert data predict train train-quick train-ddp teacher teachers reproduce learning-curve results demo eda prepare-data evaluate profile temperature export model-card bench mnist lr-sweep vgg test clean

help: ## list every target with one line each
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: DATA=<split root> (default $(DATA)), RECIPE=<.toml> (default: none, the shipped recipe), SEED=<n>, WEIGHTS=<.pkl>,"
	@echo "    FILES=<photos> (predict), FORMATS='<rows>' (export: python -m export.formats lists them), RAW=<download> OUT=<folder> SPLIT='<options>' (prepare-data),"
	@echo "    SIBLING=<.pkl> (temperature), NPROC=<processes> (train-ddp), HOST= PORT= (demo), ARGS='<extra CLI options>'"

$(STAMP): requirements.txt requirements.lock
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
	touch $@

venv: $(STAMP) ## create/refresh the virtualenv (.venv) with the pinned packages

# The LiteRT converter in its own environment (about 7 GB with torch; export/litert_export.py says why)
LITERT_STAMP := .venv-litert/.installed
$(LITERT_STAMP): requirements-litert.lock
	test -x .venv-litert/bin/python || $(PYTHON_BASE) -m venv .venv-litert
	.venv-litert/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-litert.lock
	touch $@

venv-litert: $(LITERT_STAMP) ## the LiteRT converter's own virtualenv (.venv-litert), for the .tflite files of make export

# The default data set is linked, never copied; DATA=... points anywhere else.
data/dog_emotion:
	@if [ -d $(SHARED_DATA) ]; then mkdir -p data && ln -sfn ../$(SHARED_DATA) data/dog_emotion && echo "linked data/dog_emotion -> $(SHARED_DATA)"; \
	else echo "note: $(SHARED_DATA) not found; pass DATA=<your copy> (see README, 'Bring your own data')"; fi

data: data/dog_emotion ## link the default data set (../shared/datasets/dog_emotion) to data/dog_emotion

# A recipe file, recipes/<name>.toml, states what differs from the shipped recipe (the command's
# defaults); ARGS overrides any option.
TRAIN := $(PY) -m train.dog_emotion train --data $(DATA)
# Recipes say nothing of threads: a run alone takes every core (--threads 0); the search's runs
# (the pattern rule below) take one each, two side by side. Times: docs/training.md, `make bench`.
train: $(STAMP) data ## train the shipped model (`mini14`, 300 epochs on train + val, distilled from the bank of the four teachers in weights/, built first when missing; RECIPE= another) on all cores -> artifacts/train/
	$(TRAIN) $(RECIPE_ARGS) --threads 0 $(ARGS)

train-quick: $(STAMP) data ## RECIPE for 30 epochs on both cores, for trying things -> artifacts/train-quick/
	$(TRAIN) $(RECIPE_ARGS) --epochs 30 --threads 0 --out artifacts/train-quick $(ARGS)

# Several processes (torchrun, DDP; gloo on CPUs, NCCL on GPUs): the recipe's images per step
# (--batch-size) split over NPROC processes, one thread each. docs/scale-out.md has the multi-GPU and
# multi-machine flags.
train-ddp: $(STAMP) data ## RECIPE as NPROC (default 2) DDP processes via torchrun -> artifacts/train-ddp/
	$(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) -m train.dog_emotion train --data $(DATA) \
		$(RECIPE_ARGS) --threads 1 --out artifacts/train-ddp $(ARGS)

# nanochat's speedrun: the whole chain behind weights/dog_emotion.pkl from the data alone, each step
# skipped when its output is complete and stopped runs resumed (train/reproduce.py has the table).
reproduce: $(STAMP) data ## from the data alone to every shipped file: 4 teachers, their bank, the recipe's 3 seeds, the train-only sibling, temperature, export, bench; plan and time print first; resumable -> artifacts/reproduce/
	$(PY) -m train.reproduce --data $(DATA) $(ARGS)

teacher: $(STAMP) data ## train the 190k teacher from scratch (recipes/large.toml) on all cores -> artifacts/teacher/
	$(TRAIN) --config recipes/large.toml --threads 0 --out artifacts/teacher $(ARGS)

# Any recipe by name: make artifacts/runs/<name>/dog_emotion.pkl trains recipes/<name>.toml, and
# artifacts/runs/<name>-s<N>/ the same recipe with --seed N (one thread, test not read: the protocol
# in docs/results.md reads test once per final candidate); a stopped run resumes from its last
# finished epoch (the log is appended).
artifacts/runs/%/dog_emotion.pkl: | $(STAMP) data
	@mkdir -p artifacts/runs
	@recipe=recipes/$$(echo '$*' | sed -E 's/-s[0-9]+$$//').toml; seed=$$(echo '$*' | sed -nE 's/.*-s([0-9]+)$$/\1/p'); \
	echo "training $$recipe$${seed:+, seed $$seed}; progress: tail -f artifacts/runs/$*.log"; \
	$(TRAIN) --config $$recipe $${seed:+--seed $$seed} --threads 1 --no-test --out artifacts/runs/$* \
		$(if $(wildcard artifacts/runs/$*/last.ckpt),--resume) $(ARGS) >> artifacts/runs/$*.log 2>&1 || { tail -n 20 artifacts/runs/$*.log; exit 1; }
	@grep "^kept the" artifacts/runs/$*.log | tail -n 1
# The teacher ensemble past `make teacher` (seed 0), as train.recipes.SHIPPED_TEACHERS names it.
teachers: $(STAMP) data ## the teacher ensemble's other three members from scratch, two at a time, one thread each (resumable) -> artifacts/runs/large-s1, large-s2, teacher-large128-s3/
	$(MAKE) -j2 $$($(PY) -c 'from train.recipes import SHIPPED_TEACHERS as t; print(*(f"artifacts/runs/{r.name}/dog_emotion.pkl" for r in t[1:]))')

# Two processes, one thread each: the four small sizes in one (about 50 min), the whole train split in the other
learning-curve: $(STAMP) data ## test accuracy of the default recipe (no teacher) against train photos a class (30, 60, 150, 300, all), resumable -> artifacts/learning_curve/
	$(PY) -m train.learning_curve --data $(DATA) --sizes 30 60 150 300 $(ARGS) & \
	$(PY) -m train.learning_curve --data $(DATA) --sizes 0 $(ARGS); s=$$?; wait $$! && exit $$s

results: $(STAMP) ## docs/results.md's size and run tables and docs/frontier.png, from the run log docs/runs.jsonl
	$(PY) -m train.results render

FILES ?=
predict: $(STAMP) data ## label and probabilities of FILES (images, folders or quoted globs); ARGS='--out dir' writes annotated copies
	@test -n "$(FILES)" || { echo "usage: make predict FILES='photo.jpg [folder/ ...]' [ARGS='--out artifacts/predict --json']"; exit 2; }
	$(PY) -m train.dog_emotion predict $(FILES) --weights $(WEIGHTS) $(ARGS)

evaluate: $(STAMP) data ## accuracy of WEIGHTS on the test split of DATA (last line: JSON)
	$(PY) -m train.dog_emotion evaluate --data $(DATA) --weights $(WEIGHTS) $(ARGS)

eda: $(STAMP) data ## exploratory analysis of DATA -> artifacts/eda/ (PNGs + summary.md)
	$(PY) -m train.eda --data $(DATA) $(ARGS)

prepare-data: $(STAMP) ## RAW=<Kaggle download> -> deduplicated, split copy in OUT (default artifacts/prepared_data)
	@test -n "$(RAW)" || { echo "usage: make prepare-data RAW=<folder with one subfolder per class> [OUT=...]"; exit 2; }
	$(PY) -m train.prepare_data --raw $(RAW) --out $(OUT) $(SPLIT) $(ARGS)

profile: $(STAMP) ## parameters and MACs per layer of WEIGHTS (thop + FlopCounterMode) -> artifacts/profile/
	$(PY) -m export.profile --weights $(WEIGHTS) $(ARGS)

FORMATS ?=
export: $(STAMP) data ## TorchScript, ONNX, .ort, INT8 ONNX, .pte and .tflite (FP32, INT8; .tflite after make venv-litert) of WEIGHTS, each verified, with parity and model card, as one set -> artifacts/export/; FORMATS='tflite_app' writes only those rows
	$(PY) -m export.export --weights $(WEIGHTS) --data $(DATA) $(if $(FORMATS),--formats $(FORMATS)) $(ARGS)

model-card: $(STAMP) ## copy artifacts/export/MODEL_CARD.md to the project's MODEL_CARD.md (refused unless that export is of weights/dog_emotion.pkl)
	$(PY) -m export.model_card

# The shipped weights learnt val, so their temperature is fitted on the val logits of a sibling: the
# shipped recipe trained on train only: what `make train` writes (trained here if missing).
SIBLING ?= artifacts/train/dog_emotion.pkl
artifacts/train/dog_emotion.pkl:
	$(MAKE) train
temperature: $(STAMP) data $(SIBLING) ## record in WEIGHTS the temperature fitted on val with SIBLING's logits (make export folds it)
	$(PY) -m export.calibration --weights $(WEIGHTS) --sibling $(SIBLING) --data $(DATA)

artifacts/export/dog_emotion.onnx: $(WEIGHTS) | $(STAMP) data
	$(PY) -m export.export --weights $(WEIGHTS) --data $(DATA)

bench: $(STAMP) data artifacts/export/dog_emotion.onnx ## latency/throughput of every format, pipeline and MNIST ratios, export time (ARGS='--train-epochs 2': training epoch time 1x1, 1x2, 2 procs x1) -> artifacts/bench/
	$(PY) -m benchmark.bench --weights $(WEIGHTS) --data $(DATA) $(if $(RECIPE),--recipe $(RECIPE)) $(ARGS)

# The browser demo: onnxruntime-web from web/package-lock.json, the exported models beside the page.
HOST ?= 127.0.0.1
PORT ?= 8000
web/node_modules/.package-lock.json: web/package-lock.json
	cd web && npm ci --no-audit --no-fund
demo: $(STAMP) web/node_modules/.package-lock.json artifacts/export/dog_emotion.onnx ## the model in the browser (onnxruntime-web): http://localhost:8000/ (HOST=0.0.0.0 for a phone on the network)
	mkdir -p web/models
	for f in $$($(PY) -m export.formats --web-files); do rm -f web/models/$$f; if [ -f artifacts/export/$$f ]; then cp artifacts/export/$$f web/models/; fi; done
	$(PY) web/serve.py --host $(HOST) --port $(PORT)

mnist: $(STAMP) ## from-scratch 784-128-10 MNIST network (both inits) -> artifacts/mnist/
	$(PY) -m train.mnist_scratch train $(ARGS)

lr-sweep: $(STAMP) ## learning-rate study of the from-scratch network -> artifacts/mnist/lr_sweep.*
	$(PY) -m train.mnist_scratch sweep $(ARGS)

vgg: $(STAMP) data ## VGG16 predictions and first-layer filters (needs the ImageNet weights file; ARGS='--weights random' without) -> artifacts/vgg/
	$(PY) -m train.vgg_filters $(ARGS)

test: $(STAMP) data ## run the test suite (pytest on two workers, about 7 minutes on 2 cores)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests $(ARGS)

clean: ## remove generated files (artifacts/), keep the venv and weights/
	rm -rf artifacts
