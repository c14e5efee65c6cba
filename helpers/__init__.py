"""SLM Course Kit: the helpers every lesson imports (`from helpers import ...`)."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendUnavailable, BadInput, CourseError, MissingKey, ModelNotFound  # noqa: E402
from .results import Metrics, Result, collect  # noqa: E402
from .settings import Settings, get_settings  # noqa: E402

__all__ = [
    "__version__", "BackendUnavailable", "BadInput", "CourseError", "MissingKey", "ModelNotFound",
    "Metrics", "Result", "collect", "Settings", "get_settings",
    "connect", "connect_large", "pick_model", "OllamaBackend", "OpenAIBackend", "EmbeddedBackend",
]


def __getattr__(name: str):  # lazy: importing helpers stays fast and light
    if name in ("connect", "connect_large", "pick_model", "Connection"):
        from . import connection
        return getattr(connection, name)
    if name in ("OllamaBackend", "OpenAIBackend", "EmbeddedBackend", "Backend"):
        from . import backends
        return getattr(backends, name)
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
