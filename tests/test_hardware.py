"""Hardware helpers: a real (small) bandwidth measurement, the decode ceiling, the machine summary."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from helpers.errors import BadInput
from helpers.hardware import decode_ceiling_tps, machine_summary, measure_memory_bandwidth

pytestmark = pytest.mark.no_server  # a unit test: no model server needed


def _physical_ram_gb() -> float:
    """The machine's RAM as the OS itself reports it (POSIX sysconf: pages x page size),
    read without psutil, which machine_summary uses."""
    if not hasattr(os, "sysconf") or "SC_PHYS_PAGES" not in os.sysconf_names:
        pytest.skip("this OS has no sysconf(SC_PHYS_PAGES) to compare with")
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def test_bandwidth_is_plausible_with_a_small_array():
    bw = measure_memory_bandwidth(size_mb=32, repeats=3)
    assert 0 < bw.gbs_min <= bw.gbs_median <= bw.gbs_max
    # beside it, the same copy timed by this thread's CPU clock, which other programs cannot stretch
    # (the wall clock the lesson uses can: a busy machine only lowers its figure)
    src = np.ones(4_000_000)  # 32 MB of float64
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch, as the helper does
    cpu_s = []
    for _ in range(3):
        t0 = time.thread_time()
        np.copyto(dst, src)
        cpu_s.append(time.thread_time() - t0)
    cpu_gbs = 2 * src.nbytes / min(cpu_s) / 1e9
    assert cpu_gbs > 0.5  # any machine of the last 20 years copies faster than this
    assert bw.gbs_max <= 1.5 * cpu_gbs, (bw, cpu_gbs)  # the wall clock cannot make a copy faster
    assert bw.repeats == 3 and bw.size_mb == pytest.approx(32, rel=0.01)
    assert "STREAM" in bw.method


@pytest.mark.parametrize("size_mb,repeats", [(0, 3), (-1, 3), (32, 0)])
def test_bandwidth_rejects_bad_arguments(size_mb, repeats):
    with pytest.raises(BadInput):
        measure_memory_bandwidth(size_mb=size_mb, repeats=repeats)


def test_decode_ceiling_arithmetic():
    assert decode_ceiling_tps(4e9, 20.0) == pytest.approx(5.0)  # 4 GB of weights at 20 GB/s
    assert decode_ceiling_tps(98e6, 24.5) == pytest.approx(250.0)  # a 98 MB model
    assert decode_ceiling_tps(2e9, 40.0) == 2 * decode_ceiling_tps(2e9, 20.0)


@pytest.mark.parametrize("size,bw", [(0, 20.0), (-1, 20.0), (1e9, 0), (1e9, -3), (None, 20.0)])
def test_decode_ceiling_rejects_bad_input(size, bw):
    with pytest.raises(BadInput):
        decode_ceiling_tps(size, bw)


def test_machine_summary_fields(tmp_path):
    info = machine_summary(cgroup_root=tmp_path)  # an empty cgroup tree: no container limit
    for key in (
        "cpu",
        "cores_physical",
        "cores_logical",
        "cores_usable",
        "ram_total_gb",
        "ram_available_gb",
        "disk_free_gb",
        "os",
        "python",
    ):
        assert key in info
    assert info["cores_logical"] >= 1 and info["cores_usable"] >= 1
    assert 0 < info["ram_available_gb"] <= info["ram_total_gb"]
    assert info["ram_total_gb"] == pytest.approx(_physical_ram_gb(), abs=0.05)  # GB to one decimal
    assert not info["ram_container_limited"]
    # the free space of the disk the course runs from, as the OS reports it (give or take writes)
    assert info["disk_free_gb"] == pytest.approx(shutil.disk_usage(os.getcwd()).free / 1e9, abs=0.5)
    assert isinstance(info["cpu"], str) and info["cpu"]


@pytest.mark.parametrize(
    "files, limited",
    [
        ({"memory.max": "536870912\n"}, True),  # cgroup v2 (Binder, Docker): 512 MiB
        ({"memory/memory.limit_in_bytes": "536870912\n"}, True),  # cgroup v1
        ({"memory.max": "max\n"}, False),  # v2 without a limit
        ({"memory/memory.limit_in_bytes": "9223372036854771712"}, False),  # v1 "unlimited": above the host
    ],
)
def test_machine_summary_honours_a_container_memory_limit(tmp_path, files, limited):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    info = machine_summary(cgroup_root=tmp_path)
    assert info["ram_container_limited"] is limited
    host = _physical_ram_gb()
    if limited:  # 536,870,912 bytes = 0.537 GB, shown to one decimal
        assert info["ram_total_gb"] == 0.5 and info["ram_available_gb"] <= 0.5 < host
    else:
        assert info["ram_total_gb"] == pytest.approx(host, abs=0.05)


def test_doctor_reports_the_machine_as_machine_summary_does():
    from helpers.doctor import _machine

    machine, *fits = _machine()
    info = machine_summary()
    assert machine.detail.startswith(f"{info['ram_total_gb']:.1f} GB RAM")
    assert f"({info['ram_available_gb']:.1f} GB available)" in machine.detail
    assert [f.name for f in fits] == ["fits", "fits, current models"]
