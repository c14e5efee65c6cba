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
| OLLAMA_NUM_PARALLEL | 4                          | requests each model of the engine decodes at once |
| SLM_JUDGE_MODEL     | (unset: open prompts unscored) | model that grades open prompts (lesson 05)   |
| SLM_LOADTEST_HOSTS  | (unset: loopback only)     | other hosts the load generator may target        |
| OLLAMA_API_KEY      | (unset)                    | Bearer key sent to a shared `slm-course serve`   |
| SLM_SERVE_API_KEY   | (unset)                    | key `slm-course serve` requires (= --api-key)    |
| SLM_SERVE_READ_TIMEOUT | 30                     | seconds the server waits for a request's headers, then its body |
| SLM_LOG_DIR         | ~/.cache/slm-course        | logs of servers `slm-course lab` starts          |
| SLM_MODEL_DIR       | ~/.cache/slm-course/models | offline models installed by `slm-course pull`    |
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput

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


def _bad_host(host: str, why: str) -> BadInput:
    return BadInput(
        f"{redact_url(host)!r} is not a server address: {why}",
        "write it like http://127.0.0.1:11434, https://host/path or host:port (check OLLAMA_HOST)",
    )


def normalise_host(host: str | None) -> str:
    """OLLAMA_HOST in any of its forms, as the official `ollama` client reads it (its `_parse_host`).

    No scheme means http on Ollama's port 11434; a scheme without a port means that scheme's
    default port (80, 443); a path - Ollama behind a JupyterHub proxy - is kept, without its
    trailing slash. Two additions: a wildcard address (`0.0.0.0`, `::`) is where a server
    binds, not a place to connect to (Windows refuses it), so it means loopback; and a bare
    IPv6 address gets its brackets. A `user:password@` is kept for the connection: print the
    result through `redact_url`.

    The client's table:

    >>> normalise_host(None)
    'http://127.0.0.1:11434'
    >>> normalise_host('')
    'http://127.0.0.1:11434'
    >>> normalise_host('1.2.3.4')
    'http://1.2.3.4:11434'
    >>> normalise_host(':56789')
    'http://127.0.0.1:56789'
    >>> normalise_host('1.2.3.4:56789')
    'http://1.2.3.4:56789'
    >>> normalise_host('http://1.2.3.4')
    'http://1.2.3.4:80'
    >>> normalise_host('https://1.2.3.4')
    'https://1.2.3.4:443'
    >>> normalise_host('https://1.2.3.4:56789')
    'https://1.2.3.4:56789'
    >>> normalise_host('example.com')
    'http://example.com:11434'
    >>> normalise_host('example.com:56789')
    'http://example.com:56789'
    >>> normalise_host('http://example.com')
    'http://example.com:80'
    >>> normalise_host('https://example.com')
    'https://example.com:443'
    >>> normalise_host('https://example.com:56789')
    'https://example.com:56789'
    >>> normalise_host('example.com/')
    'http://example.com:11434'
    >>> normalise_host('example.com:56789/')
    'http://example.com:56789'
    >>> normalise_host('example.com/path')
    'http://example.com:11434/path'
    >>> normalise_host('example.com:56789/path')
    'http://example.com:56789/path'
    >>> normalise_host('https://example.com:56789/path')
    'https://example.com:56789/path'
    >>> normalise_host('example.com:56789/path/')
    'http://example.com:56789/path'
    >>> normalise_host('[0001:002:003:0004::1]')
    'http://[0001:002:003:0004::1]:11434'
    >>> normalise_host('[0001:002:003:0004::1]:56789')
    'http://[0001:002:003:0004::1]:56789'
    >>> normalise_host('http://[0001:002:003:0004::1]')
    'http://[0001:002:003:0004::1]:80'
    >>> normalise_host('https://[0001:002:003:0004::1]')
    'https://[0001:002:003:0004::1]:443'
    >>> normalise_host('https://[0001:002:003:0004::1]:56789')
    'https://[0001:002:003:0004::1]:56789'
    >>> normalise_host('[0001:002:003:0004::1]/')
    'http://[0001:002:003:0004::1]:11434'
    >>> normalise_host('[0001:002:003:0004::1]:56789/')
    'http://[0001:002:003:0004::1]:56789'
    >>> normalise_host('[0001:002:003:0004::1]/path')
    'http://[0001:002:003:0004::1]:11434/path'
    >>> normalise_host('[0001:002:003:0004::1]:56789/path')
    'http://[0001:002:003:0004::1]:56789/path'
    >>> normalise_host('https://[0001:002:003:0004::1]:56789/path')
    'https://[0001:002:003:0004::1]:56789/path'
    >>> normalise_host('[0001:002:003:0004::1]:56789/path/')
    'http://[0001:002:003:0004::1]:56789/path'

    The course's additions:

    >>> normalise_host('0.0.0.0')
    'http://127.0.0.1:11434'
    >>> normalise_host('http://[::]:8080')
    'http://[::1]:8080'
    >>> normalise_host('::1')
    'http://[::1]:11434'
    >>> normalise_host('100.0.0.0')
    'http://100.0.0.0:11434'
    >>> normalise_host('https://hub.example.org/user/ana/ollama/')
    'https://hub.example.org:443/user/ana/ollama'
    >>> redact_url(normalise_host('https://ana:s3cret@hub.example.org/ollama'))
    'https://ana:***@hub.example.org:443/ollama'
    """
    raw = (host or "").strip()
    if any(c.isspace() for c in raw):
        raise _bad_host(raw, "it contains a space")
    port = 11434
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    else:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise _bad_host(raw, f"the scheme is {scheme!r}, not http or https")
        port = 80 if scheme == "http" else 443
    where, slash, path = rest.partition("/")
    userinfo, at, hostport = where.rpartition("@")
    try:  # a bare IPv6 address (`::1`, `fe80::1`) has no brackets to tell its colons from a port
        if ipaddress.IPv6Address(hostport):
            hostport = f"[{hostport}]"
    except ValueError:
        pass
    try:
        split = urllib.parse.urlsplit(f"{scheme}://{hostport}")
        name = split.hostname or "127.0.0.1"
        port = split.port or port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise _bad_host(raw, str(exc)) from None
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        if address.is_unspecified:  # 0.0.0.0 or ::, "every interface": connect on loopback
            name = "::1" if address.version == 6 else "127.0.0.1"
        if address.version == 6:
            name = f"[{name}]"
    path = path.split("?", 1)[0].split("#", 1)[0].strip("/")
    return f"{scheme}://{userinfo + at}{name}:{port}" + (f"/{path}" if path else "")


