"""Shared test setup: one real `slm-course serve` for the whole session, on a free loopback port,
started before the first test or notebook that needs it (a run of `no_server` tests has none).

Tests, papermill runs and nbval kernels all reach it through OLLAMA_HOST (kernels inherit the
environment of this process). Set SLM_TEST_OLLAMA_HOST to run everything against a real Ollama.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from helpers.net import free_loopback_port as free_port  # noqa: F401  (tests import it from here)
from helpers.registry import BUNDLED_MODEL as BUNDLED  # noqa: F401  (tests import it from here)
from helpers.serving.launcher import start_server  # noqa: F401  (tests import it from here)
from helpers.serving.launcher import stop as stop_server  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parent
_RECORDERS: dict = {}  # lesson path -> helpers.authoring.book.Recorder (the course site's records)


_SESSION: dict = {}


def _ensure_server() -> str:
    """Start the session's model server the first time something needs it (once per run).

    Tests, papermill runs and nbval kernels reach it through OLLAMA_HOST (kernels inherit the
    environment of this process). SLM_TEST_OLLAMA_HOST points everything at a real Ollama.
    """
    if "host" in _SESSION:
        return _SESSION["host"]
    _SESSION["previous"] = os.environ.get("OLLAMA_HOST")
    external = os.environ.get("SLM_TEST_OLLAMA_HOST")
    if external:
        _SESSION["host"] = os.environ["OLLAMA_HOST"] = external
        return external
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="slm-course-serve-")) / "serve.log"
    _SESSION["proc"] = start_server(port, log=log)
    _SESSION["host"] = os.environ["OLLAMA_HOST"] = f"http://127.0.0.1:{port}"
    return _SESSION["host"]


def pytest_configure(config) -> None:
    # Kernels (nbval, papermill) inherit this environment: with no MPLBACKEND they draw plots
    # inline, so the executed lessons the course site is built from keep their figures. This
    # process, headless, falls back to Agg by itself.
    os.environ.pop("MPLBACKEND", None)
    # llama.cpp's threads spin-wait; with the kernels and pytest on the same 2 cores one thread
    # is steadier than two (set SLM_THREADS yourself to override)
    os.environ.setdefault("SLM_THREADS", "1")
    config.addinivalue_line("markers", "no_server: the test needs no model server (unit test)")
    config.addinivalue_line("markers", "browser: drives JupyterLab in chromium (slow)")
    config.addinivalue_line(
        "markers",
        "slow: takes over ~6 s, or is a control experiment or a second check of what the fast loop covers; "
        "`make check` leaves it out, `make test` runs it",
    )
    config.addinivalue_line("markers", "site: checks the built course site (collected only with --site)")


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--site",
        action="store_true",
        help="run the tests of the built course site (make test: after `slm-course book`)",
    )


# Lesson 05 asks the offline pair the whole shared set (the longest file of the suite); lessons 06
# and 07 reuse its answers and wait for them while it asks (helpers.quality.paired_answers). The
# longest files first and 05's readers last, so that no xdist worker sits waiting (make test hands
# files out in this order: --no-loadscope-reorder; xdist would otherwise order them by test count).
FIRST = ("notebooks/05_quality.ipynb", "tests/test_server_hardening.py", "tests/test_notebooks.py")
LAST = ("notebooks/06_routing.ipynb", "notebooks/07_hybrid_app.ipynb")


def _rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return FIRST.index(path) if path in FIRST else (len(FIRST) + 1 if path in LAST else len(FIRST))


def pytest_collection_modifyitems(config, items) -> None:
    """Lesson 05 first and the lessons that reuse its answers last (a stable sort: each file's
    cells keep their order). The course site exists only once `slm-course book` has built it from
    this run's lessons, so its tests are deselected unless --site asks for them (make test's last step)."""
    items.sort(key=_rank)
    if config.getoption("--site"):
        return
    site = [item for item in items if item.get_closest_marker("site") is not None]
    if site:
        config.hook.pytest_deselected(items=site)
        items[:] = [item for item in items if item.get_closest_marker("site") is None]


def pytest_collection_finish(session) -> None:
    """Bring the server up once, before anything runs, when a collected test or notebook needs
    it - before nbval's first kernel too, which reads OLLAMA_HOST when it starts. A run of
    unit tests only (all marked `no_server`) never starts it."""
    if any(item.get_closest_marker("no_server") is None for item in session.items):
        _ensure_server()


def pytest_sessionfinish(session, exitstatus) -> None:
    proc = _SESSION.pop("proc", None)
    if proc is not None:
        stop_server(proc)
    if "host" in _SESSION:
        _SESSION.pop("host")
        previous = _SESSION.pop("previous", None)
        if previous is None:
            os.environ.pop("OLLAMA_HOST", None)
        else:
            os.environ["OLLAMA_HOST"] = previous


def _lesson_recorder(item):
    """The Recorder of the lesson this nbval cell belongs to (None for other items)."""
    if type(item).__name__ != "IPyNbCell":
        return None
    from helpers.authoring import book

    path = Path(str(item.fspath)).resolve()
    if path.parent != ROOT / "notebooks" or not book.LESSON_RE.match(path.name):
        return None
    if path not in _RECORDERS:
        _RECORDERS[path] = book.Recorder(path, book.run_facts(os.environ.get("OLLAMA_HOST")))
    return _RECORDERS[path]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Every lesson cell nbval runs is recorded with its outputs: `make test` leaves the executed
    lessons in build/executed/, which the course site is built from (never executed twice)."""
    outcome = yield
    if call.when == "call":
        rec = _lesson_recorder(item)
        if rec is not None:
            rec.add(
                item.cell_num, getattr(item, "test_outputs", None) or [], outcome.get_result().outcome, call.duration
            )


def pytest_runtest_teardown(item, nextitem):
    path = Path(str(item.fspath)).resolve()
    if path in _RECORDERS and (nextitem is None or Path(str(nextitem.fspath)).resolve() != path):
        _RECORDERS.pop(path).write()


@pytest.fixture(scope="session")
def ollama_host() -> str:
    """The address of the Ollama API every test and notebook in this session talks to: the
    kit's own server (SLM_TEST_OLLAMA_HOST points it at a real Ollama)."""
    return _ensure_server()


@pytest.fixture(scope="module")
def client(ollama_host):
    """The official `ollama` client on the session's server (generous timeout: CI is busy)."""
    import ollama

    return ollama.Client(host=ollama_host, timeout=180)


@pytest.fixture(scope="module")
def oa(ollama_host):
    """The official `openai` client on the session server's /v1 (no retries: errors show)."""
    import openai

    return openai.OpenAI(base_url=f"{ollama_host}/v1", api_key="ollama", timeout=180, max_retries=0)
