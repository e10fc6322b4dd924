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
ARGS ?=
TEACHER_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv data train train-quick sizes eda prepare-data evaluate profile export bench mnist lr-sweep vgg test clean

help: ## list every target with one line each
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: DATA=<split root> (default $(DATA)), WEIGHTS=<.pkl>, ARGS='<extra CLI options>',"
	@echo "             TEACHER_ARGS='<extra options for the teachers of make sizes>'"

$(STAMP): requirements.txt requirements.lock
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
	touch $@

venv: $(STAMP) ## create/refresh the virtualenv (.venv) with the pinned packages

# The default data set is linked, never copied; DATA=... points anywhere else.
data/dog_emotion:
	@if [ -d $(SHARED_DATA) ]; then mkdir -p data && ln -sfn ../$(SHARED_DATA) data/dog_emotion && echo "linked data/dog_emotion -> $(SHARED_DATA)"; \
	else echo "note: $(SHARED_DATA) not found; pass DATA=<your copy> (see README, 'Bring your own data')"; fi

data: data/dog_emotion ## link the default data set (../shared/datasets/dog_emotion) to data/dog_emotion

# The shipped recipe: `large` from scratch in one stage, 200 epochs, strong augmentation. One
# thread is part of the recipe: with it, a rerun on this machine gives the same weights bit for bit.
STRONG_AUG := --crop-scale 0.25 --erase-prob 0.25
SHIPPED_RECIPE := --model large --epochs 200 $(STRONG_AUG) --threads 1
train: $(STAMP) data ## train the shipped model from scratch (one stage; 47 min here, sharing the cores) -> artifacts/train/
	$(PY) -m train.dog_emotion train --data $(DATA) $(SHIPPED_RECIPE) $(ARGS)

train-quick: $(STAMP) data ## the shipped recipe for 30 epochs, for trying things (13 min here, sharing the cores) -> artifacts/train-quick/
	$(PY) -m train.dog_emotion train --data $(DATA) $(SHIPPED_RECIPE) --epochs 30 --threads 0 --out artifacts/train-quick $(ARGS)

# Teachers for distillation (README's size table): trained from scratch, one thread each,
# evaluated without flip averaging (half the cost). A teacher's folder name picks its options.
TEACHER_OPTS_small := --model small
TEACHER_OPTS_base := --model base
TEACHER_OPTS_large-seed0 := --model large --seed 0 --epochs 200
TEACHER_OPTS_large-seed1 := --model large --seed 1 --epochs 200
TEACHER_OPTS_large-aug := --model large --seed 0 --epochs 200 $(STRONG_AUG)
teacher = artifacts/teachers/$(1)/dog_emotion.pkl
SMALL_TEACHERS := $(call teacher,small) $(call teacher,base)

artifacts/teachers/%/dog_emotion.pkl: | $(STAMP) data
	@test -n "$(TEACHER_OPTS_$*)" || { echo "no teacher named '$*' in the Makefile (TEACHER_OPTS_$*)"; exit 1; }
	@echo "training teacher '$*' from scratch (20-40 min); progress: tail -f artifacts/teachers-$*.log"
	mkdir -p artifacts && $(PY) -m train.dog_emotion train --data $(DATA) $(TEACHER_OPTS_$*) --no-flip-average --threads 1 --out artifacts/teachers/$* $(TEACHER_ARGS) > artifacts/teachers-$*.log 2>&1 \
		|| { tail -n 20 artifacts/teachers-$*.log; exit 1; }
	@grep "^best epoch" artifacts/teachers-$*.log

sizes: $(STAMP) data ## the small rows of README's size table: 2 teachers, then `small` and `nano` distilled from them -> artifacts/sizes/
	$(MAKE) -j2 $(SMALL_TEACHERS)
	$(PY) -m train.dog_emotion train --data $(DATA) --model small --teacher $(SMALL_TEACHERS) --threads 1 --out artifacts/sizes/small $(ARGS)
	$(PY) -m train.dog_emotion train --data $(DATA) --model nano --teacher $(SMALL_TEACHERS) --threads 1 --out artifacts/sizes/nano $(ARGS)

evaluate: $(STAMP) data ## accuracy of WEIGHTS on the test split of DATA (last line: JSON)
	$(PY) -m train.dog_emotion evaluate --data $(DATA) --weights $(WEIGHTS) $(ARGS)

eda: $(STAMP) data ## exploratory analysis of DATA -> artifacts/eda/ (PNGs + summary.md)
	$(PY) -m train.eda --data $(DATA) $(ARGS)

prepare-data: $(STAMP) ## RAW=<Kaggle download> -> deduplicated, split copy in OUT (default artifacts/prepared_data)
	@test -n "$(RAW)" || { echo "usage: make prepare-data RAW=<folder with one subfolder per class> [OUT=...]"; exit 2; }
	$(PY) -m train.prepare_data --raw $(RAW) --out $(OUT) $(ARGS)

profile: $(STAMP) ## parameters and MACs per layer of WEIGHTS (thop + FlopCounterMode) -> artifacts/profile/
	$(PY) -m export.profile --weights $(WEIGHTS) $(ARGS)

export: $(STAMP) data ## TorchScript, ONNX, .ort and INT8 ONNX of WEIGHTS, each verified -> artifacts/export/
	$(PY) -m export.export --weights $(WEIGHTS) --data $(DATA) $(ARGS)

artifacts/export/dog_emotion.onnx: $(WEIGHTS) | $(STAMP) data
	$(PY) -m export.export --weights $(WEIGHTS) --data $(DATA)

bench: $(STAMP) data artifacts/export/dog_emotion.onnx ## latency/throughput table of every format + pipeline and MNIST ratios -> artifacts/bench/
	$(PY) -m benchmark.bench --weights $(WEIGHTS) --data $(DATA) $(ARGS)

mnist: $(STAMP) ## from-scratch 784-128-10 MNIST network (both inits) -> artifacts/mnist/
	$(PY) -m train.mnist_scratch train $(ARGS)

lr-sweep: $(STAMP) ## learning-rate study of the from-scratch network -> artifacts/mnist/lr_sweep.*
	$(PY) -m train.mnist_scratch sweep $(ARGS)

vgg: $(STAMP) data ## VGG16 predictions and first-layer filters (needs the ImageNet weights file; ARGS='--weights random' without) -> artifacts/vgg/
	$(PY) -m train.vgg_filters $(ARGS)

test: $(STAMP) data ## run the test suite (pytest, under 10 minutes)
	$(PY) -m pytest -q tests $(ARGS)

clean: ## remove generated files (artifacts/), keep the venv and weights/
	rm -rf artifacts
