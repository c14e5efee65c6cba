"""Routing on real recorded data: RouteLLM's per-prompt results of Mixtral-8x7B and GPT-4-1106.

lm-sys/RouteLLM (Apache-2.0) publishes, for every GSM8K test question (1,319) and every MMLU
test question (14,042), whether Mixtral-8x7B-Instruct (the weak model) and GPT-4-1106-preview
(the strong one) answered correctly. The course ships those columns in `helpers/data/routellm/`
(see ATTRIBUTION.md there) so lesson 06 can train routers on thousands of real prompts, score
them out of fold with the same APGR/CPT as `helpers.routing`, and test the article's claim with
dated prices from genai-prices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cost import ApiPrice, api_price, prices_data_info, query_cost_api
from .errors import BadInput
from .routing import apgr, cpt, heuristic_scores, oracle_router, pgr, quality_at_share, random_router
from .validate import check_int

DATA_DIR = Path(__file__).resolve().parent / "data" / "routellm"
BENCHMARKS = ("gsm8k", "mmlu")

ROUTELLM_REPO = "https://github.com/lm-sys/RouteLLM"
ROUTELLM_COMMIT = "0b64fdafe049e596a3f5657c219329f24af24198"
ROUTELLM_COMMIT_DATE = "2024-08-10"  # committer date; the data files last changed on 2024-06-10
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_MODEL = "gpt-4-1106-preview"

#: The same fixed price date as lesson 04, so the cost figures never move between runs.
PRICES_AS_OF = datetime(2026, 11, 1, tzinfo=timezone.utc)
#: genai-prices has no first-party price for "Mixtral-8x7B-Instruct-v0.1": Mistral's own
#: mixtral-8x7b is the closest. "gpt-4-1106-preview" resolves to OpenAI's gpt-4-turbo.
PRICE_MODELS = {"weak": ("mixtral-8x7b", "mistral"), "strong": ("gpt-4-1106-preview", "openai")}
#: OpenAI's rule of thumb for English text (help.openai.com, "What are tokens and how to count
#: them?"): about 4 characters per token. An estimate: the course ships no tokenizer for these models.
CHARS_PER_TOKEN = 4.0
#: RouteLLM's MMLU runs generated one token per answer (generate_responses.py, max_new_tokens=1).
MMLU_OUTPUT_TOKENS = 1

LEARNED = "learned: TF-IDF + logistic regression (out of fold)"
LENGTH = "length: longer prompt -> strong"
HEURISTIC = "article heuristic: is_simple_task"
RANDOM = "random (mean of 10 seeded runs)"
ORACLE = "oracle (knows the answers)"


# ---------------------------------------------------------------------------- data


@cache
def _read(benchmark: str) -> pd.DataFrame:
    path = DATA_DIR / f"{benchmark}.csv.gz"
    if not path.exists():
        raise BadInput(
            f"the recorded RouteLLM data is missing: {path}",
            "reinstall the course (pip install -e .) or rebuild it with helpers/data/routellm/build.py",
        )
    # keep_default_na=False: a prompt such as "None" or "NA" stays text, never NaN
    return pd.read_csv(path, keep_default_na=False, dtype={"prompt": str, "id": str})


def load_routellm(benchmark: str) -> pd.DataFrame:
    """RouteLLM's per-prompt results: id, (subject,) prompt, mixtral_correct, gpt4_correct (0/1),
    routellm_contaminated (1 = RouteLLM's eval drops it); GSM8K adds each answer's length in chars."""
    if benchmark not in BENCHMARKS:
        raise BadInput(f"unknown benchmark {benchmark!r}", f"use one of: {', '.join(BENCHMARKS)}")
    df = _read(benchmark).copy()
    df.attrs["benchmark"] = benchmark
    return df


def _qualities(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = {"prompt", "mixtral_correct", "gpt4_correct"} - set(df.columns)
    if missing:
        raise BadInput(f"the frame lacks column(s) {sorted(missing)}", "pass a frame from load_routellm()")
    return df["mixtral_correct"].to_numpy(float), df["gpt4_correct"].to_numpy(float)


# ---------------------------------------------------------------------------- published figures


@dataclass(frozen=True)
class PublishedFigure:
    """One number RouteLLM's authors published, with where and when."""

    benchmark: str
    metric: str
    value: float
    router: str
    source: str
    quote: str


@dataclass(frozen=True)
class PublishedFigures:
    """RouteLLM's published figures that could be checked here, and what could not be."""

    figures: tuple[PublishedFigure, ...]
    best_router_apgr: dict[str, float | None]  # None: the paper's table was not reachable here
    missing: str

    def table(self) -> pd.DataFrame:
        """The figures as a DataFrame (one row each)."""
        return pd.DataFrame([f.__dict__ for f in self.figures])


_BLOG = (
    "LMSYS blog 'Cutting LLM Costs Without Compromising Quality with RouteLLM', 2024-07-01, "
    "https://lmsys.org/blog/2024-07-01-routellm/ (source: lm-sys/lm-sys.github.io "
    "blog/2024-07-01-routellm.md at 26211cdf60aa6458487dd9fda84110d1a5268906)"
)
_EVAL_CODE = f"{ROUTELLM_REPO} routellm/evals/evaluate.py at {ROUTELLM_COMMIT[:12]} ({ROUTELLM_COMMIT_DATE})"


def published_figures() -> PublishedFigures:
    """RouteLLM's published figures for GSM8K and MMLU (Mixtral-8x7B vs GPT-4-1106), each cited;
    the paper's per-router APGR tables were not reachable here, so `best_router_apgr` is None."""
    figures = (
        PublishedFigure(
            "gsm8k",
            "APGR",
            0.5,
            "random",
            f"definition of APGR (arXiv 2406.18665); {_EVAL_CODE} averages 10 random runs",
            "a random router recovers, in expectation, the share of the gap equal to its share of strong calls",
        ),
        PublishedFigure(
            "mmlu",
            "APGR",
            0.5,
            "random",
            f"definition of APGR (arXiv 2406.18665); {_EVAL_CODE} averages 10 random runs",
            "a random router recovers, in expectation, the share of the gap equal to its share of strong calls",
        ),
        PublishedFigure(
            "mmlu",
            "cost reduction vs random (same performance, 'up to')",
            0.30,
            "best of 4 routers",
            _BLOG,
            "cost reductions of up to 70% on MT Bench, 30% on MMLU, and 40% on GSM8K for the "
            "same performance relative to a random baseline",
        ),
        PublishedFigure(
            "gsm8k",
            "cost reduction vs random (same performance, 'up to')",
            0.40,
            "best of 4 routers",
            _BLOG,
            "cost reductions of up to 70% on MT Bench, 30% on MMLU, and 40% on GSM8K for the "
            "same performance relative to a random baseline",
        ),
        PublishedFigure(
            "mmlu",
            "cost vs random at PGR 50% ('about 30% less')",
            0.30,
            "causal LLM router, Arena data + ~1,500 MMLU validation golden labels",
            _BLOG,
            "our best-performing causal LLM router now requiring about 30% less cost as compared to "
            "the baseline to achieve 50% of the performance gap between GPT-4 and Mixtral",
        ),
    )
    missing = (
        "The paper's per-router APGR/CPT tables for GSM8K and MMLU (arXiv 2406.18665) could not be "
        "read from this machine on 2026-11-30 (no internet; the stored copies reach only the abstract "
        "and introduction), so no best-router APGR is given. Those routers were trained on Chatbot "
        "Arena preferences (plus augmentation), not on these benchmarks. The blog also reports that, "
        "trained on Arena data alone, 'all routers perform poorly at a near-random level' on MMLU."
    )
    return PublishedFigures(figures, {"gsm8k": None, "mmlu": None}, missing)


# ---------------------------------------------------------------------------- routers


def _analyse(prompts: Sequence[str]) -> list[list[str]]:
    """Word unigrams and bigrams of each prompt, computed once and shared by every fold."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyser = TfidfVectorizer(ngram_range=(1, 2)).build_analyzer()
    return [analyser(p) for p in prompts]


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def out_of_fold_router_scores(df: pd.DataFrame, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Strong-model scores from a TF-IDF + logistic-regression router, each prompt scored by a
    model trained on the other folds: P(the weak model fails where the strong one succeeds)."""
    # Folds are stratified on that label and grouped by prompt text, so a prompt that appears
    # twice (MMLU has 105 repeats) never sits on both sides of a split.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold

    q_weak, q_strong = _qualities(df)
    y = (q_strong > q_weak).astype(int)
    folds = check_int("folds", folds, 2, None, "e.g. folds=5")
    if np.bincount(y, minlength=2).min() < folds:
        raise BadInput(
            f"need at least {folds} prompts where the strong model helps and {folds} where it does not",
            "pass more prompts (e.g. the whole frame from load_routellm)",
        )
    prompts = df["prompt"].tolist()
    tokens = _analyse(prompts)
    scores = np.zeros(len(df))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(tokens, y, groups=prompts):
        vectoriser = TfidfVectorizer(analyzer=_identity, sublinear_tf=True, min_df=2, dtype=np.float32)
        # vocabulary and IDF from the training folds only
        x_train = vectoriser.fit_transform([tokens[i] for i in train])
        model = LogisticRegression(C=1.0, solver="saga", tol=1e-3, max_iter=1000, random_state=seed)
        model.fit(x_train, y[train])
        scores[test] = model.predict_proba(vectoriser.transform([tokens[i] for i in test]))[:, 1]
    return scores


def length_scores(df: pd.DataFrame) -> np.ndarray:
    """The simplest router: the longer the prompt (in words), the more it needs the strong model."""
    return df["prompt"].str.split().str.len().to_numpy(float)


# ---------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class RouterScore:
    """One router's APGR and CPT(50%)/CPT(80%) (shares of strong calls) on one benchmark."""

    router: str
    apgr: float
    cpt50: float
    cpt80: float
    seconds: float = field(default=0.0, compare=False)  # time to compute the scores (learned: all folds)


@dataclass(frozen=True)
class RouterEvaluation:
    """Routers side by side on one benchmark, with the two models' accuracies."""

    benchmark: str
    n: int
    weak_accuracy: float
    strong_accuracy: float
    routers: tuple[RouterScore, ...]
    scores: dict[str, np.ndarray] = field(repr=False, compare=False, default_factory=dict)

    def __getitem__(self, router: str) -> RouterScore:
        for r in self.routers:
            if r.router == router:
                return r
        raise KeyError(f"no router {router!r}; have: {[r.router for r in self.routers]}")

    def table(self) -> pd.DataFrame:
        """One row per router: APGR, CPT(50%), CPT(80%)."""
        return pd.DataFrame(
            [
                {
                    "benchmark": self.benchmark,
                    "router": r.router,
                    "APGR": r.apgr,
                    "CPT(50%)": r.cpt50,
                    "CPT(80%)": r.cpt80,
                }
                for r in self.routers
            ]
        )


def _score(name: str, q_weak, q_strong, scores, seconds: float) -> RouterScore:
    return RouterScore(
        name,
        apgr(q_weak, q_strong, scores),
        cpt(q_weak, q_strong, scores, 0.5),
        cpt(q_weak, q_strong, scores, 0.8),
        seconds,
    )


def evaluate_routers(df: pd.DataFrame, *, folds: int = 5, seed: int = 0, random_runs: int = 10) -> RouterEvaluation:
    """APGR and CPT of random, oracle, the learned router (out of fold), prompt length and the
    article's `is_simple_task`, all through `helpers.routing`'s apgr/cpt."""
    q_weak, q_strong = _qualities(df)
    rows, kept = [], {}
    for name, make in (
        (LEARNED, lambda: out_of_fold_router_scores(df, folds=folds, seed=seed)),
        (LENGTH, lambda: length_scores(df)),
        (HEURISTIC, lambda: heuristic_scores(df["prompt"])),
        (ORACLE, lambda: oracle_router(q_weak, q_strong)),
    ):
        t0 = time.perf_counter()
        scores = make()
        seconds = time.perf_counter() - t0
        rows.append(_score(name, q_weak, q_strong, scores, seconds))
        kept[name] = scores
    # RouteLLM's evaluate.py averages its random router over 10 runs; so do we (seeds seed..seed+9)
    t0 = time.perf_counter()
    runs = [_score(RANDOM, q_weak, q_strong, random_router(len(df), seed=seed + i), 0.0) for i in range(random_runs)]
    rows.append(
        RouterScore(
            RANDOM,
            float(np.mean([r.apgr for r in runs])),
            float(np.mean([r.cpt50 for r in runs])),
            float(np.mean([r.cpt80 for r in runs])),
            time.perf_counter() - t0,
        )
    )
    return RouterEvaluation(
        df.attrs.get("benchmark", ""), len(df), float(q_weak.mean()), float(q_strong.mean()), tuple(rows), kept
    )


# ---------------------------------------------------------------------------- the article's claim


@dataclass(frozen=True)
class ArticleClaim:
    """At `share` strong calls chosen by a router: the share of the quality gap kept and the money
    saved against sending every call to the strong model (USD per query are means)."""

    benchmark: str
    share: float
    pgr: float  # share of the weak -> strong quality gap the router keeps
    quality: float  # accuracy of the routed system
    weak_accuracy: float
    strong_accuracy: float
    random_pgr: float  # what a random router keeps at the same share (= share, in expectation)
    oracle_pgr: float  # the best any router could keep at this share
    usd_all_weak: float
    usd_all_strong: float
    usd_routed: float
    saved: float  # 1 - usd_routed / usd_all_strong
    weak_price: ApiPrice
    strong_price: ApiPrice
    prices_data: str  # genai-prices version and its newest dated price change
    tokens: str  # how the token counts were obtained


def default_prices(when: datetime = PRICES_AS_OF) -> tuple[ApiPrice, ApiPrice]:
    """(weak, strong) prices from genai-prices for Mixtral-8x7B-like and GPT-4-1106-like models."""
    return (api_price(*PRICE_MODELS["weak"], when=when), api_price(*PRICE_MODELS["strong"], when=when))


def _token_counts(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Input tokens per prompt and output tokens per prompt for the weak and the strong model."""
    input_tokens = np.ceil(df["prompt"].str.len().to_numpy(float) / CHARS_PER_TOKEN)
    if {"mixtral_response_chars", "gpt4_response_chars"} <= set(df.columns):
        out_weak = np.ceil(df["mixtral_response_chars"].to_numpy(float) / CHARS_PER_TOKEN)
        out_strong = np.ceil(df["gpt4_response_chars"].to_numpy(float) / CHARS_PER_TOKEN)
        note = (
            "input: the question as shipped (without RouteLLM's 8 few-shot examples); output: each model's "
            f"recorded answer; both at {CHARS_PER_TOKEN:g} characters per token (OpenAI's rule of thumb)"
        )
    else:
        out_weak = out_strong = np.full(len(df), float(MMLU_OUTPUT_TOKENS))
        note = (
            "input: the question as shipped (without RouteLLM's 5 few-shot examples) at "
            f"{CHARS_PER_TOKEN:g} characters per token (OpenAI's rule of thumb); output: "
            f"{MMLU_OUTPUT_TOKENS} token, as RouteLLM generated it (max_new_tokens=1)"
        )
    return input_tokens, out_weak, out_strong, note


def article_claim_at_share(
    df: pd.DataFrame,
    share: float = 0.20,
    prices: tuple[ApiPrice, ApiPrice] | None = None,
    *,
    scores: Sequence[float] | np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
) -> ArticleClaim:
    """The article's claim on real data: with the top `share` of prompts (by `scores`, default the
    out-of-fold learned router) sent to the strong model, the quality gap kept and the money saved."""
    # prices default to default_prices(): genai-prices at PRICES_AS_OF
    if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise BadInput(f"share must be in [0, 1], got {share!r}", "e.g. share=0.2 for 20% strong calls")
    q_weak, q_strong = _qualities(df)
    ranking = out_of_fold_router_scores(df, folds=folds, seed=seed) if scores is None else np.asarray(scores, float)
    weak_price, strong_price = prices or default_prices()
    input_tokens, out_weak, out_strong, note = _token_counts(df)
    usd_weak = np.array([query_cost_api(weak_price, int(i), int(o)) for i, o in zip(input_tokens, out_weak)])
    usd_strong = np.array([query_cost_api(strong_price, int(i), int(o)) for i, o in zip(input_tokens, out_strong)])
    quality = quality_at_share(q_weak, q_strong, ranking, share)
    # the same ranking, ties and partial boundary prompt as the quality: "quality" here is USD per prompt
    usd_routed = quality_at_share(usd_weak, usd_strong, ranking, share)
    weak_mean, strong_mean = float(q_weak.mean()), float(q_strong.mean())
    oracle = quality_at_share(q_weak, q_strong, oracle_router(q_weak, q_strong), share)
    return ArticleClaim(
        benchmark=df.attrs.get("benchmark", ""),
        share=float(share),
        pgr=pgr(quality, weak_mean, strong_mean),
        quality=quality,
        weak_accuracy=weak_mean,
        strong_accuracy=strong_mean,
        random_pgr=pgr(quality_at_share(q_weak, q_strong, np.zeros(len(df)), share), weak_mean, strong_mean),
        oracle_pgr=pgr(oracle, weak_mean, strong_mean),
        usd_all_weak=float(usd_weak.mean()),
        usd_all_strong=float(usd_strong.mean()),
        usd_routed=usd_routed,
        saved=1.0 - usd_routed / float(usd_strong.mean()),
        weak_price=weak_price,
        strong_price=strong_price,
        prices_data=prices_data_info(PRICES_AS_OF if prices is None else None),
        tokens=note,
    )
