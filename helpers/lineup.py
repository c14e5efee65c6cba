"""Lesson 02's lineup: which models there are, which fit, and how each answers the same prompts.

The registry (`helpers.registry`) says what each model *should* be; `enrich_from_show` adds what
the server says about the models it has (size on disk, parameters, context, quantisation);
`pull_what_fits` pulls what this machine can hold; `run_lineup` asks every model the source
article's test prompts and records answers and speed from each `Result`'s metrics.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from .backends import Backend, model_infos
from .errors import BadInput, CourseError, pull_hint
from .hardware import GB  # decimal gigabytes, as Ollama and the registry quote sizes
from .net import is_loopback_host as is_local_host  # "is the server this machine?" in revisit_claims
from .options import Options
from .registry import MODELS as CARDS
from .registry import (  # noqa: F401  (resolve: lesson 02's solution imports it from here)
    SEED_MODELS,
    card,
    fits,
    parameter_billions,
    ram_estimate_gb,
    resolve,
)
from .validate import check_number


@dataclass(frozen=True)
class LineupPrompt:
    """One test prompt: a short name, the text, and a regex a good answer should match."""

    name: str
    prompt: str
    expect: str | None = None  # case-insensitive regex; None = nothing simple to look for
    why: str = ""


#: The source article's test prompts ("Write a REST API endpoint", "Solve a calculus equation"),
#: made concrete, plus a summary and a factual question.
SEED_PROMPTS: tuple[LineupPrompt, ...] = (
    LineupPrompt(
        "rest_api",
        "Write a REST API endpoint in Python with Flask that returns the list of users as JSON.",
        r"@app\.(route|get)|jsonify|def \w+\(",
        "the article's coding example: does it write a route?",
    ),
    LineupPrompt(
        "calculus",
        "Solve this calculus problem: find the derivative of f(x) = 3x^2 + 2x - 5 and evaluate it at x = 2.",
        r"\b14\b",
        "the article's maths example: f'(x) = 6x + 2, so f'(2) = 14",
    ),
    LineupPrompt(
        "summary",
        "Summarise in one sentence: 'From next Monday the city library will "
        "stay open until 9 pm on weekdays instead of 6 pm, so that students and people "
        "who work during the day can visit in the evening. Weekend hours do not change.'",
        r"\b9\b|nine",
        "a routine task: keeps the key fact (9 pm)?",
    ),
    LineupPrompt(
        "fact",
        "What is the capital of Australia? Answer in one word.",
        r"canberra",
        "a factual question with one right answer (Canberra)",
    ),
)


def _check_names(models: Any, what: str = "models") -> list[str]:
    if isinstance(models, str) or not isinstance(models, (list, tuple)):
        raise BadInput(
            f"{what} must be a list of model names, not {type(models).__name__}",
            'pass e.g. ["phi3:mini", "smollm2:135m"]',
        )
    names = [m.strip() for m in models if isinstance(m, str) and m.strip()]
    if len(names) != len(models):
        raise BadInput(
            f"every entry of {what} must be a non-empty model name", 'pass e.g. ["phi3:mini", "smollm2:135m"]'
        )
    return list(dict.fromkeys(names))


def lineup_models(backend: Backend, models: Sequence[str] | None = None) -> list[str]:
    """The models to compare: `models` if given, else the article's four + course models the server has."""
    if models:
        return _check_names(models)
    available = backend.list_models()
    names = list(SEED_MODELS)
    for m in CARDS:
        have = resolve(m.name, available)
        if have and m.name not in names:
            names.append(m.name)
    return names


def _params_b(show: Any) -> float | None:
    """Parameters in billions from /api/show: general.parameter_count, else details.parameter_size."""
    info = getattr(show, "modelinfo", None) or {}
    count = info.get("general.parameter_count")
    if isinstance(count, (int, float)) and count > 0:
        return round(count / 1e9, 3)
    billions = parameter_billions(getattr(getattr(show, "details", None), "parameter_size", "") or "")
    return None if billions is None else round(billions, 3)


def _context(show: Any) -> int | None:
    """The trained context length from /api/show's model_info (`<architecture>.context_length`)."""
    info = getattr(show, "modelinfo", None) or {}
    arch = info.get("general.architecture")
    value = info.get(f"{arch}.context_length") if arch else None
    if value is None:
        value = next((v for k, v in info.items() if k.endswith(".context_length")), None)
    return int(value) if isinstance(value, (int, float)) or (value is not None and str(value).isdigit()) else None


