"""The program that runs inside the sandbox (helpers/sandbox.py starts it; nothing imports it).

It runs on the base interpreter's bare standard library, as
`python -I -S -B -c <this file's text> <config as JSON>`, with its input (code, tests) as JSON on
stdin. The config says which role it plays:

- "run" (`run_python`): execute the code as a fresh `__main__` module.
- "candidate" (scoring): execute a model's answer, then answer calls of its function
  (`config["entry"]`) that arrive on a pipe: arguments in, the return value out, both as plain data
  (None, bool, int, float, complex, str, bytes, range, and lists, tuples, sets, frozensets, dicts
  and iterators of those; an iterator arrives as one). The answer never sees the test.
- "harness" (scoring): execute the task's own code and its test (never the answer), call the test's
  `check` with a stand-in whose calls go to the candidate's process, and, only when `check`
  returns, write the verdict with the run's token on a pipe that only this process holds. Nothing
  the answer does can reach this process's state: it gets back plain values rebuilt here from JSON
  (an object whose `__eq__` says True cannot cross), and its exit status is not the verdict.

Every role first gives up root where the sandbox started it as root (`config["drop"]`: a uid and a
gid), then installs the guard (`config["guard"]`): an audit hook (PEP 578) whose state lives in
closures, which refuses writing outside the sandbox directory, starting processes, signals, the
network, native code (ctypes, cffi and other C-level modules), tracing and changing limits. The
guard sees only what Python reports: it stops accidents, not code written to escape.
"""

from __future__ import annotations

import json
import os
import sys

# C-level modules that hand Python code raw memory or native calls: never imported in the box
NATIVE_MODULES = frozenset(
    (
        "_ctypes",
        "ctypes",
        "_cffi_backend",
        "cffi",
        "_ctypes_test",
        "_testcapi",
        "_testinternalcapi",
        "_testbuffer",
        "_testmultiphase",
        "_testsinglephase",
        "_testimportmultiple",
        "_testclinic",
        "_xxtestfuzz",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "xxlimited",
        "xxsubtype",
    )
)
MAX_DEPTH = 200  # nesting of a plain value that crosses between the processes
MAX_ITEMS = 100_000  # items taken from an iterator (a generator may never end)


# --------------------------------------------------------------------------- the guard
def _refused(what):
    def call(*args, **kwargs):
        raise PermissionError(
            f"sandbox: {what} is refused (model-written code may not start "
            "processes, send signals, load native code or hold memory outside its limit)"
        )

    return call


def _replace_c_functions():
    """Route the C functions that raise no audit event through the guard. Kept apart from
    _guard: a replacement is reachable by the code (and its __closure__ is not audited), so
    it must share no closure cell with the hook."""
    try:
        import _posixsubprocess

        _posixsubprocess.fork_exec = _refused("creating a process")
    except ImportError:  # Windows
        pass
    import _signal
    import signal

    for module in (_signal, signal):
        if hasattr(module, "pidfd_send_signal"):
            module.pidfd_send_signal = _refused("sending a signal")
    if hasattr(os, "memfd_create"):  # memory outside the address space's limit
        os.memfd_create = sys.modules[os.name].memfd_create = _refused("memfd_create")
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
    import _imp  # an extension module loaded by hand raises no "import" event

    def create_dynamic(spec, *args, _original=_imp.create_dynamic):
        if str(getattr(spec, "name", "")).rpartition(".")[2] in NATIVE_MODULES:
            raise PermissionError(f"sandbox: loading {spec.name} is refused (native code)")
        return _original(spec, *args)

    _imp.create_dynamic = create_dynamic


