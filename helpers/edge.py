"""Lesson 08: how much memory a local model needs, and what fits a phone, a Pi or a laptop.

Memory to run a model = weights + KV cache + the runtime's own buffers:

- weights  = parameters x bits per weight / 8. Bits per weight (bpw) depend on the
  quantisation level: exact per block for a single type (Q8_0 stores 32 weights in 34 bytes =
  8.5 bpw), a measured file average for llama.cpp's mixtures (Q4_K_M keeps some tensors at
  higher precision: 4.89 bpw on Llama-3.1-8B).
- KV cache = 2 (keys and values) x layers x context tokens x KV heads x head size x bytes per
  element (2 for f16, Ollama's and llama.cpp's default).

The model's shape (layers, heads) is read from its GGUF metadata. `gguf_tensors` reads a GGUF
file's tensor table, so the arithmetic can be checked against the real file byte for byte, and
`measure_rss` checks it against the memory a fresh process really uses. `measure_speed`
times the embedded engine over a small grid of thread counts and context sizes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import BadInput, CourseError
from .hardware import GB  # decimal units, as model downloads and RAM budgets are quoted
from .registry import BUNDLED_MODEL
from .validate import check_int, check_number

MB = 1e6

LLAMA_CPP_TABLE = (
    "llama.cpp tools/quantize/README.md, table for meta-llama/Llama-3.1-8B "
    "(github.com/ggml-org/llama.cpp, read 2026-11-27)"
)
HF_CONFIG = "the model's config.json on Hugging Face (read 2026-11)"


# --------------------------------------------------------------------------- bits per weight
@dataclass(frozen=True)
class QuantLevel:
    """A quantisation level and its bits per weight, with where the number comes from."""

    name: str
    bpw: float
    source: str
    meaning: str


def _block(name: str, weights: int, nbytes: int, meaning: str) -> QuantLevel:
    return QuantLevel(name, nbytes * 8 / weights, f"ggml block layout: {nbytes} bytes per {weights} weights", meaning)


# File-average bpw of llama.cpp's mixtures as measured on Llama-3.1-8B (LLAMA_CPP_TABLE), and
# the exact block bpw of the single-type formats (ggml's block structs).
QUANT_LEVELS: dict[str, QuantLevel] = {
    q.name: q
    for q in (
        QuantLevel("F16", 16.0005, LLAMA_CPP_TABLE, "16-bit floats: the unquantised reference"),
        QuantLevel("Q8_0", 8.5008, LLAMA_CPP_TABLE, "8-bit integers, one f16 scale per 32 weights"),
        QuantLevel("Q6_K", 6.5633, LLAMA_CPP_TABLE, "6-bit k-quant, super-blocks of 256 weights"),
        QuantLevel("Q5_K_M", 5.7036, LLAMA_CPP_TABLE, "mostly 5-bit k-quants, some tensors 6-bit"),
        QuantLevel("Q4_K_M", 4.8944, LLAMA_CPP_TABLE, "mostly 4-bit k-quants, some tensors 6-bit: the usual default"),
        QuantLevel("Q4_K_S", 4.6672, LLAMA_CPP_TABLE, "4-bit k-quants throughout"),
        QuantLevel("Q3_K_S", 3.6429, LLAMA_CPP_TABLE, "3-bit k-quants: noticeably worse answers"),
        QuantLevel("Q2_K", 3.1593, LLAMA_CPP_TABLE, "2-bit k-quants: last resort"),
        _block("Q4_0", 32, 18, "4-bit integers, one f16 scale per 32 weights (Ollama's older default)"),
        _block("Q4_1", 32, 20, "4-bit integers, f16 scale and offset per 32 weights (the bundled model)"),
    )
}


def bits_per_weight(quant: str) -> float:
    """Bits per weight of a quantisation level such as "Q4_K_M" (see QUANT_LEVELS)."""
    if not isinstance(quant, str) or quant.upper() not in QUANT_LEVELS:
        raise BadInput(f"unknown quantisation level {quant!r}", f"use one of {', '.join(QUANT_LEVELS)}")
    return QUANT_LEVELS[quant.upper()].bpw


def _bpw(quant: str | float) -> float:
    if isinstance(quant, str):
        return bits_per_weight(quant)
    return check_number("bits per weight", quant, 1, 32, 'pass a level name such as "Q4_K_M" or a number such as 4.89')


def weights_bytes(n_params: float, quant: str | float) -> float:
    """Bytes of weights: parameters x bits per weight / 8 (`quant` is a level or a bpw)."""
    check_number("n_params", n_params, 0, None, "pass the parameter count, e.g. 3.8e9 for a 3.8B model", above=True)
    return n_params * _bpw(quant) / 8


# --------------------------------------------------------------------------- KV cache
def kv_cache_bytes(n_layers: int, n_ctx: int, n_kv_heads: int, head_dim: int, bytes_per_element: float = 2.0) -> float:
    """Bytes of KV cache: 2 (K and V) x layers x context x KV heads x head size x bytes each.

    Every token in the context keeps one key and one value vector per KV head in every layer,
    so the cache grows linearly with the context. f16 (2 bytes) is llama.cpp's default.
    """
    for name, value in (("n_layers", n_layers), ("n_ctx", n_ctx), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
        check_int(name, value, 1, None, "read it from the model's metadata (model_shape())")
    check_number(
        "bytes_per_element",
        bytes_per_element,
        0,
        4,
        "2 for f16 (the default), about 1 for a q8_0 cache, 4 for f32",
        above=True,
    )
    return 2.0 * n_layers * n_ctx * n_kv_heads * head_dim * bytes_per_element


@dataclass(frozen=True)
class ModelShape:
    """What the memory arithmetic needs to know about a model."""

    name: str
    n_params: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    source: str

    def kv_bytes(self, n_ctx: int, bytes_per_element: float = 2.0) -> float:
        """KV cache for `n_ctx` tokens of context."""
        return kv_cache_bytes(self.n_layers, n_ctx, self.n_kv_heads, self.head_dim, bytes_per_element)

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        return self.kv_bytes(1, bytes_per_element)


def shape_from_metadata(
    metadata: Mapping[str, Any], *, n_params: int | None = None, name: str = "", source: str = "GGUF metadata"
) -> ModelShape:
    """A ModelShape from GGUF metadata: `llm.metadata` (values are strings) or Ollama's
    `/api/show` model_info (numbers). Keys are prefixed by `general.architecture`."""
    if not isinstance(metadata, Mapping):
        raise BadInput("metadata must be a mapping", "pass llm.metadata or /api/show's model_info")
    arch = metadata.get("general.architecture")
    if not arch:
        raise BadInput("the metadata has no general.architecture", "is this a GGUF model's metadata?")

    def num(key: str, default: int | None = None) -> int:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise BadInput(f"the metadata lacks {arch}.{key}", "this architecture is not supported here")
        return int(value)

    n_heads = num("attention.head_count")
    n_kv = num("attention.head_count_kv", n_heads)  # absent: classic multi-head attention
    head_dim = num("attention.key_length", num("embedding_length") // n_heads)
    params = n_params if n_params is not None else metadata.get("general.parameter_count")
    if params is None:
        raise BadInput("the parameter count is unknown", "pass n_params=...")
    return ModelShape(
        name or str(metadata.get("general.name", arch)),
        int(params),
        num("block_count"),
        n_heads,
        n_kv,
        head_dim,
        num("context_length"),
        source,
    )


# Shapes of course models that are not bundled, from each model's config.json on Hugging Face
# (parameters from the course registry). Gemma 3 is left out: most of its layers use
# sliding-window attention, so this formula would overstate its cache.
MODEL_SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("qwen2.5:0.5b", 494_000_000, 24, 14, 2, 64, 32_768, HF_CONFIG),
        ModelShape("smollm2:360m", 362_000_000, 32, 15, 5, 64, 8_192, HF_CONFIG),
        ModelShape("llama3.2:1b", 1_236_000_000, 16, 32, 8, 64, 131_072, HF_CONFIG),
        ModelShape("qwen2.5:1.5b", 1_544_000_000, 28, 12, 2, 128, 32_768, HF_CONFIG),
        ModelShape("smollm2:1.7b", 1_711_000_000, 24, 32, 32, 64, 8_192, HF_CONFIG),
        ModelShape("gemma:2b", 2_506_000_000, 18, 8, 1, 256, 8_192, HF_CONFIG),
        ModelShape("llama3.2:3b", 3_213_000_000, 28, 24, 8, 128, 131_072, HF_CONFIG),
        ModelShape("phi3:mini", 3_821_000_000, 32, 32, 32, 96, 4_096, HF_CONFIG),
        ModelShape("llama2:7b", 6_738_000_000, 32, 32, 32, 128, 4_096, HF_CONFIG),
        ModelShape("mistral:7b", 7_248_000_000, 32, 32, 8, 128, 32_768, HF_CONFIG),
    )
}


# --------------------------------------------------------------------------- GGUF files
@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: `block_bytes` bytes store `block_size` weights."""

    name: str
    block_size: int
    block_bytes: int

    @property
    def bpw(self) -> float:
        return self.block_bytes * 8 / self.block_size


