"""Run untrusted, model-written Python in a separate process with limits and, where the OS
has it, inside an isolated box.

`run_python` grades HumanEval answers: code nobody has read. What contains it depends on
the machine; every result says which (`SandboxResult.isolation`), and `isolation_note()`
says it in one plain sentence for a lesson to print.

"bubblewrap" (Linux with Debian's `bubblewrap` package where user namespaces are allowed:
CI, most Linux desktops; container hosts such as Binder's may forbid them). The code runs
under `bwrap` in its own user, PID, network, IPC, UTS and mount namespaces, with every
capability dropped and no further user namespaces. It sees a read-only `/usr`, the base
Python interpreter's prefix (the stdlib; not the project's venv) and `/etc/ld.so.cache`, a
private `/tmp` (a tmpfs of `max_file_mb`), and its own temporary directory, the only place
it can write. It does not see the project, your home, the host's `/tmp` or any other
process (`/proc` is its own PID namespace, so the caller's environment and working
directory - API keys, `.env` - are out of reach). It has no network (an empty loopback of
its own) and cannot create processes: a seccomp filter refuses fork, vfork and every clone
that is not a thread (x86-64 and arm64; on other CPUs RLIMIT_NPROC in the user namespace
caps it at a few, except for root). On timeout the namespace's init is killed, and with it
every process inside (also one that left the process group with setsid). The Python guard
below runs inside too.

"python-guard only" (macOS, Windows, Linux without bubblewrap or user namespaces). The code
runs as a plain child process with an audit hook (PEP 578) installed first. It refuses:
writing, deleting or renaming outside the temporary directory (also through `dir_fd`,
hard links, FIFOs), symlinks, SQLite, reading other processes' `/proc` entries, starting
processes (also through `_posixsubprocess`), sending signals (also through pidfds),
network connections, native libraries (ctypes), tracing, and changing its limits. Its
state lives in closures, not module globals, and an audit hook cannot be removed. It
still only sees what Python reports, so it stops the accidents model code makes, not a
program written to escape: such code can read any file you can read, and can get around
the guard (e.g. by re-creating the C functions it replaces). For untrusted code on such a
machine, use a container or VM with no network.

Both: a fresh temporary working directory deleted afterwards, `python -I -B` with a
minimal environment, POSIX limits (address space, CPU seconds, file size, no core files),
and a wall-clock timeout that kills the whole process group.
"""
from __future__ import annotations

import functools
import math
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

MAX_CAPTURE_CHARS = 200_000  # text kept from stdout and stderr each
BUBBLEWRAP = "bubblewrap"
GUARD_ONLY = "python-guard only"

