"""Lessons 05-06: small vs large on the same eval tasks, saved per prompt, and judged as routers.

A *paired run* asks both tiers every task and keeps one row per prompt (both answers, both
scores, latency, tokens). Lesson 05 summarises it per category with Wilson intervals and
saves it under `runs/`; lesson 06 reloads it to draw RouteLLM-style cost-quality curves.
Everything copes with the case CI always has: both tiers are the same model, so the quality
gap is zero and PGR is undefined (NaN here, never a crash).
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .backends import Backend
from .cost import ApiPrice, LocalAssumptions, LocalRun, api_price, query_cost_api
from .errors import BadInput, CourseError
from .evals import EvalRecord, ModelJudge, Task, accuracy_summary, check_code, extract_code, run_eval
from .options import Options
from .routing import (  # noqa: F401  (quality_curves, router_table, share_for_quality: lesson 06 imports them from here)
    LearnedRouter,
    RoutingExample,
    quality_curves,
    router_table,
    share_for_quality,
)
from .validate import check_int, same_model

TIERS = ("small", "large")
EXPLAIN_MIN_WORDS = 6  # an answer with fewer words (numbers aside) gives no explanation


# ---------------------------------------------------------------------------- the two tiers


@dataclass
class LargeChoice:
    """The large tier of a comparison: where it runs, what it is, what its calls would cost."""

    backend: Backend
    model: str
    local_stand_in: bool  # a local model standing in for an API model
    same_as_small: bool  # the very model the small tier uses: no quality gap possible
    price: ApiPrice | None  # API price used for its calls (of the model it stands in for)
    price_note: str


def _price(model: str) -> tuple[ApiPrice | None, str]:
    try:
        price = api_price(model)
    except CourseError as exc:
        return None, f"no API price for {model} ({exc.message})"
    return price, f"{price.provider}/{price.model} from {price.source}"


def choose_large(
    backend: Backend, small: str, large_model: str = "", *, probe: bool = True, verbose: bool = True
) -> LargeChoice:
    """The large tier: `large_model` from the small tier's server when it has it, else
    `connect_large` (the API model when a key is set, else the biggest local model).

    A local large model is priced as the API model it stands in for (SLM_LARGE_MODEL,
    default gpt-4o-mini): "what it would cost". With `probe`, a 4-token call checks that a
    different large model answers; if it does not (a wrong key, an unreachable endpoint) the
    small model becomes both tiers, with the reason printed. Prints what it chose.
    """
    from .connection import connect_large, pick_model
    from .settings import get_settings

    api_model = get_settings().large_model
    if large_model and backend.has_model(large_model):
        large_backend, model, local = backend, large_model, True
        if verbose:
            print(f"Large tier: {model} on the same server as the small model (asked for).")
    else:
        tier = connect_large(backend, verbose=verbose)
        large_backend, local = tier.backend, tier.local_fallback
        if local:
            model = pick_model(tier.backend, large_model or tier.model, verbose=verbose and bool(large_model))
        else:
            model = large_model or tier.model
    same = local and large_backend is backend and same_model(model, small)
    if probe and not same:
        try:
            large_backend.generate(model, "Say OK.", options={"num_predict": 4, "temperature": 0})
        except CourseError as exc:
            if verbose:
                print(
                    f"The large tier does not answer: {exc.message}\n  -> {exc.hint}\n"
                    f"Using {small} for both tiers instead."
                )
            return choose_large(backend, small, small, probe=False, verbose=verbose)
    price, note = _price(api_model if local else model)
    if local:
        note = f"a local stand-in, priced as {api_model} - what it would cost: {note}"
    if verbose:
        print("Large calls: " + note)
        if same:
            print(
                f"NOTE: the large tier is the small model itself ({small}). Both tiers give the same "
                "answers, so no router can gain quality here; the curves below stay flat.\n"
                "  For a real comparison set OPENAI_API_KEY (in .env), or pull a bigger model "
                "(e.g. `ollama pull llama3.2:3b`) and set LARGE_MODEL to it."
            )
    return LargeChoice(large_backend, model, local, same, price, note)


#: The offline pairs, best first (docs/offline-pair.md has the measurement that chose them): the
#: 0.5B is small and the 1.5B large where both are installed; else the bundled SmolLM2 and the 0.5B.
OFFLINE_PAIRS: tuple[tuple[str, str], ...] = (
    ("qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b"),
    ("smollm2:135m", "qwen2.5-coder:0.5b"),
)


def offline_pair(backend: Backend) -> tuple[str, str] | None:
    """The best of OFFLINE_PAIRS whose two models `backend` has, or None."""
    return next(((s, g) for s, g in OFFLINE_PAIRS if backend.has_model(s) and backend.has_model(g)), None)


def choose_pair(
    backend: Backend, small_model: str = "", large_model: str = "", *, probe: bool = True, verbose: bool = True
) -> tuple[str, LargeChoice]:
    """The two tiers of a comparison: (small model name, LargeChoice).

    Asked-for models win (`small_model`, `large_model`, SLM_SMALL_MODEL, an API key for the large
    tier). Otherwise, when this server's best course model is one of the kit's offline models, the
    tiers are the best offline pair it has (OFFLINE_PAIRS, chosen by measurement); else the best
    course model (`pick_model`) against `choose_large`. Prints which pair it took and why.
    """
    from .connection import pick_model
    from .registry import BUNDLED_MODEL, OFFLINE_MODELS
    from .settings import get_settings

    settings = get_settings()
    pair = None if small_model or settings.small_model else offline_pair(backend)
    if pair is not None and not (large_model and large_model != pair[1]) and not settings.has_key:
        best = pick_model(backend, verbose=False)
        if best in (BUNDLED_MODEL, *OFFLINE_MODELS):
            if verbose:
                print(
                    f"The offline pair: small = {pair[0]}, large = {pair[1]} (chosen by measurement: "
                    "docs/offline-pair.md)."
                )
            return pair[0], choose_large(backend, pair[0], pair[1], probe=probe, verbose=verbose)
    small = pick_model(backend, small_model, verbose=verbose)
    return small, choose_large(backend, small, large_model, probe=probe, verbose=verbose)


# ---------------------------------------------------------------------------- the judge

JUDGE_HINT = (
    "set SLM_JUDGE_MODEL (in .env, or JUDGE_MODEL in the lesson) to a model your Ollama has - "
    "ideally bigger than the models it judges, e.g. `ollama pull llama3.2:3b` and "
    "SLM_JUDGE_MODEL=llama3.2:3b - or to the large API model (e.g. gpt-4o-mini, with "
    "OPENAI_API_KEY set)"
)


def choose_judge(
    backend: Backend, judge_model: str = "", *, small: str = "", large: LargeChoice | None = None, verbose: bool = True
) -> ModelJudge | None:
    """The judge for open prompts: `judge_model`, else SLM_JUDGE_MODEL; None when neither is set.

    It runs on `backend` (the small tier's server) when that has the model, else on the large
    tier's API endpoint if `large` has one (checked with a 4-token call); ModelNotFound when
    neither has it. Prints which judge it chose, and warns when the judge is also the `small`
    or the large model, i.e. grades its own answers.
    """
    from .errors import ModelNotFound, pull_hint
    from .settings import get_settings

    name = (judge_model or "").strip() or get_settings().judge_model
    if not name:
        if verbose:
            print("No judge model is configured, so open prompts stay unscored.\n  -> " + JUDGE_HINT)
        return None
    if backend.has_model(name):
        where = backend
    elif large is not None and large.backend is not backend:
        try:
            large.backend.generate(name, "Say OK.", options={"num_predict": 4, "temperature": 0})
        except CourseError as exc:
            raise ModelNotFound(
                f"the judge model {name} is not on {backend.describe()}, and "
                f"{large.backend.describe()} did not answer for it: {exc.message}",
                f"{pull_hint(name)}; or {JUDGE_HINT}",
            ) from exc
        where = large.backend
    else:
        raise ModelNotFound(
            f"the judge model {name} is not on {backend.describe()}", f"{pull_hint(name)}; or {JUDGE_HINT}"
        )
    if verbose:
        print(f"Judge: {name} ({where.describe()}).")
        graded = (("small", small), ("large", large.model if large is not None else ""))
        own = [tier for tier, model in graded if model and same_model(model, name)]
        if own:
            print(
                f"NOTE: the judge is also the {' and '.join(own)} model, so it grades its own answers; "
                "judges tend to favour their own (self-enhancement bias, Zheng et al. 2023, "
                "arXiv 2306.05685)."
            )
    return ModelJudge(where, name)


# ---------------------------------------------------------------------------- tasks


def sample_by_category(tasks: Sequence[Task], n: int, seed: int = 0) -> list[Task]:
    """`n` tasks spread evenly over categories (round-robin in a seeded order), so a small
    sample still covers every category."""
    n = check_int("n", n, 0, None, "e.g. n=12")
    rng = random.Random(seed)
    by_cat: dict[str, list[Task]] = {}
    for t in tasks:
        by_cat.setdefault(t.category, []).append(t)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_cat.items())]
    picked: list[Task] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


# ---------------------------------------------------------------------------- paired runs


def paired_frame(small: Sequence[EvalRecord], large: Sequence[EvalRecord], eval_set: str) -> pd.DataFrame:
    """One row per task with both tiers' answers side by side (`small_*` and `large_*` columns)."""
    by_id = {r.task_id: r for r in large}
    missing = [r.task_id for r in small if r.task_id not in by_id]
    if missing:
        raise BadInput(
            f"{len(missing)} tasks have no large-tier answer (e.g. {missing[0]})",
            "run both tiers on the same task list",
        )
    rows = []
    for s in small:
        g = by_id[s.task_id]
        row: dict[str, Any] = {
            "task_id": s.task_id,
            "eval_set": eval_set,
            "category": s.category,
            "difficulty": s.difficulty,
            "kind": s.kind,
            "prompt": s.prompt,
        }
        for tier, r in (("small", s), ("large", g)):
            row.update(
                {
                    f"{tier}_model": r.model,
                    f"{tier}_correct": r.correct,
                    f"{tier}_latency_s": r.latency_s,
                    f"{tier}_prompt_tokens": r.prompt_tokens,
                    f"{tier}_output_tokens": r.output_tokens,
                    f"{tier}_done_reason": r.done_reason,
                    f"{tier}_text": r.text,
                    f"{tier}_judge_score": r.judge_score,
                    f"{tier}_judge_text": r.judge_text,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def run_paired(
    backend: Backend,
    small: str,
    large: LargeChoice,
    task_sets: Mapping[str, Sequence[Task]],
    *,
    options: Options | dict | None = None,
    progress: bool = True,
    judge: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """Ask both tiers every task of every set (`run_eval`) and return the paired frame. The two
    tiers run at the same time (each `run_eval` a few calls at a time), so a machine with a core per
    model, or a local and a remote tier, answers both in about the time of the slower one.

    With a `judge` (e.g. from `choose_judge`) open tasks are graded too: each tier's rating
    and the judge's raw verdict land in `<tier>_judge_score` / `<tier>_judge_text`, and a
    rating of 7 or more counts as correct. When the large tier *is* the small model, its
    answers are the small run's (deterministic decoding would repeat them): asking again
    would only double the wait.
    """
    from concurrent.futures import ThreadPoolExecutor

    frames = []
    for name, tasks in task_sets.items():
        if not tasks:
            continue
        if large.same_as_small:
            small_records = large_records = run_eval(
                backend, small, tasks, options=options, progress=progress, judge=judge
            )
        else:  # both tiers at once: two models on two cores (or two servers) answer side by side
            with ThreadPoolExecutor(max_workers=2) as pool:
                small_run = pool.submit(
                    run_eval, backend, small, tasks, options=options, progress=progress, judge=judge
                )
                large_run = pool.submit(
                    run_eval, large.backend, large.model, tasks, options=options, progress=progress, judge=judge
                )
                small_records, large_records = small_run.result(), large_run.result()
        frames.append(paired_frame(small_records, large_records, name))
    if not frames:
        raise BadInput("no tasks to run", "pass at least one non-empty task list")
    return pd.concat(frames, ignore_index=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def run_file(folder: str | Path, small: str, large: str) -> Path:
    """Where the paired run of `small` vs `large` is saved (CSV; the metadata sits beside it)."""
    return Path(folder) / f"quality_{_slug(small)}__vs__{_slug(large)}.csv"


def save_run(frame: pd.DataFrame, folder: str | Path, small: str, large: str, **meta: Any) -> Path:
    """Save a paired run as CSV plus a JSON file of how it was made (models, sizes, date)."""
    path = run_file(folder, small, large)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)  # a reader never sees half a file
    info = {
        "small": small,
        "large": large,
        "rows": len(frame),
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    path.with_suffix(".json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    return path


def load_run(folder: str | Path, small: str, large: str) -> tuple[pd.DataFrame, dict] | None:
    """The saved paired run of exactly these two models, or None when there is none."""
    path = run_file(folder, small, large)
    return _read_run(path) if path.is_file() else None


def _read_run(path: Path) -> tuple[pd.DataFrame, dict]:
    """A saved paired run (CSV) with the metadata saved beside it."""
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"task_id": str, "eval_set": str})
    for tier in TIERS:
        col = frame[f"{tier}_correct"]
        frame[f"{tier}_correct"] = col.map(lambda v: None if pd.isna(v) else str(v) in ("True", "1", "1.0"))
        frame[f"{tier}_text"] = frame[f"{tier}_text"].fillna("")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return frame, {**meta, "path": str(path)}


# ---------------------------------------------------------------------------- answers shared by lessons

#: How long `paired_answers` waits for another lesson asking the same pair before it gives up.
LOCK_WAIT_S = 3600.0


def task_settings(task: Task, options: Options | dict | None = None) -> str:
    """The generation settings `run_eval` uses for `task` (options over the eval defaults, the task's
    own budget), as sorted JSON: a saved answer is reused only for the same settings."""
    from .evals import DEFAULT_EVAL_OPTIONS

    opts = Options.merge(DEFAULT_EVAL_OPTIONS, options)
    if opts.num_predict is None and task.meta.get("num_predict"):
        opts = Options.merge(opts, {"num_predict": task.meta["num_predict"]})
    return json.dumps(opts.to_dict(), sort_keys=True)


class _FileLock:
    """An exclusive lock on a file (fcntl.flock; msvcrt on Windows), taken with a timeout.

    The operating system releases it when the holder closes the file or dies, so a lesson that
    crashed never leaves a stale lock behind. The holder writes who it is into the file, so a
    lesson that waits can say what it waits for."""

    def __init__(self, path: Path, label: str, timeout_s: float) -> None:
        self.path, self.label, self.timeout_s = path, label, timeout_s
        self.waited_s = 0.0
        self._fh: Any = None

    def _try(self) -> bool:
        try:
            if sys.platform == "win32":
                import msvcrt

                self._fh.seek(0)
                msvcrt.locking(self._fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip() or "another process"
        except OSError:
            return "another process"

    def __enter__(self) -> "_FileLock":
        import os
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115  (closed in __exit__)
        t0 = time.monotonic()
        told = False
        while not self._try():
            if not told:
                print(
                    f"Waiting for {self.holder()}, which is asking this pair the same tasks: "
                    "its answers will be reused here.",
                    flush=True,
                )
                told = True
            if time.monotonic() - t0 > self.timeout_s:
                self._fh.close()
                raise CourseError(
                    f"waited {self.timeout_s:.0f} s for {self.holder()} to finish with {self.path.name}",
                    f"if nothing is running any more, delete {self.path} and run the cell again",
                )
            time.sleep(0.5)
        self.waited_s = time.monotonic() - t0
        self._fh.seek(0)
        self._fh.truncate()
        stamp = datetime.now(timezone.utc).strftime("%H:%M UTC")
        self._fh.write(f"{self.label or 'a lesson'} (process {os.getpid()}, since {stamp})")
        self._fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.flush()
        self._fh.close()  # closing releases the lock


@dataclass
class SharedAnswers:
    """What `paired_answers` returns: the paired frame of the tasks asked for, and where it came from."""

    frame: pd.DataFrame
    asked: int  # tasks both tiers were asked in this call
    reused: int  # tasks whose answers came from the saved run
    reused_from: str  # who saved the reused answers, and when
    waited_s: float  # seconds spent waiting for another lesson asking the same pair
    path: Path

    def describe(self) -> str:
        """One line for the lesson: asked now, reused (from whom and when), waited."""
        parts = [f"{self.asked} items asked to both tiers now"]
        if self.reused:
            parts.append(f"{self.reused} answers reused from {self.reused_from}")
        if self.waited_s >= 1:
            parts.append(f"after waiting {self.waited_s:.0f} s for them")
        return "; ".join(parts)


def paired_answers(
    backend: Backend,
    small: str,
    large: LargeChoice,
    task_sets: Mapping[str, Sequence[Task]],
    *,
    folder: str | Path,
    options: Options | dict | None = None,
    label: str = "",
    progress: bool = True,
    reuse: bool = True,
    timeout_s: float = LOCK_WAIT_S,
    **meta: Any,
) -> SharedAnswers:
    """Both tiers' answers to every task of `task_sets`, asked once and shared between lessons.

    Holding a file lock for this pair's saved run (`run_file(folder, ...)` with `.lock`), it loads
    the saved answers, asks both tiers (`run_paired`) only the tasks with no saved answer for the same
    eval set, prompt and settings (`task_settings`), and saves the merged run (`save_run`, with
    `meta`) before it lets go. A lesson that starts while another one asks the same pair waits for
    it, then reuses its answers instead of asking them all again beside it; a lesson run alone asks
    everything. Each call holds one lock at a time, so lessons cannot deadlock, and the operating
    system releases the lock of a process that dies. `label` (e.g. "lesson 05") is saved with the
    answers it asked, so a lesson can say whose answers it reused. `reuse=False` asks every task
    again (and saves the new answers over the old).
    """
    path = run_file(folder, small, large.model)
    wanted = [(name, t) for name, tasks in task_sets.items() for t in tasks]
    if not wanted:
        raise BadInput("no tasks to run", "pass at least one non-empty task list")
    with _FileLock(path.with_suffix(".lock"), label, timeout_s) as lock:
        saved = load_run(folder, small, large.model)
        old = saved[0] if saved is not None else pd.DataFrame()
        if not old.empty and "settings" not in old.columns:  # a run saved before answers carried settings
            old = pd.DataFrame()
        have = (
            {(r.eval_set, r.task_id, r.prompt, r.settings): i for i, r in enumerate(old.itertuples())}
            if reuse and not old.empty
            else {}
        )
        keys = [(name, t.id, t.prompt, task_settings(t, options)) for name, t in wanted]
        todo: dict[str, list[Task]] = {}
        for key, (name, t) in zip(keys, wanted):
            if key not in have:
                todo.setdefault(name, []).append(t)
        reused_rows = old.iloc[[have[k] for k in keys if k in have]] if have else old.iloc[0:0]
        sources = sorted(set(zip(reused_rows.get("asked_by", []), reused_rows.get("asked_at", []))))
        new = pd.DataFrame()
        if todo:
            new = run_paired(backend, small, large, todo, options=options, progress=progress)
            by_id = {(name, t.id): t for name, t in wanted}
            new["settings"] = [task_settings(by_id[(n, i)], options) for n, i in zip(new.eval_set, new.task_id)]
            new["asked_by"] = label or "a lesson"
            new["asked_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            keep = old
            if not old.empty:
                replaced = set(zip(new.eval_set, new.task_id))
                keep = old[[k not in replaced for k in zip(old.eval_set, old.task_id)]]
            merged = pd.concat([d for d in (keep, new) if not d.empty], ignore_index=True)
            save_run(merged, folder, small, large.model, **meta)
        got = pd.concat([d for d in (reused_rows, new) if not d.empty], ignore_index=True)
        # the order asked for, whatever order the answers came in
        order = {(name, t.id): i for i, (name, t) in enumerate(wanted)}
        got = got.iloc[sorted(range(len(got)), key=lambda i: order[(got.eval_set.iat[i], got.task_id.iat[i])])]
        waited = lock.waited_s
    who = ", ".join(f"{by} ({at})" for by, at in sources) or "an earlier run"
    return SharedAnswers(got.reset_index(drop=True), sum(map(len, todo.values())), len(reused_rows), who, waited, path)


def wait_for_run(folder: str | Path, small: str, large: str, *, timeout_s: float = LOCK_WAIT_S):
    """`load_run`, after waiting for any lesson that is asking this pair right now (`paired_answers`):
    the saved run with its newest answers, or None when there is none."""
    with _FileLock(run_file(folder, small, large).with_suffix(".lock"), "a reader", timeout_s):
        return load_run(folder, small, large)


# ---------------------------------------------------------------------------- accuracy


def tier_accuracy(frame: pd.DataFrame, by: str = "category") -> pd.DataFrame:
    """Accuracy of each tier per group (plus "(all)") with Wilson 95% intervals; unscored
    answers are left out of n. The tiers are told apart by column, so this also works when
    both tiers are the same model."""
    if frame.empty:
        raise BadInput("the paired frame is empty", "run run_paired(...) or load_run(...) first")
    rows = []
    groups = [(g, d) for g, d in frame.groupby(by, sort=True)] + [("(all)", frame)]
    for tier in TIERS:
        for group, d in groups:
            rows.append({"tier": tier, by: group, **accuracy_summary(d[f"{tier}_correct"])})
    return pd.DataFrame(rows)


def plot_tier_accuracy(
    table: pd.DataFrame,
    by: str = "category",
    *,
    labels: Mapping[str, str] | None = None,
    ax=None,
    title: str = "Accuracy per category (95% Wilson intervals)",
):
    """Bars of accuracy per group for both tiers, with the confidence intervals as error bars."""
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(table[by]))
    ax = ax or plt.subplots(figsize=(min(11, max(6, 0.8 * len(groups) + 2)), 4))[1]
    width = 0.38
    for i, (tier, colour) in enumerate(zip(TIERS, ("#5b8e7d", "#f4a259"))):
        t = table[table["tier"] == tier].set_index(by).reindex(groups)
        x = np.arange(len(groups)) + (i - 0.5) * width
        acc = t["accuracy"].fillna(0).to_numpy()
        err = np.vstack([(t["accuracy"] - t["ci_low"]).fillna(0), (t["ci_high"] - t["accuracy"]).fillna(0)])
        ax.bar(x, acc, width, color=colour, label=(labels or {}).get(tier, tier), yerr=np.clip(err, 0, None), capsize=3)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(
        [
            f"{g}\n(n={int(n)})"
            for g, n in zip(groups, table[table["tier"] == "small"].set_index(by).reindex(groups)["n"])
        ],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share correct")
    ax.set_title(title)
    ax.legend()
    return ax


@dataclass
class Paired:
    """How the two tiers agree prompt by prompt, and McNemar's exact test of the difference."""

    both_right: int
    only_small: int
    only_large: int
    both_wrong: int
    p_value: float  # 1.0 when they never disagree: no evidence of a difference


def paired_counts(frame: pd.DataFrame) -> Paired:
    """Agreement counts over the prompts both tiers were scored on; the p-value is the exact
    two-sided binomial test on the disagreements (McNemar 1947): is one tier really better?
    With no disagreement at all the exact p-value is 1 (the most likely split of nothing)."""
    from scipy.stats import binomtest

    d = frame[frame["small_correct"].notna() & frame["large_correct"].notna()]
    s, g = d["small_correct"].astype(bool), d["large_correct"].astype(bool)
    only_s, only_g = int((s & ~g).sum()), int((~s & g).sum())
    p = binomtest(only_s, only_s + only_g, 0.5).pvalue if only_s + only_g else 1.0
    return Paired(int((s & g).sum()), only_s, only_g, int((~s & ~g).sum()), float(p))


# ---------------------------------------------------------------------------- the seed's two claims


def code_failure(text: str, task: Task, done_reason: str | None = None, *, timeout_s: float = 10.0) -> str:
    """Why a code answer fails its unit tests, in one word or phrase: "passed", "no code",
    "syntax error" (with "(cut off)" when the answer hit the token limit), "wrong result"
    (a test assertion failed), "runtime error" or "timeout"."""
    code = extract_code(text, task.meta.get("entry_point"))
    if not re.search(r"^\s*(def|return)\b", code, re.M):
        return "no code"
    result = check_code(text, task, timeout_s=timeout_s)
    if result.ok:
        return "passed"
    if result.timed_out:
        return "timeout"
    if "SyntaxError" in result.stderr or "IndentationError" in result.stderr:
        return "syntax error (cut off)" if done_reason == "length" else "syntax error"
    if "AssertionError" in result.stderr:
        return "wrong result"
    return "runtime error"


_WORD_RE = re.compile(r"[A-Za-z]{2,}")


def explanation_words(text: str) -> int:
    """Words of two or more letters in an answer: numbers, symbols and "x" do not count."""
    return len(_WORD_RE.findall(text or ""))


def is_bare_answer(text: str, min_words: int = EXPLAIN_MIN_WORDS) -> bool:
    """True when an answer gives (almost) no words besides its numbers: "17 * 23 = 391"."""
    return explanation_words(text) < min_words


# ---------------------------------------------------------------------------- routing curves


def quality_gap(q_small: Sequence[float], q_large: Sequence[float]) -> float:
    """Mean large-tier quality minus mean small-tier quality: what a router can recover."""
    return float(np.mean(np.asarray(q_large, dtype=float)) - np.mean(np.asarray(q_small, dtype=float)))


def plot_quality_curves(
    curves: pd.DataFrame,
    *,
    q_small: float,
    q_large: float,
    cost_small: float | None = None,
    cost_large: float | None = None,
    mark_share: float | None = 0.2,
    ax=None,
    title: str = "Quality against large-model calls",
):
    """Quality vs % of calls to the large model for every router in `curves`; random dashed,
    oracle dotted; a top axis in USD per 1,000 queries when costs are given."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.2))[1]
    styles = {"random": dict(ls="--", color="grey"), "oracle": dict(ls=":", color="green")}
    for name, d in curves.groupby("router", sort=False):
        ax.plot(
            d["share"] * 100,
            d["quality"],
            marker="" if name in styles else "o",
            ms=4,
            label=name if name not in styles else f"{name} (baseline)" if name == "random" else "oracle (upper bound)",
            **styles.get(name, {}),
        )
    ax.axhline(q_small, color="#5b8e7d", lw=0.8, alpha=0.6)
    ax.axhline(q_large, color="#f4a259", lw=0.8, alpha=0.6)
    if mark_share is not None:
        ax.axvline(mark_share * 100, color="black", lw=0.6, alpha=0.4)
    ax.set_xlabel("calls to the large model (%)")
    ax.set_ylabel("quality (share correct)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    if cost_small is not None and cost_large:
        top = ax.secondary_xaxis(
            "top",
            functions=(
                lambda pct: 1000 * (pct / 100 * cost_large + (1 - pct / 100) * cost_small),
                lambda usd: (
                    100 * (usd / 1000 - cost_small) / (cost_large - cost_small) if cost_large != cost_small else usd * 0
                ),
            ),
        )
        top.set_xlabel("USD per 1,000 queries (what it would cost)")
    return ax


def operating_point(
    q_small: Sequence[float], q_large: Sequence[float], to_large: Sequence[bool]
) -> tuple[float, float]:
    """(share sent large, mean quality) of a yes/no router such as `not is_simple_task`."""
    qs, ql = np.asarray(q_small, dtype=float), np.asarray(q_large, dtype=float)
    big = np.asarray(to_large, dtype=bool)
    if big.shape != qs.shape:
        raise BadInput("one routing decision per prompt is needed", "pass [not is_simple_task(p) for p in prompts]")
    return float(big.mean()), float(np.where(big, ql, qs).mean())


def out_of_fold_scores(
    prompts: Sequence[str],
    small_correct: Sequence[float],
    large_correct: Sequence[float],
    *,
    folds: int = 5,
    seed: int = 0,
    repeats: int = 1,
) -> np.ndarray:
    """Large-model scores of a `LearnedRouter`, each prompt scored by a router that never saw it
    (stratified k-fold), so the curve is not the training data read back.

    With `repeats` > 1 the k-fold runs that many times, each with its own split (seeds `seed`,
    `seed + 1`, ...), and the result has one row of scores per split (shape repeats x prompts):
    with a few dozen prompts, which prompts share a fold moves APGR by several hundredths, so
    one split is partly luck; `quality_curves` averages the rows' curves.

    Raises BadInput when one label ("small enough") covers every prompt: nothing to learn."""
    from sklearn.model_selection import StratifiedKFold

    qs, ql = np.asarray(small_correct, dtype=float), np.asarray(large_correct, dtype=float)
    y = (qs >= ql).astype(int)
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < 2:
        raise BadInput(
            f"only {minority} of {len(y)} prompts are in the rarer class "
            f"({int(y.sum())} 'small enough', {len(y) - int(y.sum())} 'needs large')",
            "a router needs both kinds of prompt to learn from: compare two different models "
            "on more, and harder, prompts",
        )
    if repeats < 1:
        raise BadInput(f"repeats must be at least 1, got {repeats}", "e.g. repeats=10 for ten different splits")
    out = np.zeros((repeats, len(y)))
    for row, split_seed in zip(out, range(seed, seed + repeats)):
        splitter = StratifiedKFold(n_splits=min(folds, minority), shuffle=True, random_state=split_seed)
        for train, test in splitter.split(np.zeros(len(y)), y):
            router = LearnedRouter().fit([RoutingExample(prompts[i], qs[i], ql[i]) for i in train])
            row[test] = router.large_scores([prompts[i] for i in test])
    return out[0] if repeats == 1 else out


def per_query_costs(
    frame: pd.DataFrame, price: ApiPrice | None, local: LocalAssumptions, *, tokens_per_s: float | None = None
) -> tuple[float, float]:
    """(small, large) USD per query, averaged over the run: the small tier's local energy and
    hardware for its measured output tokens, the large tier's API price of its measured tokens.

    The small tier's speed is `tokens_per_s` when given - measure it with the model alone: requests
    that ran at the same time shared the same watts, so their summed seconds count that energy
    several times. Without it, the run's tokens over its summed seconds (right for one at a time)."""
    seconds = frame["small_latency_s"].sum()
    tokens = max(int(frame["small_output_tokens"].sum()), 1)
    speed = tokens_per_s if tokens_per_s else (tokens / seconds if seconds > 0 else 1.0)
    run = LocalRun("small", speed, local)
    small = float(np.mean([sum(run.cost_per_query(0, int(t))) for t in frame["small_output_tokens"]]))
    if price is None:
        return small, math.nan
    large = float(
        np.mean(
            [
                query_cost_api(price, int(i), int(o))
                for i, o in zip(frame["large_prompt_tokens"], frame["large_output_tokens"])
            ]
        )
    )
    return small, large


def latest_run(folder: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """The most recently saved paired run in `folder`, whoever the models were; None if none."""
    files = sorted(Path(folder).glob("quality_*__vs__*.csv"), key=lambda p: p.stat().st_mtime)
    for path in reversed(files):
        if path.with_suffix(".json").is_file():
            return _read_run(path)
    return None
