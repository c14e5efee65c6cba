"""What both APIs of `slm-course serve` stand on: shared state, bounds, errors, bodies, streaming.

A server a class shares must bound what one client can make it do: request bodies are at most
MAX_BODY_BYTES and must arrive within SLM_SERVE_READ_TIMEOUT seconds (headers too); JSON nested
deeper than MAX_JSON_DEPTH or holding lone surrogates is refused; a prompt too long for its
context is refused before the tokenizer reads it (by the engine); an embedding request takes at
most MAX_EMBED_INPUTS inputs and stops when its client goes away; and SIGTERM stops the server
within seconds, cancelling the work in progress.

Routes reach the shared state through `state_of(request)`; each piece here is a plain function
(or small class) that can be tried on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import re
import secrets
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadInput, CourseError
from .engine import DEFAULT_KEEP_ALIVE_S, Chunk, Engine

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
MAX_JSON_DEPTH = 64  # Ollama's own requests nest 5 deep; a JSON schema in `format` ~20
MAX_JSON_VALUES = 1 << 18  # items in all arrays and objects: 256 inputs, 1,000s of messages
MAX_EMBED_INPUTS = 256  # ~40 ms each for SmolLM2 on one core: 10 s at most per request
DEFAULT_READ_TIMEOUT_S = 30.0
MAX_KEEP_ALIVE_S = 365 * 86400.0  # "forever" (a negative keep_alive) is a year here


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        self.status = status
        self.message = message
        self.close = close  # answer with `Connection: close` (the rest of the request is unread)
        super().__init__(message)


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


@dataclasses.dataclass
class ServerState:
    """What every route shares, built once by `create_app` and kept on `app.state.server`."""

    engine: Engine
    api_key: str | None = None  # when set, required as `Authorization: Bearer <key>`
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_body_bytes: int = MAX_BODY_BYTES
    inflight: Inflight = dataclasses.field(default_factory=Inflight)
    model_pool: ThreadPoolExecutor = dataclasses.field(
        default_factory=lambda: ThreadPoolExecutor(MODEL_WORKERS, thread_name_prefix="slm-model")
    )
    light_pool: ThreadPoolExecutor = dataclasses.field(
        default_factory=lambda: ThreadPoolExecutor(LIGHT_WORKERS, thread_name_prefix="slm-light")
    )


def state_of(request: Request) -> ServerState:
    return request.app.state.server


async def run_in(pool: Executor, fn: Callable[..., Any], *args, **kwargs) -> Any:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Unload idle models (keep_alive) while the app runs; stop all work and threads after."""
    st = app.state.server

    async def reap() -> None:
        while True:
            await asyncio.sleep(1.0)
            await run_in(st.light_pool, st.engine.unload_expired)

    app.state.reaper = asyncio.create_task(reap())
    try:
        yield
    finally:
        st.inflight.cancel_all()  # what uvicorn's graceful shutdown left running stops now
        app.state.reaper.cancel()
        st.model_pool.shutdown(wait=False, cancel_futures=True)
        st.light_pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- errors and the guard
def error_text(exc: BaseException) -> str:
    if not isinstance(exc, CourseError):
        return str(exc)
    return f"{exc.message} ({exc.hint})" if exc.hint else exc.message