# The prelude runs first in the child: it installs the guard (state in closures only,
# nothing in module globals), reads the code, then executes it as a fresh __main__ module.
# `{config}` is a dict literal: root (the sandbox directory, resolved), guard (install the
# audit hook), nproc (an RLIMIT_NPROC to set inside a user namespace, or 0).
_PRELUDE = r'''
import os, sys


def _start(root, guard, nproc):
    if nproc:
        import resource
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if guard:
        _guard(root)
    with open("solution.py", encoding="utf-8") as f:
        return f.read()


def _replace_c_functions():
    """Route the C functions that raise no audit event through the guard. Kept apart from
    _guard: a replacement is reachable by the code (and its __closure__ is not audited), so
    it must share no closure cell with the hook."""
    def refused(what):
        def call(*args, **kwargs):
            raise PermissionError(f"sandbox: {what} is refused (model-written code may not start "
                                  "processes or send signals)")
        return call

    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = refused("creating a process")
    except ImportError:  # Windows
        pass
    import _signal, signal
    for module in (_signal, signal):
        if hasattr(module, "pidfd_send_signal"):
            module.pidfd_send_signal = refused("sending a signal")
    # audited here, then checked by the hook like os.mkdir
    if hasattr(os, "mkfifo"):
        def mkfifo(path, mode=0o666, *, dir_fd=None, _original=os.mkfifo):
            sys.audit("os.mkfifo", path, mode, dir_fd)
            return _original(path, mode, dir_fd=dir_fd)
        os.mkfifo = sys.modules[os.name].mkfifo = mkfifo
    if hasattr(os, "mknod"):
        def mknod(path, mode=0o600, device=0, *, dir_fd=None, _original=os.mknod):
            sys.audit("os.mknod", path, mode, device, dir_fd)
            return _original(path, mode, device, dir_fd=dir_fd)
        os.mknod = sys.modules[os.name].mknod = mknod


def _guard(root):
    allowed_write = ("/dev/null",)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    own_pid = str(os.getpid())
    # event -> (positions of paths that must stay inside, positions of dir_fd arguments)
    path_events = {
        "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
        "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)),
        "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
        "os.truncate": ((0,), ()), "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()),
        "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
        "os.mkfifo": ((0,), (2,)), "os.mknod": ((0,), (3,)),
        "shutil.rmtree": ((0,), (1,)), "shutil.copyfile": ((1,), ()),
        "shutil.copymode": ((1,), ()), "shutil.copystat": ((1,), ()),
        "shutil.copytree": ((1,), ()), "shutil.move": ((0, 1), ()), "shutil.chown": ((0,), ()),
        "shutil.make_archive": ((0,), ()), "shutil.unpack_archive": ((1,), ()),
    }
    refused = frozenset((
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.startfile", "os.kill", "os.killpg", "pty.spawn", "signal.pthread_kill",
        "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "os.symlink",
        "ctypes.dlopen", "resource.setrlimit", "resource.prlimit", "sqlite3.connect",
        "sqlite3.enable_load_extension", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys.setprofile", "sys.settrace",
    ))
    # C functions no audit event covers: replaced below, and importing a fresh copy of
    # their modules is refused ("import" events; the import system raises them)
    patched_modules = frozenset((os.name, "os", "_posixsubprocess", "_signal", "signal"))
    try:
        import fcntl  # macOS names the directory behind a descriptor with F_GETPATH
    except ImportError:
        fcntl = None

    def refuse(what, path=None):
        if path is None:
            raise PermissionError(f"sandbox: {what} is refused (model-written code may not start "
                                  "processes, send signals, use the network or databases, load "
                                  "native code, trace or change its limits)")
        raise PermissionError(f"sandbox: {what} {path!r} is refused: outside the sandbox "
                              "directory (use a relative path inside it)")

    def text(path):
        if isinstance(path, (str, bytes)):
            return os.fsdecode(path)
        return os.fsdecode(os.fspath(path))

    def inside(real):
        return real in allowed_write or real == root or real.startswith(root + os.sep)

    def base_of(dir_fd):
        if dir_fd is None or dir_fd == -1 or dir_fd == getattr(os, "AT_FDCWD", -100):  # no dir_fd
            return os.getcwd()
        try:
            if os.path.isdir("/proc/self/fd"):  # Linux
                return os.readlink(f"/proc/self/fd/{int(dir_fd)}")
            if fcntl is not None and hasattr(fcntl, "F_GETPATH"):
                named = fcntl.fcntl(int(dir_fd), fcntl.F_GETPATH, bytes(1024))
                return os.fsdecode(named.rstrip(b"\0"))
        except (OSError, TypeError, ValueError):
            pass
        return None  # unknown: the caller refuses

    def check_path(event, path, dir_fd=None):
        if isinstance(path, int) or path is None:  # an already-open file descriptor
            return
        try:
            name = text(path)
        except (TypeError, ValueError):
            refuse(event, path)
        base = base_of(dir_fd)
        if base is None:
            refuse(f"{event} with dir_fd", path)
        if not inside(os.path.realpath(os.path.join(base, name))):
            refuse(event, path)

    def other_process(name):
        for candidate in (os.path.abspath(name), os.path.realpath(name)):
            parts = candidate.split(os.sep)
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_pid:
                return True
        return False

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int) or path is None:
                return
            try:
                name = text(path)
            except (TypeError, ValueError):
                refuse("opening", path)
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                       else bool((flags or 0) & write_flags))
            if writing:
                # os.open(..., dir_fd=) is not in the event: refuse climbing out with "..",
                # and (below) descriptors of directories outside the box
                if not os.path.isabs(name) and os.path.normpath(name).split(os.sep)[0] == "..":
                    refuse("writing", path)
                check_path("writing", name)
            elif other_process(name):
                refuse("reading another process's /proc entry", path)
            else:
                real = os.path.realpath(name)
                if not inside(real) and os.path.isdir(real) and mode is None:
                    refuse("opening a directory descriptor", path)
        elif event in path_events:
            positions, fd_positions = path_events[event]
            dir_fds = [args[i] for i in fd_positions if i < len(args)]
            for n, i in enumerate(positions):
                if i < len(args):
                    fd = dir_fds[n] if n < len(dir_fds) else (dir_fds[0] if dir_fds else None)
                    check_path(event, args[i], fd)
        elif event == "import":
            if args[0] in patched_modules:
                refuse(f"re-importing {args[0]}")
        elif event in refused:
            refuse(event)

    _replace_c_functions()  # before the hook: it refuses re-importing their modules
    sys.addaudithook(hook)  # cannot be removed; holds its state in this closure


_source = _start(**{config})
del _start, _guard
import types
_main = types.ModuleType("__main__")
_main.__file__ = "solution.py"
_main.__builtins__ = __builtins__
sys.modules["__main__"] = _main
try:
    exec(compile(_source, "solution.py", "exec"), _main.__dict__)
except SystemExit:
    raise
except BaseException as _exc:  # show the learner's traceback without this prelude's frame
    import traceback
    traceback.print_exception(type(_exc), _exc, _exc.__traceback__.tb_next)
    sys.exit(1)
'''


