"""One check for each kind of input, shared by every layer that takes it.

A lesson's call to a backend, the embedded engine, and both APIs of `slm-course serve`
(`/api/chat`, `/v1/chat/completions`) read chat messages, Ollama's `format`, whole numbers and
model names through these functions: the same input is accepted or refused the same way
everywhere, with a `BadInput` that names the next step (the server answers it with a 400).

Model names: Ollama treats a name without a tag as `name:latest`; the kit names models without
the `:latest` (the registry's cards, the engine's models), so `base_name` is its one canonical form.

    >>> base_name(" phi3:latest "), base_name("smollm2:135m"), same_model("llama2", "llama2:latest")
    ('phi3', 'smollm2:135m', True)
    >>> check_format(""), check_format("json"), check_format({"type": "object"})
    (None, 'json', {'type': 'object'})
    >>> check_messages([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    [{'role': 'user', 'content': 'Hi'}]
    >>> check_int("n", 3.0, 1, 10, "e.g. n=3")
    Traceback (most recent call last):
    ...
    helpers.errors.BadInput: n must be a whole number from 1 to 10, got 3.0
      -> e.g. n=3
"""

from __future__ import annotations

import json
import math
from typing import Any, Union

import numpy as np

from .errors import BadInput

#: Ollama's `format`: "json" (any JSON), a JSON schema the answer must follow, or None (free text).
Format = Union[str, dict, None]
#: The roles of Ollama's (and OpenAI's) chat messages.
ROLES = ("system", "user", "assistant", "tool")

_MESSAGE_HINT = 'each message looks like {"role": "user", "content": "..."}'
_CALL_HINT = 'use [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]'


# --------------------------------------------------------------------------- whole numbers
def is_int(value: Any) -> bool:
    """A whole number (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name: str, value: Any, lo: int, hi: int | None, hint: str) -> int:
    """`value` as an int when it is a whole number from `lo` to `hi` (None: no upper bound),
    else BadInput with `hint`. Bools and floats such as 3.0 are refused.

    >>> check_int("repeats", np.int64(3), 1, 10, "e.g. 3"), check_int("n", 10**6, 0, None, "e.g. 12")
    (3, 1000000)
    """
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise BadInput(f"{name} must be a whole number {span}, got {value!r}", hint)
    return int(value)


def check_number(name: str, value: Any, lo: float, hi: float | None, hint: str, *, above: bool = False) -> float:
    """`value` as a float when it is a finite number (not a bool) from `lo` to `hi` - or, with
    `above`, greater than `lo` (hi None: no upper bound) - else BadInput with `hint`.

    >>> check_number("fill", 0.25, 0, 0.75, "e.g. 0.25", above=True)
    0.25
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not (lo < value if above else lo <= value) or value > (hi or math.inf):
        low = f"above {lo:g}" if above else f"from {lo:g}"
        span = low if hi is None else f"{low} to {hi:g}"
        raise BadInput(f"{name} must be a number {span}, got {value!r}", hint)
    return float(value)


# --------------------------------------------------------------------------- model names
def base_name(name: str) -> str:
    """A model name in the kit's canonical form: trimmed, without Ollama's default tag `:latest`."""
    return name.strip().removesuffix(":latest")


def same_model(a: str, b: str) -> bool:
    """Whether two names are one model for Ollama (`phi3` and `phi3:latest` are)."""
    return base_name(a) == base_name(b)


def check_model(model: Any) -> str:
    """A model name given as a non-blank string, trimmed."""
    if not isinstance(model, str) or not model.strip():
        raise BadInput("no model name given", "pass a model name such as 'smollm2:135m' (see `backend.list_models()`)")
    return model.strip()


# --------------------------------------------------------------------------- format
def check_format(fmt: Any) -> Format:
    """Ollama's `format`: "json", a JSON schema (a dict), or None / "" for free text.

    This checks the kind only; the embedded engine also checks a schema's size and shape
    (`helpers.serving.engine.check_schema`) before compiling it into a grammar.
    """
    if fmt is None or fmt == "":
        return None
    if fmt == "json" or isinstance(fmt, dict):
        return fmt
    raise BadInput(
        f'format must be "json" or a JSON schema (an object), got {fmt!r}',
        'pass format="json", or a schema such as {"type": "object", "properties": {...}}',
    )


