"""Run untrusted, model-written Python in a separate process with limits.

This is a *teaching* sandbox, not a security boundary. It stops the accidents that
model-generated code really makes (an infinite loop, a runaway allocation, a stray
`open("out.txt", "w")` or `shutil.rmtree` outside its folder, a `subprocess` call) so
that grading HumanEval answers cannot damage the learner's machine by mistake. It does
NOT stop deliberate escapes: code can load native code (e.g. an already-imported C
extension), read any file the user can read, and use every system call that Python's
audit events do not cover. For hostile code use a container or VM with no network
(gVisor, Firecracker, Docker with `--network none`).

What it does, layer by layer:
1. a fresh temporary directory as the working directory, deleted afterwards;
2. `sys.executable -I -B` (isolated mode: no user site-packages, no PYTHON* variables,
   no current directory on sys.path; no .pyc writing) and a minimal environment;
3. POSIX resource limits (RLIMIT_AS memory, RLIMIT_CPU seconds, RLIMIT_FSIZE file size,
   RLIMIT_CORE 0) set in the child before it starts;
4. a wall-clock timeout that kills the whole process group;
5. an audit hook (PEP 578, `sys.addaudithook`) installed before the code runs that refuses
   writing, deleting, renaming or creating anything outside the directory, starting
   processes, opening network connections and loading shared libraries with ctypes.
RLIMIT_NPROC is deliberately not set: on Linux it counts *all* processes and threads of
the user (the learner's Jupyter, browser, ...), not those of the child, so any useful
value would either fail at random or not limit anything; layer 5 refuses to spawn instead.
On Windows layers 3 and the group kill are unavailable; the rest still applies.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

MAX_CAPTURE_CHARS = 200_000  # text kept from stdout and stderr each

# The prelude runs first in the child: it reads the code, installs the audit hook, then
# executes the code as __main__. `{root}` is the sandbox directory (already resolved).
_PRELUDE = r'''
import os, sys

with open("solution.py", encoding="utf-8") as _f:
    _SOURCE = _f.read()

_ROOT = {root!r}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_ALLOWED_WRITE = ("/dev/null",)
# event -> positions of the path arguments that must stay inside the sandbox directory
_PATH_EVENTS = {{
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
    "os.chmod": (0,), "os.chown": (0,), "os.link": (1,), "os.symlink": (1,),
    "os.truncate": (0,), "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,),
    "shutil.copystat": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
    "shutil.chown": (0,), "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
}}
_REFUSED = {{
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.startfile", "os.kill", "os.killpg", "pty.spawn",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "ctypes.dlopen", "resource.setrlimit", "resource.prlimit",
}}
_busy = False


def _inside(path):
    if isinstance(path, int) or path is None:  # an already-open file descriptor
        return True
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real in _ALLOWED_WRITE or real == _ROOT or real.startswith(_ROOT + os.sep)


def _refuse(what, path=None):
    if path is None:
        raise PermissionError(f"sandbox: {{what}} is refused (no processes, network, "
                              "native libraries or limit changes)")
    raise PermissionError(f"sandbox: {{what}} {{path!r}} is refused: outside the sandbox "
                          "directory (use a relative path)")


def _hook(event, args):
    global _busy
    if _busy:
        return
    _busy = True
    try:
        if event == "open":
            path, mode, flags = args
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                       else bool((flags or 0) & _WRITE_FLAGS))
            if writing and not _inside(path):
                _refuse("writing", path)
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not _inside(args[i]):
                    _refuse(event, args[i])
        elif event in _REFUSED:
            _refuse(event)
    finally:
        _busy = False


sys.addaudithook(_hook)
del _hook
_globals = {{"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}}
try:
    exec(compile(_SOURCE, "solution.py", "exec"), _globals)
except SystemExit:
    raise
except BaseException as _exc:  # show the learner's traceback without this prelude's frame
    import traceback
    traceback.print_exception(type(_exc), _exc, _exc.__traceback__.tb_next)
    sys.exit(1)
'''


@dataclass
class SandboxResult:
    """What a sandboxed run did. `ok` means exit code 0 within the time limit."""

    ok: bool
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    duration_s: float = 0.0


def _limits(memory_mb: int, cpu_s: int, fsize_mb: int):
    """Build the preexec_fn that applies resource limits inside the child (POSIX only)."""
    import resource

    def apply() -> None:
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        fsize = fsize_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _read(path: Path) -> str:
    """Read captured output as text, keeping at most MAX_CAPTURE_CHARS."""
    with open(path, "rb") as f:
        data = f.read(MAX_CAPTURE_CHARS * 4 + 1)
    text = data.decode("utf-8", errors="replace")
    if len(text) > MAX_CAPTURE_CHARS:
        text = text[:MAX_CAPTURE_CHARS] + "\n[... output truncated by the sandbox]"
    return text


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and everything it started (its process group on POSIX)."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, *, timeout_s: float = 5, memory_mb: int = 256,
               max_file_mb: int = 16) -> SandboxResult:
    """Run `code` with `python -I` in a fresh temporary directory, with limits (see module doc).

    The process gets `timeout_s` seconds of wall-clock time (and as many CPU seconds),
    `memory_mb` of address space, and may write files of at most `max_file_mb` (this also
    caps its stdout/stderr). Returns what it printed, its exit code and whether it timed out.
    """
    if not isinstance(code, str):
        raise BadInput(f"code must be a string, got {type(code).__name__}",
                       "pass the program's source text, e.g. run_python('print(1 + 1)')")
    if not timeout_s or timeout_s <= 0:
        raise BadInput(f"timeout_s must be > 0, got {timeout_s!r}", "use a few seconds, e.g. timeout_s=5")
    if memory_mb < 64:
        raise BadInput(f"memory_mb={memory_mb} is too small to start Python",
                       "use at least 64 (the default 256 suits HumanEval)")

    work = Path(tempfile.mkdtemp(prefix="slm-sandbox-"))
    box = work / "box"
    box.mkdir()
    root = os.path.realpath(box)
    try:
        (box / "solution.py").write_text(code, encoding="utf-8")
        main = work / "_sandbox_main.py"
        main.write_text(_PRELUDE.format(root=root), encoding="utf-8")
        env = {"PATH": os.defpath, "HOME": root, "TMPDIR": root, "TEMP": root, "TMP": root,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if os.name != "posix" and "SYSTEMROOT" in os.environ:  # Windows needs it to start
            env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
        posix = os.name == "posix"
        cpu_s = int(math.ceil(timeout_s)) + 1
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", str(main)],
                cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=posix,
                preexec_fn=_limits(memory_mb, cpu_s, max_file_mb) if posix else None,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                proc.wait()
            duration = time.perf_counter() - t0
        rc = proc.returncode
        if posix and rc == -getattr(signal, "SIGXCPU", 24):
            timed_out = True  # hit the CPU-seconds limit: the same failure, seen by the kernel
        stderr = _read(work / "stderr")
        if timed_out:
            stderr += f"\n[sandbox: killed after {timeout_s:g} s]"
        return SandboxResult(ok=(rc == 0 and not timed_out), stdout=_read(work / "stdout"),
                             stderr=stderr, returncode=rc, timed_out=timed_out,
                             duration_s=duration)
    finally:
        shutil.rmtree(work, ignore_errors=True)