def enrich_from_show(backend: Backend, names: Sequence[str]) -> pd.DataFrame:
    """One row per model: the registry card, overwritten by what the server reports when it has it.

    Columns: article, on server, params (B), size (GB), RAM est. (GB), context, quantization,
    licence, commercial use, strengths, source. "size" is the file on disk for a pulled model
    and the registry's download size otherwise.
    """
    names = _check_names(names, "names")
    infos = model_infos(backend)  # one /api/tags call: names and sizes on disk
    available = [i.name for i in infos]
    sizes = {i.name: i.size_bytes for i in infos}
    rows = []
    for name in names:
        c = card(name)
        have = resolve(name, available)
        row: dict[str, Any] = {
            "model": name,
            "article": "yes" if c and c.seed else "",
            "on server": have or "",
            "params (B)": c.params_b if c else None,
            "size (GB)": c.download_gb if c else None,
            "context": c.context if c else None,
            "quantization": c.quantization if c else "",
            "licence": c.license if c else "",
            "commercial use": c.commercial_use if c else "",
            "strengths": c.strengths if c else "",
            "source": "registry" if c else "unknown to the registry",
        }
        if have and "show" in backend.capabilities:
            show = backend.show(have)
            row["params (B)"] = _params_b(show) or row["params (B)"]
            row["context"] = _context(show) or row["context"]
            row["quantization"] = getattr(show.details, "quantization_level", "") or row["quantization"]
            licence = next((ln.strip() for ln in (show.license or "").splitlines() if ln.strip()), "")
            row["licence"] = row["licence"] or licence[:40]
            size = sizes.get(have)
            if size:
                row["size (GB)"] = round(size / GB, 3)
            row["source"] = "server (/api/tags, /api/show)" + (" + registry" if c else "")
        elif have and c and (c.bundled or c.offline):
            from .serving.weights import local_model_path

            path = local_model_path(c.name)
            if path is not None:
                row["size (GB)"] = round(path.stat().st_size / GB, 3)
                row["source"] = "bundled file + registry"
        row["RAM est. (GB)"] = ram_estimate_gb(row["size (GB)"]) if row["size (GB)"] else None
        rows.append(row)
    cols = [
        "model",
        "article",
        "on server",
        "params (B)",
        "size (GB)",
        "RAM est. (GB)",
        "context",
        "quantization",
        "licence",
        "commercial use",
        "strengths",
        "source",
    ]
    return pd.DataFrame(rows, columns=cols).set_index("model")


def pull_what_fits(
    backend: Backend, models: Sequence[str], ram_gb: float, disk_gb: float, pull: bool = True, progress: bool = True
) -> pd.DataFrame:
    """Pull the models that fit this machine, in order; skip the rest with the reason.

    RAM is checked per model (Ollama runs one at a time when memory is short); disk is a budget
    that each pulled model uses up. Actions: "have it", "pulled", "would pull" (pull=False),
    "skipped". A failed pull (e.g. the kit's offline server) is "skipped" with the server's reason.
    """
    names = _check_names(models)
    for value, what in ((ram_gb, "ram_gb"), (disk_gb, "disk_gb")):
        check_number(
            f"{what} (GB)",
            value,
            0,
            None,
            "use helpers.hardware.machine_summary()['ram_available_gb'] / ['disk_free_gb']",
            above=True,
        )
    available = backend.list_models()
    can_pull = "pull" in backend.capabilities
    disk_left = float(disk_gb)
    rows = []
    for name in names:
        c = card(name)
        have = resolve(name, available)
        row = {
            "model": name,
            "action": "skipped",
            "reason": "",
            "download (GB)": c.download_gb if c else None,
            "RAM est. (GB)": c.ram_gb if c else None,
            "command": f"ollama pull {name}",
        }
        if have:
            row.update(action="have it", reason=f"already available as {have}", command="")
        elif c is None:
            row["reason"] = "not in the course registry, so its size is unknown: pull it yourself if it fits"
        else:
            ok, why = fits(c, ram_gb, disk_left)
            if not ok:
                row["reason"] = why
            elif not pull:
                disk_left -= c.download_gb  # a plan: what it would pull must fit together
                row.update(action="would pull", reason=why + " (PULL is off)")
            elif not can_pull:
                row["reason"] = f"{backend.describe()} cannot pull models: install Ollama to get {name}"
            else:
                try:
                    backend.pull(name, progress=progress)
                except CourseError as err:
                    row["reason"] = err.message
                else:
                    disk_left -= c.download_gb
                    row.update(action="pulled", reason=why, command="")
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def _check_prompts(prompts: Any) -> list[LineupPrompt]:
    if isinstance(prompts, (str, LineupPrompt)) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise BadInput(
            "prompts must be a non-empty list of LineupPrompt (or of strings)",
            "pass SEED_PROMPTS, or e.g. ['Why is the sky blue?']",
        )
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str) and p.strip():
            out.append(LineupPrompt(f"prompt_{i + 1}", p))
        elif isinstance(p, LineupPrompt) and p.prompt.strip():
            out.append(p)
        else:
            raise BadInput(f"prompt {i} is empty or not text", "every prompt needs some text")
    return out


