"""binder/ (repo2docker): files consistent with pyproject.toml, scripts that parse and run.

The scripts are run for real with HOME, PATH and ports pointing at temporary places. The
postBuild runs use a local archive (file:// URL) instead of the Ollama download: they test
the script's unpacking and its fall-back logic; the stand-in `ollama` in that archive is a
two-line shell script that prints a version and refuses everything else.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
START = BINDER / "start"
POSTBUILD = BINDER / "postBuild"
BASE_PATH = "/usr/bin:/bin"


def _kit_cli() -> str | None:
    """`slm-course` on PATH, or next to this interpreter (pytest run as .venv/bin/pytest)."""
    return shutil.which("slm-course") or shutil.which("slm-course", path=str(Path(sys.executable).parent))


def _requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


# --------------------------------------------------------------------------- static checks
def test_requirements_install_the_project_from_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "slm-course"
    assert "helpers" in pyproject["tool"]["setuptools"]["packages"]
    assert "slm-course" in pyproject["project"]["scripts"]  # binder/start runs it
    lines = _requirement_lines()
    # repo2docker runs pip from the repository root, so "." is the root (pyproject.toml).
    assert any(re.fullmatch(r"(-e\s+|--editable[=\s]+)?\.", ln) for ln in lines), lines
    # Nothing else: the dependencies live in pyproject.toml (the engine is a prebuilt wheel there),
    # so they cannot drift.
    others = [ln for ln in lines if not re.fullmatch(r"(-e\s+|--editable[=\s]+)?\.", ln)]
    assert others == [], others


def test_runtime_python_is_one_the_project_supports():
    """repo2docker's default Python can change under us: pin the one CI tests (3.11)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = re.fullmatch(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"])
    runtime = re.fullmatch(r"python-3\.(\d+)", (BINDER / "runtime.txt").read_text().strip())
    assert floor and runtime, "binder/runtime.txt must read python-3.X"
    assert int(runtime.group(1)) >= int(floor.group(1))


