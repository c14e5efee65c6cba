"""Lesson 10's helpers: structured output and tool calls, measured on tasks with checkable answers.

Three ways to ask a model for JSON (`MODES`): free text that asks for JSON, Ollama's
`format: "json"` (any JSON, grammar-constrained), and `format: <schema>` (the schema compiled into
a grammar). Each answer is scored three ways - does it parse, does it match the schema, how many
fields are right - and the engine's own counters give tokens/s, so the grammar's cost shows too.
Then a tool-calling loop: the model picks a function and its arguments, the program runs it, the
model answers with the result.

Everything goes through the official `ollama` client, so it runs unchanged on a real Ollama and on
`slm-course serve`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Callable, Sequence

import jsonschema

from .errors import BadInput

#: the three ways of asking for JSON, in the order the lesson compares them
MODES = ("free text", "format=json", "format=schema")


@dataclass(frozen=True)
class ExtractTask:
    """Pull fields out of a text: `schema` says which, `answer` holds the right values."""

    id: str
    text: str
    schema: dict
    answer: dict


@dataclass(frozen=True)
class ToolTask:
    """A request that needs one of TOOLS: the right call is `tool` with `arguments`."""

    id: str
    prompt: str
    tool: str
    arguments: dict


def _rows() -> list[dict]:
    text = resources.files("helpers").joinpath("data/structured_eval.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def extract_tasks(n: int | None = None) -> list[ExtractTask]:
    """The kit's extraction tasks (the first `n`, interleaving their schemas)."""
    tasks = [ExtractTask(r["id"], r["text"], r["schema"], r["answer"]) for r in _rows() if r["kind"] == "extract"]
    return tasks[:n] if n is not None else tasks


def tool_tasks(n: int | None = None) -> list[ToolTask]:
    """The kit's tool-choice tasks (the first `n`)."""
    tasks = [ToolTask(r["id"], r["prompt"], r["tool"], r["arguments"]) for r in _rows() if r["kind"] == "tool"]
    return tasks[:n] if n is not None else tasks


# ----------------------------------------------------------------------------- scoring
@dataclass
class Score:
    valid_json: bool
    schema_valid: bool
    field_accuracy: float  # share of the answer's fields with the right value


def parse_json(text: str) -> Any:
    """The JSON object in a reply: the whole reply, or the first {...} in it (models add prose
    and ``` fences around JSON when nothing forces them not to). None when there is none.

    >>> parse_json('Sure! ```json\\n{"a": 1}\\n```')
    {'a': 1}
    >>> parse_json("no json here") is None
    True
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    while start != -1:
        try:
            return json.JSONDecoder().raw_decode(text, start)[0]
        except ValueError:
            start = text.find("{", start + 1)
    return None


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, str):
        return isinstance(got, str) and got.strip().casefold() == want.strip().casefold()
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and abs(got - want) < 1e-9
    return got == want


def score(text: str, task: ExtractTask) -> Score:
    """Valid JSON? Valid for the task's schema? Share of the fields right (strings ignore case)?

    >>> t = ExtractTask("x", "", {"type": "object", "properties": {"a": {"type": "integer"}},
    ...                           "required": ["a"]}, {"a": 3})
    >>> score('{"a": 3}', t), score('{"a": "3"}', t).schema_valid, score("three", t).valid_json
    (Score(valid_json=True, schema_valid=True, field_accuracy=1.0), False, False)
    """
    obj = parse_json(text)
    if obj is None:
        return Score(False, False, 0.0)
    try:
        jsonschema.validate(obj, task.schema)
        valid = True
    except jsonschema.ValidationError:
        valid = False
    got = obj if isinstance(obj, dict) else {}
    right = sum(_same(got.get(k), v) for k, v in task.answer.items())
    return Score(True, valid, right / len(task.answer))


def extraction_prompt(task: ExtractTask) -> str:
    """The same request in every mode: the fields and their types, then the text."""
    fields = ", ".join(f'"{k}" ({v.get("type", "any")})' for k, v in task.schema["properties"].items())
    return f"Extract these fields from the text and reply with a JSON object only: {fields}.\n\nText: {task.text}"


def format_for(mode: str, task: ExtractTask) -> Any:
    """Ollama's `format` for a mode: none, "json", or the task's schema."""
    if mode not in MODES:
        raise BadInput(f"unknown mode {mode!r}", f"use one of {MODES}")
    return {"free text": None, "format=json": "json", "format=schema": task.schema}[mode]


@dataclass
class Record:
    """One answer, scored: what the lesson's tables are made of."""

    model: str
    mode: str
    task: str
    valid_json: bool
    schema_valid: bool
    field_accuracy: float
    eval_count: int
    tokens_per_s: float
    reply: str


def run_extraction(
    client: Any,
    model: str,
    tasks: Sequence[ExtractTask],
    mode: str,
    *,
    options: dict | None = None,
    progress: Any = None,
    concurrency: int | None = None,
) -> list[Record]:
    """Ask `model` every task in one mode (an `ollama.Client`), several at once; score each reply."""
    from .concurrency import map_concurrent, values

    def ask(task: ExtractTask) -> Any:
        reply = client.chat(
            model=model,
            format=format_for(mode, task),
            options=options,
            messages=[{"role": "user", "content": extraction_prompt(task)}],
        )
        if progress is not None:
            progress.update(1)
        return reply

    out = []
    for task, r in zip(tasks, values(map_concurrent(ask, tasks, concurrency=concurrency, progress=False))):
        s = score(r.message.content, task)
        speed = (r.eval_count / r.eval_duration * 1e9) if r.eval_duration else 0.0
        out.append(
            Record(
                model,
                mode,
                task.id,
                s.valid_json,
                s.schema_valid,
                s.field_accuracy,
                r.eval_count or 0,
                speed,
                r.message.content,
            )
        )
    return out