def _guard(root):
    allowed_write = ("/dev/null",)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    own_pid = str(os.getpid())
    # event -> (positions of paths that must stay inside, positions of dir_fd arguments)
    path_events = {
        "os.remove": ((0,), (1,)),
        "os.rmdir": ((0,), (1,)),
        "os.mkdir": ((0,), (2,)),
        "os.rename": ((0, 1), (2, 3)),
        "os.link": ((0, 1), (2, 3)),
        "os.chmod": ((0,), (2,)),
        "os.chown": ((0,), (3,)),
        "os.utime": ((0,), (3,)),
        "os.truncate": ((0,), ()),
        "os.chflags": ((0,), ()),
        "os.lchflags": ((0,), ()),
        "os.setxattr": ((0,), ()),
        "os.removexattr": ((0,), ()),
        "os.mkfifo": ((0,), (2,)),
        "os.mknod": ((0,), (3,)),
        "shutil.rmtree": ((0,), (1,)),
        "shutil.copyfile": ((1,), ()),
        "shutil.copymode": ((1,), ()),
        "shutil.copystat": ((1,), ()),
        "shutil.copytree": ((1,), ()),
        "shutil.move": ((0, 1), ()),
        "shutil.chown": ((0,), ()),
        "shutil.make_archive": ((0,), ()),
        "shutil.unpack_archive": ((1,), ()),
    }
    refused = frozenset(
        (
            "subprocess.Popen",
            "os.system",
            "os.exec",
            "os.posix_spawn",
            "os.spawn",
            "os.fork",
            "os.forkpty",
            "os.startfile",
            "os.kill",
            "os.killpg",
            "pty.spawn",
            "signal.pthread_kill",
            "socket.connect",
            "socket.bind",
            "socket.sendto",
            "socket.sendmsg",
            "os.symlink",
            "ctypes.dlopen",
            "ctypes.dlsym",
            "ctypes.call_function",
            "ctypes.cdata",
            "resource.setrlimit",
            "resource.prlimit",
            "sqlite3.connect",
            "sqlite3.enable_load_extension",
            "gc.get_objects",
            "gc.get_referrers",
            "gc.get_referents",
            "sys.setprofile",
            "sys.settrace",
        )
    )
    # modules whose C functions are replaced above (a fresh copy would bring them back), and
    # the native-code modules
    refused_imports = frozenset((os.name, "os", "_posixsubprocess", "_signal", "signal", "_imp")) | NATIVE_MODULES
    try:
        import fcntl  # macOS names the directory behind a descriptor with F_GETPATH
    except ImportError:
        fcntl = None

    def refuse(what, path=None):
        if path is None:
            raise PermissionError(
                f"sandbox: {what} is refused (model-written code may not start "
                "processes, send signals, use the network or databases, load "
                "native code, trace or change its limits)"
            )
        raise PermissionError(
            f"sandbox: {what} {path!r} is refused: outside the sandbox directory (use a relative path inside it)"
        )

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
        if not os.path.isabs(name) and ".." not in name.split(os.sep) and inside(base):
            return  # below a real directory inside, where the code cannot make symlinks: no walk
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
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
            if writing:
                # os.open(..., dir_fd=) is not in the event: refuse climbing out with "..",
                # and (below) descriptors of directories outside the box
                if not os.path.isabs(name) and os.path.normpath(name).split(os.sep)[0] == "..":
                    refuse("writing", path)
                check_path("writing", name)
            elif other_process(name):
                refuse("reading another process's /proc entry", path)
            elif os.path.realpath(name) in ("/proc/keys", "/proc/key-users"):
                refuse(f"reading the keyring list {name!r}")
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
            if args[0] in refused_imports or str(args[0]).partition(".")[0] in NATIVE_MODULES:
                refuse(f"importing {args[0]}")
        elif event in refused:
            refuse(event)

    _replace_c_functions()  # before the hook: it refuses re-importing their modules
    sys.addaudithook(hook)  # cannot be removed; holds its state in this closure


# --------------------------------------------------------------------------- plain data across a pipe
class NotPlain(TypeError):
    """A value that cannot cross between the processes (not plain data)."""


_SEQUENCES = {list: "l", tuple: "t", set: "S", frozenset: "z"}
_BUILD = {"l": list, "t": tuple, "S": set, "z": frozenset}


