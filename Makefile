# Everything runs inside .venv, created on first use from the Python on PATH.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-dev install-gpu install-tpu demo test lint bench clean samples

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# PYTHONWARNINGS: setuptools' editable install warns about same-named folders in the
# working directory on every install (a checkout always has one); tests/test_packaging.py
# checks that building the package itself warns about nothing.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e ".[dev,onnx,mlflow,optuna,beam]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# A Linux GPU server: TensorFlow's CUDA libraries come with tensorflow[and-cuda].
install-gpu: | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[gpu]"
	touch $(VENV)/.installed

# A Cloud TPU VM: tensorflow-tpu, then pretrainer and its other dependencies without
# letting pip pull the CPU `tensorflow` wheel over it (keras-hub -> tensorflow-text
# depend on `tensorflow` by name). LIBTPU_INDEX is Google's libtpu wheel index.
LIBTPU_INDEX ?= https://storage.googleapis.com/libtpu-releases/index.html
install-tpu: | $(BIN)/python
	$(BIN)/pip install --quiet "tensorflow-tpu==2.21.*" -f $(LIBTPU_INDEX)
	$(BIN)/pip install --quiet --no-deps -e . "keras-hub==0.32.*" "tensorflow-text==2.21.*"
	$(BIN)/python scripts/deps.py --without-tensorflow | xargs $(BIN)/pip install --quiet
	touch $(VENV)/.installed

demo: install
	$(BIN)/pretrainer pipeline --config fashion_demo
	@echo "pretrainer is installed in $(VENV): source $(VENV)/bin/activate, then pretrainer --help"

test: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not bench"

lint: install-dev
	$(BIN)/ruff check pretrainer tests benchmarks scripts

bench: install-dev
	$(BIN)/python -m pytest -q -n 2 -m bench tests/test_benchmarks.py
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/collect_read.py
	$(BIN)/python benchmarks/seed_at_size.py
	$(BIN)/python benchmarks/mlm_epochs.py
	$(BIN)/python benchmarks/pretext_epochs.py
	$(BIN)/python benchmarks/memory_scale.py
	$(BIN)/python benchmarks/beam_collect.py --rules stratified hash
	$(BIN)/python benchmarks/serve_latency.py
	bash benchmarks/gpu_check.sh --quick
	$(BIN)/python benchmarks/summary.py

samples: install
	$(BIN)/python scripts/make_samples.py

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
