# The README's Quick start uses these targets: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch==2.13.0 from the package index pip is set up with. From PyPI on Linux that is the CUDA build (GBs);
# the CPU build (fast to install, runs anywhere) and a given CUDA build, as the README says:
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup demo test test-fast lint docs bench gpu-check image-test dashboard-shots clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@echo "==> creating $(VENV) and installing (torch: $(TORCH))"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/hpo run jobs/digits-asha.yaml

# Two pytest workers, each with its own session Ray and S3 server: on 2 cores the suite is ~60% busy run one test
# at a time (tests wait on Ray's starts, node verdicts, autoscalers). loadscope: one worker runs all of a module's
# tests, so a module-scoped fixture (a Ray head, a fake cluster, a finished run) is made once; the modules in
# conftest.py's order (MODULE_ORDER: the waiting ones on one worker beside the busy ones on the other), not
# xdist's. (loadgroup and xdist_group marks would be finer, but pytest 9.2 ignores the group xdist 3.8 adds to a
# test's id.)
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The edit loop: no Ray, no subprocess, no sleep (conftest.py enforces it); the same tests run in `make test`.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The Docker image built on a real engine and run: the demo job in a container, a 3-container Ray cluster running a
# submitted DDP job into SeaweedFS on this host, a rebuild after a code change (tests/test_image.py says how; about
# 4 min cold here). Without a Docker engine it says so in one line and exits 0. CI installs docker.io and debootstrap.
image-test: setup
	@why=$$($(BIN)/python tests/test_image.py) || { echo "$$why"; exit 0; }; \
	$(BIN)/python -m pytest -m image -s tests/test_image.py

# A screenshot of every view of `hpo dashboard`, taken by headless Chromium on a run in progress on SeaweedFS (the
# browser test of tests/test_dashboard.py), written to SHOTS for a person to look at.
SHOTS ?= dashboard-shots
dashboard-shots: setup
	HPO_DASHBOARD_SHOTS=$(abspath $(SHOTS)) $(BIN)/python -m pytest -q -s tests/test_dashboard.py -k real_browser
	@echo "==> screenshots in $(SHOTS)/"

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fence.py  # Ray's internals: ray_support/ only

# The GPU figures (docs/benchmarks.md says which card gave them): ~8 min on one GPU; without one it says so, exit 0.
gpu-check: setup
	$(BIN)/python bench/gpu_check.py --out gpu-check.json

# The README's table of names, from the registries (a test checks it).
docs: setup
	$(BIN)/python -m orchestrator.spec.reference README.md

bench: setup
	$(PIP) install -e '.[dev,bench]'
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/scale.py --trials 10000 --iterations 100 --no-bare
	$(BIN)/python bench/results_io.py
	$(BIN)/python bench/search_efficiency.py
	$(BIN)/python bench/determinism.py
	$(BIN)/python bench/resume.py

clean:
	rm -rf $(VENV) results .pytest_cache