def summary(records: Sequence[Record]):
    """Per model and mode: valid-JSON rate, schema-valid rate, field accuracy, tokens/s (median)."""
    import pandas as pd

    frame = pd.DataFrame([asdict(r) for r in records])
    table = frame.groupby(["model", "mode"], sort=False).agg(
        n=("task", "size"),
        valid_json=("valid_json", "mean"),
        schema_valid=("schema_valid", "mean"),
        field_accuracy=("field_accuracy", "mean"),
        tokens_per_s=("tokens_per_s", "median"),
    )
    return table.round(3)


# ----------------------------------------------------------------------------- tools
def get_weather(city: str) -> dict:
    """Get the current weather in a city.

    Args:
      city: the city's name, e.g. Paris
    """
    temps = {"paris": 18, "tokyo": 24, "cairo": 35, "oslo": 4, "lima": 19, "sydney": 22}
    return {"city": city, "temperature_c": temps.get(city.strip().lower(), 15), "sky": "clear"}


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict:
    """Convert an amount of money from one currency to another.

    Args:
      amount: how much money
      from_currency: the three-letter code of the currency it is in, e.g. USD
      to_currency: the three-letter code of the currency wanted, e.g. EUR
    """
    per_usd = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0}  # fixed rates: a teaching stub
    f, t = from_currency.strip().upper(), to_currency.strip().upper()
    if f not in per_usd or t not in per_usd:
        return {"error": f"unknown currency (known: {', '.join(per_usd)})"}
    return {"amount": round(float(amount) / per_usd[f] * per_usd[t], 2), "currency": t}


def add(a: float, b: float) -> dict:
    """Add two numbers exactly.

    Args:
      a: the first number
      b: the second number
    """
    return {"sum": a + b}


TOOLS: dict[str, Callable[..., dict]] = {f.__name__: f for f in (get_weather, convert_currency, add)}


def _args_match(got: dict, want: dict) -> bool:
    return set(got) == set(want) and all(_same(got[k], v) for k, v in want.items())


@dataclass
class ToolRun:
    """One pass of the tool loop: the call the model made, what the tool said, the answer."""

    model: str
    task: str
    called: str = ""
    arguments: dict = field(default_factory=dict)
    right_call: bool = False
    result: dict = field(default_factory=dict)
    answer: str = ""
    used_result: bool = False  # the final answer quotes the tool's result
    error: str = ""
    output_tokens: int = 0  # tokens the model generated over the loop's calls (eval_count)

    @property
    def success(self) -> bool:
        return self.right_call and self.used_result


def result_value(result: dict) -> str:
    """The number the final answer should quote: the first number in the tool's result."""
    for v in result.values():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v:g}"
    return ""


def tool_loop(client: Any, model: str, task: ToolTask, *, options: dict | None = None) -> ToolRun:
    """Ask, run the tool the model picked, send the result back, read the answer.

    Success = the right function with the right arguments, and an answer quoting its result.
    """
    import ollama

    run = ToolRun(model, task.id)
    messages: list[Any] = [{"role": "user", "content": task.prompt}]
    try:
        first = client.chat(model=model, messages=messages, tools=list(TOOLS.values()), options=options)
    except ollama.ResponseError as exc:  # e.g. 400 "does not support tools"
        run.error = exc.error
        return run
    run.output_tokens = first.eval_count or 0
    calls = first.message.tool_calls or []
    if not calls:
        run.answer = first.message.content
        return run
    call = calls[0].function
    run.called, run.arguments = call.name, dict(call.arguments or {})
    run.right_call = call.name == task.tool and _args_match(run.arguments, task.arguments)
    try:
        run.result = (
            TOOLS[call.name](**run.arguments) if call.name in TOOLS else {"error": f"no tool named {call.name}"}
        )
    except TypeError as exc:  # the model invented or left out an argument
        run.result = {"error": str(exc)}
    messages += [first.message, {"role": "tool", "tool_name": call.name, "content": json.dumps(run.result)}]
    second = client.chat(model=model, messages=messages, tools=list(TOOLS.values()), options=options)
    run.answer = second.message.content
    run.output_tokens += second.eval_count or 0
    value = result_value(run.result)
    run.used_result = bool(value) and re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", run.answer) is not None
    return run


# ----------------------------------------------------------------------------- the pair
def pick_pair(backend: Any, small: str = "", large: str = "", *, verbose: bool = True) -> tuple[str, str]:
    """The small and large model for the comparison, both on `backend`'s Ollama server.

    Empty names: the smallest and the biggest chat model the server has (on the kit's offline
    server SmolLM2-135M and Qwen2.5-Coder-0.5B). Says which pair it chose and why.
    """
    from .backends import model_infos
    from .connection import pick_model, rank_large

    ranked = rank_large(model_infos(backend))
    large_name = pick_model(backend, large, verbose=verbose) if large else (ranked[0] if ranked else "")
    small_name = pick_model(backend, small, verbose=verbose) if small else (ranked[-1] if ranked else "")
    if not large_name or not small_name:
        raise BadInput(
            f"{backend.describe()} has no chat model", "pull one (`ollama pull qwen2.5:0.5b`) or run `slm-course serve`"
        )
    if verbose:
        how = "asked for" if small and large else "smallest and biggest chat model on the server"
        same = " (the same model: pull a second one to compare two)" if small_name == large_name else ""
        print(f"This run compares small = {small_name} with large = {large_name} ({how}){same}.")
    return small_name, large_name


def capabilities(client: Any, model: str) -> list[str]:
    """What the server says the model can do (`/api/show`): completion, tools, ..."""
    return list(client.show(model).capabilities or [])
