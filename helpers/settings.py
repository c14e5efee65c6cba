"""Configuration, read in one place from environment variables (and an optional `.env`).

| variable            | default                    | meaning                                          |
|---------------------|----------------------------|--------------------------------------------------|
| OLLAMA_HOST         | http://127.0.0.1:11434     | where Ollama (or `slm-course serve`) listens     |
| SLM_SMALL_MODEL     | (auto)                     | small model; empty = best one the server has     |
| SLM_LARGE_MODEL     | gpt-4o-mini                | large model on the OpenAI-compatible endpoint    |
| SLM_LARGE_BASE_URL  | https://api.openai.com/v1  | OpenAI-compatible endpoint for the large model   |
| OPENAI_API_KEY      | (unset)                    | key for that endpoint; never printed             |
| SLM_TIMEOUT         | 120                        | seconds before any network call gives up         |
| SLM_THREADS         | (all cores)                | llama.cpp threads of the embedded engine         |
| SLM_JUDGE_MODEL     | (unset: open prompts unscored) | model that grades open prompts (lesson 05)   |
| SLM_LOADTEST_HOSTS  | (unset: loopback only)     | other hosts the load generator may target        |
| OLLAMA_API_KEY      | (unset)                    | Bearer key sent to a shared `slm-course serve`   |
| SLM_SERVE_API_KEY   | (unset)                    | key `slm-course serve` requires (= --api-key)    |
| SLM_LOG_DIR         | ~/.cache/slm-course        | logs of servers `slm-course lab` starts          |
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEFAULT_LARGE_MODEL = "gpt-4o-mini"
DEFAULT_LARGE_BASE_URL = "https://api.openai.com/v1"


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - dependency of the kit
        return
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidate = folder / ".env"
        if candidate.is_file():
            load_dotenv(candidate, override=False)
            return


def normalise_host(host: str) -> str:
    """Turn OLLAMA_HOST forms (`0.0.0.0`, `localhost:11434`, `http://h:p/`) into a URL."""
    host = (host or "").strip().rstrip("/")
    if not host:
        return DEFAULT_OLLAMA_HOST
    if "://" not in host:
        host = "http://" + host
    scheme, rest = host.split("://", 1)
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("["):  # IPv6 literal
        has_port = "]:" in hostport
    else:
        has_port = ":" in hostport
    if not has_port:
        hostport += ":11434" if scheme == "http" else ":443"
    hostport = hostport.replace("0.0.0.0", "127.0.0.1")
    return f"{scheme}://{hostport}"


@dataclass(frozen=True)
class Settings:
    ollama_host: str = DEFAULT_OLLAMA_HOST
    small_model: str = ""
    large_model: str = DEFAULT_LARGE_MODEL
    large_base_url: str = DEFAULT_LARGE_BASE_URL
    openai_api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    threads: int = 0  # 0: every core
    judge_model: str = ""
    loadtest_hosts: tuple[str, ...] = ()
    ollama_api_key: str | None = field(default=None, repr=False)
    serve_api_key: str | None = field(default=None, repr=False)
    log_dir: str = ""

    @property
    def has_key(self) -> bool:
        return bool(self.openai_api_key)

    def __repr__(self) -> str:  # the key is never shown
        key = "set" if self.has_key else "not set"
        return (
            f"Settings(ollama_host={self.ollama_host!r}, small_model={self.small_model!r}, "
            f"large_model={self.large_model!r}, large_base_url={self.large_base_url!r}, "
            f"openai_api_key=<{key}>, timeout={self.timeout}, threads={self.threads}, "
            f"judge_model={self.judge_model!r}, loadtest_hosts={self.loadtest_hosts!r}, "
            f"ollama_api_key=<{'set' if self.ollama_api_key else 'not set'}>, "
            f"serve_api_key=<{'set' if self.serve_api_key else 'not set'}>)"
        )


def get_settings() -> Settings:
    """Read the settings now (so a changed environment variable takes effect)."""
    _load_dotenv()
    env = os.environ
    try:
        timeout = float(env.get("SLM_TIMEOUT", "120"))
    except ValueError:
        timeout = 120.0
    try:
        threads = max(0, int(env.get("SLM_THREADS", "0") or 0))
    except ValueError:
        threads = 0
    return Settings(
        ollama_host=normalise_host(env.get("OLLAMA_HOST", "")),
        small_model=env.get("SLM_SMALL_MODEL", "").strip(),
        large_model=env.get("SLM_LARGE_MODEL", "").strip() or DEFAULT_LARGE_MODEL,
        large_base_url=env.get("SLM_LARGE_BASE_URL", "").strip() or DEFAULT_LARGE_BASE_URL,
        openai_api_key=env.get("OPENAI_API_KEY") or None,
        timeout=timeout,
        threads=threads,
        judge_model=env.get("SLM_JUDGE_MODEL", "").strip(),
        loadtest_hosts=tuple(h.strip() for h in env.get("SLM_LOADTEST_HOSTS", "").split(",") if h.strip()),
        ollama_api_key=env.get("OLLAMA_API_KEY") or None,
        serve_api_key=env.get("SLM_SERVE_API_KEY") or None,
        log_dir=env.get("SLM_LOG_DIR", "").strip()
        or str(Path.home() / ".cache" / "slm-course"),
    )
