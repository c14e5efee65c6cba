"""Speed of models on this machine, measured the same way for every backend (lesson 03, `slm-course bench`).

Each metric is defined once, here:

| column        | meaning                                                                        | clock  |
|---------------|--------------------------------------------------------------------------------|--------|
| `ttft_s`      | time to first token: request sent -> first piece of text arrives               | client |
|               | (without streaming the text arrives all at once, so it equals `e2e_s`)         |        |
| `tpot_s`      | time per output token after the first: (e2e - ttft) / (output tokens - 1)      | client |
| `decode_tps`  | output tokens / decode time, from the engine's own counters (Ollama's          | engine |
|               | eval_count / eval_duration) - from the client's clock only when the backend    | (wall) |
|               | reports none (OpenAI-compatible APIs); `decode_source` says which              |        |
| `prompt_tps`  | prompt tokens / prompt-reading time (engine counters only, else empty)         | engine |
| `e2e_s`       | end-to-end latency: request sent -> answer complete                            | client |
| `load_s`      | time the server spent loading the model: large on a cold start, ~0 when warm   | engine |

Warm runs follow an untimed warm-up call; the cold run is measured apart, right after the
model was unloaded. Each call starts with a fresh system line, so the server cannot reuse the
previous call's prompt from its cache (that would make prompt reading look far faster than it is);
only the chat template's first few tokens can still match.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .backends import UNLOAD_TIMEOUT_S, Backend, EmbeddedBackend, model_infos
from .concurrency import map_concurrent, values
from .errors import BadInput, CourseError, ModelNotFound, pull_hint
from .options import Options
from .paths import course_root
from .registry import PREFERENCE, course_order, matches
from .results import percentile
from .validate import check_int

MAX_RUNS = 1000
MAX_TOKENS_LIMIT = 8192


# --------------------------------------------------------------------------- data shapes
@dataclass(frozen=True)
class BenchPrompt:
    """One prompt of a benchmark set, with a short id for the tables."""

    id: str
    text: str


#: Prompts that ask for answers of at least a paragraph, so decoding runs for the whole token budget.
BENCH_PROMPTS: tuple[BenchPrompt, ...] = (
    BenchPrompt("explain", "Explain how a refrigerator keeps food cold."),
    BenchPrompt("story", "Write a short story about a robot who learns to paint."),
    BenchPrompt(
        "list", "List ten practical uses of a small language model, one per line, with a short reason for each."
    ),
    BenchPrompt("email", "Write a polite email asking a colleague to review a report by Friday."),
)


@dataclass(frozen=True)
class BenchRow:
    """One measured call: a tidy row (one call per row, one column per metric; see the module doc)."""

    model: str
    backend: str
    phase: str  # "cold" (just loaded) or "warm"
    stream: bool
    run: int  # repetition number, 0-based (the cold call is run 0)
    prompt_id: str
    ttft_s: float | None
    tpot_s: float | None
    decode_tps: float | None
    decode_source: str  # "engine" counters or "wall" clock
    prompt_tps: float | None
    e2e_s: float
    load_s: float
    prompt_tokens: int
    output_tokens: int
    done_reason: str | None


COLUMNS = [f.name for f in fields(BenchRow)]

#: (column, label, unit, factor from the column's unit) for summaries and plots.
METRICS: tuple[tuple[str, str, str, float], ...] = (
    ("ttft_s", "time to first token", "ms", 1000.0),
    ("tpot_s", "time per output token", "ms", 1000.0),
    ("decode_tps", "decode speed", "tokens/s", 1.0),
    ("prompt_tps", "prompt reading", "tokens/s", 1.0),
    ("e2e_s", "end-to-end latency", "ms", 1000.0),
)


# --------------------------------------------------------------------------- checks
def _check_models(models: Any) -> list[str]:
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, (list, tuple)) or not models or not all(isinstance(m, str) and m.strip() for m in models):
        raise BadInput(
            f"models must be a non-empty list of model names, got {models!r}",
            "pass e.g. ['smollm2:135m'] (see backend.list_models())",
        )
    return [m.strip() for m in models]


def _check_prompts(prompts: Any) -> list[BenchPrompt]:
    if prompts is None:
        return list(BENCH_PROMPTS)
    if isinstance(prompts, (str, BenchPrompt)):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts if isinstance(prompts, (list, tuple)) else [None]):
        if isinstance(p, str) and p.strip():
            out.append(BenchPrompt(f"p{i}", p))
        elif isinstance(p, BenchPrompt) and p.text.strip():
            out.append(p)
        else:
            raise BadInput(
                f"prompt {i} must be non-empty text or a BenchPrompt, got {p!r}",
                "pass a list of strings, e.g. ['Explain DNS.', 'Write a haiku.']",
            )
    if not out:
        raise BadInput("the prompt set is empty", "pass at least one prompt (or None for the built-in set)")
    return out


def load_prompts(path: str | Path) -> list[BenchPrompt]:
    """Read a prompt set: JSON lines with a "prompt" (and optional "id") field, or one prompt per line."""
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise BadInput(
            f"cannot read prompts from {path}: {exc.strerror or exc}",
            "pass a text file with one prompt per line, or JSON lines with a 'prompt' field",
        ) from exc
    prompts = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise BadInput(
                    f"{path} line {i + 1} is not valid JSON: {exc}",
                    'each line looks like {"id": "q1", "prompt": "..."}',
                ) from exc
            if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
                raise BadInput(f"{path} line {i + 1} has no 'prompt' text", 'add "prompt": "..."')
            prompts.append(BenchPrompt(str(item.get("id") or f"p{i}"), item["prompt"]))
        else:
            prompts.append(BenchPrompt(f"p{i}", line.strip()))
    return _check_prompts(prompts)


# --------------------------------------------------------------------------- one call
def fresh_messages(prompt: str, cache_bust: bool = True) -> list[dict[str, str]]:
    """The chat messages of one call; a random first line defeats the server's prompt cache, so its
    whole prompt is read (a cached start would flatter prompt reading and the first token)."""
    messages = [{"role": "user", "content": prompt}]
    if cache_bust:
        tag = uuid.uuid4().hex[:8]
        messages.insert(0, {"role": "system", "content": f"[{tag}] You are a helpful assistant."})
    return messages


def _call_once(
    backend: Backend, model: str, messages: list[dict[str, str]], options: Options, stream: bool
) -> tuple[float | None, float, Any]:
    """(ttft, e2e, final Result) of one chat call, timed on the client."""
    t0 = time.perf_counter()
    if not stream:  # a real `"stream": false` request: the text arrives all at once
        whole = backend.complete(model, messages, options=options)
        e2e = time.perf_counter() - t0
        return e2e, e2e, whole
    ttft = None
    final = None
    for piece in backend.stream_chat(model, messages, options=options):
        if piece.text and ttft is None:
            ttft = time.perf_counter() - t0
        if piece.done:
            final = piece
    e2e = time.perf_counter() - t0
    if final is None:
        raise CourseError(
            f"the answer from {model} ended without its final metrics",
            "try again; if it repeats, look at the server's log",
        )
    return ttft, e2e, final


def measure_call(
    backend: Backend,
    model: str,
    prompt: str | BenchPrompt,
    *,
    max_tokens: int = 64,
    stream: bool = True,
    phase: str = "warm",
    run: int = 0,
    options: Options | dict | None = None,
    cache_bust: bool = True,
) -> BenchRow:
    """Send one chat request and measure it (temperature 0, seed 42): one `BenchRow`."""
    [p] = _check_prompts([prompt])
    max_tokens = check_int("max_tokens", max_tokens, 1, MAX_TOKENS_LIMIT, "e.g. max_tokens=64")
    opts = Options.merge({"temperature": 0, "seed": 42, "num_predict": max_tokens}, options)
    ttft, e2e, final = _call_once(backend, model, fresh_messages(p.text, cache_bust), opts, stream)
    m = final.metrics
    n = m.output_tokens
    tpot = (e2e - ttft) / (n - 1) if stream and ttft is not None and n > 1 else None
    return BenchRow(
        model=model,
        backend=backend.name,
        phase=phase,
        stream=bool(stream),
        run=run,
        prompt_id=p.id,
        ttft_s=ttft,
        tpot_s=tpot,
        decode_tps=m.decode_tps,
        decode_source=m.decode_source,
        # only an engine's counters say how long reading the prompt took (a client sees network too)
        prompt_tps=m.prompt_tps if m.decode_source == "engine" else None,
        e2e_s=e2e,
        load_s=m.load_s,
        prompt_tokens=m.prompt_tokens,
        output_tokens=n,
        done_reason=final.done_reason,
    )


# --------------------------------------------------------------------------- cold starts
def unload(backend: Backend, model: str, *, timeout_s: float = UNLOAD_TIMEOUT_S) -> bool:
    """Evict `model` from memory so that the next call is a cold start; True once it is gone
    (`Backend.unload`: Ollama and `slm-course serve` by `keep_alive: 0`, the embedded engine at
    once; a remote API cannot: False)."""
    return backend.unload(model, timeout_s=timeout_s)


# --------------------------------------------------------------------------- the benchmark
def choose_models(
    backend: Backend, wanted: Sequence[str] | None = None, *, limit: int = 4, verbose: bool = True
) -> list[str]:
    """The models to measure, under the backend's own names: those asked for that it has, else its
    models in course order.

    Registry aliases count (`mistral:latest` is measured for `mistral:7b`); embedding-only models
    (all-minilm, nomic-embed-text, ...) cannot chat and are never measured. Missing ones are named
    with the command that pulls them. At most `limit` are chosen when none is asked for (the
    article's models first, as everywhere in the course).
    """
    infos = model_infos(backend)
    wanted = [w for w in (wanted or []) if w]
    chosen: list[str] = []
    if wanted:
        missing, embedders = [], []
        for w, have, embedding in matches(wanted, infos):
            if have is None:
                missing.append(w)
            elif embedding:
                embedders.append(have)
            elif have not in chosen:
                chosen.append(have)
                if have != w and verbose:
                    print(f"{w} is here as {have}.")
        if missing and verbose:
            print(f"Not available here, skipped: {', '.join(missing)} ({pull_hint(missing[0])}).")
        if embedders and verbose:
            print(f"Embedding models cannot chat, skipped: {', '.join(embedders)}.")
    else:
        chosen = course_order(infos)[:limit]
    if not chosen:
        if wanted:
            raise ModelNotFound(
                f"none of the models asked for is available at {backend.describe()}", pull_hint(wanted[0])
            )
        raise ModelNotFound(
            f"{backend.describe()} has no chat model to measure"
            + (f" (only embedding models: {', '.join(i.name for i in infos)})" if infos else ""),
            pull_hint(PREFERENCE[0]),
        )
    if verbose:
        print("Measuring:", ", ".join(chosen))
    return chosen


def run_bench(
    backend: Backend,
    models: str | Sequence[str],
    prompts: Sequence[str | BenchPrompt] | None = None,
    *,
    n_runs: int = 5,
    max_tokens: int = 64,
    warmup: int = 1,
    cold: bool = True,
    stream: bool = True,
    options: Options | dict | None = None,
    progress: bool = True,
    concurrency: int = 1,
) -> pd.DataFrame:
    """Measure each model: an optional cold call, `warmup` untimed calls, then `n_runs` x the prompt set.

    `concurrency` > 1 sends the measured calls that many at a time (helpers.concurrency), as a class
    would: each row is then one call's view under that load (its TTFT includes waiting for a slot),
    and `df.attrs["wall_s"]` with the rows' tokens gives the aggregate throughput.

    Returns tidy rows (one per measured call, columns as `BenchRow`); `summarise` turns them into
    median / p90 / min-max. A cold call needs a backend that can unload (Ollama, the kit's server,
    the embedded engine); for a remote API it is skipped.
    """
    from tqdm.auto import tqdm

    models = _check_models(models)
    plist = _check_prompts(prompts)
    n_runs = check_int("n_runs", n_runs, 1, MAX_RUNS, "e.g. n_runs=5")
    warmup = check_int("warmup", warmup, 0, 100, "one warm-up call is enough: warmup=1")
    max_tokens = check_int("max_tokens", max_tokens, 1, MAX_TOKENS_LIMIT, "e.g. max_tokens=64")
    for model in models:
        if not backend.has_model(model):
            raise ModelNotFound(f"model '{model}' is not available at {backend.describe()}", pull_hint(model))
    rows: list[BenchRow] = []
    wall = 0.0  # of the measured calls (not the cold and warm-up ones)
    concurrency = check_int("concurrency", concurrency, 1, 64, "e.g. concurrency=4 (the server's slots)")
    per_model = n_runs * len(plist) + warmup + (1 if cold else 0)
    measure = partial(measure_call, max_tokens=max_tokens, stream=stream, options=options)
    with tqdm(total=per_model * len(models), desc="bench", unit="call", disable=not progress) as bar:
        for model in models:
            bar.set_description(f"bench {model}")
            if cold:
                if unload(backend, model):
                    rows.append(measure(backend, model, plist[0], phase="cold"))
                elif progress:
                    bar.write(f"{model}: cannot be unloaded here, so no cold start is measured.")
                bar.update(1)
            for i in range(warmup):
                measure(backend, model, plist[i % len(plist)])
                bar.update(1)
            jobs = [(run, p) for run in range(n_runs) for p in plist]

            def one(job: tuple[int, BenchPrompt], model: str = model) -> BenchRow:
                row = measure(backend, model, job[1], run=job[0])
                bar.update(1)
                return row

            t0 = time.perf_counter()
            rows += values(map_concurrent(one, jobs, concurrency=concurrency, progress=False))
            wall += time.perf_counter() - t0
    df = pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)
    df.attrs.update(
        backend=backend.describe(),
        n_runs=n_runs,
        max_tokens=max_tokens,
        prompts=[p.id for p in plist],
        warmup=warmup,
        concurrency=concurrency,
        wall_s=wall,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return df


# --------------------------------------------------------------------------- summaries
def _check_rows(df: Any) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame) or not set(COLUMNS) <= set(df.columns):
        raise BadInput(
            "expected the rows returned by run_bench (or read back with read_csv)",
            "pass the DataFrame from run_bench(...) or read_csv(path)",
        )
    return df


def summarise(df: pd.DataFrame, *, phase: str = "warm", stream: bool | None = True) -> pd.DataFrame:
    """Median, p90 (90th percentile), min and max of every metric, per model, in readable units.

    Uses the `phase` rows ("warm" by default: the cold call is shown apart by `cold_vs_warm`)
    and, unless stream=None, only streamed or only non-streamed calls.
    """
    df = _check_rows(df)
    sel = df[df["phase"] == phase]
    if stream is not None:
        sel = sel[sel["stream"] == stream]
    out = []
    for model, group in sel.groupby("model", sort=False):
        for col, label, unit, factor in METRICS:
            values = [v * factor for v in group[col] if v is not None and not pd.isna(v)]
            p90 = percentile(values, 90)
            if p90 is None:  # no values
                continue
            out.append(
                {
                    "model": model,
                    "metric": label,
                    "unit": unit,
                    "median": round(float(np.median(values)), 1),
                    "p90": round(p90, 1),
                    "min": round(min(values), 1),
                    "max": round(max(values), 1),
                    "n": len(values),
                }
            )
    if not out:
        raise BadInput(f"no {phase} rows to summarise", "run run_bench(...) first (with n_runs >= 1)")
    return pd.DataFrame(out).set_index(["model", "metric"])


def cold_vs_warm(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: the cold call's load time, TTFT and latency next to the warm medians (ms)."""
    df = _check_rows(df)
    out = []
    for model, group in df[df["stream"]].groupby("model", sort=False):
        cold, warm = group[group["phase"] == "cold"], group[group["phase"] == "warm"]
        if cold.empty or warm.empty:
            continue
        c = cold.iloc[0]
        out.append(
            {
                "model": model,
                "cold load (ms)": round(c["load_s"] * 1000, 1),
                "cold TTFT (ms)": round(c["ttft_s"] * 1000, 1),
                "warm TTFT, median (ms)": round(float(warm["ttft_s"].median()) * 1000, 1),
                "cold end-to-end (ms)": round(c["e2e_s"] * 1000, 1),
                "warm end-to-end, median (ms)": round(float(warm["e2e_s"].median()) * 1000, 1),
            }
        )
    if not out:
        raise BadInput(
            "no model has both a cold and a warm row",
            "run run_bench(..., cold=True) against Ollama, `slm-course serve` or the embedded engine",
        )
    return pd.DataFrame(out).set_index("model")


def latency_table(streamed: pd.DataFrame, not_streamed: pd.DataFrame) -> pd.DataFrame:
    """Perceived latency: when the first words appear and when the answer is complete (median ms)."""
    out = []
    for label, df in (("streaming", _check_rows(streamed)), ("not streaming", _check_rows(not_streamed))):
        for model, group in df[df["phase"] == "warm"].groupby("model", sort=False):
            out.append(
                {
                    "model": model,
                    "mode": label,
                    "first words visible (ms)": round(float(group["ttft_s"].median()) * 1000, 1),
                    "answer complete (ms)": round(float(group["e2e_s"].median()) * 1000, 1),
                    "calls": len(group),
                }
            )
    return pd.DataFrame(out).set_index(["model", "mode"])


@dataclass(frozen=True)
class ClaimCheck:
    """A claimed latency range against what was measured (medians)."""

    model: str
    metric: str
    measured_s: float
    low_s: float
    high_s: float
    n: int

    @property
    def verdict(self) -> str:
        """'within', 'faster' (below the range) or 'slower' (above it)."""
        if self.measured_s < self.low_s:
            return "faster"
        return "within" if self.measured_s <= self.high_s else "slower"

    def __str__(self) -> str:
        where = {"within": "inside", "faster": "below (faster than)", "slower": "above (slower than)"}
        return (
            f"{self.model}: median {self.metric} {self.measured_s * 1000:.0f} ms over {self.n} calls - "
            f"{where[self.verdict]} the claimed {self.low_s * 1000:.0f}-{self.high_s * 1000:.0f} ms"
        )


def check_latency_claim(
    df: pd.DataFrame, model: str, low_s: float, high_s: float, *, metric: str = "ttft_s"
) -> ClaimCheck:
    """Compare the warm median of `metric` ("ttft_s" or "e2e_s") for `model` with a claimed range."""
    df = _check_rows(df)
    if metric not in ("ttft_s", "e2e_s", "tpot_s"):
        raise BadInput(
            f"metric must be 'ttft_s', 'e2e_s' or 'tpot_s', got {metric!r}",
            "a latency claim is about the first token (ttft_s) or the whole answer (e2e_s)",
        )
    if not (isinstance(low_s, (int, float)) and isinstance(high_s, (int, float)) and 0 <= low_s <= high_s):
        raise BadInput(
            f"the claimed range must be 0 <= low <= high seconds, got {low_s!r}-{high_s!r}",
            "e.g. low_s=0.1, high_s=0.5 for '100-500 ms'",
        )
    values = df[(df["model"] == model) & (df["phase"] == "warm")][metric].dropna()
    if values.empty:
        raise BadInput(
            f"no warm measurements of {model} in these rows",
            f"measured models: {', '.join(df['model'].unique()) or 'none'}",
        )
    names = {"ttft_s": "time to first token", "e2e_s": "end-to-end latency", "tpot_s": "time per token"}
    return ClaimCheck(model, names[metric], float(values.median()), float(low_s), float(high_s), len(values))


# --------------------------------------------------------------------------- the hardware ceiling
def model_size_bytes(backend: Backend, model: str) -> int | None:
    """Bytes of the model's weights on disk (what each decoded token must read), None if unknown."""
    return backend.model_size(model)


def ceiling_table(df: pd.DataFrame, bandwidth_gbs: float, sizes: dict[str, int | None]) -> pd.DataFrame:
    """Measured decode speed against the memory-bandwidth ceiling (bandwidth / model bytes), per model."""
    from .hardware import decode_ceiling_tps

    df = _check_rows(df)
    out = []
    for model, group in df[(df["phase"] == "warm") & (df["decode_source"] == "engine")].groupby("model", sort=False):
        size = sizes.get(model)
        tps = group["decode_tps"].dropna()
        if not size or tps.empty:
            continue
        ceiling = decode_ceiling_tps(size, bandwidth_gbs)
        measured = float(tps.median())
        out.append(
            {
                "model": model,
                "weights (MB)": round(size / 1e6, 1),
                "ceiling (tokens/s)": round(ceiling, 1),
                "measured median (tokens/s)": round(measured, 1),
                "share of ceiling": round(measured / ceiling, 3),
            }
        )
    if not out:
        raise BadInput(
            "no model with engine-measured decode speed and a known size",
            "measure a local model (Ollama or the kit's server) and pass its size in bytes",
        )
    return pd.DataFrame(out).set_index("model")


# --------------------------------------------------------------------------- plots and files
def plot_bench(df: pd.DataFrame, *, phase: str = "warm"):
    """One panel per metric (TTFT, decode speed, end-to-end), every call as a dot, median as a bar."""
    import matplotlib.pyplot as plt

    df = _check_rows(df)
    sel = df[(df["phase"] == phase) & (df["stream"])]
    models = list(dict.fromkeys(sel["model"]))
    panels = [m for m in METRICS if m[0] in ("ttft_s", "decode_tps", "e2e_s")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (col, label, unit, factor) in zip(axes, panels):
        for i, model in enumerate(models):
            values = sel[sel["model"] == model][col].dropna() * factor
            if values.empty:
                continue
            ax.bar(i, values.median(), color="C0", alpha=0.35, width=0.6)
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            ax.plot(i + np.asarray(jitter), values, "o", color="C0", ms=3)
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{label} ({unit})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{phase} calls: each dot is one call, the bar is the median", fontsize=10)
    fig.tight_layout()
    return fig


def plot_ceiling(table: pd.DataFrame, ax=None):
    """Bars of measured decode speed next to the bandwidth ceiling, per model."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["ceiling (tokens/s)"], width=0.4, label="ceiling: bandwidth / weights", color="grey")
    ax.bar(x + 0.2, table["measured median (tokens/s)"], width=0.4, label="measured", color="C0")
    for i, share in enumerate(table["share of ceiling"]):
        ax.annotate(
            f"{share:.0%}",
            (x[i] + 0.2, table["measured median (tokens/s)"].iloc[i]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(x, table.index, fontsize=8)
    ax.set_ylabel("tokens/s")
    ax.set_title("Decode speed against the memory-bandwidth ceiling")
    ax.legend(fontsize=8)
    return ax


def runs_dir() -> Path:
    """Where measurements are saved: `runs/` in the course folder (git ignores it), else in the cwd."""
    root = course_root()
    return (root if (root / "pyproject.toml").is_file() else Path.cwd()) / "runs"


def save_csv(df: pd.DataFrame, path: str | Path | None = None) -> Path:
    """Write the tidy rows to CSV (default: runs/bench-<time>.csv) and return the path."""
    df = _check_rows(df)
    path = Path(path) if path else runs_dir() / f"bench-{datetime.now():%Y%m%d-%H%M%S}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read rows saved by `save_csv` back (empty cells become None)."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"cannot read benchmark rows from {path}: {exc}",
            "pass a CSV written by save_csv or `slm-course bench --csv`",
        ) from exc
    return _check_rows(df.astype(object).where(df.notna(), None))


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `slm-course bench`."""
    parser.add_argument(
        "--model",
        "-m",
        action="append",
        default=None,
        help="model to measure (repeat for several; default: up to 4 the server has)",
    )
    parser.add_argument("--runs", "-n", type=int, default=5, help="repetitions of the prompt set (default 5)")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per call (default 64)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per model (default 1)")
    parser.add_argument(
        "--prompts", default=None, help="file with one prompt per line, or JSON lines with a 'prompt' field"
    )
    parser.add_argument("--host", default=None, help="Ollama address (default: OLLAMA_HOST)")
    parser.add_argument("--embedded", action="store_true", help="use the in-process engine, not a server")
    parser.add_argument("--no-cold", action="store_true", help="do not unload the model to measure a cold start")
    parser.add_argument("--no-stream", action="store_true", help="send non-streaming requests")
    parser.add_argument(
        "--ceiling", action="store_true", help="also measure memory bandwidth and show each model's decode ceiling"
    )
    parser.add_argument("--csv", default=None, help="where to save the rows (default: runs/bench-<time>.csv)")
    parser.add_argument("--plot", default=None, help="save a plot of the calls to this PNG file")
    parser.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=1,
        help="measured calls sent at once (default 1: one at a time); the aggregate tokens/s is printed too",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark from the command line; 0 on success, 1 on a problem (printed with its fix)."""
    from .connection import connect

    try:
        backend = EmbeddedBackend() if args.embedded else connect(args.host)
        models = choose_models(backend, args.model)
        prompts = load_prompts(args.prompts) if args.prompts else None
        df = run_bench(
            backend,
            models,
            prompts,
            n_runs=args.runs,
            max_tokens=args.max_tokens,
            warmup=args.warmup,
            cold=not args.no_cold,
            stream=not args.no_stream,
            progress=not args.quiet,
            concurrency=args.concurrency,
        )
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            print(
                f"\n{backend.describe()}: {args.runs} runs x {len(df.attrs['prompts'])} prompts, "
                f"up to {args.max_tokens} output tokens, temperature 0\n"
            )
            print(summarise(df, stream=not args.no_stream).to_string())
            if args.concurrency > 1 and df.attrs["wall_s"] > 0:
                warm = df[df["phase"] != "cold"]
                print(
                    f"\n{args.concurrency} calls at a time: {warm['output_tokens'].sum() / df.attrs['wall_s']:.1f} "
                    f"output tokens/s for all of them together ({len(models)} model(s) one after another)"
                )
            if not args.no_cold and not args.no_stream and (df["phase"] == "cold").any():
                print("\nCold start (model just loaded) against warm calls:")
                print(cold_vs_warm(df).to_string())
            if args.ceiling:
                from .hardware import measure_memory_bandwidth

                bw = measure_memory_bandwidth()
                sizes = {m: model_size_bytes(backend, m) for m in models}
                print(f"\nMemory bandwidth: {bw}")
                print(ceiling_table(df, bw.gbs_median, sizes).to_string())
        path = save_csv(df, args.csv)
        print(f"\nRows saved to {path}")
        if args.plot:
            plot_bench(df).savefig(args.plot, dpi=100)
            print(f"Plot saved to {args.plot}")
        return 0
    except CourseError as exc:
        print(f"[FAIL] {exc}", file=sys.stderr)  # CourseError's text: the message, then "-> hint"
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python -m helpers.bench ...`, the same as `slm-course bench ...`."""
    parser = argparse.ArgumentParser(prog="slm-course bench", description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