def test_apt_txt_lists_the_download_tools():
    packages = {
        ln.strip() for ln in (BINDER / "apt.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    }
    assert {"zstd", "curl", "ca-certificates"} <= packages


@pytest.mark.parametrize("script", [POSTBUILD, START], ids=["postBuild", "start"])
def test_scripts_are_executable_bash_that_parses(script):
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    assert script.read_text().startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)


def test_postbuild_is_strict_and_start_ends_with_exec():
    assert "set -euo pipefail" in POSTBUILD.read_text()
    code = [ln.strip() for ln in START.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert code[-1] == 'exec "$@"'


def test_ollama_version_is_pinned_in_one_variable():
    text = POSTBUILD.read_text()
    pins = re.findall(r'^OLLAMA_VERSION="([^"]*)"$', text, flags=re.M)
    assert len(pins) == 1, pins
    major, minor, _patch = (int(x) for x in pins[0].split("."))
    assert (major, minor) >= (0, 14)  # the .tar.zst download exists since 0.14
    assert "${OLLAMA_VERSION}/ollama-linux-amd64.tar.zst" in text
    for path in BINDER.iterdir():  # the version number appears nowhere else
        other = path.read_text()
        if path == POSTBUILD:
            other = other.replace(f'OLLAMA_VERSION="{pins[0]}"', "")
        assert pins[0] not in other, path


# --------------------------------------------------------------------------- postBuild, run
def _run_postbuild(home: Path, url: str, **env) -> subprocess.CompletedProcess:
    full_env = {
        "HOME": str(home),
        "PATH": BASE_PATH,
        "OLLAMA_URL": url,
        "SLM_PORT": str(free_port()),
        "SLM_SKIP_OFFLINE_MODELS": "1",
        **env,
    }
    return subprocess.run(["bash", str(POSTBUILD)], env=full_env, capture_output=True, text=True, timeout=60)


def _fake_archive(tmp_path: Path) -> Path:
    """A .tar.zst laid out like Ollama's (./bin/ollama, ./lib/ollama/{cpu libs,cuda_v12,...})."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed here")
    pkg = tmp_path / "pkg"
    for d in ("bin", "lib/ollama/cuda_v12", "lib/ollama/vulkan", "lib/ollama/rocm"):
        (pkg / d).mkdir(parents=True)
    stand_in = pkg / "bin" / "ollama"
    stand_in.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "ollama version is 0.0.0-stand-in"; '
        'exit 0; }\necho "stand-in: $*" >&2; exit 1\n'
    )
    stand_in.chmod(0o755)
    for f in (
        "lib/ollama/libggml-cpu-x64.so",
        "lib/ollama/cuda_v12/libcublas.so.12",
        "lib/ollama/vulkan/libggml-vulkan.so",
        "lib/ollama/rocm/librocblas.so",
    ):
        (pkg / f).write_bytes(b"\0" * 16)
    archive = tmp_path / "ollama-linux-amd64.tar.zst"
    subprocess.run(f"tar -C '{pkg}' -cf - . | zstd -q -o '{archive}'", shell=True, check=True, timeout=30)
    return archive


def test_postbuild_survives_a_failed_download(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = _run_postbuild(home, f"file://{tmp_path}/no-such-archive.tar.zst")
    assert proc.returncode == 0, proc.stderr
    assert "could not install Ollama" in proc.stdout and "slm-course serve" in proc.stdout
    assert not (home / ".local" / "bin" / "ollama").exists()


def test_postbuild_unpacks_cpu_parts_only(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    archive = _fake_archive(tmp_path)
    proc = _run_postbuild(home, f"file://{archive}", BINDER_MODEL="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0.0.0-stand-in" in proc.stdout  # it ran `ollama --version`
    local = home / ".local"
    assert os.access(local / "bin" / "ollama", os.X_OK)
    assert (local / "lib" / "ollama" / "libggml-cpu-x64.so").is_file()
    for gpu in ("cuda_v12", "vulkan", "rocm"):
        assert not (local / "lib" / "ollama" / gpu).exists(), gpu


def test_postbuild_removes_ollama_when_the_model_cannot_be_pulled(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    archive = _fake_archive(tmp_path)
    proc = _run_postbuild(home, f"file://{archive}")  # the stand-in cannot `serve`
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "could not pull smollm2:135m" in proc.stdout
    assert not (home / ".local" / "bin" / "ollama").exists()  # so start falls back


# --------------------------------------------------------------------------- start, run
REPORT = "import os, sys; print('RAN', os.environ['OLLAMA_HOST'], *map(repr, sys.argv[1:]))"


def _skip_if_system_server() -> None:
    if shutil.which("ollama", path=BASE_PATH) or shutil.which("slm-course", path=BASE_PATH):
        pytest.skip("a model server is installed system-wide here")


def test_start_execs_even_without_any_server(tmp_path):
    _skip_if_system_server()
    port = free_port()
    env = {"HOME": str(tmp_path), "PATH": BASE_PATH, "SLM_PORT": str(port)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(START), sys.executable, "-c", REPORT, "a b", "c"], env=env, capture_output=True, text=True, timeout=30
    )
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"RAN http://127.0.0.1:{port} 'a b' 'c'"  # args intact
    assert "no model server started" in proc.stderr


def test_start_uses_a_server_that_already_answers(tmp_path):
    class Version(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"version":"0.0.0"}'
            self.send_response(200 if self.path == "/api/version" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Version)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        port = srv.server_address[1]
        env = {"HOME": str(tmp_path), "PATH": BASE_PATH, "SLM_PORT": str(port)}
        proc = subprocess.run(
            [str(START), sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, timeout=30
        )
    finally:
        srv.shutdown()
        srv.server_close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"RAN http://127.0.0.1:{port}"
    assert "already answers" in proc.stderr
    assert not (tmp_path / ".cache" / "slm-course" / "server.pid").exists()  # none started


def test_start_defaults_to_port_11434(tmp_path):
    _skip_if_system_server()
    env = {"HOME": str(tmp_path), "PATH": BASE_PATH, "SLM_START_TIMEOUT": "0"}
    proc = subprocess.run(
        [str(START), sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.stdout.strip() == "RAN http://127.0.0.1:11434"


@pytest.mark.skipif(_kit_cli() is None, reason="slm-course is not installed (pip install -e .)")
def test_start_falls_back_to_kit_server(tmp_path):
    cli_dir = str(Path(_kit_cli()).parent)
    path = f"{cli_dir}:{BASE_PATH}"
    if shutil.which("ollama", path=path):
        pytest.skip("ollama is installed next to slm-course; cannot test the fall-back")
    port, logs = free_port(), tmp_path / "logs"
    env = {"HOME": str(tmp_path), "PATH": path, "SLM_PORT": str(port), "SLM_LOG_DIR": str(logs)}
    check = (
        "import os, urllib.request; h = os.environ['OLLAMA_HOST']; "
        "print('RAN', h, urllib.request.urlopen(h + '/api/version', timeout=5).read().decode())"
    )
    try:
        proc = subprocess.run(
            [str(START), sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=90
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"RAN http://127.0.0.1:{port} "), proc.stdout + proc.stderr
        assert '"version"' in proc.stdout
        assert "slm-course serve" in proc.stderr
    finally:
        pid_file = logs / "server.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                os.killpg(pid, signal.SIGTERM)  # start ran it in its own process group
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.killpg(pid, 0)
                    time.sleep(0.2)
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_CRASHING_OLLAMA = r'''#!/usr/bin/env python3
"""Stand-in for an Ollama whose llama.cpp crashes on this CPU (Intel AMX, llama.cpp#20824):
`ollama serve` answers /api/version and /api/tags, but every generation fails like the real one."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if sys.argv[1:2] != ["serve"]:
    print("ollama version is 0.0.0-crashing-stand-in"); sys.exit(0)
port = int(os.environ["OLLAMA_HOST"].rsplit(":", 1)[1])

class H(BaseHTTPRequestHandler):
    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.path == "/api/version": self.reply(200, {"version": "0.0.0"})
        elif self.path == "/api/tags": self.reply(200, {"models": [{"name": "smollm2:135m"}]})
        else: self.reply(404, {"error": "not found"})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(500, {"error": "llama runner process has terminated: signal: segmentation fault"})
    def log_message(self, *a): pass

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.mark.skipif(_kit_cli() is None, reason="slm-course is not installed (pip install -e .)")
def test_start_replaces_an_ollama_that_crashes_on_generation(tmp_path):
    """binder/start must not trust an Ollama that answers but crashes on its first generation
    (the AMX fault): it stops it and runs the kit's server, whose answers are real."""
    stand_in = tmp_path / "bin" / "ollama"
    stand_in.parent.mkdir()
    stand_in.write_text(_CRASHING_OLLAMA.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
    stand_in.chmod(0o755)
    cli_dir = str(Path(_kit_cli()).parent)
    path = f"{stand_in.parent}:{cli_dir}:{BASE_PATH}"
    port, logs = free_port(), tmp_path / "logs"
    env = {"HOME": str(tmp_path), "PATH": path, "SLM_PORT": str(port), "SLM_LOG_DIR": str(logs), "SLM_THREADS": "1"}
    check = (
        "import json, os, urllib.request; h = os.environ['OLLAMA_HOST']; "
        "req = urllib.request.Request(h + '/api/generate', data=json.dumps({'model': "
        "'smollm2:135m', 'prompt': 'Hi', 'stream': False, 'options': {'num_predict': 3}})"
        ".encode()); print('RAN', json.load(urllib.request.urlopen(req, timeout=60))['done'])"
    )
    try:
        proc = subprocess.run(
            [str(START), sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "first generation failed" in proc.stderr and "segmentation fault" in proc.stderr
        assert "slm-course serve" in proc.stderr
        assert proc.stdout.strip() == "RAN True", proc.stdout + proc.stderr
    finally:
        pid_file = logs / "server.pid"
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
