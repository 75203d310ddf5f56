# Everything runs inside .venv, created on first use from the Python on PATH.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Quiet TensorFlow's C++ start-up chatter in demos and tests.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install install-dev demo test lint bench clean samples

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,onnx]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/pretrainer pipeline --config fashion_ae

test: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

lint: install-dev
	$(BIN)/ruff check pretrainer tests benchmarks scripts

bench: install-dev
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/collect_read.py

samples: install
	$(BIN)/python scripts/make_samples.py

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
