"""SLM Course Kit: the helpers every lesson imports (`from helpers import ...`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import BackendUnavailable, BadInput, CourseError, MissingKey, ModelNotFound
from .results import Metrics, Result, collect
from .settings import Settings, get_settings

try:
    __version__ = version("slm-course")  # written once, in pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "BackendUnavailable",
    "BadInput",
    "CourseError",
    "MissingKey",
    "ModelNotFound",
    "Metrics",
    "Result",
    "collect",
    "Settings",
    "get_settings",
    "connect",
    "connect_large",
    "pick_model",
    "Backend",
    "OllamaBackend",
    "OpenAIBackend",
    "EmbeddedBackend",
    "Options",
]


def __getattr__(name: str):  # lazy: importing helpers stays fast and light
    if name in ("connect", "connect_large", "pick_model"):
        from . import connection

        return getattr(connection, name)
    if name in ("OllamaBackend", "OpenAIBackend", "EmbeddedBackend", "Backend"):
        from . import backends

        return getattr(backends, name)
    if name == "Options":
        from .options import Options

        return Options
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
