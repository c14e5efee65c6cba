"""Connecting a notebook to a model: Ollama when it answers, otherwise the embedded engine."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .backends import Backend, EmbeddedBackend, OllamaBackend, OpenAIBackend
from .errors import INSTALL_OLLAMA, CourseError, ModelNotFound
from .registry import PREFERENCE, card
from .settings import get_settings


def connect(host: str | None = None, *, fallback: bool = True, verbose: bool = True) -> Backend:
    """The Ollama API at `host` (default OLLAMA_HOST) if it answers, else the embedded engine.

    Prints which one it chose and why. With fallback=False an unreachable server raises
    BackendUnavailable instead.
    """
    backend = OllamaBackend(host)
    try:
        version = backend.version()
    except CourseError as exc:
        if not fallback:
            raise
        if verbose:
            print(f"Ollama is not answering at {backend.host}: using the embedded llama.cpp engine "
                  f"with the bundled model instead.\n  To use Ollama: {INSTALL_OLLAMA}.")
        return EmbeddedBackend()
    if verbose:
        print(f"Connected to the Ollama API at {backend.host} (version {version}).")
    return backend


def pick_model(backend: Backend, preferred: str | Sequence[str] | None = None, *,
               verbose: bool = True) -> str:
    """A model the backend has: `preferred` if available, else the best by the course's order.

    The order is the source article's models first, then current small models, then the
    bundled tiny model. Says which model it picked and why.
    """
    available = backend.list_models()
    wanted = [preferred] if isinstance(preferred, str) else list(preferred or [])
    wanted = [w for w in wanted if w]
    if not available:
        raise ModelNotFound(f"{backend.describe()} has no models",
                            f"pull one, e.g. `ollama pull {PREFERENCE[0]}`, or run `slm-course serve`")
    names = set(available) | {a.removesuffix(":latest") for a in available}
    for w in wanted:
        if w in names or f"{w}:latest" in names:
            if verbose:
                print(f"Using model {w} (asked for).")
            return w
    if wanted and verbose:
        print(f"Not available here: {', '.join(wanted)} (pull with `ollama pull {wanted[0]}`).")
    for name in PREFERENCE:
        if name in names:
            if verbose:
                print(f"Using model {name}: the first of the course's models that {backend.describe()} has.")
            return name
    choice = sorted(available)[0]
    if verbose:
        print(f"Using model {choice}: none of the course's models is available, so the first one listed.")
    return choice


@dataclass
class LargeTier:
    """Where 'large model' calls go: an API model, or the biggest local model as a stand-in."""

    backend: Backend
    model: str
    local_fallback: bool
    reason: str


def connect_large(small_backend: Backend | None = None, *, verbose: bool = True) -> LargeTier:
    """The large model from settings when an API key (or a local base URL) is set.

    Without a key the large tier falls back to the biggest local model, with a warning, so
    every lesson still runs offline.
    """
    s = get_settings()
    local_url = not ("openai.com" in s.large_base_url)
    if s.has_key or local_url:
        backend = OpenAIBackend(s.large_base_url)
        tier = LargeTier(backend, s.large_model, False, f"{s.large_model} at {s.large_base_url}")
    else:
        backend = small_backend or connect(verbose=False)
        models = backend.list_models()
        biggest = max(models, key=lambda n: (card(n).params_b if card(n) else 0.0, n))
        tier = LargeTier(backend, biggest, True,
                         f"no OPENAI_API_KEY: the large tier is the biggest local model, {biggest}")
    if verbose:
        print(("WARNING: " if tier.local_fallback else "Large model: ") + tier.reason +
              (" - set OPENAI_API_KEY (in .env) to compare with a real large model." if tier.local_fallback else ""))
    return tier
