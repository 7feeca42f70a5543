# The appliance's two commands: `make run` and `make test`. Both set everything up on a
# fresh machine (venv, packages, models) and skip whatever is already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_DATA := $(CURDIR)/.test-data
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install llama-rebuild models test-models run doctor test test-fast lint test-all bench adapters clean

help:
	@echo "make run        set up, provision models, install the demo data, open the terminal UI"
	@echo "make test       set up and run the default tests (under 15 minutes)"
	@echo "make test-fast  the tests that need no models (about a minute)"
	@echo "make lint       ruff and mypy"
	@echo "make test-all   every test, slow ones included"
	@echo "make bench      benchmarks; results in bench/results/"
	@echo "make adapters   train the demo specialists (build station; long: see README)"
	@echo "make llama-rebuild  build llama.cpp from source again (portable; LLAMA_BACKEND=cuda for CUDA)"

# llama.cpp is built from source by deploy/build_llama_cpp.py, never natively: the portable
# x86-64-v3 baseline (compat x86-64-v2 on a CPU without AVX2), about 3-10 minutes on 2 cores
# the first time, from a wheel kept under .build/wheels/<build key> after that (never pip's
# cache). LLAMA_BACKEND=cuda for the CUDA build; see README, "The llama.cpp build".
LLAMA_BACKEND ?= cpu
LLAMA_VARIANT ?= auto
LLAMA_BUILD := $(BIN)/python deploy/build_llama_cpp.py --backend $(LLAMA_BACKEND) --variant $(LLAMA_VARIANT)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml deploy/build_llama_cpp.py | $(BIN)/python
	$(LLAMA_BUILD)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[station,test]'
	touch $(STAMP)

# the check is cheap when the recorded build is installed; anything else is rebuilt or reinstalled
install: $(STAMP)
	@$(LLAMA_BUILD)

llama-rebuild: | $(BIN)/python
	$(LLAMA_BUILD) --force

models: install
	$(BIN)/appliance models fetch

test-models: install
	APPLIANCE_DATA_DIR=$(TEST_DATA) $(BIN)/appliance models fetch --with gemma3-270m

run: models
	$(BIN)/appliance doctor
	$(BIN)/appliance demo install --accounts-only
	$(BIN)/appliance demo bundle
	$(BIN)/appliance tui

doctor: install
	$(BIN)/appliance doctor

test: test-models
	APPLIANCE_TEST_MODELS=$(TEST_DATA)/models $(BIN)/python -m pytest -m "not slow" -q

# the in-process tier without models: logic on the scripted engine and the fakes (under 2 minutes)
test-fast: install
	$(BIN)/python -m pytest -m "not models and not slow and not processes" -q

# ruff and mypy (configured in pyproject.toml)
lint: install
	$(BIN)/ruff check appliance tests bench deploy
	$(BIN)/mypy

test-all: test-models
	APPLIANCE_TEST_MODELS=$(TEST_DATA)/models $(BIN)/python -m pytest -q

bench: test-models
	APPLIANCE_TEST_MODELS=$(TEST_DATA)/models $(BIN)/python -m bench

# The demo specialists: a Banking77 intent classifier and a WNUT17 entity extractor on the
# SmolLM2 base, trained on the build station and committed under bundles/adapters/ (with the
# command, seed and data digest that made them), so `make run` never retrains.
ADAPTERS := bundles/adapters
SHARED_DATA := $(CURDIR)/../shared/data
STATION := $(TEST_DATA)/station
# Banking77: one epoch (40 minutes on 2 cores), then 500 more steps resumed from it (same split), keeping
# the weights with the most validation labels exactly right
adapters: test-models
	test -f $(ADAPTERS)/banking77-intent/banking77-intent.gguf || test -d $(STATION)/banking77-intent-e1 || \
	  APPLIANCE_DATA_DIR=$(TEST_DATA) $(BIN)/appliance finetune --task classify \
	  --data $(SHARED_DATA)/banking77/train.csv --base smollm2-135m-instruct --out $(STATION)/banking77-intent-e1 \
	  --name banking77-intent --epochs 1 --learning-rate 5e-4 --rank 16 --eval-every 150 --seed 1234 --eval-limit 1001
	test -f $(ADAPTERS)/banking77-intent/banking77-intent.gguf || APPLIANCE_DATA_DIR=$(TEST_DATA) \
	  $(BIN)/appliance finetune --task classify --data $(SHARED_DATA)/banking77/train.csv \
	  --base smollm2-135m-instruct --out $(ADAPTERS)/banking77-intent --resume $(STATION)/banking77-intent-e1 \
	  --max-steps 500 --learning-rate 3e-4 --rank 16 --eval-every 100 --patience 5 --seed 1234 --eval-limit 1001
	test -f $(ADAPTERS)/wnut17-entities/wnut17-entities.gguf || APPLIANCE_DATA_DIR=$(TEST_DATA) \
	  $(BIN)/appliance finetune --task extract --data $(SHARED_DATA)/wnut17/train.conll \
	  --eval-data $(SHARED_DATA)/wnut17/dev.conll --base smollm2-135m-instruct \
	  --out $(ADAPTERS)/wnut17-entities --epochs 1 --learning-rate 5e-4 --rank 16 --eval-every 100 \
	  --seed 1234 --eval-limit 1009

clean:
	rm -rf $(VENV) $(TEST_DATA) bench/results/*.json
