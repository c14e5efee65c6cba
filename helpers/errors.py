"""One error type for the whole course, always carrying the next step to take."""

from __future__ import annotations


class CourseError(Exception):
    """A problem a learner can fix. ``hint`` says what to do next.

    ``status`` is the HTTP status the error stands for, one mapping for both directions: the
    course's server answers with it, and a client maps a status back with `error_for_status`.
    """

    status = 400

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  -> {hint}" if hint else message)


class BackendUnavailable(CourseError):
    """The server (Ollama or an OpenAI-compatible endpoint) did not answer."""

    status = 503


class ModelNotFound(CourseError):
    """The model is not pulled / not known to the backend."""

    status = 404


class MissingKey(CourseError):
    """An API key is required but not set."""

    status = 401


class BadInput(CourseError, ValueError):
    """The arguments were wrong (empty prompt, wrong types, bad options)."""


class Cancelled(CourseError):
    """The work was stopped on purpose (the client went away, the server is shutting down)."""

    status = 503


def error_for_status(status: int) -> type[CourseError]:
    """The error class for an HTTP status (the inverse of each class's ``status``)."""
    return {404: ModelNotFound, 401: MissingKey, 403: MissingKey, 503: BackendUnavailable}.get(
        status, BadInput if 400 <= status < 500 else CourseError
    )


INSTALL_OLLAMA = (
    "install Ollama (Linux: `curl -fsSL https://ollama.com/install.sh | sh`; "
    "macOS/Windows: https://ollama.com/download), then run `ollama serve` - "
    "or run the course's offline server: `slm-course serve`"
)


def pull_hint(model: str) -> str:
    return f"pull it with `ollama pull {model}` (or choose one from `ollama list`)"
