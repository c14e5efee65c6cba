"""JupyterLab for real: the playground in a browser, and the `make start` path.

- The browser test starts JupyterLab on a free loopback port without a token, drives Debian's
  chromium with Playwright (`executable_path`; `playwright install` cannot download browsers
  here), opens notebooks/playground.ipynb, runs all cells, reads the model's answer off the page
  (it must equal what the server answers to the same request) and checks that the widgets respond:
  a click on Send streams a new answer, a key press on the threshold slider redraws the point.
  It takes a screenshot into the test's tmp_path. Skipped, with the reason, without chromium or
  playwright (`.ci/run` installs chromium from Debian).
- The `make start` test runs the Makefile's start target (doctor, then `slm-course lab`) with this
  interpreter's venv and checks that JupyterLab answers and lists the lessons; `slm-course lab`
  with nothing at OLLAMA_HOST starts the offline server there and stops it when it stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import BUNDLED, ROOT, free_port

pytestmark = pytest.mark.browser  # `make check` leaves it out

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTEBOOK = "notebooks/playground.ipynb"
AS_ROOT = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


def _browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return "chromium is not installed (Debian: apt-get install chromium)"
    return None


BROWSER_MISSING = _browser_missing()


def _lab_env(tmp_path: Path, ollama_host: str) -> dict[str, str]:
    """Jupyter's state in tmp_path (no user config, no news pop-up), the session's model server."""
    settings = tmp_path / "lab-settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return {
        **os.environ,
        "OLLAMA_HOST": ollama_host,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "PYTHONUNBUFFERED": "1",
    }


def _wait_for_json(url: str, timeout_s: float, proc: subprocess.Popen, log: Path):
    """GET url until it answers 200 with JSON; fail with the server's log if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session, and the kernels it started (by pid)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    for child in children:  # kernels run in sessions of their own
        try:
            child.terminate()
            child.wait(5)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            child.kill()


@pytest.fixture
def jupyterlab(ollama_host, tmp_path):
    """JupyterLab on a free loopback port, no token, root dir = the repository."""
    port = free_port()
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--no-browser",
                "--port",
                str(port),
                "--ServerApp.token=",
                "--ServerApp.password=",
                "--ServerApp.disable_check_xsrf=True",
                "--ServerApp.root_dir",
                str(ROOT),
                "--ServerApp.ip=127.0.0.1",
                *AS_ROOT,
            ],
            env=_lab_env(tmp_path, ollama_host),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_json(f"{url}/api/status", 60, proc, log)
        yield url
    finally:
        _stop(proc)


def _server_answer(ollama_host: str, model: str, prompt: str, max_tokens: int) -> str:
    """What the model server answers to the playground's request, asked directly over REST."""
    body = {
        "model": model,
        "prompt": prompt,
        "stream": False,
        "options": {"temperature": 0.0, "seed": 42, "num_predict": max_tokens},
    }
    r = httpx.post(f"{ollama_host}/api/generate", json=body, timeout=120)
    r.raise_for_status()
    return r.json()["response"]


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.timeout(300)
@pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")
def test_playground_runs_and_responds_in_a_browser(jupyterlab, ollama_host, tmp_path):
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1800})
            page.set_default_timeout(120_000)
            page.goto(f"{jupyterlab}/lab/tree/{NOTEBOOK}")
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()  # the kernel is up
            phases = {"kernel ready": time.monotonic() - t0}

            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

            # the first answer streams into the playground; the final stats line ends with "stopped"
            page.wait_for_function("() => (document.querySelector('.slm-stats') || {}).innerText?.includes('stopped:')")
            stats = page.locator(".slm-stats").inner_text()
            assert "tokens/s" in stats and "first token" in stats, stats
            shown = page.locator(".slm-answer").inner_text()
            model = page.locator(".slm-model select").input_value()  # the one pick_model chose
            expected = _server_answer(
                ollama_host, model, "In one sentence: what is a small language model good for?", 48
            )
            assert _words(shown) == _words(expected), "the page shows the model's own answer"
            assert "per million calls" in page.locator(".slm-cost").inner_text()
            phases["first answer"] = time.monotonic() - t0

            # every cell ran: the explorer is drawn and the last cell's table is there
            page.wait_for_selector(".slm-explorer img")
            page.wait_for_selector("table:has-text('cost_vs_large')")
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()
            assert (
                page.locator(
                    ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']:has-text('Traceback')"
                ).count()
                == 0
            )
            phases["all cells ran"] = time.monotonic() - t0

            # a click on Send streams a new answer for a new prompt
            page.locator(".slm-prompt textarea").fill("Name a fruit.")
            page.locator("button.slm-send").click()
            page.wait_for_function(  # a new, finished answer (not the placeholder, not the old one)
                "(old) => { const a = document.querySelector('.slm-answer').innerText;"
                " const s = document.querySelector('.slm-stats').innerText;"
                " return a !== old && !a.includes('waiting for the first token')"
                " && s.includes('stopped:'); }",
                arg=shown,
            )
            assert _words(page.locator(".slm-answer").inner_text()) == _words(
                _server_answer(ollama_host, model, "Name a fruit.", 48)
            )
            phases["click answered"] = time.monotonic() - t0

            # a key press on the threshold slider redraws the cost-quality point
            caption = page.locator(".slm-tradeoff").inner_text()
            assert caption.startswith("threshold 1:"), caption
            page.locator(".slm-threshold .noUi-handle").press("ArrowRight")
            page.wait_for_function("() => document.querySelector('.slm-tradeoff').innerText.startsWith('threshold 2:')")

            page.locator(".slm-playground").screenshot(path=str(tmp_path / "playground.png"))
            page.screenshot(path=str(tmp_path / "lab.png"))
        finally:
            browser.close()
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    print(f"\nbrowser test: {steps}, done {time.monotonic() - t0:.1f} s; screenshots in {tmp_path}")