@dataclass
class SandboxResult:
    """What a sandboxed run did. `ok` means exit code 0 within the time limit.

    `isolation` says what contained it: "bubblewrap" (OS namespaces) or "python-guard only"."""

    ok: bool
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    duration_s: float = 0.0
    isolation: str = GUARD_ONLY


@dataclass(frozen=True)
class _Isolation:
    name: str    # BUBBLEWRAP or GUARD_ONLY
    note: str    # one plain sentence for learners
    bwrap: str | None = None          # path of bwrap when name == BUBBLEWRAP
    python: str | None = None         # the base interpreter run inside
    binds: tuple[str, ...] = ()       # read-only directories it needs (besides /usr)
    options: frozenset[str] = frozenset()  # optional bwrap options this bwrap knows


# --------------------------------------------------------------------------- seccomp
# A classic-BPF seccomp program for bwrap --seccomp: process creation fails (fork, vfork,
# clone without CLONE_THREAD: EPERM; clone3: ENOSYS, so C libraries fall back to clone for
# threads), everything else is allowed. RLIMIT_NPROC cannot do this: root is exempt from it.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_FORK_SYSCALLS = {"x86_64": (57, 58), "aarch64": ()}       # fork, vfork (aarch64 has neither)
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_CLONE_THREAD = 0x00010000


def _seccomp_program(machine: str) -> bytes | None:
    """The filter for this CPU, or None where the kit has no syscall table for it."""
    arch = _AUDIT_ARCH.get(machine)
    if arch is None:
        return None
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|.., BPF_RET
    results = {"allow": 0x7FFF0000, "eperm": 0x00050000 | 1, "enosys": 0x00050000 | 38}
    # (opcode, k, jump-if-true, jump-if-false): a jump names a result, None = next instruction
    code: list[tuple[int, int, str | None, str | None]] = [
        (ld, 4, None, None),                           # A = arch
        (jeq, arch, None, "eperm"),                    # another ABI (e.g. 32-bit): refuse all
        (ld, 0, None, None),                           # A = syscall number
        (jge, 0x40000000, "eperm", None),              # x32 ABI numbers: refuse
        *[(jeq, nr, "eperm", None) for nr in _FORK_SYSCALLS[machine]],
        (jeq, _CLONE3, "enosys", None),                # C libraries then fall back to clone
        (jeq, _CLONE[machine], None, "allow"),
        (ld, 16, None, None),                          # A = low 32 bits of clone's flags
        (jset, _CLONE_THREAD, "allow", "eperm"),       # a thread is fine, a process is not
    ]
    labels = {name: len(code) + i for i, name in enumerate(results)}
    out = []
    for pc, (op, k, jt, jf) in enumerate(code):
        out.append(struct.pack("<HBBI", op, labels[jt] - pc - 1 if jt else 0,
                               labels[jf] - pc - 1 if jf else 0, k))
    out += [struct.pack("<HBBI", ret, 0, 0, value) for value in results.values()]
    return b"".join(out)


