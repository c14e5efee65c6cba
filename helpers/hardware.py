"""The machine under the model: memory bandwidth, the decode-speed ceiling it implies, a summary.

Generating one token with a dense model reads every weight once, so on a CPU (and most GPUs)
decode speed is bounded by memory bandwidth, not by arithmetic. Lesson 03 measures the
bandwidth here and compares the ceiling with the tokens/s the model really reaches.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInput

GB = 1e9  # decimal gigabytes, as bandwidth and disk sizes are usually quoted


@dataclass(frozen=True)
class Bandwidth:
    """Measured memory bandwidth in GB/s (1 GB = 1e9 bytes) over repeated copies."""

    gbs_median: float
    gbs_min: float
    gbs_max: float
    method: str
    size_mb: float
    repeats: int

    def __str__(self) -> str:
        return (
            f"{self.gbs_median:.1f} GB/s (min {self.gbs_min:.1f}, max {self.gbs_max:.1f}, "
            f"{self.repeats} runs) - {self.method}"
        )


def measure_memory_bandwidth(size_mb: float = 256, repeats: int = 5) -> Bandwidth:
    """Estimate sustained memory bandwidth with a STREAM-copy-like test: `dst[:] = src` on big arrays.

    Each copy reads `size_mb` and writes `size_mb`, so 2 x size bytes are counted per run (as
    STREAM's "Copy" does; the extra read some CPUs do before a write is not counted, so this is
    a slight under-estimate). One untimed warm-up copy touches every page first. The arrays must
    be much larger than the CPU caches (tens of MB), or you measure the cache instead of RAM.
    """
    if not size_mb or size_mb <= 0:
        raise BadInput(
            f"size_mb must be positive, got {size_mb!r}",
            "use 64-512 MB: far larger than the CPU cache, small enough to fit in RAM",
        )
    if int(repeats) < 1:
        raise BadInput(f"repeats must be at least 1, got {repeats!r}", "use repeats=5 for a median")
    n = int(size_mb * 1e6) // 8
    if n < 1:
        raise BadInput(f"size_mb={size_mb} is too small for one float64", "use size_mb >= 1")
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up: page faults and first touch are not bandwidth
    moved = 2 * src.nbytes  # read src + write dst
    rates = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        np.copyto(dst, src)
        elapsed = time.perf_counter() - start
        rates.append(moved / elapsed / GB)
    return Bandwidth(
        gbs_median=statistics.median(rates),
        gbs_min=min(rates),
        gbs_max=max(rates),
        method=f"numpy copy of {src.nbytes / 1e6:.0f} MB float64 arrays, read+write bytes counted "
        "(STREAM-copy-like, single thread)",
        size_mb=src.nbytes / 1e6,
        repeats=int(repeats),
    )


def decode_ceiling_tps(model_bytes: float, bandwidth_gbs: float) -> float:
    """Upper bound on decode speed: tokens/s <= bandwidth / bytes of weights.

    Each generated token needs a full forward pass, which reads every weight from memory once;
    the weights do not fit in cache, so a token cannot be faster than moving the whole model
    through the memory bus. Example: a 4 GB file at 20 GB/s gives at most 5 tokens/s. Real
    speed is lower (KV-cache reads, compute, threads); batching several requests shares one read.
    """
    if not model_bytes or model_bytes <= 0:
        raise BadInput(
            f"model_bytes must be positive, got {model_bytes!r}",
            "pass the size of the weights file in bytes, e.g. os.path.getsize(path)",
        )
    if not bandwidth_gbs or bandwidth_gbs <= 0:
        raise BadInput(
            f"bandwidth_gbs must be positive, got {bandwidth_gbs!r}",
            "measure it with measure_memory_bandwidth().gbs_median",
        )
    return bandwidth_gbs * GB / model_bytes


def _cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo on Linux, sysctl on macOS, else platform."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return platform.processor() or platform.machine() or "unknown"


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """A container's memory limit in bytes (Binder, Docker), or None when there is none:
    cgroup v2's `memory.max` ("max" = none), else cgroup v1's `memory/memory.limit_in_bytes`."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def machine_summary(*, cgroup_root: str | Path = CGROUP_ROOT) -> dict:
    """What this machine offers a local model: CPU, cores, RAM, free disk, OS.

    RAM figures honour a container limit (Binder gives 1-2 GB while the host shows far more),
    read from the cgroup files under `cgroup_root`.
    """
    import psutil

    mem = psutil.virtual_memory()
    total, available = mem.total, mem.available
    limit = _cgroup_memory_limit(Path(cgroup_root))
    limited = limit is not None and limit < total
    if limited:
        total = limit
        available = min(available, limit)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = psutil.cpu_count(logical=True) or 1
    return {
        "cpu": _cpu_model(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_usable": usable,
        "ram_total_gb": round(total / GB, 1),
        "ram_available_gb": round(available / GB, 1),
        "ram_container_limited": limited,
        "disk_free_gb": round(psutil.disk_usage(os.getcwd()).free / GB, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
