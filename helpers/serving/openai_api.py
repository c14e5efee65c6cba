"""OpenAI's API (`/v1/*`) as Ollama serves it (docs/openai.md of the Ollama repository).

Requests are translated onto the same engine calls as Ollama's own routes: content parts become
text, `response_format` a grammar, Ollama's tool calls OpenAI's (with ids and JSON-string
arguments); errors come in OpenAI's shape. What the models cannot do (images, thinking, insert,
logprobs) is refused with a 400.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, AsyncIterator, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import StrictBool, StrictStr

from ..validate import check_messages
from .engine import Chunk, parse_tool_calls
from .ollama_api import embeddings, refuse_unsupported
from .plumbing import SSE_DONE, ApiError, Body, Run, body_of, bridge, complete, error_text, prepare, sse_event, state_of

router = APIRouter()


# --------------------------------------------------------------------------- requests
class OAMessage(Body):
    """An OpenAI chat message: content may be text, a list of parts, or null (with tool_calls)."""

    role: StrictStr
    content: Optional[Union[StrictStr, list[dict]]] = None
    tool_calls: Optional[list[dict]] = None
    tool_call_id: Optional[StrictStr] = None
    name: Optional[StrictStr] = None


class OASampling(Body):
    """What /v1/chat/completions and /v1/completions both take."""

    model: StrictStr
    stream: StrictBool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Optional[Union[StrictStr, list[StrictStr]]] = None
    stream_options: Optional[dict] = None


class OAChatBody(OASampling):
    messages: list[OAMessage]
    max_completion_tokens: Optional[int] = None
    response_format: Optional[dict] = None
    tools: Optional[list[dict]] = None
    tool_choice: Optional[Union[StrictStr, dict]] = None
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[int] = None
    reasoning_effort: Optional[StrictStr] = None


class OACompletionBody(OASampling):
    prompt: StrictStr
    suffix: Optional[StrictStr] = None
    logprobs: Optional[int] = None


class OAEmbedBody(Body):
    model: StrictStr
    input: Union[StrictStr, list[StrictStr]]


# --------------------------------------------------------------------------- translation
def oa_options(body: OASampling) -> dict[str, Any]:
    """OpenAI's sampling fields as Ollama's options."""
    opts = {k: getattr(body, k) for k in ("temperature", "top_p", "seed") if getattr(body, k) is not None}
    limit = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if limit is not None:
        opts["num_predict"] = limit
    if body.stop is not None:
        opts["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    return opts


def oa_finish(reason: str | None, calls: bool = False) -> str:
    if calls:
        return "tool_calls"
    return "length" if reason == "length" else "stop"


def oa_tool_calls(calls: list[dict[str, Any]], stream: bool = False) -> list[dict[str, Any]]:
    """Ollama's tool calls in OpenAI's shape: ids, and the arguments as a JSON string."""
    out = []
    for i, call in enumerate(calls):
        fn = call["function"]
        item = {
            "id": f"call_{secrets.token_hex(6)}",
            "type": "function",
            "function": {"name": fn["name"], "arguments": json.dumps(fn["arguments"])},
        }
        out.append({"index": i, **item} if stream else item)
    return out


def envelope(ident: str, obj: str, model: str, created: int, choices: list, **rest: Any) -> dict[str, Any]:
    """What every OpenAI completion object (and streamed chunk) carries around its choices."""
    return {
        "id": ident,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": "fp_slm_course",
        "choices": choices,
        **rest,
    }


def usage_of(final: Chunk) -> dict[str, Any]:
    return {
        "prompt_tokens": final.prompt_eval_count,
        "completion_tokens": final.eval_count,
        "total_tokens": final.prompt_eval_count + final.eval_count,
        "prompt_tokens_details": {"cached_tokens": final.prompt_cached_count},  # as OpenAI reports it
    }


async def sse(
    run: Run, ident: str, model: str, kind: str, include_usage: bool, tools: bool = False
) -> AsyncIterator[bytes]:
    """A generation as OpenAI's server-sent chunks (`kind` "chat" or "completion"), then [DONE]."""
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    first = True
    held: list[str] = []
    async for item in bridge(run):
        if isinstance(item, BaseException):
            yield sse_event(
                {"error": {"message": error_text(item), "type": "server_error", "param": None, "code": None}}
            )
            return
        calls: list[dict[str, Any]] = []
        text = item.text
        if tools:  # held back: a tool call is recognised only in the whole answer
            held.append(item.text)
            if not item.done:
                continue
            text, calls = parse_tool_calls("".join(held))
        finish = oa_finish(item.done_reason, bool(calls)) if item.done else None
        if kind == "chat":
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            if calls:
                delta["tool_calls"] = oa_tool_calls(calls, stream=True)
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        first = False
        yield sse_event(envelope(ident, obj, model, created, [choice]))
        if item.done and include_usage:
            yield sse_event(envelope(ident, obj, model, created, [], usage=usage_of(item)))
    yield SSE_DONE


