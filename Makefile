# Two commands for a fresh machine: `make demo` and `make test`.
# torch is pinned here (not in pyproject) so a CPU machine gets the local CPU
# build instead of gigabytes of CUDA wheels; GPU users install their own torch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/horizon demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python analysis/bench_scan.py

clean:
	rm -rf $(VENV) build *.egg-info