# --------------------------------------------------------------------------- chat messages
def check_messages(messages: Any, *, need_user_text: bool = False) -> list[dict[str, Any]]:
    """Chat messages checked and put in Ollama's shape, for every layer.

    Each message is a dict with a `role` (system, user, assistant or tool) and a `content`: a
    string, None or missing (an assistant message that only calls tools), or OpenAI's list of
    content parts (text parts are joined; an `image_url` data URL becomes one of Ollama's
    `images`). Optional: `images` (base64 strings or bytes), `tool_calls` (a list of
    `{"function": {"name", "arguments"}}`, arguments an object or OpenAI's JSON text),
    `tool_name` (OpenAI: `name` on a tool message), `tool_call_id`. Other keys are dropped.

    `need_user_text`: also refuse a conversation in which no user message has any text (a
    lesson's slip that Ollama would answer anyway; the backends ask for it, the server does not).
    """
    if not isinstance(messages, list) or not messages:
        raise BadInput("messages must be a non-empty list", 'pass e.g. [{"role": "user", "content": "Hello"}]')
    clean = [_check_message(m, i) for i, m in enumerate(messages)]
    if need_user_text and not any(m["content"].strip() for m in clean if m["role"] == "user"):
        raise BadInput("no user message has any text", "add a user message with a question")
    return clean


def _check_message(m: Any, i: int) -> dict[str, Any]:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise BadInput(f"message {i} must be a dict with a string 'role' and 'content'", _MESSAGE_HINT)
    role = m["role"]
    if role not in ROLES:
        raise BadInput(f"message {i} has an unknown role {role!r}", "use system, user, assistant or tool")
    content, images = m.get("content"), list(_check_images(m.get("images"), i))
    if isinstance(content, list):
        content = _join_parts(content, i, images)
    elif content is not None and not isinstance(content, str):
        raise BadInput(
            f"message {i} has content of type {type(content).__name__}: it must be a string "
            "(or a list of content parts)",
            _MESSAGE_HINT,
        )
    item: dict[str, Any] = {"role": role, "content": content or ""}
    if images:
        item["images"] = images
    if m.get("tool_calls"):
        item["tool_calls"] = _check_tool_calls(m["tool_calls"], i)
    for key in ("tool_name", "name", "tool_call_id"):
        value = m.get(key)
        if value is not None and not isinstance(value, str):
            raise BadInput(f"message {i}: {key} must be a string", 'e.g. {"role": "tool", "tool_name": "add"}')
    tool_name = m.get("tool_name") or (m.get("name") if role == "tool" else None)
    if tool_name:
        item["tool_name"] = tool_name
    if m.get("tool_call_id"):
        item["tool_call_id"] = m["tool_call_id"]
    return item


def _check_images(images: Any, i: int) -> list[str | bytes]:
    if images is None:
        return []
    if not isinstance(images, list) or not all(isinstance(x, (str, bytes)) and x for x in images):
        raise BadInput(f"message {i}: images must be a list of base64 strings", 'e.g. "images": ["iVBORw0KGgo..."]')
    return images


def _join_parts(parts: list, i: int, images: list) -> str:
    """OpenAI's content parts as text; image parts (data URLs) appended to `images`."""
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            head, comma, data = url.partition(",") if isinstance(url, str) else ("", "", "")
            if not (head.startswith("data:image/") and head.endswith(";base64") and comma and data):
                raise BadInput(
                    f"message {i} has an image_url part that is not a base64 data URL",
                    'send the image inline: {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}',
                )
            images.append(data)
        else:
            raise BadInput(
                f"message {i} has a content part of type {kind!r}: chat messages carry text and images only",
                'use {"type": "text", "text": "..."} parts',
            )
    return "".join(texts)


def _check_tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's tool calls as the templates read them: arguments as an object."""
    if not isinstance(calls, list):
        raise BadInput(f"message {i}: tool_calls must be a list", _CALL_HINT)
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadInput(f"message {i}: a tool call has no function name", _CALL_HINT)
        args = fn.get("arguments") or {}
        if isinstance(args, str):  # OpenAI's shape: the arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise BadInput(
                    f"message {i}: tool call arguments are not JSON: {args[:80]!r}",
                    "send the arguments the model produced, unchanged",
                ) from None
        if not isinstance(args, dict):
            raise BadInput(f"message {i}: tool call arguments must be an object", 'use e.g. {"city": "Paris"}')
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checked messages (Ollama's shape) in OpenAI's: tool calls with ids and JSON-text arguments,
    a tool message's `name`, images as `image_url` parts. llama.cpp's server reads this shape too."""
    out = []
    for m in messages:
        item: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("images"):
            item["content"] = [{"type": "text", "text": m["content"]}] + [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64(x)}"}} for x in m["images"]
            ]
        if m.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "type": "function",
                    "id": f"call_{i}",
                    "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])},
                }
                for i, c in enumerate(m["tool_calls"])
            ]
        if m["role"] == "tool" and m.get("tool_name"):
            item["name"] = m["tool_name"]
        if m.get("tool_call_id"):
            item["tool_call_id"] = m["tool_call_id"]
        out.append(item)
    return out


def _b64(image: str | bytes) -> str:
    import base64

    return image if isinstance(image, str) else base64.b64encode(image).decode("ascii")