# --------------------------------------------------------------------------- isolation probe
def _base_python() -> tuple[str, tuple[str, ...]]:
    """The real base interpreter (not a venv's symlink) and the prefixes it needs."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    dirs.add(os.path.dirname(exe))
    binds = sorted(d for d in dirs if d != "/usr" and not d.startswith("/usr/"))
    return exe, tuple(binds)


def _bwrap_argv(iso: _Isolation, root: str, tmp: str, tmp_mb: int, info_fd: int,
                seccomp_fd: int | None) -> list[str]:
    """bwrap's options: a read-only system, the box `root` writable, `tmp` (or a tmpfs of
    `tmp_mb`, where bwrap can size one) as /tmp, every namespace new; bwrap writes the host
    pid of the namespace's init to `info_fd`."""
    argv = [iso.bwrap or "bwrap", "--unshare-all", "--unshare-user", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--info-fd", str(info_fd)]
    if "--disable-userns" in iso.options:  # bubblewrap >= 0.8
        argv.append("--disable-userns")
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for d in iso.binds:
        argv += ["--ro-bind", d, d]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
             "--proc", "/proc", "--dev", "/dev",
             *(["--size", str(tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
               if "--size" in iso.options else ["--bind", tmp, "/tmp"]),
             "--bind", root, root, "--chdir", root]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--"]


def _guard_only(why: str) -> _Isolation:
    return _Isolation(GUARD_ONLY, f"{GUARD_ONLY}: {why} Model-written code runs with the Python "
                      "guard alone, which stops accidents, not code written to escape; grade "
                      "untrusted code in a container or VM with no network.")


@functools.lru_cache(maxsize=1)
def _isolation() -> _Isolation:
    """Find out once whether bubblewrap can isolate a run here, by trying it."""
    if not sys.platform.startswith("linux"):
        return _guard_only(f"this system ({platform.system() or sys.platform}) has no "
                           "isolation the kit can use.")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return _guard_only("bubblewrap is not installed (Debian/Ubuntu: `sudo apt install "
                           "bubblewrap`, then restart the kernel).")
    python, binds = _base_python()
    home = os.path.realpath(os.path.expanduser("~"))
    for d in binds:
        if d == "/" or home == d or home.startswith(d.rstrip("/") + "/"):
            return _guard_only(f"Python's prefix {d} contains your home directory, which the "
                               "box must not show (use a Python installed outside it).")
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        usage = ""
    options = frozenset(o for o in ("--disable-userns", "--size") if o in usage)
    iso = _Isolation(BUBBLEWRAP, "", bwrap, python, binds, options)
    probe = _run("import os\nprint(os.readlink('/proc/self/ns/pid'))", iso, guard=False,
                 timeout_s=20, memory_mb=256, max_file_mb=16)
    if not probe.ok or probe.stdout.strip() == os.readlink("/proc/self/ns/pid"):
        lines = [ln for ln in probe.stderr.splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {probe.returncode}"
        return _guard_only(f"bubblewrap cannot start a sandbox here ({detail}); where user "
                           "namespaces are disabled, enable them (sysctl "
                           "kernel.unprivileged_userns_clone=1, or on Ubuntu "
                           "kernel.apparmor_restrict_unprivileged_userns=0).")
    machine = platform.machine().lower()
    processes = ("no new processes" if _seccomp_program(machine)
                 else "at most a few processes")
    note = (f"{BUBBLEWRAP}: each run gets a private /tmp, no network, its own PID namespace, "
            f"{processes}, and sees neither the project nor your home directory.")
    return _Isolation(BUBBLEWRAP, note, bwrap, python, binds, options)


def isolation() -> str:
    """The isolation `run_python` uses on this machine: "bubblewrap" or "python-guard only"."""
    return _isolation().name


def isolation_note() -> str:
    """One plain sentence for learners: which isolation is active and what it means."""
    return _isolation().note


# --------------------------------------------------------------------------- running
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


def _kill_namespace(info_fd: int, proc: subprocess.Popen) -> None:
    """Kill a bubblewrap sandbox's PID namespace and wait until it is empty.

    Killing its init (bwrap's child, read from --info-fd) makes the kernel kill every process
    inside; bwrap exits once that init is gone. Killing bwrap alone is not enough: as root,
    --die-with-parent does not reach the init (seen here: a busy loop outlived its bwrap by
    seconds). While bwrap lives the init's pid cannot be reused, so the kill is safe."""
    import re
    import select

    if select.select([info_fd], [], [], 2.0)[0]:
        found = re.search(rb'"child-pid":\s*(\d+)', os.read(info_fd, 65536))
        if found and proc.poll() is None:
            try:
                os.kill(int(found.group(1)), signal.SIGKILL)
                proc.wait(timeout=5)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                pass


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and everything it started in its process group."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, *, timeout_s: float = 5, memory_mb: int = 256,
               max_file_mb: int = 16) -> SandboxResult:
    """Run `code` with `python -I` in a fresh temporary directory, isolated where the OS
    allows it, with limits (see the module doc; `isolation_note()` says which applies).

    The process gets `timeout_s` seconds of wall-clock time (and as many CPU seconds),
    `memory_mb` of address space, and may write files of at most `max_file_mb` (this also
    caps its stdout/stderr). Returns what it printed, its exit code, whether it timed out and
    which isolation contained it.
    """
    if not isinstance(code, str):
        raise BadInput(f"code must be a string, got {type(code).__name__}",
                       "pass the program's source text, e.g. run_python('print(1 + 1)')")
    if not timeout_s or timeout_s <= 0:
        raise BadInput(f"timeout_s must be > 0, got {timeout_s!r}", "use a few seconds, e.g. timeout_s=5")
    if memory_mb < 64:
        raise BadInput(f"memory_mb={memory_mb} is too small to start Python",
                       "use at least 64 (the default 256 suits HumanEval)")
    return _run(code, _isolation(), guard=True, timeout_s=timeout_s, memory_mb=memory_mb,
                max_file_mb=max_file_mb)


def _run(code: str, iso: _Isolation, *, guard: bool, timeout_s: float, memory_mb: int,
         max_file_mb: int) -> SandboxResult:
    """run_python with the layers chosen: the probe, and tests that check each layer alone."""
    boxed = iso.name == BUBBLEWRAP

    work = Path(tempfile.mkdtemp(prefix="slm-sandbox-"))
    box = work / "box"
    box.mkdir()
    root = os.path.realpath(box)
    seccomp = None
    info_r = info_w = None
    try:
        (box / "solution.py").write_text(code, encoding="utf-8")
        program = _seccomp_program(platform.machine().lower()) if boxed else None
        config = {"root": root, "guard": guard, "nproc": 16 if boxed and program is None else 0}
        prelude = _PRELUDE.replace("{config}", repr(config))
        env = {"PATH": os.defpath, "HOME": root, "TMPDIR": root, "TEMP": root, "TMP": root,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if os.name != "posix" and "SYSTEMROOT" in os.environ:  # Windows needs it to start
            env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
        if boxed:
            pass_fds: tuple[int, ...] = ()
            if program is not None:
                (work / "seccomp.bpf").write_bytes(program)
                seccomp = open(work / "seccomp.bpf", "rb")
                pass_fds = (seccomp.fileno(),)
            info_r, info_w = os.pipe()
            pass_fds += (info_w,)
            # bwrap itself gets only `env` too: its PID 1 inside the box is readable there
            (work / "tmp").mkdir()  # /tmp inside, where bwrap cannot size a tmpfs
            argv = _bwrap_argv(iso, root, str(work / "tmp"), max_file_mb, info_w,
                               seccomp.fileno() if seccomp else None)
            argv += [iso.python or sys.executable, "-I", "-B", "-c", prelude]
        else:
            pass_fds = ()
            argv = [sys.executable, "-I", "-B", "-c", prelude]
        posix = os.name == "posix"
        cpu_s = int(math.ceil(timeout_s)) + 1
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=posix, pass_fds=pass_fds,
                preexec_fn=_limits(memory_mb, cpu_s, max_file_mb) if posix else None,
            )
            if info_w is not None:
                os.close(info_w)
                info_w = None
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                if info_r is not None:
                    _kill_namespace(info_r, proc)
                _kill_group(proc)
                proc.wait()
            duration = time.perf_counter() - t0
        rc = proc.returncode
        if timed_out and boxed:
            rc = -signal.SIGKILL  # what we did; bwrap reports it as 128 + 9
        if posix and rc in (-getattr(signal, "SIGXCPU", 24), 128 + getattr(signal, "SIGXCPU", 24)):
            timed_out = True  # hit the CPU-seconds limit: the same failure, seen by the kernel
        stderr = _read(work / "stderr")
        if timed_out:
            stderr += f"\n[sandbox: killed after {timeout_s:g} s]"
        return SandboxResult(ok=(rc == 0 and not timed_out), stdout=_read(work / "stdout"),
                             stderr=stderr, returncode=rc, timed_out=timed_out,
                             duration_s=duration, isolation=iso.name)
    finally:
        for fd in (info_r, info_w):
            if fd is not None:
                os.close(fd)
        if seccomp is not None:
            seccomp.close()
        shutil.rmtree(work, ignore_errors=True)
