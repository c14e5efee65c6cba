"""One error type for the whole course, always carrying the next step to take."""
from __future__ import annotations


class CourseError(Exception):
    """A problem a learner can fix. ``hint`` says what to do next."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  -> {hint}" if hint else message)


class BackendUnavailable(CourseError):
    """The server (Ollama or an OpenAI-compatible endpoint) did not answer."""


class ModelNotFound(CourseError):
    """The model is not pulled / not known to the backend."""


class MissingKey(CourseError):
    """An API key is required but not set."""


class BadInput(CourseError, ValueError):
    """The arguments were wrong (empty prompt, wrong types, bad options)."""


class Cancelled(CourseError):
    """The work was stopped on purpose (the client went away, the server is shutting down)."""


INSTALL_OLLAMA = (
    "install Ollama (Linux: `curl -fsSL https://ollama.com/install.sh | sh`; "
    "macOS/Windows: https://ollama.com/download), then run `ollama serve` - "
    "or run the course's offline server: `slm-course serve`"
)


def pull_hint(model: str) -> str:
    return f"pull it with `ollama pull {model}` (or choose one from `ollama list`)"