def run_lineup(
    backend: Backend,
    models: Sequence[str],
    prompts: Sequence[LineupPrompt | str],
    options: Options | dict | None = None,
    progress: bool = True,
    warmup: bool = True,
) -> pd.DataFrame:
    """Ask every model every prompt; one row per (model, prompt) with the answer and its speed.

    A model the server lacks gets rows with status "skipped" and the pull command; a failed call
    gets status "error" and the message. With `warmup`, one 1-token call per model first loads it,
    so latencies are warm; its time is reported as `cold_start_s`.
    """
    from tqdm.auto import tqdm

    names = _check_names(models)
    items = _check_prompts(prompts)
    available = backend.list_models()
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(names) * len(items), desc="lineup", disable=not progress)
    for name in names:
        have = resolve(name, available)
        if have is None:
            for p in items:
                rows.append(
                    {
                        "model": name,
                        "prompt": p.name,
                        "status": "skipped",
                        "note": f"not on this server: {pull_hint(name)}",
                    }
                )
            bar.update(len(items))
            continue
        cold = None
        if warmup:
            try:
                cold = backend.generate(have, "Hi", options={"temperature": 0, "num_predict": 1}).metrics.total_s
            except CourseError:
                cold = None  # the real calls below report the problem
        for p in items:
            bar.set_postfix_str(f"{have} / {p.name}")
            try:
                r = backend.generate(have, p.prompt, options=options)
            except CourseError as err:
                rows.append(
                    {"model": have, "prompt": p.name, "status": "error", "note": f"{err.message} -> {err.hint}"}
                )
            else:
                m = r.metrics
                rows.append(
                    {
                        "model": have,
                        "prompt": p.name,
                        "status": "ok",
                        "note": "",
                        "answer": r.text.strip(),
                        "done_reason": r.done_reason,
                        "expected found": bool(re.search(p.expect, r.text, re.I)) if p.expect else None,
                        "output_tokens": m.output_tokens,
                        "latency_s": m.total_s,
                        "ttft_s": m.ttft_s,
                        "tokens_per_s": m.decode_tps,
                        "load_s": m.load_s,
                        "cold_start_s": cold,
                    }
                )
            bar.update(1)
    bar.close()
    cols = [
        "model",
        "prompt",
        "status",
        "note",
        "answer",
        "done_reason",
        "expected found",
        "output_tokens",
        "latency_s",
        "ttft_s",
        "tokens_per_s",
        "load_s",
        "cold_start_s",
    ]
    return pd.DataFrame(rows, columns=cols)


def side_by_side(runs: pd.DataFrame, width: int | None = 400) -> pd.DataFrame:
    """Answers as a table: one row per prompt, one column per model that answered."""
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    text = ok["answer"].astype(str)
    if width:
        text = text.where(text.str.len() <= width, text.str[: width - 1] + "…")
    table = (
        ok.assign(answer=text)
        .drop_duplicates(["prompt", "model"])
        .pivot(index="prompt", columns="model", values="answer")
    )
    order = list(dict.fromkeys(ok["prompt"]))
    return table.reindex(order)[list(dict.fromkeys(ok["model"]))]


def speed_by_prompt(runs: pd.DataFrame) -> pd.DataFrame:
    """Latency, TTFT, tokens/s, output tokens and the expected-answer check: prompts x models."""
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    values = ["latency_s", "ttft_s", "tokens_per_s", "output_tokens", "expected found"]
    table = ok.drop_duplicates(["prompt", "model"]).pivot(index="prompt", columns="model", values=values)
    return table.reindex(list(dict.fromkeys(ok["prompt"])))