def test_make_start_opens_jupyterlab_on_the_lessons(ollama_host, tmp_path):
    """`make start` with this venv (VENV=sys.prefix; `-o` skips the install stamp, so nothing
    is reinstalled): the doctor runs, then JupyterLab serves notebooks/."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = Path(sys.prefix)
    if not (venv / "bin" / "jupyter").exists() or not (venv / "bin" / "slm-course").exists():
        pytest.skip(f"{venv} has no jupyter/slm-course (run the tests from the course's venv)")
    port = free_port()
    args = " ".join(
        [f"--no-browser --port={port} --ServerApp.token= --ServerApp.password=", "--ServerApp.ip=127.0.0.1"]
    )  # the Makefile adds --allow-root as root
    log = tmp_path / "make-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-o", f"{venv}/.installed", "start", f"VENV={venv}", f"JUPYTER_ARGS={args}"],
            cwd=ROOT,
            env=_lab_env(tmp_path, ollama_host),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        listing = _wait_for_json(f"http://127.0.0.1:{port}/api/contents", 90, proc, log)
        names = {item["name"] for item in listing["content"]}
        lessons = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert lessons and lessons <= names, f"JupyterLab lists {sorted(names)}"
        assert "helpers" not in names  # it serves notebooks/, not the repository root
        assert httpx.get(f"http://127.0.0.1:{port}/lab", timeout=10).status_code == 200
        text = log.read_text()
        assert "checks:" in text and "pip install" not in text, text[-2000:]  # doctor ran, no reinstall
        assert f"A model server answers at {ollama_host}" in text, text[-2000:]  # no second server
    finally:
        _stop(proc)


def test_lab_starts_the_offline_server_when_nothing_answers(tmp_path):
    """`slm-course lab` (what `make start` runs) with no Ollama at OLLAMA_HOST: it starts the
    course's server there, JupyterLab serves the lessons, and both stop when it is told to."""
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "jupyter").exists():
        pytest.skip(f"{sys.prefix} has no jupyter (run the tests from the course's venv)")
    model_host = f"http://127.0.0.1:{free_port()}"  # nothing listens here yet
    port = free_port()
    env = {**_lab_env(tmp_path, model_host), "SLM_LOG_DIR": str(tmp_path / "logs")}
    log = tmp_path / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(venv_bin / "slm-course"),
                "lab",
                "--",
                "--no-browser",
                f"--port={port}",
                "--ServerApp.token=",
                "--ServerApp.password=",
                "--ServerApp.ip=127.0.0.1",
                *AS_ROOT,
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        tags = _wait_for_json(f"{model_host}/api/tags", 90, proc, log)
        assert BUNDLED in {m["name"] for m in tags["models"]}
        listing = _wait_for_json(f"http://127.0.0.1:{port}/api/contents", 90, proc, log)
        lessons = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert lessons <= {item["name"] for item in listing["content"]}  # the lessons, from any cwd
        text = log.read_text()
        assert "starting the course's offline server" in text and "slm-course-serve.log" in text, text
        proc.send_signal(signal.SIGTERM)  # to the launcher only: it must stop what it started
        proc.wait(30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{model_host}/api/version", timeout=1)
            except httpx.HTTPError:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"the offline server still answers after the launcher stopped:\n{text}")
        assert "Stopping the course's offline server" in log.read_text()
    finally:
        _stop(proc)
