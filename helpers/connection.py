"""Connecting a notebook to a model: Ollama when it answers, otherwise the embedded engine.

Which model to use is decided here too, with the registry's rules (`registry.resolve` finds a
course model under the name a server has it, `mistral:latest` for `mistral:7b`;
`registry.is_embedding_model` keeps embedding-only models out of every automatic choice;
`registry.course_order` ranks the rest): `pick_model` chooses the small model, and `rank_large`
orders local models by their size on disk when the biggest one has to stand in for the large model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

from .backends import Backend, EmbeddedBackend, ModelInfo, OllamaBackend, OpenAIBackend, model_infos
from .errors import INSTALL_OLLAMA, CourseError, ModelNotFound
from .registry import (  # noqa: F401  (is_embedding_model: kept importable from here)
    PREFERENCE,
    card,
    course_order,
    is_embedding_model,
    matches,
    parameter_billions,
)
from .registry import resolve as match_model  # the name lessons and tests know it by
from .settings import get_settings, redact_url


def connect(host: str | None = None, *, fallback: bool = True, verbose: bool = True) -> Backend:
    """The Ollama API at `host` (default OLLAMA_HOST) if it answers, else the embedded engine.

    Prints which one it chose and why. With fallback=False an unreachable server raises
    BackendUnavailable instead.
    """
    backend = OllamaBackend(host)
    try:
        version = backend.version()
    except CourseError:
        if not fallback:
            raise
        if verbose:
            print(
                f"Ollama is not answering at {backend.shown_host}: using the embedded llama.cpp engine "
                f"with the bundled model instead.\n  To use Ollama: {INSTALL_OLLAMA}."
            )
        return EmbeddedBackend()
    if verbose:
        print(f"Connected to the Ollama API at {backend.shown_host} (version {version}).")
    return backend


def _as_infos(available: Sequence[str | ModelInfo]) -> list[ModelInfo]:
    return [a if isinstance(a, ModelInfo) else ModelInfo(a) for a in available]


def pick_model(backend: Backend, preferred: str | Sequence[str] | None = None, *, verbose: bool = True) -> str:
    """A model the backend has, under the backend's own name for it.

    `preferred` when available (empty: SLM_SMALL_MODEL from settings), else the best by the
    course's order: the source article's models first, then current small models, then the
    bundled tiny model. Registry aliases count (`mistral:latest` serves `mistral:7b`), and an
    embedding-only model is never picked. Says which model it picked and why.
    """
    infos = model_infos(backend)
    wanted = [preferred] if isinstance(preferred, str) else list(preferred or [])
    wanted = [w.strip() for w in wanted if isinstance(w, str) and w.strip()]
    source = "asked for"
    small_model = get_settings().small_model
    if not wanted and small_model:
        wanted, source = [small_model], "SLM_SMALL_MODEL"
    if not infos:
        raise ModelNotFound(
            f"{backend.describe()} has no models",
            f"pull one, e.g. `ollama pull {PREFERENCE[0]}`, or run `slm-course serve`",
        )
    missing = []
    for w, have, embedding in matches(wanted, infos):
        if have is None:
            missing.append(w)
            continue
        if embedding:
            if verbose:
                print(f"{have} is an embedding model: it turns text into vectors and cannot chat.")
            continue
        if verbose:
            how = f"{source}: {w}" if have != w or source != "asked for" else source
            print(f"Using model {have} ({how}).")
        return have
    if missing and verbose:
        where = " (from SLM_SMALL_MODEL)" if source != "asked for" else ""
        print(f"Not available here{where}: {', '.join(missing)} (pull with `ollama pull {missing[0]}`).")
    ranked = course_order(infos)
    if not ranked:
        embedders = [i.name for i in infos if is_embedding_model(i)]
        raise ModelNotFound(
            f"{backend.describe()} has only embedding models ({', '.join(embedders)}), which cannot chat",
            f"pull a chat model, e.g. `ollama pull {PREFERENCE[0]}`",
        )
    choice = ranked[0]
    if verbose:
        info = next(i for i in infos if i.name == choice)
        if any(match_model(p, [info]) for p in PREFERENCE):
            print(f"Using model {choice}: the first of the course's models that {backend.describe()} has.")
        else:
            print(f"Using model {choice}: none of the course's models is available, so the first chat model listed.")
    return choice


def rank_large(available: Sequence[str | ModelInfo]) -> list[str]:
    """Chat models, biggest first: bytes on disk (/api/tags), then parameters, then name.

    Parameters come from the registry card, else from the server's parameter_size or the tag
    (`qwen2.5:7b`), so a model the registry does not know still ranks. Embedding-only models
    are left out.
    """

    def key(info: ModelInfo):
        c = card(info.name)
        tag = info.name.rsplit(":", 1)[1] if ":" in info.name else ""
        params = c.params_b if c else (parameter_billions(info.parameter_size) or parameter_billions(tag) or 0.0)
        return (-(info.size_bytes or 0), -params, info.name)

    return [i.name for i in sorted(_as_infos(available), key=key) if not is_embedding_model(i)]


@dataclass
class LargeTier:
    """Where 'large model' calls go: an API model, or the biggest local model as a stand-in."""

    backend: Backend
    model: str
    local_fallback: bool
    reason: str


def connect_large(small_backend: Backend | None = None, *, verbose: bool = True) -> LargeTier:
    """The large model from settings when an API key (or a local base URL) is set.

    Without a key the large tier falls back to the biggest local model (by size on disk), so
    every lesson still runs offline - and says so: a printed WARNING line, or with
    verbose=False a UserWarning.
    """
    s = get_settings()
    local_url = "openai.com" not in s.large_base_url
    if s.has_key or local_url:
        backend: Backend = OpenAIBackend(s.large_base_url)
        tier = LargeTier(backend, s.large_model, False, f"{s.large_model} at {redact_url(s.large_base_url)}")
    else:
        backend = small_backend or connect(verbose=False)
        ranked = rank_large(model_infos(backend))
        if not ranked:
            raise ModelNotFound(
                f"no OPENAI_API_KEY, and {backend.describe()} has no chat model to stand in for the large model",
                f"pull one, e.g. `ollama pull {PREFERENCE[0]}`, or set OPENAI_API_KEY (in .env) to use {s.large_model}",
            )
        biggest = ranked[0]
        tier = LargeTier(
            backend, biggest, True, f"no OPENAI_API_KEY: the large tier is the biggest local model, {biggest}"
        )
    advice = " - set OPENAI_API_KEY (in .env) to compare with a real large model."
    if verbose:
        print(
            ("WARNING: " if tier.local_fallback else "Large model: ")
            + tier.reason
            + (advice if tier.local_fallback else "")
        )
    elif tier.local_fallback:  # quiet callers (code, not a lesson) still hear of it, once
        warnings.warn(tier.reason + advice, UserWarning, stacklevel=2)
    return tier
