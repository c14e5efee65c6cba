"""`slm-course lab` (what `make start` runs): JupyterLab on the lessons, with a model that answers.

When an Ollama API answers at OLLAMA_HOST (a real Ollama, or a `slm-course serve` you started)
the notebooks use it. When nothing answers and OLLAMA_HOST is this machine, the course's
offline server starts there with the bundled model, lives as long as JupyterLab does, and
stops with it. A remote OLLAMA_HOST that does not answer is reported, never replaced.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import INSTALL_OLLAMA, BackendUnavailable
from ..net import api_answers, is_loopback_host
from ..paths import course_root
from ..registry import BUNDLED_MODEL
from ..settings import get_settings, redact_url

LESSONS = course_root() / "notebooks"


def log_dir() -> Path:
    """Where background servers write their logs: SLM_LOG_DIR, default ~/.cache/slm-course."""
    folder = Path(get_settings().log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _detached() -> dict:
    """Popen arguments that keep a child out of the terminal's Ctrl-C (we stop it ourselves)."""
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}  # Windows only
    return {"start_new_session": True}


def ensure_server(host: str, *, wait_s: float = 60.0, user: str = "JupyterLab") -> subprocess.Popen | None:
    """Make sure an Ollama API answers at `host`. Returns the server process this call started
    (stop it with `stop`), or None when one was already there or none could be started.
    Waits at most `wait_s` seconds; says what it found or did, and the next step on failure.
    `user` names what the server runs for ("JupyterLab", "the site build") in those messages."""
    shown = redact_url(host)  # what is printed: never a password the URL may carry
    version = api_answers(host)
    if version is not None:
        print(f"A model server answers at {shown} (version {version}): the notebooks will use it.")
        return None
    if not is_loopback_host(host):
        print(
            f"[WARN] nothing answers at OLLAMA_HOST={shown}, and that is another machine, so the "
            "course cannot start a server there.\n  Start Ollama on that machine, or unset "
            "OLLAMA_HOST to use this one. The notebooks will say what is missing."
        )
        return None
    import httpx

    url = httpx.URL(host)
    bind = url.host if url.host not in ("localhost", "") else "127.0.0.1"
    log = log_dir() / "slm-course-serve.log"
    print(
        f"Ollama is not answering at {shown}: starting the course's offline server there "
        f"(`slm-course serve`, bundled model {BUNDLED_MODEL}) for as long as {user} runs.\n"
        f"  Its log: {log}\n  To use Ollama instead: {INSTALL_OLLAMA}, then start again."
    )
    proc = spawn_server(url.port or 11434, host=bind, log=log)
    state = wait_until_answers(proc, host, wait_s)
    if state == "ready":
        print(f"The offline server answers at {shown} (pid {proc.pid}).")
        return proc
    if state == "exited":
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        print(
            f"[FAIL] the offline server exited (code {proc.returncode}):\n  "
            + "\n  ".join(tail)
            + f"\n  Full log: {log}. {user} starts anyway; lessons "
            "will say that no model server answers."
        )
        return None
    print(
        f"[WARN] the offline server did not answer within {wait_s:.0f} s; it keeps starting "
        f"in the background (pid {proc.pid}, log {log})."
    )
    return proc


def spawn_server(
    port: int, *extra: str, host: str = "127.0.0.1", log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `slm-course serve` on host:port as a child process (its own session, so a
    terminal's Ctrl-C is not its; stop it with `stop`). Output goes to `log` (else nowhere);
    `env` adds environment variables (e.g. OLLAMA_NUM_PARALLEL) to this process's own."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "helpers.cli", "serve", "--host", host, "--port", str(port), *extra],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=course_root(),
            **_detached(),
        )
    finally:
        if not isinstance(out, int):
            out.close()


def wait_until_answers(proc: subprocess.Popen, host: str, wait_s: float) -> str:
    """Poll until the server at `host` answers: "ready", "exited" (the process died first) or
    "timeout" (after `wait_s` seconds)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if api_answers(host, timeout_s=1.0) is not None:
            return "ready"
        if proc.poll() is not None:
            return "exited"
        time.sleep(0.2)
    return "timeout"


def start_server(
    port: int,
    *extra: str,
    host: str = "127.0.0.1",
    log: Path | None = None,
    wait_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start `slm-course serve` and wait until it answers: the one way the tests, the
    benchmarks and `slm-course lab` start a server. Raises BackendUnavailable if it does not."""
    proc = spawn_server(port, *extra, host=host, log=log, env=env)
    state = wait_until_answers(proc, f"http://{host}:{port}", wait_s)
    if state != "ready":
        stop(proc)
        where = f" (log: {log})" if log else ""
        what = "exited" if state == "exited" else "did not answer"
        raise BackendUnavailable(
            f"`slm-course serve` on port {port} {what}{where}", "see the log; is the port free and the kit installed?"
        )
    return proc


def stop(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """Stop a process started by `ensure_server`: politely, then for sure."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_lab(jupyter_args: list[str], *, host: str | None = None, notebooks: Path | None = None) -> int:
    """JupyterLab on `notebooks` with OLLAMA_HOST answering; returns JupyterLab's exit code."""
    host = host or get_settings().ollama_host
    folder = notebooks or (LESSONS if LESSONS.is_dir() else Path.cwd() / "notebooks")
    server = ensure_server(host)
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", str(folder), *jupyter_args], env={**os.environ, "OLLAMA_HOST": host}
    )

    # Ctrl-C belongs to JupyterLab (it asks before shutting down): this process waits for it.
    # A SIGTERM to this process stops JupyterLab too. Either way the server we started stops.
    def _terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate),
    }
    try:
        return lab.wait()
    except SystemExit as exc:
        stop(lab, 20.0)
        return int(exc.code or 1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if server is not None:
            print("Stopping the course's offline server.")
            stop(server)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="model server address (default: OLLAMA_HOST)")
    p.add_argument("--notebooks", type=Path, default=None, help="folder to open (default: the lessons)")
    p.add_argument(
        "jupyter_args",
        nargs=argparse.REMAINDER,
        help="after --: arguments for `jupyter lab` (e.g. -- --no-browser --port 8899)",
    )


def run(args: argparse.Namespace) -> int:
    extra = list(args.jupyter_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return run_lab(extra, host=args.host, notebooks=args.notebooks)