def oa_format(response_format: dict | None) -> str | dict | None:
    """OpenAI's response_format: text, json_object (any JSON) or json_schema (a grammar)."""
    kind = (response_format or {}).get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = (response_format or {}).get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(
                400,
                "response_format json_schema needs a schema: send "
                '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
            )
        return schema
    raise ApiError(400, f"response_format type {kind!r} is not supported (use text, json_object or json_schema)")


def refuse_logprobs(body) -> None:
    if getattr(body, "logprobs", None) or getattr(body, "top_logprobs", None):
        raise ApiError(
            400,
            "logprobs are not supported by slm-course serve (send the request "
            "without logprobs/top_logprobs; a real Ollama >= 0.12.11 returns them)",
        )


# --------------------------------------------------------------------------- routes
@router.get("/v1/models")
async def oa_models(request: Request):
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": created, "owned_by": "library"}
            for n in state_of(request).engine.available()
        ],
    }


@router.post("/v1/chat/completions")
async def oa_chat(request: Request):
    body = await body_of(request, OAChatBody)
    messages = check_messages([m.model_dump(exclude_none=True) for m in body.messages])
    refuse_logprobs(body)
    refuse_unsupported(
        state_of(request).engine,
        body.model,
        think=body.reasoning_effort,
        images=[i for m in messages for i in m.get("images", [])],
    )
    tools = None if body.tool_choice == "none" else (body.tools or None)  # "none": the model must not call a tool
    run = await prepare(
        request,
        body.model,
        messages=messages,
        options=oa_options(body),
        json_format=oa_format(body.response_format),
        tools=tools,
    )
    ident = f"chatcmpl-{secrets.token_hex(6)}"
    if body.stream:
        include = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            sse(run, ident, body.model, "chat", include, bool(tools)), media_type="text/event-stream"
        )
    text, final = await complete(request, run)
    content, calls = parse_tool_calls(text) if tools else (text, [])
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = oa_tool_calls(calls)
    choice = {"index": 0, "message": message, "finish_reason": oa_finish(final.done_reason, bool(calls))}
    return envelope(ident, "chat.completion", body.model, int(time.time()), [choice], usage=usage_of(final))


@router.post("/v1/completions")
async def oa_completions(request: Request):
    body = await body_of(request, OACompletionBody)
    refuse_logprobs(body)
    refuse_unsupported(state_of(request).engine, body.model, suffix=body.suffix)
    run = await prepare(request, body.model, prompt=body.prompt, options=oa_options(body))
    ident = f"cmpl-{secrets.token_hex(6)}"
    if body.stream:
        include = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(sse(run, ident, body.model, "completion", include), media_type="text/event-stream")
    text, final = await complete(request, run)
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": oa_finish(final.done_reason)}
    return envelope(ident, "text_completion", body.model, int(time.time()), [choice], usage=usage_of(final))


@router.post("/v1/embeddings")
async def oa_embeddings(request: Request):
    body = await body_of(request, OAEmbedBody)
    out = await embeddings(request, body.model, body.input)
    return {
        "object": "list",
        "model": body.model,
        "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(out.vectors)],
        "usage": {"prompt_tokens": out.prompt_eval_count, "total_tokens": out.prompt_eval_count},
    }
