"""Run untrusted, model-written Python in a separate process with limits and, where the OS
has it, inside an isolated box; score code answers so that the answer cannot forge its verdict.

`run_python` runs a program; `run_check` grades a HumanEval-style answer against its test: code
nobody has read. What contains it depends on the machine; every result says which
(`SandboxResult.isolation`), and `isolation_note()` says it in one plain sentence for a lesson.

"bubblewrap" (Linux with Debian's `bubblewrap` package where bwrap can build a box: CI, most
Linux desktops; container hosts such as Binder's may forbid it). The code runs under `bwrap` in
its own PID, network, IPC, UTS and mount namespaces, as an unprivileged user: called as a normal
user, bwrap maps that user into a user namespace of its own; called as root (CI, containers,
many cloud notebooks), bwrap builds the box without a user namespace and the inner program gives
up root for `nobody` (65534) before any model code runs, so the box's uid is not the host's root.
No capabilities, no new privileges. It sees a read-only `/usr`, the base interpreter's prefix
(the standard library; the interpreter's site-packages are hidden, and it runs with `-S`) and
`/etc/ld.so.cache`; `/proc` is its own (its PID namespace), with `/proc/sys` hidden behind an
empty read-only directory and `/proc/keys` behind an empty file; `/dev` is read-only. It writes
only to its working directory `/sandbox` (`/tmp` points there), a tmpfs of `max_file_mb`, and to
`/dev/shm`, a 1 MB tmpfs; it does not see the project, your home, the host's `/tmp` or any other
process, so the caller's environment and working directory (API keys, `.env`) are out of reach.
It has no network (an empty loopback of its own) and starts with a fresh session keyring. A
seccomp filter (x86-64 and arm64) refuses: creating processes (fork, vfork, every clone that is
not a thread), the keyring (keyctl, add_key, request_key), io_uring, userfaultfd, perf_event_open,
ptrace and process_vm_*, bpf, mounting and namespaces (mount, umount2, pivot_root, chroot, the new
mount API, unshare, setns), memory outside the address-space limit (memfd_create, memfd_secret,
System V shared memory and message queues), and module, kexec, swap and syslog calls. So what the
box can pin in host memory is its address space (`memory_mb`) plus `max_file_mb` + 1 MB of
tmpfs, at most ~16 MB of pipe and socket buffers (32 open files) and, as root, the kernel stacks of
at most 256 threads (RLIMIT_NPROC for `nobody`). On timeout the namespace's
init is killed, and with it every process inside. The Python guard below runs inside too.

"python-guard only" (macOS, Windows, Linux without bubblewrap). The code runs as a plain child
process with an audit hook (PEP 578) installed first (helpers/sandbox_box.py). It refuses:
writing, deleting or renaming outside the temporary directory (also through `dir_fd`, hard
links, FIFOs), symlinks, SQLite, reading other processes' `/proc` entries, starting processes
(also through `_posixsubprocess`), sending signals (also through pidfds), network connections,
native code (ctypes, `_ctypes`, cffi and CPython's test modules), memfd_create, tracing, and
changing its limits. It only sees what Python reports, so it stops the accidents model code
makes, not a program written to escape: such code can read any file you can read and can get
around the guard. For untrusted code on such a machine, use a container or VM with no network.

Both: a fresh temporary working directory deleted afterwards (however deep the code nests
directories in it), `python -I -S -B` with a minimal environment, POSIX limits (address space,
CPU seconds, file size, open files, no core files), a wall-clock timeout that kills the whole
process group, and output with terminal escape sequences removed.

Scoring (`run_check`) runs two boxes: the answer's process executes the answer and answers
calls of its function over a pipe, with plain values (numbers, strings, containers of them)
rebuilt on the other side; the test's process runs the task's test against a stand-in function
and writes the verdict, with a random token, on a pipe only it holds, after `check` returns. The
answer cannot reach the test's interpreter: replacing `sys.exit`, exiting with status 0, or
returning an object whose `__eq__` always says True all fail the test.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import re
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from .errors import BadInput

MAX_CAPTURE_CHARS = 200_000  # text kept from stdout and stderr each
BUBBLEWRAP = "bubblewrap"
GUARD_ONLY = "python-guard only"
BOX_ROOT = "/sandbox"  # the working directory inside a bubblewrap box
SHM_BYTES = 1024 * 1024  # /dev/shm inside the box (POSIX semaphores need a little)
MAX_OPEN_FILES = 32  # bounds what pipes (up to 1 MB each) and sockets can hold in kernel memory
MAX_THREADS = 256  # processes and threads of `nobody`, where a box started as root runs as nobody
UNPRIVILEGED = (65534, 65534)  # nobody:nogroup, what a box started as root runs as
MESSAGE_LIMIT = 16 * 1024 * 1024  # one argument list or return value between the scoring boxes
_INNER = Path(__file__).resolve().with_name("sandbox_box.py")


@dataclasses.dataclass
class SandboxResult:
    """What a sandboxed run did. For `run_python`, `ok` means exit code 0 within the time limit;
    for `run_check`, it means the test's process reported that the test passed.

    `isolation` says what contained it: "bubblewrap" (OS namespaces) or "python-guard only"."""

    ok: bool
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    duration_s: float = 0.0
    isolation: str = GUARD_ONLY


@dataclasses.dataclass(frozen=True)
class _Isolation:
    name: str  # BUBBLEWRAP or GUARD_ONLY
    note: str  # one plain sentence for learners
    bwrap: str | None = None  # path of bwrap when name == BUBBLEWRAP
    python: str | None = None  # the base interpreter run inside
    binds: tuple[str, ...] = ()  # read-only directories it needs (besides /usr)
    options: frozenset[str] = frozenset()  # optional bwrap options this bwrap knows
    hidden: tuple[str, ...] = ()  # directories covered by an empty one (site-packages)
    as_root: bool = False  # bwrap runs as root: no user namespace, the box drops root


# --------------------------------------------------------------------------- seccomp
# A classic-BPF seccomp program for bwrap --seccomp. Process creation fails (fork, vfork, clone
# without CLONE_THREAD: EPERM; clone3: ENOSYS, so C libraries fall back to clone for threads), the
# calls below fail with EPERM, everything else is allowed. RLIMIT_NPROC cannot stop processes:
# root is exempt from it.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_CLONE_THREAD = 0x00010000
# name: (x86-64 number, arm64 number or None); from the kernel's unistd headers
_DENIED: dict[str, tuple[int, int | None]] = {
    "fork": (57, None),
    "vfork": (58, None),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "userfaultfd": (323, 282),
    "perf_event_open": (298, 241),
    "bpf": (321, 280),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "memfd_create": (319, 279),
    "memfd_secret": (447, 447),
    "shmget": (29, 194),
    "shmat": (30, 196),
    "shmctl": (31, 195),
    "msgget": (68, 186),
    "msgsnd": (69, 189),
    "msgrcv": (70, 188),
    "msgctl": (71, 187),
    "semget": (64, 190),
    "semop": (65, 193),
    "semctl": (66, 191),
    "semtimedop": (220, 192),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "syslog": (103, 116),
    "acct": (163, 89),
    "open_by_handle_at": (304, 265),
}
DENIED_SYSCALLS = tuple(sorted(_DENIED))


def _seccomp_program(machine: str) -> bytes | None:
    """The filter for this CPU, or None where the kit has no syscall table for it."""
    arch = _AUDIT_ARCH.get(machine)
    if arch is None:
        return None
    column = 0 if machine == "x86_64" else 1
    denied = sorted({n for n in (nr[column] for nr in _DENIED.values()) if n is not None})
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|.., BPF_RET
    results = {"allow": 0x7FFF0000, "eperm": 0x00050000 | 1, "enosys": 0x00050000 | 38}
    # (opcode, k, jump-if-true, jump-if-false): a jump names a result, None = next instruction
    code: list[tuple[int, int, str | None, str | None]] = [
        (ld, 4, None, None),  # A = arch
        (jeq, arch, None, "eperm"),  # another ABI (e.g. 32-bit): refuse all
        (ld, 0, None, None),  # A = syscall number
        (jge, 0x40000000, "eperm", None),  # x32 ABI numbers: refuse
        *[(jeq, nr, "eperm", None) for nr in denied],
        (jeq, _CLONE3, "enosys", None),  # C libraries then fall back to clone
        (jeq, _CLONE[machine], None, "allow"),
        (ld, 16, None, None),  # A = low 32 bits of clone's flags
        (jset, _CLONE_THREAD, "allow", "eperm"),  # a thread is fine, a process is not
    ]
    labels = {name: len(code) + i for i, name in enumerate(results)}
    out = []
    for pc, (op, k, jt, jf) in enumerate(code):
        out.append(struct.pack("<HBBI", op, labels[jt] - pc - 1 if jt else 0, labels[jf] - pc - 1 if jf else 0, k))
    out += [struct.pack("<HBBI", ret, 0, 0, value) for value in results.values()]
    return b"".join(out)


# --------------------------------------------------------------------------- isolation probe
def _base_python() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The real base interpreter (not a venv's symlink), the prefixes it needs, and the
    site-packages directories inside them (hidden in the box)."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    dirs.add(os.path.dirname(exe))
    binds = sorted(d for d in dirs if d != "/usr" and not d.startswith("/usr/"))
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    sites = {os.path.realpath(sysconfig.get_paths(vars=base)[key]) for key in ("purelib", "platlib")}
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    sites |= {
        "/usr/lib/python3/dist-packages",
        f"/usr/local/lib/{version}/dist-packages",
        f"/usr/lib/{version}/site-packages",
        f"/usr/local/lib/{version}/site-packages",
    }
    shown = ["/usr", *binds]
    hidden = sorted(d for d in sites if os.path.isdir(d) and any(d.startswith(top.rstrip("/") + "/") for top in shown))
    return exe, tuple(binds), tuple(hidden)


def _bwrap_argv(
    iso: _Isolation, host_box: str, host_tmp: str, file_mb: int, info_fd: int, seccomp_fd: int | None
) -> list[str]:
    """bwrap's options: a read-only system, the box's directory BOX_ROOT writable (a tmpfs of
    `file_mb` where bwrap can size one, else `host_box`), new namespaces; bwrap writes the host pid
    of the namespace's init to `info_fd`."""
    argv = [iso.bwrap or "bwrap"]
    if iso.as_root:  # a user namespace would map the box's uid 0 to the host's root
        argv += [
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "CAP_SETUID",
            "--cap-add",
            "CAP_SETGID",
        ]
    else:
        argv += ["--unshare-all", "--unshare-user", "--cap-drop", "ALL"]
        if "--disable-userns" in iso.options:  # bubblewrap >= 0.8
            argv.append("--disable-userns")
    argv += ["--die-with-parent", "--new-session", "--info-fd", str(info_fd), "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    made: set[str] = set()
    for d in iso.binds:
        if "--perms" in iso.options:  # bwrap copies the modes of a host /root (0700): open the way down
            for parent in reversed(Path(d).parents):
                inside_bind = any(str(parent) == b or str(parent).startswith(b + "/") for b in iso.binds)
                if str(parent) not in ("/", "/usr") and str(parent) not in made and not inside_bind:
                    made.add(str(parent))
                    argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", d, d]
    for d in iso.hidden:
        argv += ["--tmpfs", d, "--remount-ro", d]
    argv += [
        "--ro-bind-try",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--tmpfs",
        "/proc/sys",
        "--remount-ro",
        "/proc/sys",
    ]
    for name in ("/proc/keys", "/proc/key-users"):
        if os.path.exists(name):
            argv += ["--ro-bind", "/dev/null", name]
    argv += ["--dev", "/dev"]
    if "--size" in iso.options and "--perms" in iso.options:  # every writable place is a small tmpfs
        argv += [
            "--perms",
            "1777",
            "--size",
            str(SHM_BYTES),
            "--tmpfs",
            "/dev/shm",
            "--remount-ro",
            "/dev",
            "--perms",
            "1777",
            "--size",
            str(file_mb * 1024 * 1024),
            "--tmpfs",
            BOX_ROOT,
            "--symlink",
            BOX_ROOT,
            "/tmp",
        ]
    else:  # older bubblewrap: host directories, each file capped by RLIMIT_FSIZE
        argv += ["--remount-ro", "/dev", "--bind", host_box, BOX_ROOT, "--bind", host_tmp, "/tmp"]
    argv += ["--chdir", BOX_ROOT]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--"]


def _guard_only(why: str) -> _Isolation:
    return _Isolation(
        GUARD_ONLY,
        f"{GUARD_ONLY}: {why} Model-written code runs with the Python "
        "guard alone, which stops accidents, not code written to escape; grade "
        "untrusted code in a container or VM with no network.",
    )


@functools.lru_cache(maxsize=1)
def _isolation() -> _Isolation:
    """Find out once whether bubblewrap can isolate a run here, by trying it."""
    if not sys.platform.startswith("linux"):
        return _guard_only(f"this system ({platform.system() or sys.platform}) has no isolation the kit can use.")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return _guard_only(
            "bubblewrap is not installed (Debian/Ubuntu: `sudo apt install bubblewrap`, then restart the kernel)."
        )
    python, binds, hidden = _base_python()
    home = os.path.realpath(os.path.expanduser("~"))
    for d in binds:
        if d == "/" or home == d or home.startswith(d.rstrip("/") + "/"):
            return _guard_only(
                f"Python's prefix {d} contains your home directory, which the "
                "box must not show (use a Python installed outside it)."
            )
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        usage = ""
    options = frozenset(o for o in ("--disable-userns", "--size", "--perms") if o in usage)
    as_root = os.geteuid() == 0
    iso = _Isolation(BUBBLEWRAP, "", bwrap, python, binds, options, hidden, as_root)
    probe = _run(
        "import os\nprint(os.readlink('/proc/self/ns/pid'), os.getuid())",
        iso,
        guard=False,
        timeout_s=20,
        memory_mb=256,
        max_file_mb=16,
    )
    seen = probe.stdout.split()
    if not probe.ok or not seen or seen[0] == os.readlink("/proc/self/ns/pid") or (as_root and seen[1:] == ["0"]):
        lines = [ln for ln in probe.stderr.splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {probe.returncode}"
        if as_root:
            return _guard_only(
                f"bubblewrap cannot build an unprivileged box as root here ({detail}); "
                "in a container, run the course as a normal user."
            )
        return _guard_only(
            f"bubblewrap cannot start a sandbox here ({detail}); where user "
            "namespaces are disabled, enable them (sysctl "
            "kernel.unprivileged_userns_clone=1, or on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0)."
        )
    machine = platform.machine().lower()
    processes = "no new processes" if _seccomp_program(machine) else "at most a few processes"
    note = (
        f"{BUBBLEWRAP}: each run gets a private /tmp, no network, its own PID namespace, "
        f"{processes}, an unprivileged user, and sees neither the project nor your home directory."
    )
    return dataclasses.replace(iso, note=note)


def isolation() -> str:
    """The isolation `run_python` uses on this machine: "bubblewrap" or "python-guard only"."""
    return _isolation().name


def isolation_note() -> str:
    """One plain sentence for learners: which isolation is active and what it means."""
    return _isolation().note


# --------------------------------------------------------------------------- running
def _keyring_call():
    """A function that makes the calling process join a new, empty session keyring (Linux), so
    the box does not inherit its caller's keys; None where that is not available."""
    numbers = {"x86_64": 250, "aarch64": 219}  # keyctl
    nr = numbers.get(platform.machine().lower())
    if not sys.platform.startswith("linux") or nr is None:
        return None
    try:
        import ctypes  # the caller's interpreter, not the box's

        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (ImportError, OSError, AttributeError):
        return None
    return lambda: syscall(nr, 1, None)  # KEYCTL_JOIN_SESSION_KEYRING, anonymous


def _limits(memory_mb: int, cpu_s: int, fsize_mb: int):
    """Build the preexec_fn that applies resource limits inside the child (POSIX only)."""
    import resource

    new_keyring = _keyring_call()  # prepared before the fork

    def apply() -> None:
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        fsize = fsize_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
        if new_keyring is not None:
            new_keyring()

    return apply


# CSI, OSC, DCS/PM/APC/SOS strings, other escapes, C0/C1 controls (but tab and newline), and the
# bidirectional overrides that make text display in another order than it runs
_TERMINAL_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -~]?|\x9b[0-?]*[ -/]*[@-~]?|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
)