# ggml type ids (ggml.h) and block sizes (ggml-common.h's block structs).
GGML_TYPES: dict[int, GGMLType] = {
    0: GGMLType("F32", 1, 4),
    1: GGMLType("F16", 1, 2),
    2: GGMLType("Q4_0", 32, 18),
    3: GGMLType("Q4_1", 32, 20),
    6: GGMLType("Q5_0", 32, 22),
    7: GGMLType("Q5_1", 32, 24),
    8: GGMLType("Q8_0", 32, 34),
    10: GGMLType("Q2_K", 256, 84),
    11: GGMLType("Q3_K", 256, 110),
    12: GGMLType("Q4_K", 256, 144),
    13: GGMLType("Q5_K", 256, 176),
    14: GGMLType("Q6_K", 256, 210),
    30: GGMLType("BF16", 1, 2),
}
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_MAX_GGUF_COUNT = 10_000_000  # more tensors or keys than this: not a GGUF file we understand


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: GGMLType

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.n_elements // self.type.block_size * self.type.block_bytes


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file's metadata (scalars and strings; arrays as their length) and tensor table."""

    path: Path
    file_bytes: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def by_type(self):
        """Parameters and bytes per tensor type, as a DataFrame (one row per type)."""
        import pandas as pd

        rows: dict[str, dict[str, Any]] = {}
        for t in self.tensors:
            row = rows.setdefault(
                t.type.name, {"type": t.type.name, "tensors": 0, "params": 0, "MB": 0.0, "bpw": t.type.bpw}
            )
            row["tensors"] += 1
            row["params"] += t.n_elements
            row["MB"] += t.nbytes / MB
        df = pd.DataFrame(sorted(rows.values(), key=lambda r: -r["params"])).set_index("type")
        df["share of params"] = (df["params"] / self.n_params).round(3)
        return df.round({"MB": 2, "bpw": 3})


