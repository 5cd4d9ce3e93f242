# On a fresh machine `make run` and `make test` are the whole set-up: each creates .venv if
# missing and installs the project into it (torch from the fleet's local wheel cache).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.onnxship-installed
CONFIG  ?= configs/mnist_simplecnn.toml
OUT     ?= runs/mnist_simplecnn
# MNIST beside the clone (../shared/data) unless the caller sets it; made absolute here, so
# tests and tools that run in another working directory still find it.
ONNXSHIP_DATA_DIR ?= ../shared/data
override ONNXSHIP_DATA_DIR := $(abspath $(ONNXSHIP_DATA_DIR))
export ONNXSHIP_DATA_DIR

.PHONY: run test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The only torch/torchvision pair that imports here; pip takes both from local disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/onnxship run --config $(CONFIG) --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest

# mypy sees the packages under their installed names (onnxship.models, ...) through a tree of
# links that mirrors the package-dir mapping; it follows no editable-install import hook.
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/onnxship
	for f in onnxship/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/onnxship/; done
	for d in models export calibrate runtime_bench; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/onnxship/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p onnxship

clean:
	rm -rf $(VENV) runs