#: `scheme://userinfo@`: everything between `://` and the last `@` before the host's end
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]*)@")


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it hidden (a lone user name, often a token, too).

    For anything printed or logged: doctor lines, error messages, lab logs. Other text is
    returned unchanged.

    >>> redact_url('https://ana:s3cret@hub.example.org/ollama')
    'https://ana:***@hub.example.org/ollama'
    >>> redact_url('no answer from http://sk-abc123@10.0.0.5:11434 within 5 s')
    'no answer from http://***@10.0.0.5:11434 within 5 s'
    >>> redact_url('http://127.0.0.1:11434')
    'http://127.0.0.1:11434'
    """

    def hide(m: re.Match) -> str:
        user, colon, _ = m.group("userinfo").partition(":")
        return f"{m.group('scheme')}{user + ':***' if colon and user else '***'}@"

    return _USERINFO.sub(hide, text) if isinstance(text, str) else text


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
    serve_read_timeout: float = 30.0
    log_dir: str = ""
    model_dir: str = ""

    @property
    def has_key(self) -> bool:
        return bool(self.openai_api_key)

    def __repr__(self) -> str:  # the key is never shown
        key = "set" if self.has_key else "not set"
        return (
            f"Settings(ollama_host={redact_url(self.ollama_host)!r}, small_model={self.small_model!r}, "
            f"large_model={self.large_model!r}, large_base_url={redact_url(self.large_base_url)!r}, "
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
    try:
        read_timeout = float(env.get("SLM_SERVE_READ_TIMEOUT", "30") or 30)
    except ValueError:
        read_timeout = 30.0
    if not (read_timeout > 0 and math.isfinite(read_timeout)):
        read_timeout = 30.0
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
        # a key of spaces is no key: a server must never "require" an empty bearer
        serve_api_key=(env.get("SLM_SERVE_API_KEY") or "").strip() or None,
        serve_read_timeout=read_timeout,
        log_dir=env.get("SLM_LOG_DIR", "").strip() or str(Path.home() / ".cache" / "slm-course"),
        model_dir=env.get("SLM_MODEL_DIR", "").strip() or str(Path.home() / ".cache" / "slm-course" / "models"),
    )
