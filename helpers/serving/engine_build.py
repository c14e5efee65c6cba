"""Install llama-cpp-python built for *any* machine of this kind, not only the one that built it.

pip compiles llama-cpp-python from source with llama.cpp's default `GGML_NATIVE=ON`, i.e.
`-march=native`: the library then uses every instruction the build machine has. That breaks
in two ways:
- on Intel CPUs with AMX (Sapphire Rapids and later, common in clouds, CI and Binder), the
  AMX matrix kernels crash on the first multi-token batch (ggml-org/llama.cpp#20824);
- an image built on one host (Binder, a class's shared image) dies with "illegal instruction"
  on a host without the build host's instruction set (AVX-512, AMX).
On x86-64 this module therefore builds with a fixed, portable set (AVX, AVX2, FMA, F16C: every
x86-64 CPU of the last ten years), which is as fast as a native build for these small models.
On ARM (Apple Silicon, Raspberry Pi, Graviton) llama.cpp's defaults (Metal / NEON) are kept.

pip's wheel cache does not key on CMAKE_ARGS: a wheel built earlier with native flags would be
reused whatever the flags say, so the build here never reads or writes that cache.

Run it from the course folder, before or after `pip install -e .` (standard library only):

    python -m helpers.serving.engine_build            # install a portable build if needed
    python -m helpers.serving.engine_build --check    # report the installed build, exit 1 if unsafe
    python -m helpers.serving.engine_build --force    # rebuild even if the installed one looks fine
    python -m helpers.serving.engine_build --cmake-args   # the flags, for any other pip call
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def requirement(pyproject: Path = _PYPROJECT) -> str:
    """The llama-cpp-python requirement of pyproject.toml (the one place the range is written),
    so this build and `pip install -e .` can never ask for different versions."""
    found = re.search(r'"(llama-cpp-python[^";]*)"', pyproject.read_text(encoding="utf-8"))
    if found is None:
        raise SystemExit(f"[engine_build] no llama-cpp-python requirement in {pyproject}")
    return found.group(1)


PORTABLE_X86_FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
                      "-DGGML_F16C=ON")
REBUILD_COMMAND = "python -m helpers.serving.engine_build --force"
# Instruction sets a portable x86-64 build must not report (llama_print_system_info, compile time)
NOT_PORTABLE = ("AMX_INT8", "AMX_BF16", "AMX_TILE", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
                "AVX512_BF16", "AVX_VNNI")


def is_x86_64(machine: str | None = None) -> bool:
    """Whether this (or the named) machine is x86-64 (Linux says x86_64, Windows AMD64)."""
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "x64")


def cmake_args(machine: str | None = None) -> str | None:
    """The CMAKE_ARGS for a portable build on this machine (None: keep llama.cpp's defaults)."""
    return " ".join(PORTABLE_X86_FLAGS) if is_x86_64(machine) else None


def compiled_features(info: str) -> dict[str, bool]:
    """Parse llama.cpp's system info ('CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | ...')."""
    return {name: value == "1" for name, value in re.findall(r"([A-Z0-9_]+) = ([01])", info)}


def problems(info: str, machine: str | None = None) -> list[str]:
    """Why an installed build is unsafe to run on other machines of this kind (empty: fine)."""
    features = compiled_features(info)
    out = []
    amx = sorted(k for k, on in features.items() if on and k.startswith("AMX"))
    if amx:
        out.append(f"compiled with Intel AMX ({', '.join(amx)}): crashes on AMX CPUs "
                   "(ggml-org/llama.cpp#20824)")
    if is_x86_64(machine):
        native = sorted(k for k, on in features.items() if on and k in NOT_PORTABLE
                        and not k.startswith("AMX"))
        if native:
            out.append(f"compiled for this CPU only ({', '.join(native)}: -march=native): "
                       "dies with 'illegal instruction' on CPUs without them")
    return out


def installed_system_info(python: str = sys.executable) -> str | None:
    """llama.cpp's system info of the installed library, read in a subprocess (None: not
    installed or it cannot load). A subprocess, so a broken library cannot crash the caller."""
    code = ("import llama_cpp, sys; info = llama_cpp.llama_print_system_info(); "
            "sys.stdout.write(info.decode() if isinstance(info, bytes) else str(info))")
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def install(python: str = sys.executable, *, force: bool = False, machine: str | None = None) -> int:
    """Install (or rebuild) llama-cpp-python portably unless a safe build is installed."""
    info = installed_system_info(python)
    if info is not None and not force:
        found = problems(info, machine)
        if not found:
            print("[engine_build] llama-cpp-python is installed and portable: nothing to do")
            return 0
        print("[engine_build] the installed llama-cpp-python is not portable: " + "; ".join(found))
    args = cmake_args(machine)
    env = dict(os.environ)
    if args is not None:
        env["CMAKE_ARGS"] = args
        print(f"[engine_build] building llama-cpp-python with CMAKE_ARGS={args!r} "
              "(about 5 minutes on 2 cores)", flush=True)
    else:
        env.pop("CMAKE_ARGS", None)
        print(f"[engine_build] building llama-cpp-python with llama.cpp's defaults for "
              f"{platform.machine()} (about 5 minutes)", flush=True)
    cmd = [python, "-m", "pip", "install", "--no-cache-dir", requirement()]
    if info is not None:
        cmd[4:4] = ["--force-reinstall", "--no-deps"]
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        print("[engine_build] the build failed: see pip's output above (it needs a C/C++ "
              "compiler and cmake: `apt install build-essential cmake`, Xcode's command line "
              "tools, or Visual Studio Build Tools on Windows)")
        return done.returncode
    info = installed_system_info(python)
    found = problems(info or "", machine) if info is not None else ["it does not load"]
    if found:
        print("[engine_build] the new build is still not portable: " + "; ".join(found))
        return 1
    print("[engine_build] installed: " + (info or "").strip())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.serving.engine_build", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if unsafe or missing")
    parser.add_argument("--force", action="store_true", help="rebuild even if the installed build is fine")
    parser.add_argument("--cmake-args", action="store_true",
                        help="print the CMAKE_ARGS of a portable build on this machine (empty on ARM)")
    args = parser.parse_args(argv)
    if args.cmake_args:
        print(cmake_args() or "")
        return 0
    if args.check:
        info = installed_system_info()
        if info is None:
            print(f"llama-cpp-python is not installed or does not load: run `{REBUILD_COMMAND}`")
            return 1
        found = problems(info)
        print(info.strip())
        for p in found:
            print(f"[FAIL] {p}: run `{REBUILD_COMMAND}`")
        return 1 if found else 0
    return install(force=args.force)


if __name__ == "__main__":
    sys.exit(main())
