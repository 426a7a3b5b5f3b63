# The README's Quick start uses these targets: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU build of torch by default (fast to install, runs anywhere). GPU machines, e.g.:
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@echo "==> creating $(VENV) and installing (torch: $(TORCH))"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/hpo run jobs/digits-asha.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/results_io.py
	$(BIN)/python bench/search_efficiency.py
	$(BIN)/python bench/determinism.py
	$(BIN)/python bench/resume.py

clean:
	rm -rf $(VENV) results .pytest_cache
