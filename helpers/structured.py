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
import math
import re
import warnings
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
    cut_off: bool = False  # the reply hit the token budget: left out of the scores, listed instead


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
                r.done_reason == "length",
            )
        )
    return out


def run_all(
    client: Any,
    models: Sequence[str],
    tasks: Sequence[ExtractTask],
    modes: Sequence[str] = MODES,
    *,
    options: dict | None = None,
    progress: Any = None,
) -> list[Record]:
    """`run_extraction` for every model in every mode: the models side by side (on a machine with a
    core per model, or a server that runs two models at once, that halves the wait), each mode's
    tasks a few at a time. Records come back in the order model, mode, task."""
    from concurrent.futures import ThreadPoolExecutor

    def one(model: str) -> list[Record]:
        return [
            r for mode in modes for r in run_extraction(client, model, tasks, mode, options=options, progress=progress)
        ]

    with ThreadPoolExecutor(max_workers=max(1, len(models))) as pool:
        return [r for records in pool.map(one, models) for r in records]


def cut_off_lines(records: Sequence[Record]) -> list[str]:
    """One line per reply that hit the token budget: model, mode, task, the reply's end."""
    return [
        f"{r.model:>20} | {r.mode:13} | {r.task:9} | cut off after {r.eval_count} tokens: ...{r.reply[-50:]!r}"
        for r in records
        if r.cut_off
    ]


def summary(records: Sequence[Record]):
    """Per model and mode: valid-JSON rate, schema-valid rate and field accuracy over the replies that
    were not cut off (`n` of them; `cut_off` counts the others, never scored as failures), and the
    median tokens/s over all replies. A rate is NaN when every reply of its row was cut off."""
    import pandas as pd

    rows = []
    for (model, mode), d in pd.DataFrame([asdict(r) for r in records]).groupby(["model", "mode"], sort=False):
        scored = d[~d["cut_off"]]
        rows.append(
            {
                "model": model,
                "mode": mode,
                "n": len(scored),
                "cut_off": int(d["cut_off"].sum()),
                **{col: scored[col].mean() if len(scored) else math.nan for col in SCORED},
                "tokens_per_s": d["tokens_per_s"].median(),
            }
        )
    return pd.DataFrame(rows).set_index(["model", "mode"]).round(3)


#: the columns of `summary` that score a reply (cut-off replies left out)
SCORED = ("valid_json", "schema_valid", "field_accuracy")


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
    cut_off: bool = False  # a reply hit the token budget: left out of the success rate, listed instead
    called_again: bool = False  # given the result, the model asked for a tool again instead of answering

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
    run.cut_off = first.done_reason == "length"
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
    run.cut_off = run.cut_off or second.done_reason == "length"
    run.called_again = bool(second.message.tool_calls)
    value = result_value(run.result)
    run.used_result = bool(value) and re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", run.answer) is not None
    return run


def run_tools(
    client: Any, models: Sequence[str], tasks: Sequence[ToolTask], *, options: dict | None = None
) -> list[ToolRun]:
    """`tool_loop` for every model and task: the models side by side, each model's tasks one after the
    other (a tool prompt is long: several at once on one model could outlast the client's timeout on a
    busy CPU). Runs come back in the order model, task."""
    from concurrent.futures import ThreadPoolExecutor

    def one(model: str) -> list[ToolRun]:
        return [tool_loop(client, model, task, options=options) for task in tasks]

    with ThreadPoolExecutor(max_workers=max(1, len(models))) as pool:
        return [run for runs in pool.map(one, models) for run in runs]