def encode(value, depth=0):
    """`value` as JSON-able tagged data; NotPlain for anything but plain builtin values (exact
    types: a subclass of int or list may carry its own __eq__)."""
    if depth > MAX_DEPTH:
        raise NotPlain(f"a value nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None:
        return ["n"]
    if kind is bool:
        return ["b", value]
    if kind is int:
        return ["i", str(value)]
    if kind is float:
        return ["f", value.hex()]
    if kind is complex:
        return ["c", value.real.hex(), value.imag.hex()]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["y", value.hex()]
    if kind in _SEQUENCES:
        return [_SEQUENCES[kind], [encode(v, depth + 1) for v in value]]
    if kind is dict:
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    if kind is range:
        return ["r", [value.start, value.stop, value.step]]
    if hasattr(kind, "__next__") and hasattr(kind, "__iter__"):  # a generator, map, zip...: its items
        items = []
        for item in value:
            if len(items) >= MAX_ITEMS:
                raise NotPlain(f"an iterator of more than {MAX_ITEMS} items")
            items.append(encode(item, depth + 1))
        return ["it", items]
    raise NotPlain(
        f"a {kind.__name__} object (only None, bool, int, float, complex, str, bytes and "
        "lists, tuples, sets and dicts of those cross between the answer and the test)"
    )


def decode(data, depth=0):
    """The value `encode` described, rebuilt from builtin types only."""
    if depth > MAX_DEPTH or not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise NotPlain("a malformed value")
    tag, rest = data[0], data[1:]
    if tag == "n" and not rest:
        return None
    if tag == "b" and len(rest) == 1 and isinstance(rest[0], bool):
        return rest[0]
    if len(rest) == 1 and isinstance(rest[0], str):
        if tag == "i":
            return int(rest[0])
        if tag == "f":
            return float.fromhex(rest[0])
        if tag == "s":
            return rest[0]
        if tag == "y":
            return bytes.fromhex(rest[0])
    if tag == "c" and len(rest) == 2 and all(isinstance(r, str) for r in rest):
        return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
    if tag in _BUILD and len(rest) == 1 and isinstance(rest[0], list):
        return _BUILD[tag](decode(v, depth + 1) for v in rest[0])
    if tag == "it" and len(rest) == 1 and isinstance(rest[0], list):  # consumed once, as the original
        return iter([decode(v, depth + 1) for v in rest[0]])
    if (
        tag == "r"
        and len(rest) == 1
        and isinstance(rest[0], list)
        and len(rest[0]) == 3
        and all(type(n) is int for n in rest[0])
    ):
        return range(*rest[0])
    if tag == "d" and len(rest) == 1 and isinstance(rest[0], list):
        pairs = rest[0]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise NotPlain("a malformed dict")
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
    raise NotPlain("a malformed value")


def send(fd, message):
    """Write one message: 8 bytes of length, then JSON."""
    data = json.dumps(message).encode("utf-8")
    view = memoryview(len(data).to_bytes(8, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def receive(fd, limit):
    """Read one message of at most `limit` bytes; EOFError when the other side has gone."""

    def exactly(n):
        parts, left = [], n
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError("the other process ended")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    size = int.from_bytes(exactly(8), "big")
    if size > limit:
        raise NotPlain(f"a message of {size} bytes (the limit is {limit})")
    return json.loads(exactly(size).decode("utf-8"))


# --------------------------------------------------------------------------- the roles
def _drop_root(ids):
    """Give up root for good (the sandbox starts the box as root only when its caller is root)."""
    uid, gid = ids
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("sandbox: could not give up root")


def _run_as_main(source, filename):
    """Execute `source` as a fresh __main__ module; returns it, or None after printing the
    learner's traceback (without this program's frames)."""
    import linecache
    import traceback
    import types

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType("__main__")
    module.__file__ = filename
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return None
    return module


def _serve(module, config):
    """The candidate's side: call its function for each request until the harness is done."""
    import traceback

    entry, limit = config["entry"], config["limit"]
    calls_in, calls_out = config["calls_in"], config["calls_out"]
    func = module.__dict__.get(entry) if module is not None else None
    while True:
        try:
            args, kwargs = receive(calls_in, limit)
            args, kwargs = decode(args), decode(kwargs)
        except EOFError:
            return 0
        if not callable(func):
            reply = ["error", "NameError", f"the answer defines no function {entry!r}"]
        else:
            try:
                reply = ["ok", encode(func(*args, **kwargs))]
            except NotPlain as exc:
                reply = ["error", "TypeError", f"{entry} returned {exc}"]
            except BaseException as exc:  # the answer's own error, SystemExit included
                traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
                reply = ["error", type(exc).__name__, str(exc)[:2000]]
        send(calls_out, reply)


class CandidateError(Exception):
    """The answer's function raised, returned something that is not plain data, or its process
    ended."""


def _stand_in(entry, calls_out, calls_in, limit):
    """A function that calls the candidate's `entry` in its process and returns a plain copy."""

    def candidate(*args, **kwargs):
        try:
            send(calls_out, [encode(list(args)), encode(kwargs)])
        except NotPlain as exc:
            raise TypeError(f"the test passes {exc} to {entry}: it cannot cross to the answer's process") from None
        except OSError:
            raise CandidateError(f"the answer's process ended before {entry} was called") from None
        try:
            reply = receive(calls_in, limit)
        except (EOFError, OSError):
            raise CandidateError(f"the answer's process ended during a call of {entry}") from None
        except (NotPlain, ValueError, RecursionError) as exc:
            raise CandidateError(f"{entry} returned {exc}") from None
        if not (isinstance(reply, list) and reply and reply[0] in ("ok", "error")):
            raise CandidateError(f"{entry}'s process answered with a malformed message")
        if reply[0] == "error":
            raise CandidateError(": ".join(str(part) for part in reply[1:3]))
        try:
            return decode(reply[1])
        except (NotPlain, ValueError, TypeError, RecursionError, IndexError) as exc:
            raise CandidateError(f"{entry} returned {exc}") from None

    candidate.__name__ = candidate.__qualname__ = entry
    return candidate


def _harness(job, config):
    """The test's side: run the task's code and test against the stand-in; the verdict is written
    only when `check` returns."""
    import traceback

    entry = config["entry"]
    names = {"__name__": "__main__", "__builtins__": __builtins__}
    candidate = _stand_in(entry, config["calls_out"], config["calls_in"], config["limit"])
    try:
        exec(compile(job.get("setup", ""), "problem.py", "exec"), names)
        exec(compile(job["test"], "test.py", "exec"), names)
        names[entry] = candidate  # a test may name the function instead of `candidate`
        check = names.get("check")
        if not callable(check):
            raise NameError("the test defines no check(candidate) function")
        check(candidate)
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return 1
    send(config["verdict"], {"token": job["token"], "passed": True})  # the token came on stdin, not argv
    return 0


def main(argv):
    """Play the role `argv[1]` (the config, JSON) names; returns the exit status."""
    config = json.loads(argv[1])
    if sys.platform == "win32":  # the pipes arrive as inherited handles
        import msvcrt

        for key, flags in (("calls_in", os.O_RDONLY), ("calls_out", os.O_WRONLY), ("verdict", os.O_WRONLY)):
            if key in config:
                config[key] = msvcrt.open_osfhandle(config[key], flags)
    if config.get("drop"):
        _drop_root(config["drop"])
    if config.get("nproc"):
        import resource

        resource.setrlimit(resource.RLIMIT_NPROC, (config["nproc"], config["nproc"]))
    job = json.loads(sys.stdin.read())
    if config.get("guard"):
        _guard(config["root"])
    role = config["role"]
    if role == "harness":
        return _harness(job, config)
    module = _run_as_main(job["code"], "solution.py")
    if role == "candidate":
        return _serve(module, config)
    return 0 if module is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