def read_gguf(path: str | Path) -> GGUFFile:
    """Read the header of a GGUF file (format v2/v3): metadata and tensor table, no weights."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no such file: {path}", "pass the path of a .gguf model file")
    with open(path, "rb") as f:

        def read(fmt: str) -> tuple:
            fmt = "<" + fmt
            data = f.read(struct.calcsize(fmt))
            if len(data) < struct.calcsize(fmt):
                raise BadInput(f"{path.name} ends inside its header", "is the file complete?")
            return struct.unpack(fmt, data)

        def text() -> str:
            (n,) = read("Q")
            if n > 1 << 26:
                raise BadInput(f"{path.name}: a string of {n} bytes in the header", "not a GGUF file?")
            return f.read(n).decode("utf-8", "replace")

        def value(kind: int) -> Any:
            if kind in _SCALARS:
                return read(_SCALARS[kind])[0]
            if kind == 8:
                return text()
            if kind == 9:
                inner, n = read("IQ")
                for _ in range(n):
                    value(inner)
                return f"<array of {n}>"
            raise BadInput(f"{path.name}: unknown metadata type {kind}", "not a GGUF file?")

        if f.read(4) != b"GGUF":
            raise BadInput(f"{path.name} is not a GGUF file", "pass a .gguf model file")
        (version,) = read("I")
        if version not in (2, 3):
            raise BadInput(f"{path.name} is GGUF version {version}", "only versions 2 and 3 are read")
        n_tensors, n_kv = read("QQ")
        if n_tensors > _MAX_GGUF_COUNT or n_kv > _MAX_GGUF_COUNT:
            raise BadInput(f"{path.name}: implausible header counts", "not a GGUF file?")
        metadata = {}
        for _ in range(n_kv):
            key = text()
            (kind,) = read("I")
            metadata[key] = value(kind)
        tensors = []
        for _ in range(n_tensors):
            name = text()
            (n_dims,) = read("I")
            dims = read("Q" * n_dims)
            (kind,) = read("I")
            read("Q")  # offset of the data
            if kind not in GGML_TYPES:
                raise BadInput(
                    f"{path.name}: tensor {name} has ggml type {kind}, not in GGML_TYPES",
                    "add its block size to helpers.edge.GGML_TYPES",
                )
            tensors.append(TensorInfo(name, tuple(dims), GGML_TYPES[kind]))
    return GGUFFile(path, path.stat().st_size, metadata, tensors)


def model_path(model: str = BUNDLED_MODEL) -> Path:
    """The GGUF file of a bundled model (the embedded engine's weights)."""
    from .serving.engine import Engine

    return Engine.resolve(model)[1]


def model_shape(model: str = BUNDLED_MODEL) -> ModelShape:
    """The shape of an installed model, read from its GGUF header (metadata and tensor table):
    the numbers llama.cpp itself reads when it loads the file."""
    gguf = read_gguf(model_path(model))
    return shape_from_metadata(
        gguf.metadata, n_params=gguf.n_params, name=model, source=f"GGUF metadata of {gguf.path.name}"
    )


# --------------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class MemoryEstimate:
    """Weights + KV cache in bytes (runtime buffers come on top: see measure_rss)."""

    model: str
    quant: str
    n_ctx: int
    weights_bytes: float
    kv_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_bytes

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB


def estimate_memory(
    shape: ModelShape, quant: str | float, n_ctx: int, kv_bytes_per_element: float = 2.0
) -> MemoryEstimate:
    """Weights at `quant` plus an f16 (by default) KV cache of `n_ctx` tokens."""
    label = quant if isinstance(quant, str) else f"{quant:g} bpw"
    return MemoryEstimate(
        shape.name, label, n_ctx, weights_bytes(shape.n_params, quant), shape.kv_bytes(n_ctx, kv_bytes_per_element)
    )


def quant_table(
    shape: ModelShape, levels: Sequence[str] = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_S", "Q2_K")
):
    """Weights of one model at each quantisation level, with the bpw and its source."""
    import pandas as pd

    rows = [
        {
            "level": lv,
            "bits/weight": round(bits_per_weight(lv), 3),
            "weights (GB)": round(weights_bytes(shape.n_params, lv) / GB, 3),
            "vs F16": f"{bits_per_weight(lv) / bits_per_weight('F16'):.0%}",
            "what it is": QUANT_LEVELS[lv].meaning,
        }
        for lv in levels
    ]
    return pd.DataFrame(rows).set_index("level")


def kv_table(
    shape: ModelShape, contexts: Sequence[int], quant: str | float = "Q4_K_M", kv_bytes_per_element: float = 2.0
):
    """Weights, KV cache and their sum for each context length (MB)."""
    import pandas as pd

    rows = []
    for n in contexts:
        e = estimate_memory(shape, quant, n, kv_bytes_per_element)
        rows.append(
            {
                "context (tokens)": n,
                "weights (MB)": round(e.weights_bytes / MB, 1),
                "KV cache (MB)": round(e.kv_bytes / MB, 1),
                "total (MB)": round(e.total_bytes / MB, 1),
                "KV share": f"{e.kv_bytes / e.total_bytes:.0%}",
            }
        )
    return pd.DataFrame(rows).set_index("context (tokens)")


# --------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Device:
    """An illustrative device: its RAM and the share we assume a model may use (not measured)."""

    name: str
    ram_gb: float
    budget_gb: float
    why: str


DEVICES: tuple[Device, ...] = (
    Device(
        "phone, 4 GB", 4, 1.5, "the OS and the foreground app keep most of it; mobile OSes stop apps that use too much"
    ),
    Device("phone, 8 GB", 8, 3.0, "same rule, more room"),
    Device("Raspberry Pi 5, 8 GB", 8, 5.0, "headless: little else runs"),
    Device("laptop, 16 GB", 16, 8.0, "a browser, an editor and Jupyter run beside it"),
)


def largest_context(
    shape: ModelShape, quant: str | float, budget_bytes: float, *, step: int = 256, kv_bytes_per_element: float = 2.0
) -> int:
    """The longest context (a multiple of `step`, at most the model's own limit) whose
    weights + KV cache fit in `budget_bytes`; 0 when not even the weights fit."""
    check_number("budget_bytes", budget_bytes, 0, None, "e.g. 3e9 for 3 GB", above=True)
    room = budget_bytes - weights_bytes(shape.n_params, quant)
    if room <= 0:
        return 0
    n = int(room // shape.kv_bytes_per_token(kv_bytes_per_element)) // step * step
    return min(n, shape.context_length)


def fit_table(
    shapes: Sequence[ModelShape], devices: Sequence[Device] = DEVICES, quant: str | float = "Q4_K_M", n_ctx: int = 4096
):
    """For each model and device: the GB it needs (weights + KV at `n_ctx`) if that fits the
    device's budget, else "no"; plus the longest context the budget would allow."""
    import pandas as pd

    rows = []
    for s in shapes:
        e = estimate_memory(s, quant, min(n_ctx, s.context_length))
        row: dict[str, Any] = {"model": s.name, "needs (GB)": round(e.total_gb, 2)}
        for d in devices:
            ok = e.total_bytes <= d.budget_gb * GB
            longest = largest_context(s, quant, d.budget_gb * GB)
            row[d.name] = (
                f"yes, up to {longest:,} tokens"
                if ok
                else (f"no ({longest:,} tokens would)" if longest >= 512 else "no")
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def device_table(devices: Sequence[Device] = DEVICES):
    """The illustrative device budgets, as a DataFrame."""
    import pandas as pd

    return pd.DataFrame([asdict(d) for d in devices]).set_index("name")


# --------------------------------------------------------------------------- measurements
def _rss_probe(model: str, n_ctx: int, n_threads: int) -> dict[str, Any]:
    """(Runs in a fresh process.) RSS before loading, after loading, after one token."""
    import psutil

    from .serving.engine import Engine

    proc = psutil.Process()
    engine = Engine(n_threads=n_threads, num_parallel=1)
    import xllamacpp  # noqa: F401  - the library itself is not the model's memory

    before = proc.memory_info().rss
    loaded, _ = engine.load(model, n_ctx)
    after_load = proc.memory_info().rss
    for _ in engine.stream(
        model, prompt="Hi", raw=True, options={"num_ctx": n_ctx, "num_predict": 1, "temperature": 0}
    ):
        pass
    after_token = proc.memory_info().rss
    return {
        "n_ctx": n_ctx,
        "rss_before": before,
        "rss_loaded": after_load,
        "rss_after_token": after_token,
        "n_ctx_real": loaded.num_ctx,
    }


def measure_rss(model: str = BUNDLED_MODEL, contexts: Sequence[int] = (512, 2048, 8192), *, timeout_s: float = 120.0):
    """Load `model` at each context size in a fresh Python process and record how much its
    resident memory (RSS) grew, next to the prediction weights (tensor bytes) + KV cache.

    A fresh process per size keeps earlier loads (and Jupyter's own memory) out of the number.
    """
    import pandas as pd

    if isinstance(contexts, (str, bytes)) or not contexts or len(contexts) > 8:
        raise BadInput("contexts must be a list of 1 to 8 sizes", "e.g. (512, 2048, 8192)")
    contexts = [check_int("each context", n, 32, 32_768, "e.g. (512, 2048, 8192)") for n in contexts]
    gguf = read_gguf(model_path(model))
    # the shape from the file's own header: no need to load the model into this process
    shape = shape_from_metadata(gguf.metadata, n_params=gguf.n_params)
    rows = []
    for n in contexts:
        code = f"import json; from helpers.edge import _rss_probe; print(json.dumps(_rss_probe({model!r}, {n}, 1)))"
        try:
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        except subprocess.TimeoutExpired as exc:
            raise CourseError(
                f"measuring RSS at n_ctx={n} took over {timeout_s:g} s",
                "the machine is very busy: try again, or pass timeout_s",
            ) from exc
        if out.returncode != 0:
            raise CourseError(
                f"the RSS probe failed at n_ctx={n}: {out.stderr.strip()[-300:]}",
                "check that `slm-course doctor` reports the bundled model OK",
            )
        probe = json.loads(out.stdout.strip().splitlines()[-1])
        kv = shape.kv_bytes(probe["n_ctx_real"])
        predicted = gguf.tensor_bytes + kv
        grown = probe["rss_after_token"] - probe["rss_before"]
        rows.append(
            {
                "context (tokens)": n,
                "predicted (MB)": round(predicted / MB, 1),
                "of which KV (MB)": round(kv / MB, 1),
                "RSS after load (MB)": round((probe["rss_loaded"] - probe["rss_before"]) / MB, 1),
                "RSS after 1 token (MB)": round(grown / MB, 1),
                "measured / predicted": round(grown / predicted, 2),
            }
        )
    return pd.DataFrame(rows).set_index("context (tokens)")


def _filler(n_tokens: int, variant: int) -> str:
    """Neutral text of about `n_tokens` tokens (about 4 characters each in these models'
    tokenizers); `variant` changes its start, so llama.cpp cannot reuse a cached prefix."""
    base = "The river runs past the old mill, under the stone bridge and out to the sea. "
    body = (base * (n_tokens * 4 // len(base) + 1))[: max(n_tokens - 8, 1) * 4]
    return f"Note {variant}: {body}"


def measure_speed(
    model: str = BUNDLED_MODEL,
    threads: Sequence[int] = (1, 2),
    contexts: Sequence[int] = (512, 2048),
    *,
    fill: float = 0.25,
    num_predict: int = 32,
    repeats: int = 1,
    max_duration_s: float = 120.0,
    progress: bool = True,
):
    """Prompt and decode speed of the embedded engine for each (threads, context size).

    At each context size the prompt fills `fill` of the context, so a bigger context also
    means more text to read and more keys to attend to per generated token. Bounded: at most
    32 runs; after `max_duration_s` the running one is cancelled and no new one starts (those
    cells stay out of the table, and `df.attrs["stopped_by_time"]` is True).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .serving.engine import Engine

    for name, values, hi in (("threads", threads, 64), ("contexts", contexts, 16_384)):
        if isinstance(values, (str, bytes)) or not values:
            raise BadInput(f"{name} must be a non-empty list", "e.g. threads=(1, 2), contexts=(512, 2048)")
        for v in values:
            check_int(f"each of {name}", v, 1, hi, "e.g. threads=(1, 2), contexts=(512, 2048)")
    if min(contexts) < 64:
        raise BadInput("contexts must be at least 64 tokens", "e.g. contexts=(512, 2048)")
    fill = check_number("fill", fill, 0, 0.75, "e.g. 0.25: a quarter of the context", above=True)
    num_predict = check_int("num_predict", num_predict, 1, 512, "e.g. 32")
    repeats = check_int("repeats", repeats, 1, 10, "e.g. 1 or 3")
    runs = len(threads) * len(contexts) * repeats
    if runs > 32:
        raise BadInput(f"{runs} runs asked for; at most 32", "use fewer threads, contexts or repeats")
    check_number("max_duration_s", max_duration_s, 0, None, "e.g. 120", above=True)

    rows = []
    t_start = time.monotonic()
    bar = tqdm(total=runs, desc="threads x context", unit="run", disable=not progress)
    try:
        for t in threads:
            engine = Engine(n_threads=t, num_parallel=1)
            for n_ctx in contexts:
                if time.monotonic() - t_start > max_duration_s:
                    break
                engine.unload(model)  # loaded at exactly this context (a smaller one would share)
                _, load_ns = engine.load(model, n_ctx)
                for r in range(repeats):
                    if time.monotonic() - t_start > max_duration_s:
                        break
                    prompt = _filler(int(n_ctx * fill), r)
                    final, cancel = None, threading.Event()
                    for chunk in engine.stream(
                        model,
                        prompt=prompt,
                        raw=True,
                        cancel=cancel,
                        options={"num_ctx": n_ctx, "num_predict": num_predict, "temperature": 0, "seed": 42},
                    ):
                        final = chunk
                        if time.monotonic() - t_start > max_duration_s:
                            cancel.set()  # stop decoding now; this run is not recorded
                    bar.update(1)
                    if final is None or final.done_reason == "cancelled":
                        break
                    rows.append(
                        {
                            "threads": t,
                            "context": n_ctx,
                            "run": r + 1,
                            "prompt tokens": final.prompt_eval_count,
                            "prompt tokens/s": final.prompt_eval_count / max(final.prompt_eval_duration, 1) * 1e9,
                            "output tokens": final.eval_count,
                            "decode tokens/s": (
                                final.eval_count / final.eval_duration * 1e9 if final.eval_duration else float("nan")
                            ),
                            "load (s)": load_ns / 1e9 if r == 0 else 0.0,
                        }
                    )
            engine.unload(model)
    finally:
        bar.close()
    df = pd.DataFrame(
        rows,
        columns=[
            "threads",
            "context",
            "run",
            "prompt tokens",
            "prompt tokens/s",
            "output tokens",
            "decode tokens/s",
            "load (s)",
        ],
    )
    df.attrs["stopped_by_time"] = len(rows) < runs
    return df


# --------------------------------------------------------------------------- offline, for real

#: Spoken smart-home commands and the device action each means (lesson 08's "without cloud" check).
SMART_HOME_COMMANDS = (
    ("Switch off the light in the kitchen.", {"device": "light", "room": "kitchen", "action": "off"}),
    ("Open the blinds in the bedroom, please.", {"device": "blinds", "room": "bedroom", "action": "open"}),
    ("Turn the heater in the living room on.", {"device": "heater", "room": "living room", "action": "on"}),
)
#: The JSON a command becomes: the grammar keeps the answer to these choices, the model picks.
SMART_HOME_SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"enum": ["light", "heater", "blinds", "door lock"]},
        "room": {"enum": ["kitchen", "bedroom", "living room", "hall"]},
        "action": {"enum": ["on", "off", "open", "close", "lock", "unlock"]},
    },
    "required": ["device", "room", "action"],
}
SMART_HOME_SYSTEM = "You control a smart home. Turn the user's command into JSON: device, room, action."


@dataclass(frozen=True)
class OfflineRun:
    """A child process run with the network cut (`offline`), what it printed last as JSON, and how."""

    offline: bool
    how: str
    result: dict | None
    stderr: str = ""
    seconds: float = 0.0


def network_cutter() -> tuple[list[str] | None, str]:
    """The command prefix that starts a process in a new, empty network namespace (`unshare -rn`,
    or `unshare -n` with root rights) and a sentence saying so; (None, why not) where it cannot."""
    import shutil

    exe = shutil.which("unshare")
    if exe is None:
        return None, (
            "this system has no `unshare` (Linux only): the network cannot be cut from here, "
            "so the step runs with the network up"
        )
    last = ""
    for flags in (["-rn"], ["-n"]):
        try:
            probe = subprocess.run([exe, *flags, "true"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            last = str(exc)
            continue
        if probe.returncode == 0:
            return [exe, *flags], (
                f"`unshare {' '.join(flags)}`: a child process in a new network namespace, "
                "where no interface is up (not even loopback)"
            )
        last = probe.stderr.strip()
    return None, (
        f"`unshare` cannot make a network namespace here ({last or 'not permitted'}): user "
        "namespaces are off, so the step runs with the network up"
    )


def run_without_network(code: str, *, timeout_s: float = 180.0) -> OfflineRun:
    """Run Python `code` in a child process with the network cut where the system allows it (see
    `network_cutter`), else with the network up (`offline` False, `how` says why). The child's
    last stdout line must be JSON: it is the result."""
    prefix, how = network_cutter()
    cmd = [*(prefix or []), sys.executable, "-c", code]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
    except subprocess.TimeoutExpired as exc:
        raise CourseError(
            f"the offline step took over {timeout_s:g} s",
            "the machine is very busy: run the cell again, or pass timeout_s",
        ) from exc
    lines = out.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if out.returncode == 0 and lines else None
    except ValueError:
        result = None
    return OfflineRun(prefix is not None, how, result, out.stderr.strip()[-600:], time.perf_counter() - t0)


def _smart_home_child(model: str, host: str, options: dict) -> None:
    """(Runs in the child of `smart_home_offline`.) Print, as JSON: the network interfaces that are
    up, whether the model server at `host` and a public address answer, and the in-process model's
    JSON for each smart-home command."""
    import socket
    from urllib.parse import urlsplit

    from .backends import EmbeddedBackend

    def reach(hostname: str, port: int) -> str:
        try:
            socket.create_connection((hostname, port), timeout=3).close()
            return "reached"
        except OSError as exc:
            return f"unreachable ({type(exc).__name__}: {exc.strerror or exc})"

    up = []
    for _, name in socket.if_nameindex():
        try:  # the interface's flags from this process's own namespace (/sys shows the host's)
            import fcntl

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                req = struct.pack("16sH", name.encode()[:15], 0)
                flags = struct.unpack("16sH", fcntl.ioctl(sock.fileno(), 0x8913, req)[:18])[1]  # SIOCGIFFLAGS
            state = "up" if flags & 0x1 else "down"  # IFF_UP
        except (OSError, ImportError):
            state = "?"
        up.append(f"{name} ({state})")
    parts = urlsplit(host)
    local = EmbeddedBackend()
    replies = []
    for command, _ in SMART_HOME_COMMANDS:
        r = local.complete(
            model,
            [{"role": "system", "content": SMART_HOME_SYSTEM}, {"role": "user", "content": command}],
            options=options,
            format=SMART_HOME_SCHEMA,
        )
        try:
            replies.append(json.loads(r.text))
        except ValueError:
            replies.append(None)
    print(
        json.dumps(
            {
                "interfaces": up,
                "model server": reach(parts.hostname or "127.0.0.1", parts.port or 11434),
                "api.openai.com": reach("api.openai.com", 443),
                "replies": replies,
            }
        )
    )


def smart_home_offline(
    model: str = BUNDLED_MODEL,
    host: str = "http://127.0.0.1:11434",
    *,
    options: Mapping[str, Any] | None = None,
    timeout_s: float = 180.0,
) -> OfflineRun:
    """The smart-home commands answered by `model` inside a child process whose network is cut
    (`run_without_network`): the child reports what it could reach, and the model's replies."""
    opts = dict(options or {"temperature": 0, "seed": 42, "num_predict": 40})
    code = f"from helpers.edge import _smart_home_child; _smart_home_child({model!r}, {host!r}, {opts!r})"
    return run_without_network(code, timeout_s=timeout_s)
