# `make demo` and `make test` work on a fresh machine: they create .venv and install into it.
# torch is pinned first so that pip takes the CPU wheel instead of a multi-GB CUDA build;
# override with e.g. `make TORCH=torch==2.5.1 test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/immunity demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs results
