"""The engine is built to run on any CPU of its kind: no Intel AMX, no -march=native on x86-64.

A native build on an AMX Xeon segfaults on the first generation (ggml-org/llama.cpp#20824),
and a native build moved to another host (Binder builds on one, runs on others) can die with
"illegal instruction". These tests read the *installed* library, so they fail on such a build.
"""
from __future__ import annotations

import os
import sys

import pytest

from helpers.doctor import _bundled, _engine_build
from helpers.serving import engine_build

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

NATIVE_AMX_XEON = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
                   "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
                   "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
PORTABLE = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
            "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")


def test_installed_engine_has_no_amx_and_is_portable():
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    info = info.decode() if isinstance(info, bytes) else str(info)
    features = engine_build.compiled_features(info)
    assert features, f"could not read llama.cpp's system info: {info!r}"
    assert not any(on for k, on in features.items() if k.startswith("AMX")), (
        f"llama.cpp was built with Intel AMX: {info}\nrebuild: {engine_build.REBUILD_COMMAND}")
    assert engine_build.problems(info) == [], info
    if engine_build.is_x86_64():
        assert features.get("AVX2") and features.get("FMA"), f"the portable build keeps AVX2/FMA: {info}"


def test_problems_name_amx_and_native_builds():
    found = engine_build.problems(NATIVE_AMX_XEON, "x86_64")
    assert len(found) == 2 and "AMX_INT8" in found[0] and "AVX512" in found[1]
    assert engine_build.problems(PORTABLE, "x86_64") == []
    # On ARM llama.cpp's own defaults (NEON, Metal) are kept; AMX can only be an x86 build.
    assert engine_build.problems("CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 | ", "arm64") == []


@pytest.mark.parametrize("machine, portable", [("x86_64", True), ("AMD64", True), ("arm64", False),
                                               ("aarch64", False)])
def test_cmake_args_by_machine(machine, portable):
    args = engine_build.cmake_args(machine)
    if portable:
        assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX2=ON" in args and "AMX" not in args
    else:
        assert args is None


def test_every_install_path_builds_portably():
    """make, the README's by-hand steps, CI (make test) and Binder all take the portable build,
    and none can reuse a wheel pip cached from a native build."""
    root = engine_build.__file__.rsplit("/helpers/", 1)[0]
    read = lambda p: open(os.path.join(root, p), encoding="utf-8").read()  # noqa: E731
    makefile = read("Makefile")
    assert "-m helpers.serving.engine_build" in makefile
    # the course's own pip install compiles with the same flags if it compiles at all, and the
    # installed result is checked before the install counts as done
    assert 'CMAKE_ARGS="$(ENGINE_CMAKE_ARGS)" $(BIN)/python -m pip install -e' in makefile
    x86 = [ln for ln in makefile.splitlines() if ln.startswith("ENGINE_CMAKE_ARGS :=") and ln.split(":=")[1].strip()]
    assert len(x86) == 1 and x86[0].split(":=")[1].split() == list(engine_build.PORTABLE_X86_FLAGS)
    assert "engine_build --check" in makefile
    assert "python -m helpers.serving.engine_build" in read("README.md")
    assert "make test" in read(".ci/run")
    binder = [ln for ln in read("binder/requirements.txt").splitlines() if ln.startswith("llama")]
    assert len(binder) == 1 and all(flag in binder[0] for flag in engine_build.PORTABLE_X86_FLAGS)
    assert "helpers.serving.engine_build" in read("binder/postBuild")
    assert "--no-cache-dir" in open(engine_build.__file__, encoding="utf-8").read()


def test_doctor_reports_the_build():
    check = _engine_build()
    assert check.status == "OK", check.line()


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_doctor_survives_an_engine_crash_and_names_the_fix():
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    check = _bundled(crash)
    assert check.status == "FAIL"
    assert "SIGSEGV" in check.detail and "AMX" in check.detail
    assert engine_build.REBUILD_COMMAND in check.fix


def test_doctor_generates_in_a_child_process():
    check = _bundled()
    assert check.status == "OK", check.line()
    assert "answers offline" in check.detail


def test_the_build_asks_for_the_same_versions_as_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    root = engine_build.__file__.rsplit("/helpers/", 1)[0]
    with open(f"{root}/pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    assert engine_build.requirement() in deps


def test_cmake_args_are_printed_for_make():
    import subprocess
    import sys

    root = engine_build.__file__.rsplit("/helpers/", 1)[0]
    out = subprocess.run([sys.executable, "-m", "helpers.serving.engine_build", "--cmake-args"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == (engine_build.cmake_args() or "")