def error_for(request: Request, status: int, message: str, *, close: bool = False) -> JSONResponse:
    """An error in the shape of the API the request called: OpenAI's under /v1, else Ollama's."""
    headers = {"connection": "close"} if close else None
    if not request.url.path.startswith("/v1"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    kind = {404: "not_found_error", 401: "authentication_error"}.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def too_large(size: int | None, limit: int) -> ApiError:
    """413 for a body over `limit`: `size` as declared, None while it streams in."""
    what = f"{size:,} bytes, more" if size is not None else "more"
    return ApiError(
        413,
        f"the request body is {what} than the server's limit of "
        f"{limit:,} bytes ({limit / 2**20:g} MB) "
        "(send a shorter prompt, or fewer inputs per request)",
        close=size is not None and size > DRAIN_BODY_BYTES,
    )


def blank(key: str | None) -> bool:
    """An API key that is given but empty (or spaces): that is no key at all."""
    return key is not None and not (isinstance(key, str) and key.strip())


def authorized(header: str, api_key: str | None) -> bool:
    """Whether an Authorization header carries `Bearer <api_key>` (always, without a key)."""
    if not api_key:
        return True
    # compare bytes: a header may hold any byte, which str comparison refuses
    return secrets.compare_digest(header.encode("latin-1"), f"Bearer {api_key}".encode("utf-8"))


def guard(app: ASGIApp) -> ASGIApp:
    """The ASGI middleware: the API key, the declared body size, and every error raised before an answer
    starts in the API's shape. Plain ASGI, so a streamed answer's chunks go straight to the connection."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        request, started = Request(scope, receive), False

        async def send_on(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        st = state_of(request)
        try:
            key = request.headers.get("authorization", "")
            if request.url.path not in ("/", "/api/version") and not authorized(key, st.api_key):
                raise ApiError(
                    401, "unauthorized: send the server's key as 'Authorization: Bearer <key>' (OLLAMA_API_KEY)"
                )
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > st.max_body_bytes:  # refused before reading it
                raise too_large(int(declared), st.max_body_bytes)
            return await app(scope, receive, send_on)
        except Exception as exc:
            if started:  # too late for an answer of its own
                raise
            if isinstance(exc, ApiError):
                response = error_for(request, exc.status, exc.message, close=exc.close)
            elif isinstance(exc, CourseError):  # the one mapping: each error class carries its HTTP status
                response = error_for(request, exc.status, error_text(exc))
            else:  # a bug or a failing library: still an answer in the API's shape
                response = error_for(request, 500, f"internal error: {type(exc).__name__}: {exc}")
        await response(scope, receive, send)

    return guarded


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_for(request, exc.status_code, str(exc.detail))


# --------------------------------------------------------------------------- request bodies
class Body(BaseModel):
    """A request body's model: fields it does not know are ignored, as Ollama ignores them."""

    model_config = ConfigDict(extra="ignore")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytearray:
    """The body, counted as it arrives (a chunked one declares no length) and on a clock."""
    raw = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks = request.stream()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), deadline - loop.time())
            except StopAsyncIteration:
                return raw
            except asyncio.TimeoutError:
                raise ApiError(
                    408,
                    f"the request body did not arrive within {timeout_s:g} s "
                    "(send it at once; SLM_SERVE_READ_TIMEOUT sets this limit)",
                    close=True,
                ) from None
            except ClientDisconnect:
                raise ApiError(400, "the client went away before sending the whole body", close=True) from None
            if len(raw) + len(chunk) > limit:
                raise too_large(None, limit)
            raw += chunk
    finally:
        await chunks.aclose()


