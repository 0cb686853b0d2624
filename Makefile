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

demo: install
	@echo "\$$ ckptsurgeon inspect fixtures/resnet.safetensors --tree"
	@$(BIN)/ckptsurgeon inspect fixtures/resnet.safetensors --tree
	@echo
	@echo "\$$ ckptsurgeon convert fixtures/train.pth /tmp/ckptsurgeon-demo.safetensors --force"
	@$(BIN)/ckptsurgeon convert fixtures/train.pth /tmp/ckptsurgeon-demo.safetensors --force

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