def skipped(runs: pd.DataFrame) -> pd.DataFrame:
    """The models that did not run, once each, with why and what to do."""
    out = runs[runs["status"] != "ok"].drop_duplicates("model")
    return out[["model", "status", "note"]].set_index("model")


def speed_summary(runs: pd.DataFrame, info: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model that ran: median latency, TTFT and tokens/s over the prompts, with size and params."""
    ok = runs[runs["status"] == "ok"]
    rows = []
    for model, g in ok.groupby("model", sort=False):
        tps = [t for t in g["tokens_per_s"] if t is not None and t == t]
        ttft = [t for t in g["ttft_s"] if t is not None and t == t]
        row = {
            "model": model,
            "prompts": len(g),
            "median latency (s)": statistics.median(g["latency_s"]),
            "median TTFT (ms)": statistics.median(ttft) * 1000 if ttft else None,
            "median tokens/s": statistics.median(tps) if tps else None,
            "min-max tokens/s": f"{min(tps):.0f}-{max(tps):.0f}" if tps else "",
            "output tokens": int(g["output_tokens"].sum()),
            "cold start (s)": g["cold_start_s"].iloc[0],
            "expected found": f"{int(g['expected found'].eq(True).sum())}/{int(g['expected found'].notna().sum())}",
        }
        if info is not None:
            key = (
                model
                if model in info.index
                else next((i for i in info.index if info.loc[i, "on server"] == model), None)
            )
            row["size (GB)"] = info.loc[key, "size (GB)"] if key is not None else None
            row["params (B)"] = info.loc[key, "params (B)"] if key is not None else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def plot_size_vs_speed(summary: pd.DataFrame, ax=None):
    """Scatter of size on disk against measured tokens/s, one labelled point per model.

    With two or more models a dotted curve speed ∝ 1/size (through their median product) shows
    what memory-bound decoding predicts (lesson 03 explains why).
    """
    import matplotlib.pyplot as plt

    for col in ("size (GB)", "median tokens/s"):
        if col not in summary.columns:
            raise BadInput(
                f"the summary has no '{col}' column", "pass speed_summary(runs, info) with info = enrich_from_show(...)"
            )
    data = summary.dropna(subset=["size (GB)", "median tokens/s"])
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(data["size (GB)"], data["median tokens/s"], s=60, color="#5b8e7d", zorder=3)
    for name, r in data.iterrows():
        ax.annotate(name, (r["size (GB)"], r["median tokens/s"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    if len(data) >= 2:
        import numpy as np

        k = statistics.median(data["size (GB)"] * data["median tokens/s"])
        xs = np.geomspace(data["size (GB)"].min() * 0.7, data["size (GB)"].max() * 1.4, 50)
        ax.plot(xs, k / xs, ":", color="grey", label="speed ∝ 1/size (memory-bound)")
        ax.legend(frameon=False)
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.set_xlim(0, max(1.0, 1.5 * float(data["size (GB)"].max() if len(data) else 1.0)))
        ax.set_ylim(0, 1.3 * float(data["median tokens/s"].max() if len(data) else 1.0))
        ax.text(
            0.98,
            0.04,
            "one model: pull more to see how speed falls with size",
            transform=ax.transAxes,
            ha="right",
            fontsize=9,
            color="grey",
        )
    ax.set_xlabel("size of the weights (GB)")
    ax.set_ylabel("decode speed (tokens/s, median)")
    ax.set_title("Size against measured decode speed on this machine")
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax


#: The source article's comparison table (large cloud LLMs vs small local models), as it states it.
SOURCE_TABLE = pd.DataFrame(
    {
        "Large LLMs (GPT-4, Claude)": [
            "175B+ (GPT-3/4)",
            "$10-$60",
            "1-3 s",
            "data sent to the cloud",
            "depends on the API",
        ],
        "Small models (Phi-3, Gemma)": [
            "1B-13B (Phi-3, Gemma)",
            "$0 (local)",
            "100-500 ms",
            "data stays local",
            "works offline",
        ],
    },
    index=pd.Index(["parameters", "cost per 1M tokens", "speed", "privacy", "reliability"], name="aspect"),
)


def revisit_claims(summary: pd.DataFrame, host: str | None) -> pd.DataFrame:
    """The source article's table beside this run: what was measured, a verdict, where to look next.

    `host` is the server the answers came from (None: the embedded engine, in this process).
    """
    if summary is None or summary.empty:
        raise BadInput(
            "no model answered in this run, so there is nothing to compare",
            "pull a model (`ollama pull phi3:mini`) or start `slm-course serve`",
        )
    params = summary["params (B)"].dropna() if "params (B)" in summary else pd.Series(dtype=float)
    ttft_ms = summary["median TTFT (ms)"].dropna()
    latency = summary["median latency (s)"].dropna()
    local = host is None or is_local_host(host)
    where = host or "this Python process (embedded engine)"
    rows = []

    if params.empty:
        rows.append(("parameters", "unknown for these models", "cannot check here", ""))
    else:
        lo, hi = params.min(), params.max()
        span = f"{lo:g}B" if lo == hi else f"{lo:g}B-{hi:g}B"
        # the article's range for small models is "1B-13B"; say which way a model is out
        below = ", ".join(f"{p:g}B" for p in sorted(params) if p < 1)
        above = ", ".join(f"{p:g}B" for p in sorted(params) if p > 13)
        outside = ([f"{below} smaller: small models have shrunk since"] if below else []) + (
            [f"{above} larger than the article's 'small' range"] if above else []
        )
        rows.append(
            (
                "parameters",
                f"{span} (from the server / registry)",
                "outside 1B-13B: " + "; ".join(outside) if outside else "within 1B-13B",
                "the article's range is an example, not a limit",
            )
        )
    rows.append(
        (
            "cost per 1M tokens",
            "no bill: nothing was sent to a paid API",
            "cannot check here",
            "$0 per token, but electricity and hardware cost: lesson 04",
        )
    )
    if ttft_ms.empty:
        rows.append(("speed", "no first-token time measured", "cannot check here", "lesson 03"))
    else:
        fast = ttft_ms.max() <= 500
        ms = f"{ttft_ms.min():.0f}-{ttft_ms.max():.0f}" if len(ttft_ms) > 1 else f"{ttft_ms.iloc[0]:.0f}"
        secs = f"{latency.min():.1f}-{latency.max():.1f}" if len(latency) > 1 else f"{latency.iloc[0]:.1f}"
        rows.append(
            (
                "speed",
                f"first token after {ms} ms, whole answer in {secs} s (median per model)",
                ("confirmed for the first token" if fast else "not confirmed: first token > 500 ms")
                + ("" if latency.max() <= 0.5 else "; whole answers take longer"),
                "cloud latency needs an API key: lesson 03",
            )
        )
    rows.append(
        (
            "privacy",
            f"answers came from {where}",
            "confirmed: the server is this machine"
            if local
            else "not on this machine: the prompts went to that server",
            "" if local else "run Ollama locally to keep data here",
        )
    )
    rows.append(
        (
            "reliability",
            f"the server is {'local' if local else 'remote'}; no API key used",
            "confirmed: these answers needed no internet" if local else "depends on that server",
            "answer quality is a separate question: lesson 05",
        )
    )
    out = pd.DataFrame(rows, columns=["aspect", "measured here", "verdict", "more"]).set_index("aspect")
    return SOURCE_TABLE.join(out)


#: What the source article says about each of its four models (paraphrased), and what this
#: lesson can measure about it.
SEED_CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("phi3:mini", "strong reasoning and maths for its size (3.8B)", "calculus prompt: expected answer found?"),
    ("gemma:2b", "compact; trained with safety filters", "cannot check with these prompts (needs a safety eval)"),
    (
        "llama2:7b",
        "the largest community and fine-tune ecosystem",
        "cannot measure here: community is not in the weights",
    ),
    (
        "mistral:7b",
        "fast and efficient for a 7B, open Apache-2.0 licence",
        "tokens/s against the other 7B; licence from /api/show",
    ),
)


def seed_claims_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The article's per-model claims beside what this run measured for each (or why it could not)."""
    ok = runs[runs["status"] == "ok"]
    rows = []
    for name, claim, how in SEED_CLAIMS:
        wanted = card(name)
        g = ok[ok["model"].map(lambda m, wanted=wanted: card(m) is wanted)]
        if g.empty:
            measured = f"not run here: `ollama pull {name}`"
        else:
            tps = [t for t in g["tokens_per_s"] if t == t and t is not None]
            calc = g[g["prompt"] == "calculus"]["expected found"]
            measured = (f"{statistics.median(tps):.1f} tokens/s" if tps else "no speed") + (
                f"; calculus answer right: {'yes' if bool(calc.iloc[0]) else 'no'}" if len(calc) else ""
            )
        rows.append({"model": name, "the article says": claim, "how to check": how, "this run": measured})
    return pd.DataFrame(rows).set_index("model")