def clean_output(text: str) -> str:
    """`text` without terminal escape sequences and control characters (tabs and newlines stay;
    a carriage return becomes a newline), so printed model output cannot rewrite the screen."""
    return _TERMINAL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _read(path: Path) -> str:
    """Read captured output as clean text, keeping at most MAX_CAPTURE_CHARS."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CAPTURE_CHARS * 4 + 1)
    except FileNotFoundError:
        return ""
    text = clean_output(data.decode("utf-8", errors="replace"))
    if len(text) > MAX_CAPTURE_CHARS:
        text = text[:MAX_CAPTURE_CHARS] + "\n[... output truncated by the sandbox]"
    return text


def _remove_tree(path: Path) -> None:
    """Delete a directory tree without recursion and without long paths: each directory found
    below the top is moved up to the top before it is emptied, so thousands of nested directories
    (deeper than Python's recursion limit and PATH_MAX) go like a flat one."""
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)

    def open_dir(name: str, parent: int) -> int:
        try:
            return os.open(name, flags, dir_fd=parent)
        except PermissionError:  # the code took its own permissions away
            os.chmod(name, 0o700, dir_fd=parent)
            return os.open(name, flags, dir_fd=parent)

    try:
        top = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        moved = 0
        while True:
            with os.scandir(top) as it:
                names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            if not names:
                break
            for name, is_dir in names:
                if not is_dir:
                    os.unlink(name, dir_fd=top)
                    continue
                sub = open_dir(name, top)
                try:
                    with os.scandir(sub) as it:
                        inner = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                    for child, child_is_dir in inner:
                        if child_is_dir:
                            moved += 1
                            os.rename(child, f".slm-up-{moved}", src_dir_fd=sub, dst_dir_fd=top)
                        else:
                            os.unlink(child, dir_fd=sub)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
    except OSError:
        pass
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _kill_namespace(info_fd: int, proc: subprocess.Popen) -> None:
    """Kill a bubblewrap sandbox's PID namespace and wait until it is empty.

    Killing its init (bwrap's child, read from --info-fd) makes the kernel kill every process
    inside; bwrap exits once that init is gone. Killing bwrap alone is not enough: as root,
    --die-with-parent does not reach the init (seen here: a busy loop outlived its bwrap by
    seconds). While bwrap lives the init's pid cannot be reused, so the kill is safe."""
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


