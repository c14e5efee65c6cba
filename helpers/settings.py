"""Configuration, read in one place from environment variables (and an optional `.env`).

`get_settings()` reads them through pydantic-settings: the environment first, then the nearest
`.env` (the working folder or a parent); an empty variable means its default; a value that cannot
be read is a BadInput naming the variable and the fix. The three keys are `SecretStr`
(`reveal(key)` to send one) and `repr(settings)` shows every field with the keys as set / not set.

| variable            | default                    | meaning                                          |
|---------------------|----------------------------|--------------------------------------------------|
| OLLAMA_HOST         | http://127.0.0.1:11434     | where Ollama (or `slm-course serve`) listens     |
| SLM_SMALL_MODEL     | (auto)                     | small model; empty = best one the server has     |
| SLM_LARGE_MODEL     | gpt-4o-mini                | large model on the OpenAI-compatible endpoint    |
| SLM_LARGE_BASE_URL  | https://api.openai.com/v1  | OpenAI-compatible endpoint for the large model   |
| OPENAI_API_KEY      | (unset)                    | key for that endpoint; never printed             |
| SLM_TIMEOUT         | 120                        | seconds before any network call gives up         |
| SLM_THREADS         | (all cores)                | llama.cpp threads of the embedded engine         |
| OLLAMA_NUM_PARALLEL | 8                          | requests each model of the engine decodes at once |
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
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import BadInput

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEFAULT_LARGE_MODEL = "gpt-4o-mini"
DEFAULT_LARGE_BASE_URL = "https://api.openai.com/v1"
#: requests each model of the engine decodes at once when OLLAMA_NUM_PARALLEL is not set
#: (measured: README, "Performance": with 8 students, 8 slots gave a 0.29 s p50 first token where
#: 4 gave 0.58 s, and 176 tokens/s where 4 gave 141; Binder's one learner sets 2 in binder/start)
DEFAULT_NUM_PARALLEL = 8
MAX_NUM_PARALLEL = 16


def find_dotenv() -> Path | None:
    """The `.env` nearest the working folder (it, or the first parent that has one)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidate = folder / ".env"
        if candidate.is_file():
            return candidate
    return None


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


def _env(name: str, default: Any = None, **kwargs: Any) -> Any:
    """A field read from the environment variable `name` (also its name in Python code)."""
    return Field(default, validation_alias=name, **kwargs)


_SECRET = ("openai_api_key", "ollama_api_key", "serve_api_key")
_URLS = ("ollama_host", "large_base_url")


class Settings(BaseSettings):
    """The kit's settings, read from environment variables (then a `.env`), checked once.

    An empty variable means its default. The keys are `SecretStr` (`.get_secret_value()`
    to use one) and never appear in `repr()`; URLs there have their passwords hidden.
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, validate_default=True, env_ignore_empty=True
    )

    ollama_host: str = _env("OLLAMA_HOST", DEFAULT_OLLAMA_HOST)
    small_model: str = _env("SLM_SMALL_MODEL", "")
    large_model: str = _env("SLM_LARGE_MODEL", DEFAULT_LARGE_MODEL)
    large_base_url: str = _env("SLM_LARGE_BASE_URL", DEFAULT_LARGE_BASE_URL)
    openai_api_key: SecretStr | None = _env("OPENAI_API_KEY")
    timeout: float = _env("SLM_TIMEOUT", 120.0)
    threads: int = _env("SLM_THREADS", 0)  # 0: every core
    num_parallel: int = _env("OLLAMA_NUM_PARALLEL", DEFAULT_NUM_PARALLEL)
    judge_model: str = _env("SLM_JUDGE_MODEL", "")
    loadtest_hosts: Annotated[tuple[str, ...], NoDecode] = _env("SLM_LOADTEST_HOSTS", ())
    ollama_api_key: SecretStr | None = _env("OLLAMA_API_KEY")
    serve_api_key: SecretStr | None = _env("SLM_SERVE_API_KEY")
    serve_read_timeout: float = _env("SLM_SERVE_READ_TIMEOUT", 30.0)
    log_dir: str = _env("SLM_LOG_DIR", "")
    model_dir: str = _env("SLM_MODEL_DIR", "")

    @field_validator("ollama_host", mode="before")
    @classmethod
    def _host(cls, value: Any) -> str:
        return normalise_host(value)

    @field_validator("small_model", "judge_model", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        return str(value or "").strip()

    @field_validator("large_model", "large_base_url", mode="before")
    @classmethod
    def _text_or_default(cls, value: Any, info) -> str:
        default = DEFAULT_LARGE_MODEL if info.field_name == "large_model" else DEFAULT_LARGE_BASE_URL
        return str(value or "").strip() or default

    @field_validator(*_SECRET, mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        # a key of spaces is no key: a server must never "require" an empty bearer
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value or "")
        return text.strip() or None

    @field_validator("timeout", "serve_read_timeout", mode="before")
    @classmethod
    def _seconds(cls, value: Any, info) -> float:
        name = _VARIABLE[info.field_name]
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise BadInput(
                f"{name}={value!r} is not a number of seconds",
                f"set e.g. {name}={cls.model_fields[info.field_name].default:g}, or unset it for that default",
            )
        return seconds

    @field_validator("threads", "num_parallel", mode="before")
    @classmethod
    def _count(cls, value: Any, info) -> int:
        name = _VARIABLE[info.field_name]
        lo, hi, default = (0, 1024, "all cores") if info.field_name == "threads" else (1, MAX_NUM_PARALLEL, "4")
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text) or not lo <= int(text) <= hi:
            raise BadInput(
                f"{name}={value!r} is not a whole number from {lo} to {hi}",
                f"set it to e.g. 1, or unset it for the default ({default})",
            )
        return int(text)

    @field_validator("loadtest_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value or ())
        return tuple(h.strip() for h in items if h.strip())

    @field_validator("log_dir", "model_dir", mode="before")
    @classmethod
    def _folder(cls, value: Any, info) -> str:
        cache = Path.home() / ".cache" / "slm-course"
        return str(value or "").strip() or str(cache if info.field_name == "log_dir" else cache / "models")

    @property
    def has_key(self) -> bool:
        return self.openai_api_key is not None

    def __repr__(self) -> str:  # every field; the keys as set / not set, URLs without passwords
        shown = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in _SECRET:
                shown.append(f"{name}=<{'set' if value is not None else 'not set'}>")
            else:
                shown.append(f"{name}={redact_url(value) if name in _URLS else value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__


#: the environment variable of each field
_VARIABLE = {name: f.validation_alias for name, f in Settings.model_fields.items()}


def reveal(key: SecretStr | None) -> str | None:
    """A key's text, to send it (never to print it); None when it is not set."""
    return key.get_secret_value() if key is not None else None


def get_settings() -> Settings:
    """Read the settings now (so a changed environment variable takes effect); a `.env` in
    the working folder or a parent fills in what the environment does not set."""
    try:
        return Settings(_env_file=find_dotenv())
    except ValidationError as exc:  # a BadInput raised by a validator arrives wrapped
        error = exc.errors()[0]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, BadInput):
            raise cause from None
        name = _VARIABLE.get(str(error["loc"][0]), error["loc"][0])
        raise BadInput(f"{name}: {error['msg']}", f"fix {name} in the environment or .env, or unset it") from None