def decode(raw: bytes | bytearray, model_cls):
    """The body as `model_cls`: JSON, bounded in depth and size, valid text, right types."""
    # millions of tiny arrays parse for seconds in C, holding the GIL: count them first
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_JSON_VALUES:
        raise ApiError(
            400,
            f"the request body holds {brackets:,} '[' and '{{': more arrays and "
            f"objects than the server takes ({MAX_JSON_VALUES:,}) (send fewer items "
            "per request)",
        )
    try:
        data = json.loads(raw or b"{}", parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ApiError(400, f"invalid JSON in the request body: {exc}") from None
    except RecursionError:
        raise ApiError(
            400,
            f"the request body nests JSON too deeply (more than "
            f"{MAX_JSON_DEPTH} levels is refused: send a flatter request)",
        ) from None
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
        raise ApiError(400, "invalid request: " + "; ".join(parts) + more) from None


async def body_of(request: Request, model_cls):
    """The request's body read within the server's limits and decoded as `model_cls`."""
    st = state_of(request)
    raw = await read_body(request, st.max_body_bytes, st.read_timeout_s)
    if len(raw) < 1 << 18:
        return decode(raw, model_cls)
    # a big body can take a CPU second to decode: not on the loop every client needs
    return await run_in(st.model_pool, decode, raw, model_cls)


_SURROGATE = re.compile("[\ud800-\udfff]")
#: where a lone surrogate can come from in a body: a `\uD800`-`\uDFFF` escape, or the bytes of one
#: (json.loads decodes bytes with "surrogatepass")
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def check_json(data: Any, raw: bytes | bytearray | None = None, max_depth: int = MAX_JSON_DEPTH) -> None:
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
            raise ApiError(
                400,
                f"the request body nests JSON more than {max_depth} levels deep "
                f"(in {field!r}; send a flatter request: Ollama's own nest 5 levels)",
            )
        count += len(value)
        if count > MAX_JSON_VALUES:
            raise ApiError(
                400,
                f"the request body holds more than {MAX_JSON_VALUES:,} JSON values "
                f"(in {field!r}; send fewer items per request)",
            )
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
        raise ApiError(
            400,
            f"the request's {field!r} holds a lone surrogate "
            f"(\\u{ord(m.group()):04x}), which is not text (send valid Unicode: an "
            "emoji escaped in JSON needs both halves of its surrogate pair, e.g. "
            "\\ud83d\\ude00)",
        )


def _finite_float(text: str) -> float:
    """json.loads' float parser, refusing what JSON cannot carry (1e999 would become inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON: numbers must be finite")


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
        raise BadInput(
            f"keep_alive {value!r} is out of range",
            'use at most a year (e.g. "24h"), or a negative value to keep the model loaded',
        )
    return MAX_KEEP_ALIVE_S if seconds < 0 else seconds


# --------------------------------------------------------------------------- generation: bridge and watcher
Run = tuple[Iterator[Chunk], threading.Event]  # a prepared generation's chunks and its cancel event


def bridge(prepared: Run) -> AsyncIterator[Any]:
    """Run a blocking generation in its own thread and hand its chunks to the event loop.

    If the client goes away, the async generator is closed, the cancel event is set and the
    engine stops at the next token, releasing the model for the next request.
    """
    chunks, cancel = prepared
    chunks_ref = [chunks]
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
            put(None)

    pipe = getattr(chunks, "pipe", None)
    if pipe is not None:  # the engine's stream: its decode thread hands each chunk (then None) to the loop
        pipe(put)
    else:
        threading.Thread(target=worker, daemon=True, name="slm-generate").start()

    async def agen() -> AsyncIterator[Any]:
        try:
            while True:
                item = await queue.get()
                if item is None:  # the end
                    return
                yield item
        finally:
            cancel.set()
            del chunks_ref[:]  # kept alive until here: dropping the stream stops its decode

    return agen()


def _prepare_now(eng: Engine, model: str, cancel: threading.Event, **kwargs) -> Run:
    try:
        return eng.stream(model, cancel=cancel, **kwargs), cancel
    except (CourseError, ApiError):
        raise
    except Exception as exc:
        raise ApiError(500, f"could not prepare the request: {type(exc).__name__}: {exc}") from None


async def prepare(request: Request, model: str, **kwargs) -> Run:
    """Validate and start now (so errors are a clean 400/404), up to the first piece. A
    request still waiting for a free slot when its client hangs up is dropped unread."""
    st = state_of(request)
    cancel = st.inflight.new()
    work = run_in(st.model_pool, _prepare_now, st.engine, model, cancel, **kwargs)
    return await until_done_or_gone(request, work, cancel, keep_going=True)


async def hung_up(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_done_or_gone(request: Request, work: Any, cancel: threading.Event, keep_going: bool = False) -> Any:
    """Await `work`; if the client hangs up first, set `cancel` so the work stops early. Done
    with it, `cancel` is set too, unless the work succeeded and `keep_going` (it runs on)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(hung_up(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            cancel.set()
        result = await task
        if not keep_going:
            cancel.set()
        return result
    except BaseException:
        cancel.set()
        raise
    finally:
        watcher.cancel()
        if not task.done():  # this request itself was cancelled (the server is stopping)
            task.cancel()


async def collect(run: Run) -> tuple[str, Chunk]:
    """The whole text of a prepared generation and its last chunk (with the timings)."""
    parts = []
    final = None
    async for item in bridge(run):
        if isinstance(item, BaseException):
            raise ApiError(500, f"generation failed: {item}")
        parts.append(item.text)
        if item.done:
            final = item
    if final is None:
        raise ApiError(500, "the generation ended without its last chunk (no timings); send the request again")
    if final.done_reason == "cancelled":
        raise ApiError(
            503,
            "the generation was cancelled: the server is stopping (or the client went away); send the request again",
        )
    return "".join(parts), final


async def complete(request: Request, run: Run) -> tuple[str, Chunk]:
    """The whole answer of a non-streaming request (stopped if its client hangs up)."""
    return await until_done_or_gone(request, collect(run), run[1])


# --------------------------------------------------------------------------- stream encoders
def ndjson_line(payload: dict) -> bytes:
    """One line of a streamed Ollama answer (application/x-ndjson)."""
    return (json.dumps(payload) + "\n").encode()


def sse_event(payload: dict) -> bytes:
    """One server-sent event of a streamed OpenAI answer (text/event-stream)."""
    return f"data: {json.dumps(payload)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"  # OpenAI's last event of a stream
