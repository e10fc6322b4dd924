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
	@echo "             TEACHER_ARGS='<extra options for the teachers of make train>'"

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

# Teachers for distillation: trained from scratch, one thread each, evaluated without flip
# averaging (half the cost). A teacher's folder name picks its options here.
TEACHER_OPTS_small := --model small
TEACHER_OPTS_base := --model base
teacher = artifacts/teachers/$(1)/dog_emotion.pkl

# The shipped recipe has two stages: two teachers trained from scratch (in parallel, one thread
# each), then the shipped `small` model distilled from their ensemble.
TEACHERS := $(call teacher,small) $(call teacher,base)
train: $(STAMP) data ## train the shipped model from scratch: 2 teachers, then the distilled student -> artifacts/train/
	$(MAKE) -j2 $(TEACHERS)
	$(PY) -m train.dog_emotion train --data $(DATA) --model small --teacher $(TEACHERS) --threads 1 $(ARGS)

artifacts/teachers/%/dog_emotion.pkl: | $(STAMP) data
	@test -n "$(TEACHER_OPTS_$*)" || { echo "no teacher named '$*' in the Makefile (TEACHER_OPTS_$*)"; exit 1; }
	@echo "training teacher '$*' from scratch (20-40 min); progress: tail -f artifacts/teachers-$*.log"
	mkdir -p artifacts && $(PY) -m train.dog_emotion train --data $(DATA) $(TEACHER_OPTS_$*) --no-flip-average --threads 1 --out artifacts/teachers/$* $(TEACHER_ARGS) > artifacts/teachers-$*.log 2>&1 \
		|| { tail -n 20 artifacts/teachers-$*.log; exit 1; }
	@grep "^best epoch" artifacts/teachers-$*.log

train-quick: $(STAMP) data ## one 30-epoch run of the shipped config, no teachers, for trying things (a few minutes) -> artifacts/train-quick/
	$(PY) -m train.dog_emotion train --data $(DATA) --epochs 30 --out artifacts/train-quick $(ARGS)

sizes: $(STAMP) data ## the other rows of README's size table: the two teachers, then nano distilled from them -> artifacts/sizes/
	$(MAKE) -j2 $(TEACHERS)
	$(PY) -m train.dog_emotion train --data $(DATA) --model nano --teacher $(TEACHERS) --threads 1 --out artifacts/sizes/nano $(ARGS)

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