def simple_tasks_verdict(
    small: str, large: str, valid_small: float, fields_small: float, fields_large: float, n: int, margin: float = 0.10
):
    """The article's "Simple, focused tasks", judged on extraction into a schema with the grammar: the
    small model's replies all schema-valid and its fields within `margin` of the large model's. The
    verdict is about this pair: falling short refutes the claim only when the small model is one of
    the article's SLMs (Phi-3 Mini, Gemma 2B, ...); otherwise it is "not supported on this pair".

    >>> simple_tasks_verdict("qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b", 1.0, 0.9, 0.95, 4).ok
    True
    >>> simple_tasks_verdict("qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b", 1.0, 0.85, 0.85, 4).why.split(";")[0]
    "the small model's fields are level with the large one's (margin 10%)"
    >>> f = simple_tasks_verdict("smollm2:135m", "qwen2.5-coder:0.5b", 1.0, 0.5, 0.9, 4)
    >>> f.ok is None and f.why.startswith("not supported on this pair")
    True
    >>> simple_tasks_verdict("phi3:mini", "gpt-4o", 0.75, 0.5, 0.9, 4).ok
    False
    """
    from .verdicts import ARTICLE_SMALL_MODELS, NOT_SUPPORTED, Finding, _article_model

    measured = (
        f"{n} extractions with format=schema: small {small} {valid_small:.0%} schema-valid, fields "
        f"{fields_small:.0%} right; large {large} fields {fields_large:.0%} right"
    )
    if small == large:
        return Finding(measured, None, "one model only: nothing to compare it with")
    if n <= 0 or any(math.isnan(v) for v in (valid_small, fields_small, fields_large)):
        return Finding(measured, None, "no reply of one of the models was scored (all cut off)")
    gap = fields_large - fields_small
    side = "level with" if abs(gap) < 0.005 else f"{abs(gap):.0%} " + ("behind" if gap > 0 else "ahead of")
    how = f"the small model's fields are {side} the large one's (margin {margin:.0%})"
    article = _article_model(small, ARTICLE_SMALL_MODELS)
    if valid_small == 1.0 and gap <= margin:
        return Finding(measured, True, how + ("" if article else f"; on this pair ({small}), not the article's SLMs"))
    if article:
        return Finding(measured, False, how)
    short = how if valid_small == 1.0 else f"only {valid_small:.0%} of its replies are schema-valid; " + how
    return Finding(measured, None, f"{NOT_SUPPORTED}: {short}; {small} is not one of the article's SLMs")


# ----------------------------------------------------------------------------- the pair
def pick_pair(backend: Any, small: str = "", large: str = "", *, verbose: bool = True) -> tuple[str, str]:
    """The small and large model for the comparison, both on `backend`'s Ollama server.

    `helpers.quality.choose_pair` decides, as in lessons 05-07: asked-for names win, else the offline
    pair chosen by measurement (docs/offline-pair.md: Qwen2.5-Coder 0.5B and 1.5B, or SmolLM2 and the
    0.5B where the 1.5B is not installed), else the best course model and the biggest local one.
    Structured outputs and tools are asked through Ollama's API, so an API large tier (a key is set)
    is replaced by the biggest chat model on this server. Says which pair it chose and why.
    """
    from .backends import model_infos
    from .connection import rank_large
    from .quality import OFFLINE_PAIRS, choose_pair

    with warnings.catch_warnings():  # "no OPENAI_API_KEY ...": this lesson's large tier is local anyway
        warnings.simplefilter("ignore", UserWarning)
        small_name, tier = choose_pair(backend, small, large, probe=False, verbose=False)
    large_name, why = tier.model, "asked for" if small and large else "the best course model and the biggest local one"
    if (small_name, large_name) in OFFLINE_PAIRS and not (small and large):
        why = "the offline pair, chosen by measurement: docs/offline-pair.md"
    if tier.backend is not backend or not backend.has_model(large_name):
        ranked = rank_large(model_infos(backend))
        if not ranked:
            raise BadInput(
                f"{backend.describe()} has no chat model",
                "pull one (`ollama pull qwen2.5:0.5b`) or run `slm-course serve`",
            )
        large_name = ranked[0]
        why = f"the large tier {tier.model} is not on this Ollama server, so the biggest chat model it has"
    if verbose:
        same = " (the same model: pull a second one to compare two)" if small_name == large_name else ""
        print(f"This run compares small = {small_name} with large = {large_name} ({why}){same}.")
    return small_name, large_name


def capabilities(client: Any, model: str) -> list[str]:
    """What the server says the model can do (`/api/show`): completion, tools, ..."""
    return list(client.show(model).capabilities or [])
