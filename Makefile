# The appliance's two commands: `make run` and `make test`. Both set everything up on a
# fresh machine (venv, packages, models) and skip whatever is already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_DATA := $(CURDIR)/.test-data
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install models test-models run doctor test test-all bench clean

help:
	@echo "make run        set up, provision models, install the demo data, open the terminal UI"
	@echo "make test       set up and run the default tests (under 15 minutes)"
	@echo "make test-all   every test, slow ones included"
	@echo "make bench      benchmarks; results in bench/results/"

# llama-cpp-python compiles llama.cpp from source (about 6 minutes on 2 cores; pip caches
# the wheel). For CUDA: CMAKE_ARGS="-DGGML_CUDA=on" make install (see README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[station,test]'
	touch $(STAMP)

install: $(STAMP)

models: install
	$(BIN)/appliance models fetch

test-models: install
	APPLIANCE_DATA_DIR=$(TEST_DATA) $(BIN)/appliance models fetch

run: models
	$(BIN)/appliance doctor
	$(BIN)/appliance demo install --accounts-only
	$(BIN)/appliance demo bundle
	$(BIN)/appliance tui

doctor: install
	$(BIN)/appliance doctor

test: test-models
	APPLIANCE_TEST_MODELS=$(TEST_DATA)/models $(BIN)/python -m pytest -m "not slow" -q

test-all: test-models
	APPLIANCE_TEST_MODELS=$(TEST_DATA)/models $(BIN)/python -m pytest -q

bench: test-models
	APPLIANCE_TEST_MODELS=$(TEST_DATA)/models $(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(TEST_DATA) bench/results/*.json
