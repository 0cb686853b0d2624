# Set-up from nothing: `make demo` and `make test` install what they need into .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install demo test lint fmt clean

install: $(STAMP)

# torch is pinned and installed first, so pip never resolves a (multi-GB) CUDA build on its own.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The main job on a shipped fixture: old TF-style weights with a background class (1001 rows)
# fitted to 1000 classes, as timm's load_pretrained does; then the same checkpoint for 7 classes.
DEMO_OUT ?= $(or $(TMPDIR),/tmp)/ckptsurgeon-demo
demo: install
	@mkdir -p $(DEMO_OUT)
	@echo "\$$ ckptsurgeon adapt-head fixtures/resnet_1001.safetensors $(DEMO_OUT)/resnet_1000.safetensors --num-classes 1000 --force"
	@$(BIN)/ckptsurgeon adapt-head fixtures/resnet_1001.safetensors $(DEMO_OUT)/resnet_1000.safetensors --num-classes 1000 --force
	@echo
	@echo "\$$ ckptsurgeon adapt-head fixtures/deit.pth $(DEMO_OUT)/deit_7.safetensors --num-classes 7 --mode reinit --seed 0 --force"
	@$(BIN)/ckptsurgeon adapt-head fixtures/deit.pth $(DEMO_OUT)/deit_7.safetensors --num-classes 7 --mode reinit --seed 0 --force
	@echo
	@echo "\$$ ckptsurgeon diff fixtures/resnet.pth fixtures/resnet.safetensors"
	@$(BIN)/ckptsurgeon diff fixtures/resnet.pth fixtures/resnet.safetensors

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Long property-based fuzzing of the readers (the same tests `make test` runs, with 5000 random
# examples each instead of 120 fixed ones). Set FUZZ_PROFILE=fuzz-ci for the short pass.
FUZZ_PROFILE ?= fuzz-long
.PHONY: fuzz
fuzz: install
	CKPTSURGEON_FUZZ_PROFILE=$(FUZZ_PROFILE) $(BIN)/python -m pytest tests/test_fuzz.py --hypothesis-show-statistics

# Compatibility tier (tests/compat): a venv of its own with the libraries users trust as the judge.
# torch/torchvision are pinned to the builds on this machine's disk and installed first (pip would
# otherwise resolve a multi-GB CUDA build on its own); every later install repeats the pins so
# nothing can replace them. timm/transformers are pinned to the versions the tier was proven with.
CVENV   := .venv-compat
CBIN    := $(CVENV)/bin
CTORCH  := torch==2.14.1 torchvision==0.29.1
CLIBS   := timm==1.0.31 transformers==5.24.0 'pytest>=8' 'hypothesis>=6.100'
CSTAMP  := $(CVENV)/.installed
.PHONY: test-compat

$(CSTAMP): pyproject.toml
	test -x $(CBIN)/python || $(PY) -m venv $(CVENV)
	$(CBIN)/pip install -q --disable-pip-version-check $(CTORCH)
	$(CBIN)/pip install -q --disable-pip-version-check $(CTORCH) $(CLIBS)
	$(CBIN)/pip install -q --disable-pip-version-check $(CTORCH) -e .
	touch $(CSTAMP)

test-compat: $(CSTAMP)
	$(CBIN)/python -m pytest tests/compat -q -p no:cacheprovider -o addopts= --durations=10

# Not a test: times each command against what users run today (3 runs each, alternating) and prints
# a table. Generates its ~1.6 GB checkpoint once, outside the repo (${XDG_CACHE_HOME:-~/.cache}/ckptsurgeon-bench).
.PHONY: bench
bench: install
	$(BIN)/python bench/bench.py