@functools.lru_cache(maxsize=1)
def _inner_source() -> str:
    return _INNER.read_text(encoding="utf-8")


def _nproc(boxed: bool, as_root: bool, seccomp: bool) -> int:
    """RLIMIT_NPROC for the box (0: none). As root the box is `nobody`, whose processes and threads
    the kernel counts host-wide: a cap keeps a thread bomb's kernel stacks (outside the address
    space) small. Elsewhere it counts the caller's own processes, so it is set only where no
    seccomp filter stops new processes."""
    if boxed and as_root:
        return MAX_THREADS
    return 16 if boxed and not seccomp else 0


class _Box:
    """One run of the inner program (helpers/sandbox_box.py) in its own directory under `work`."""

    def __init__(
        self,
        iso: _Isolation,
        work: Path,
        role: str,
        job: dict,
        *,
        guard: bool,
        memory_mb: int,
        timeout_s: float,
        max_file_mb: int,
        config: dict | None = None,
        pass_fds: tuple[int, ...] = (),
    ):
        self.iso, self.dir, self.timeout_s = iso, work / role, timeout_s
        self.boxed = iso.name == BUBBLEWRAP
        self.dir.mkdir()
        host_box, host_tmp = self.dir / "box", self.dir / "tmp"
        host_box.mkdir()
        host_tmp.mkdir()
        if self.boxed and iso.as_root:  # an older bwrap binds these for the unprivileged box user
            host_box.chmod(0o1777)
            host_tmp.chmod(0o1777)
        root = BOX_ROOT if self.boxed else os.path.realpath(host_box)
        program = _seccomp_program(platform.machine().lower()) if self.boxed else None
        inner = {
            "role": role,
            "root": root,
            "guard": guard,
            "nproc": _nproc(self.boxed, iso.as_root, program is not None),
            "drop": list(UNPRIVILEGED) if self.boxed and iso.as_root else None,
            **(config or {}),
        }
        (self.dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        env = {
            "PATH": os.defpath,
            "HOME": root,
            "TMPDIR": root,
            "TEMP": root,
            "TMP": root,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        if os.name != "posix" and "SYSTEMROOT" in os.environ:  # Windows needs it to start
            env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
        python = (iso.python or sys.executable) if self.boxed else sys.executable
        command = [python, "-I", "-S", "-B", "-c", _inner_source(), json.dumps(inner)]
        self.info_r: int | None = None
        info_w: int | None = None
        seccomp = None
        fds = tuple(pass_fds)
        try:
            if self.boxed:
                if program is not None:
                    (self.dir / "seccomp.bpf").write_bytes(program)
                    seccomp = open(self.dir / "seccomp.bpf", "rb")
                    fds += (seccomp.fileno(),)
                self.info_r, info_w = os.pipe()
                fds += (info_w,)
                command = (
                    _bwrap_argv(
                        iso, str(host_box), str(host_tmp), max_file_mb, info_w, seccomp.fileno() if seccomp else None
                    )
                    + command
                )
            posix = os.name == "posix"
            cpu_s = int(math.ceil(timeout_s)) + 1
            startup = None
            if sys.platform == "win32" and fds:  # the pipes' handles are inherited, named in the config
                startup = subprocess.STARTUPINFO()
                startup.lpAttributeList = {"handle_list": [_child_fd(fd) for fd in fds]}
                fds = ()
            with (
                open(self.dir / "job.json", "rb") as stdin,
                open(self.dir / "stdout", "wb") as out,
                open(self.dir / "stderr", "wb") as err,
            ):
                self.t0 = time.perf_counter()
                self.proc = subprocess.Popen(
                    command,
                    cwd=host_box,
                    env=env,
                    stdin=stdin,
                    stdout=out,
                    stderr=err,
                    start_new_session=posix,
                    pass_fds=fds,
                    startupinfo=startup,
                    preexec_fn=_limits(memory_mb, cpu_s, max_file_mb) if posix else None,
                )
        except BaseException:
            if self.info_r is not None:
                os.close(self.info_r)
                self.info_r = None
            raise
        finally:
            if info_w is not None:
                os.close(info_w)
            if seccomp is not None:
                seccomp.close()
        self.timed_out = False
        self.duration = 0.0

    def wait(self, deadline: float) -> None:
        """Wait until the process ends or `deadline` (time.perf_counter()); then kill it."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.kill()
        self.duration = time.perf_counter() - self.t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            if self.info_r is not None:
                _kill_namespace(self.info_r, self.proc)
            _kill_group(self.proc)
        self.proc.wait()

    def close(self) -> None:
        if self.info_r is not None:
            os.close(self.info_r)
            self.info_r = None

    def result(self, ok: bool | None = None) -> SandboxResult:
        rc = self.proc.returncode
        timed_out = self.timed_out
        if timed_out and self.boxed:
            rc = -signal.SIGKILL  # what we did; bwrap reports it as 128 + 9
        if os.name == "posix" and rc in (-getattr(signal, "SIGXCPU", 24), 128 + getattr(signal, "SIGXCPU", 24)):
            timed_out = True  # hit the CPU-seconds limit: the same failure, seen by the kernel
        stderr = _read(self.dir / "stderr")
        if timed_out:
            stderr += f"\n[sandbox: killed after {self.timeout_s:g} s]"
        passed = (rc == 0) if ok is None else ok
        return SandboxResult(
            ok=passed and not timed_out,
            stdout=_read(self.dir / "stdout"),
            stderr=stderr,
            returncode=rc,
            timed_out=timed_out,
            duration_s=self.duration,
            isolation=self.iso.name,
        )


def _check_limits(timeout_s: float, memory_mb: int) -> None:
    if not timeout_s or timeout_s <= 0:
        raise BadInput(f"timeout_s must be > 0, got {timeout_s!r}", "use a few seconds, e.g. timeout_s=5")
    if memory_mb < 64:
        raise BadInput(
            f"memory_mb={memory_mb} is too small to start Python", "use at least 64 (the default 256 suits HumanEval)"
        )


def run_python(code: str, *, timeout_s: float = 5, memory_mb: int = 256, max_file_mb: int = 16) -> SandboxResult:
    """Run `code` with `python -I -S` in a fresh temporary directory, isolated where the OS
    allows it, with limits (see the module doc; `isolation_note()` says which applies).

    The process gets `timeout_s` seconds of wall-clock time (and as many CPU seconds),
    `memory_mb` of address space, and may write files of at most `max_file_mb` (in all, inside
    bubblewrap; this also caps its stdout/stderr). Returns what it printed, its exit code, whether
    it timed out and which isolation contained it. `ok` is the exit status: to grade code, use
    `run_check`, whose verdict the code cannot forge.
    """
    if not isinstance(code, str):
        raise BadInput(
            f"code must be a string, got {type(code).__name__}",
            "pass the program's source text, e.g. run_python('print(1 + 1)')",
        )
    _check_limits(timeout_s, memory_mb)
    return _run(code, _isolation(), guard=True, timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=max_file_mb)


def _run(
    code: str, iso: _Isolation, *, guard: bool, timeout_s: float, memory_mb: int, max_file_mb: int
) -> SandboxResult:
    """run_python with the layers chosen: the probe, and tests that check each layer alone."""
    work = Path(tempfile.mkdtemp(prefix="slm-sandbox-"))
    box = None
    try:
        box = _Box(
            iso,
            work,
            "run",
            {"code": code},
            guard=guard,
            memory_mb=memory_mb,
            timeout_s=timeout_s,
            max_file_mb=max_file_mb,
        )
        box.wait(time.perf_counter() + timeout_s)
        return box.result()
    finally:
        if box is not None:
            box.close()
        _remove_tree(work)


def run_check(
    code: str,
    test: str,
    entry_point: str,
    *,
    setup: str = "",
    timeout_s: float = 10,
    memory_mb: int = 256,
    max_file_mb: int = 16,
) -> SandboxResult:
    """Grade `code` (a model's answer defining `entry_point`) with `test` (which defines
    `check(candidate)`, as HumanEval's tests do), so that the answer cannot forge the verdict.

    Two sandboxed processes: one runs the answer and answers calls of `entry_point` over a pipe,
    the other runs `setup` (the task's own code, e.g. helper functions the test uses) and `test`,
    never the answer, and calls `check` with a stand-in for the function. Arguments and return
    values cross as plain data (None, bool, numbers, str, bytes, lists, tuples, sets, dicts);
    anything else fails the test. `ok` is True only when the test's process reports, with this
    run's token, that `check` returned. stdout is the answer's; stderr holds both processes'
    messages (a failed assertion shows as AssertionError). `timeout_s` bounds the whole check.
    """
    for name, value in (("code", code), ("test", test), ("entry_point", entry_point), ("setup", setup)):
        if not isinstance(value, str):
            raise BadInput(
                f"{name} must be a string, got {type(value).__name__}",
                "pass source text, e.g. run_check(answer, task_test, 'add')",
            )
    if not entry_point.isidentifier():
        raise BadInput(f"entry_point must be a function name, got {entry_point!r}", "e.g. 'has_close_elements'")
    _check_limits(timeout_s, memory_mb)
    return _check(
        code,
        test,
        entry_point,
        setup,
        _isolation(),
        guard=True,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        max_file_mb=max_file_mb,
    )


def _child_fd(fd: int) -> int:
    """What names pipe end `fd` in a child: the fd itself (POSIX, with pass_fds), or its
    inheritable handle (Windows; the inner program opens an fd on it)."""
    if sys.platform != "win32":  # (sys.platform rather than os.name: type checkers read it)
        return fd
    import msvcrt

    handle = msvcrt.get_osfhandle(fd)
    os.set_handle_inheritable(handle, True)
    return handle


def _check(
    code: str,
    test: str,
    entry_point: str,
    setup: str,
    iso: _Isolation,
    *,
    guard: bool,
    timeout_s: float,
    memory_mb: int,
    max_file_mb: int,
) -> SandboxResult:
    """run_check with the layers chosen (tests check each layer alone)."""
    work = Path(tempfile.mkdtemp(prefix="slm-sandbox-"))
    token = secrets.token_hex(16)
    calls_r, calls_w = os.pipe()  # test -> answer: arguments
    replies_r, replies_w = os.pipe()  # answer -> test: return values
    verdict_r, verdict_w = os.pipe()  # test -> grader: the verdict
    ends = {calls_r, calls_w, replies_r, replies_w, verdict_w}
    boxes: list[_Box] = []
    new_box = functools.partial(  # both boxes: the same layers and limits
        _Box, iso, work, guard=guard, memory_mb=memory_mb, timeout_s=timeout_s, max_file_mb=max_file_mb
    )
    try:
        deadline = time.perf_counter() + timeout_s
        common = {"entry": entry_point, "limit": MESSAGE_LIMIT}
        answer = new_box(
            "candidate",
            {"code": code},
            config={**common, "calls_in": _child_fd(calls_r), "calls_out": _child_fd(replies_w)},
            pass_fds=(calls_r, replies_w),
        )
        boxes.append(answer)
        tester = new_box(
            "harness",
            {"setup": setup, "test": test, "token": token},
            config={
                **common,
                "calls_in": _child_fd(replies_r),
                "calls_out": _child_fd(calls_w),
                "verdict": _child_fd(verdict_w),
            },
            pass_fds=(replies_r, calls_w, verdict_w),
        )
        boxes.append(tester)
        for fd in ends:  # only the boxes hold them now: a box that ends closes its side
            os.close(fd)
        ends.clear()
        tester.wait(deadline)
        passed = _verdict(verdict_r, token) and tester.proc.returncode == 0
        answer.wait(min(deadline, time.perf_counter() + 1.0))  # it ends when the test's side closes
        answer.timed_out = tester.timed_out  # the answer's process is only stopped, not failed
        first, second = answer.result(), tester.result(passed)
        stderr = "\n".join(
            part
            for part in (
                first.stderr and f"[the answer's process]\n{first.stderr.rstrip()}",
                second.stderr and f"[the test's process]\n{second.stderr.rstrip()}",
            )
            if part
        )
        return SandboxResult(
            ok=second.ok,
            stdout=first.stdout,
            stderr=stderr,
            returncode=second.returncode,
            timed_out=second.timed_out,
            duration_s=second.duration_s,
            isolation=iso.name,
        )
    finally:
        for box in boxes:
            if box.proc.poll() is None:
                box.kill()
            box.close()
        for fd in ends | {verdict_r}:
            os.close(fd)
        _remove_tree(work)


def _verdict(fd: int, token: str) -> bool:
    """True when the test's process wrote `{"token": token, "passed": true}` on its pipe."""
    data = b""
    # the test's process has ended: its end is closed, so a read cannot block (Windows pipes
    # cannot be polled; there nothing else holds that end)
    while len(data) < 4096 and (os.name != "posix" or select.select([fd], [], [], 1.0)[0]):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    if len(data) < 8 or int.from_bytes(data[:8], "big") != len(data) - 8:
        return False
    try:
        message = json.loads(data[8:].decode("utf-8"))
    except ValueError:
        return False
    return (
        isinstance(message, dict)
        and message.get("passed") is True
        and secrets.compare_digest(str(message.get("token")), token)
    )
