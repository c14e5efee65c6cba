"""Routing between a small and a large model, and the metrics that say if it pays off.

The source article's sketch is `if is_simple_task(prompt): small else large`. This module
gives that heuristic (`is_simple_task`, with `task_features` to show why), a learned router
(TF-IDF + logistic regression), a cascade (answer small, escalate when a check fails), a
robust `smart_routing`, and RouteLLM's metrics (Ong et al. 2024, arXiv 2406.18665):

- quality(s): mean quality when the share s of prompts the router ranks highest go to the
  large model and the rest to the small one;
- PGR = (quality(s) - q_small) / (q_large - q_small), the share of the quality gap recovered;
- APGR: PGR averaged over s = 0%, 10%, ..., 100% (trapezoid rule); a random router scores 0.5;
- CPT(x%): the smallest share of large-model calls that reaches PGR = x% (interpolated).

All of them read one curve, `quality_curves` (quality and PGR per router and share), through
`area_under` (APGR) and `first_crossing` (CPT, `share_for_quality`).

Convention: router *scores* passed to the metrics mean "how much this prompt needs the
large model" (higher -> large), like RouteLLM's strong-model win rate.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeAlias

import numpy as np

from .errors import BackendUnavailable, BadInput, MissingKey, ModelNotFound

logger = logging.getLogger(__name__)

SHARES = np.round(np.linspace(0.0, 1.0, 11), 10)  # 0%, 10%, ..., 100% large-model calls
#: Numbers per prompt (qualities, scores, shares): a list or a NumPy array, read with np.asarray.
Floats: TypeAlias = Sequence[float] | np.ndarray
LONG_PROMPT_WORDS = 120

# Phrases that signal reasoning, as the article's sketch suggests (matched as whole words).
COMPLEX_KEYWORDS = (
    "explain why",
    "why does",
    "why do",
    "why is",
    "prove",
    "proof",
    "step by step",
    "analyze",
    "analyse",
    "analysis",
    "compare",
    "derive",
    "justify",
    "evaluate",
    "critique",
    "design",
    "debug",
    "optimize",
    "optimise",
    "trade-off",
    "trade-offs",
    "tradeoff",
    "implement",
    "algorithm",
    "strategy",
)
_KEYWORD_RES = [(k, re.compile(rf"\b{re.escape(k)}\b")) for k in COMPLEX_KEYWORDS]  # once, not per prompt
_CODE_RE = re.compile(
    r"```|(?-i:^\s*(?:def|class|import|from)\s+\w)|\bfunction\s*\w*\s*\(|[{};]\s*$|"
    r"\b(?:python|javascript|typescript|java|c\+\+|rust|sql|regex|code|function|script|"
    r"program|bug|compile|stack trace)\b",
    re.I | re.M,
)
_MATH_RE = re.compile(
    r"\d\s*(?:[-+*/x×÷^%]|times|plus|minus|divided by)\s*\(?\d|\d\s*%|\b(?:calculate|compute|solve|equation|integral|"
    r"derivative|how many|how much|sum of|product of|percent|average)\b",
    re.I,
)
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)?")


# ---------------------------------------------------------------------------- heuristic router


def task_features(prompt: str, *, max_words: int = LONG_PROMPT_WORDS) -> dict[str, Any]:
    """What the heuristic router looks at, and `reasons` it would call the prompt complex."""
    if not isinstance(prompt, str):
        raise BadInput(f"prompt must be a string, got {type(prompt).__name__}", "pass the prompt text")
    low = prompt.lower()
    words = len(prompt.split())
    keywords = [k for k, pattern in _KEYWORD_RES if pattern.search(low)]
    code = bool(_CODE_RE.search(prompt))
    math_ = bool(_MATH_RE.search(prompt))
    reasons = []
    if words > max_words:
        reasons.append(f"long ({words} words > {max_words})")
    if keywords:
        reasons.append("reasoning keywords: " + ", ".join(keywords))
    if code:
        reasons.append("code")
    if math_:
        reasons.append("maths")
    return {
        "words": words,
        "chars": len(prompt),
        "lines": prompt.count("\n") + 1,
        "numbers": len(_NUMBER_RE.findall(prompt)),
        "questions": prompt.count("?"),
        "keywords": keywords,
        "code": code,
        "math": math_,
        "long": words > max_words,
        "reasons": reasons,
        "complexity": len(reasons),
    }


def is_simple_task(prompt: str, *, max_words: int = LONG_PROMPT_WORDS) -> bool:
    """The article's heuristic: short, no reasoning keywords, no code, no maths -> simple."""
    return not task_features(prompt, max_words=max_words)["reasons"]


def explain(prompt: str) -> str:
    """One line saying what `is_simple_task` decided and why."""
    reasons = task_features(prompt)["reasons"]
    return "complex: " + "; ".join(reasons) if reasons else "simple: short, no reasoning keywords, code or maths"


def heuristic_scores(prompts: Iterable[str]) -> np.ndarray:
    """Large-model scores from the heuristic: the number of complexity signals (0 = simple)."""
    return np.array([task_features(p)["complexity"] for p in prompts], dtype=float)


# ---------------------------------------------------------------------------- learned router


@dataclass
class RoutingExample:
    """A prompt with the quality each model reached on it (0/1, or a float such as a rating)."""

    prompt: str
    small_correct: float
    large_correct: float
    category: str = ""


def _as_example(item: Any) -> RoutingExample:
    if isinstance(item, RoutingExample):
        return item
    if isinstance(item, dict):
        return RoutingExample(item["prompt"], item["small_correct"], item["large_correct"], item.get("category", ""))
    prompt, small, large = item[:3]
    return RoutingExample(prompt, small, large)


def _normalise_text(text: str) -> str:
    """Lower-case, map digits to 0 (so 17*23 looks like 42*91) and add a length-bucket token."""
    bucket = min(int(math.log2(len(text.split()) + 1)), 12)
    return re.sub(r"\d", "0", text.lower()) + f" zzlen{bucket}"


#: Character n-grams (within words) for the learned router: prompts are short and few, and the words
#: of one task kind rarely repeat between prompts while their pieces do ("def", "answer:", "exactly").
CHAR_NGRAMS = (2, 5)
WORD_NGRAMS = (1, 2)


class LearnedRouter:
    """TF-IDF + logistic regression predicting P(the small model is enough) for a prompt.

    "Enough" means the small model did at least as well as the large one on that prompt
    (both right, both wrong, or only the small one right). Train on recorded evals.

    Features are TF-IDF weights of character n-grams inside words (`analyzer="char"`, 2-5 letters;
    `"word"`: words and word pairs). A few dozen short prompts share few whole words but many pieces
    of them, so character n-grams generalise from so little data where words overfit to the topic
    ("Australia", "muffins"). `C=10` regularises less than scikit-learn's default of 1: with
    thousands of small unit-length TF-IDF features and ~50 training prompts, C=1 shrinks every
    weight until the scores barely leave the base rate. Out of fold on six answer sets of the course's
    pair it beat random by 0.127-0.164 APGR at lesson 06's split, where words with C=1 gave 0.060-0.160;
    C from 3 to 30 or n-grams of 1-4 or 3-5 letters gave the same within noise (docs/offline-pair.md).
    """

    def __init__(
        self,
        *,
        C: float = 10.0,
        analyzer: str = "char",
        ngram_range: tuple[int, int] | None = None,
        threshold: float = 0.5,
    ) -> None:
        if analyzer not in ("char", "word"):
            raise BadInput(f"analyzer must be 'char' or 'word', got {analyzer!r}", "LearnedRouter(analyzer='char')")
        self.C = C
        self.analyzer = analyzer
        self.ngram_range = ngram_range or (CHAR_NGRAMS if analyzer == "char" else WORD_NGRAMS)
        self.threshold = threshold  # route() sends a prompt small when P(small enough) >= this
        self.pipeline: Any = None  # a fitted sklearn Pipeline (sklearn ships no type information)

    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        pieces = {"analyzer": "char_wb"} if self.analyzer == "char" else {"token_pattern": r"(?u)\b\w+\b|[^\w\s]"}
        return TfidfVectorizer(preprocessor=_normalise_text, ngram_range=self.ngram_range, sublinear_tf=True, **pieces)

    def fit(self, examples: Iterable[RoutingExample | tuple | dict]) -> "LearnedRouter":
        """Train on (prompt, small_correct, large_correct) records; returns self."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        data = [_as_example(e) for e in examples]
        y = np.array([float(e.small_correct) >= float(e.large_correct) for e in data], dtype=int)
        if len(data) < 4 or y.min() == y.max():
            raise BadInput(
                f"need prompts where the small model was enough and prompts where it was not "
                f"(got {len(data)} examples, {int(y.sum())} 'small enough')",
                "record both models on a mixed prompt set (easy and hard) with run_eval first",
            )
        self.pipeline = make_pipeline(self._vectorizer(), LogisticRegression(C=self.C, max_iter=2000))
        self.pipeline.fit([e.prompt for e in data], y)
        return self

    def scores(self, prompts: Sequence[str]) -> np.ndarray:
        """P(small model is enough) for each prompt."""
        if self.pipeline is None:
            raise BadInput("the router is not trained yet", "call router.fit(examples) first")
        return self.pipeline.predict_proba(list(prompts))[:, 1]

    def score(self, prompt: str) -> float:
        """P(small model is enough) for one prompt."""
        return float(self.scores([prompt])[0])

    def large_scores(self, prompts: Sequence[str]) -> np.ndarray:
        """1 - P(small enough): the score the metrics expect (higher -> large model)."""
        return 1.0 - self.scores(prompts)

    def route(self, prompt: str, threshold: float | None = None) -> str:
        """ "small" when P(small enough) >= threshold (default: self.threshold), else "large"."""
        limit = self.threshold if threshold is None else threshold
        return "small" if self.score(prompt) >= limit else "large"

    def predict(self, prompts: Sequence[str], threshold: float | None = None) -> list[str]:
        """Routes for many prompts."""
        limit = self.threshold if threshold is None else threshold
        return ["small" if s >= limit else "large" for s in self.scores(prompts)]

    def __call__(self, prompt: str) -> str:
        return self.route(prompt)


def random_router(n: int | Sequence[str], *, seed: int = 0) -> np.ndarray:
    """Scores of the random baseline: uniform noise, one per prompt (or n prompts)."""
    count = n if isinstance(n, int) else len(n)
    return np.random.default_rng(seed).random(count)


def oracle_router(q_small: Floats, q_large: Floats) -> np.ndarray:
    """Scores of the best possible router, which knows the answers: the large model's gain."""
    return np.asarray(q_large, dtype=float) - np.asarray(q_small, dtype=float)


# ---------------------------------------------------------------------------- metrics


def _arrays(q_small, q_large, scores=None):
    qs, ql = np.asarray(q_small, dtype=float), np.asarray(q_large, dtype=float)
    arrays = [qs, ql] + ([np.asarray(scores, dtype=float)] if scores is not None else [])
    if qs.ndim != 1 or len(qs) == 0 or any(a.shape != qs.shape for a in arrays):
        raise BadInput(
            f"need equal-length, non-empty 1-D arrays, got shapes {[a.shape for a in arrays]}",
            "pass one small quality, one large quality and one score per prompt",
        )
    if any(np.isnan(a).any() for a in arrays):
        raise BadInput("the qualities or scores contain NaN", "drop unscored prompts first")
    return arrays


def _score_rows(scores: Any) -> list:
    """A router's scores as a list of rows: one row per prompt, or several rows (one per split)."""
    if isinstance(scores, np.ndarray):
        return list(scores) if scores.ndim == 2 else [scores]
    scores = list(scores)
    return scores if scores and np.ndim(scores[0]) == 1 else [scores]


def quality_at_share(q_small: Floats, q_large: Floats, scores: Floats, share: float) -> float:
    """Mean quality when the `share` of prompts with the highest scores go to the large model.

    Ties in the scores are broken at random *in expectation* (a constant-score router is the
    random router), and share * n need not be whole: the boundary prompt counts in part.
    """
    qs, ql, sc = _arrays(q_small, q_large, scores)
    if not 0.0 <= share <= 1.0:
        raise BadInput(f"share must be in [0, 1], got {share}", "e.g. 0.3 for 30% large-model calls")
    n = len(qs)
    order = np.argsort(-sc, kind="stable")
    gains = (ql - qs)[order]
    _, group, size = np.unique(sc[order], return_inverse=True, return_counts=True)
    gains = (np.bincount(group, weights=gains) / size)[group]  # expected gain inside tie groups
    k = round(share * n, 9)
    whole = int(math.floor(k))
    gain = gains[:whole].sum() + ((k - whole) * gains[whole] if whole < n else 0.0)
    return float((qs.sum() + gain) / n)


def pgr(q_router: float, q_small: float, q_large: float) -> float:
    """Performance gap recovered: (q_router - q_small) / (q_large - q_small)."""
    if math.isclose(q_large, q_small, abs_tol=1e-12):
        raise BadInput(
            f"PGR is undefined: both models score {q_small:.4g}",
            "routing cannot help when the models are equally good on these prompts",
        )
    return (q_router - q_small) / (q_large - q_small)


def area_under(x: Floats, y: Floats) -> float:
    """The area under y(x) by the trapezoid rule: APGR when y is PGR over shares 0..1. NaN if y has NaN."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


def first_crossing(x: Floats, y: Floats, target: float) -> float:
    """The smallest x at which y reaches `target`, interpolated linearly between grid points;
    NaN if y never does (or has NaN: no quality gap). CPT when y is PGR over shares.

    >>> first_crossing([0.0, 0.5, 1.0], [0.0, 0.4, 1.0], 0.7)
    0.75
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.isnan(y).any():
        return math.nan
    hits = np.nonzero(y >= target - 1e-12)[0]
    if len(hits) == 0:
        return math.nan
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))


def quality_curves(
    q_small: Floats,
    q_large: Floats,
    scores: Mapping[str, Floats],
    shares: Floats = SHARES,
    *,
    baselines: bool = True,
):
    """Quality and PGR against the share of large-model calls for each router in `scores`
    (higher score -> large), plus "random" (its expectation: all scores tied) and "oracle"
    unless baselines=False. Long format: router, share, quality, pgr. PGR is NaN when the
    tiers are equally good (no gap to recover). The one curve every routing metric reads.

    A router's scores may be one row per prompt or several rows (shape repeats x prompts, e.g.
    `out_of_fold_scores(..., repeats=10)`): its curve is then the mean of the rows' curves, as
    random's is the mean over every order."""
    import pandas as pd

    qs, ql = _arrays(q_small, q_large)
    no_gap = math.isclose(ql.mean(), qs.mean(), abs_tol=1e-12)
    all_scores = dict(scores)
    if baselines:
        all_scores.update(random=np.zeros_like(qs), oracle=oracle_router(qs, ql))
    rows = []
    for name, sc in all_scores.items():
        rows_of_scores = [_arrays(qs, ql, row)[2] for row in _score_rows(sc)]
        for s in shares:
            q = float(np.mean([quality_at_share(qs, ql, row, float(s)) for row in rows_of_scores]))
            rows.append(
                {
                    "router": name,
                    "share": float(s),
                    "quality": q,
                    "pgr": math.nan if no_gap else pgr(q, qs.mean(), ql.mean()),
                }
            )
    return pd.DataFrame(rows, columns=["router", "share", "quality", "pgr"])


def _pgr_curve(q_small, q_large, scores, shares) -> tuple[np.ndarray, np.ndarray]:
    """(shares, PGR) of one router on a grid from 0 to 1; BadInput when there is no gap."""
    shares = np.asarray(shares, dtype=float)
    if shares[0] != 0.0 or shares[-1] != 1.0 or np.any(np.diff(shares) <= 0):
        raise BadInput("shares must rise from 0 to 1", "use the default grid 0, 0.1, ..., 1")
    d = quality_curves(q_small, q_large, {"router": scores}, shares, baselines=False)
    p = d["pgr"].to_numpy()
    if np.isnan(p).any():
        pgr(0.0, float(np.mean(q_small)), float(np.mean(q_large)))  # raises: PGR is undefined
    return shares, p


def apgr(q_small: Floats, q_large: Floats, scores: Floats, shares: Floats = SHARES) -> float:
    """Average PGR over large-model shares 0..100% (trapezoid rule). Random = 0.5, oracle > it."""
    return area_under(*_pgr_curve(q_small, q_large, scores, shares))


def cpt(
    q_small: Floats,
    q_large: Floats,
    scores: Floats,
    target: float = 0.5,
    shares: Floats = SHARES,
) -> float:
    """Call-performance threshold: the smallest share of large-model calls whose PGR reaches
    `target` (0.5 for CPT(50%)), interpolated linearly between grid points; NaN if never."""
    return first_crossing(*_pgr_curve(q_small, q_large, scores, shares), target)


def router_table(curves, *, share: float = 0.2, cost_small: float | None = None, cost_large: float | None = None):
    """Per router of `quality_curves`: APGR, CPT(50%), CPT(80%) and quality / PGR at one share of
    large calls (the seed's 20%), with the cost saved against always-large when costs are given.
    Metrics that need a quality gap are NaN when there is none."""
    import pandas as pd

    rows = []
    for name, d in curves.groupby("router", sort=False):
        x, p = d["share"].to_numpy(), d["pgr"].to_numpy()
        row = {
            "router": name,
            "APGR": area_under(x, p),
            "CPT(50%)": first_crossing(x, p, 0.5),
            "CPT(80%)": first_crossing(x, p, 0.8),
            f"quality@{share:.0%}": float(np.interp(share, x, d["quality"].to_numpy())),
            f"PGR@{share:.0%}": float(np.interp(share, x, p)),
        }
        if cost_small is not None and cost_large:
            row[f"cost saved@{share:.0%}"] = cost_saved(share, cost_small, cost_large)
        rows.append(row)
    return pd.DataFrame(rows).set_index("router")


def share_for_quality(curves, target: float):
    """Per router of `quality_curves`: the smallest share of large-model calls whose quality
    reaches `target` (interpolated between grid points); NaN when it never does."""
    import pandas as pd

    out = {
        name: first_crossing(d["share"].to_numpy(), d["quality"].to_numpy(), target)
        for name, d in curves.groupby("router", sort=False)
    }
    return pd.Series(out, name=f"share for quality {target:.3f}")


def cost_saved(share: float, cost_small: float, cost_large: float, *, small_always: bool = False) -> float:
    """Fraction of the all-large cost saved when `share` of calls go to the large model.

    With `small_always` (a cascade) every prompt also pays for the small model."""
    if cost_large <= 0 or cost_small < 0 or not 0.0 <= share <= 1.0:
        raise BadInput(
            f"need cost_large > 0, cost_small >= 0 and 0 <= share <= 1 (got {cost_large}, {cost_small}, {share})",
            "pass costs per query in USD",
        )
    routed = share * cost_large + (1.0 if small_always else 1.0 - share) * cost_small
    return 1.0 - routed / cost_large


# ---------------------------------------------------------------------------- serving


class FallbackWarning(UserWarning):
    """The large model failed and the small model answered instead."""


FALLBACK_ERRORS = (
    BackendUnavailable,
    MissingKey,
    ModelNotFound,
    TimeoutError,
    concurrent.futures.TimeoutError,
    ConnectionError,
)


@dataclass
class Decision:
    """One routed request: where it went, why, how long it took, what it cost, the answer."""

    route: str  # "small" or "large": the model whose answer is returned
    reason: str
    latency_s: float
    cost_usd: float | None  # None when no cost function was given
    fell_back: bool
    text: str
    prompt: str = ""
    model: str = ""
    error: str | None = None  # what went wrong with the large model, when it did


def _text(result: Any) -> str:
    return result if isinstance(result, str) else getattr(result, "text", str(result))


def _call_with_timeout(fn: Callable[[str], Any], prompt: str, timeout_s: float) -> Any:
    """Call fn(prompt), giving up after timeout_s. The worker thread cannot be killed: it
    finishes in the background (each backend also has its own network timeout)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn, prompt).result(timeout=timeout_s)
    finally:
        pool.shutdown(wait=False)


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or "no answer within the timeout"
    return f"{type(exc).__name__}: {message}"


def _record(decision: Decision, log: list | Callable[[Decision], Any] | None) -> Decision:
    logger.info(
        "route=%s fell_back=%s latency=%.3fs reason=%s",
        decision.route,
        decision.fell_back,
        decision.latency_s,
        decision.reason,
    )
    if isinstance(log, list):
        log.append(decision)
    elif callable(log):
        log(decision)
    return decision


def _cost(cost_fn, route: str, result: Any) -> float | None:
    return None if cost_fn is None else float(cost_fn(route, result))


def _timeout(timeout_s: float | None) -> float:
    if timeout_s is None:
        from .settings import get_settings

        return get_settings().timeout
    if timeout_s <= 0:
        raise BadInput(f"timeout_s must be > 0, got {timeout_s}", "e.g. timeout_s=30")
    return timeout_s


def _ask_router(router: Callable[[str], Any], prompt: str) -> tuple[str, str]:
    if isinstance(router, LearnedRouter):
        p = router.score(prompt)
        route = "small" if p >= router.threshold else "large"
        return route, f"learned router: P(small enough) = {p:.2f} vs threshold {router.threshold:.2f}"
    out = router(prompt)
    if isinstance(out, (bool, np.bool_)):
        route = "small" if out else "large"
    elif out in ("small", "large"):
        route = out
    else:
        raise BadInput(f"the router returned {out!r}", 'a router returns True/False (simple?) or "small"/"large"')
    if router is is_simple_task:
        return route, explain(prompt)
    return route, f"{getattr(router, '__name__', type(router).__name__)} chose {route}"


def smart_routing(
    prompt: str,
    *,
    small: Callable[[str], Any],
    large: Callable[[str], Any],
    router: Callable[[str], Any] = is_simple_task,
    timeout_s: float | None = None,
    log: list | Callable[[Decision], Any] | None = None,
    cost_fn: Callable[[str, Any], float] | None = None,
) -> Decision:
    """The article's `smart_routing`, made robust: route with `router`, and when the large
    model fails (unreachable, no key, model missing, slower than `timeout_s`) answer with the
    small model and warn. Every decision is appended to `log` (a list or a callback).

    `small`/`large` map a prompt to a Result (or text); `cost_fn(route, result)` prices a call.
    """
    t0 = time.perf_counter()
    route, reason = _ask_router(router, prompt)
    if route == "large":
        try:
            result = _call_with_timeout(large, prompt, _timeout(timeout_s))
            return _record(
                Decision(
                    "large",
                    reason,
                    time.perf_counter() - t0,
                    _cost(cost_fn, "large", result),
                    False,
                    _text(result),
                    prompt,
                    getattr(result, "model", ""),
                ),
                log,
            )
        except FALLBACK_ERRORS as exc:
            error = _describe(exc)
            warnings.warn(
                f"the large model failed ({error}); answering with the small model", FallbackWarning, stacklevel=2
            )
            result = small(prompt)
            return _record(
                Decision(
                    "small",
                    reason + "; large failed -> small",
                    time.perf_counter() - t0,
                    _cost(cost_fn, "small", result),
                    True,
                    _text(result),
                    prompt,
                    getattr(result, "model", ""),
                    error,
                ),
                log,
            )
    result = small(prompt)
    return _record(
        Decision(
            "small",
            reason,
            time.perf_counter() - t0,
            _cost(cost_fn, "small", result),
            False,
            _text(result),
            prompt,
            getattr(result, "model", ""),
        ),
        log,
    )


def cascade(
    prompt: str,
    small_fn: Callable[[str], Any],
    large_fn: Callable[[str], Any],
    check_fn: Callable[[str, str], bool],
    *,
    timeout_s: float | None = None,
    log: list | Callable[[Decision], Any] | None = None,
    cost_fn: Callable[[str, Any], float] | None = None,
) -> Decision:
    """Answer with the small model; escalate to the large one when `check_fn(prompt, answer)`
    is False. Costs add up (the small call is always paid); a failing large model falls back."""
    t0 = time.perf_counter()
    small_result = small_fn(prompt)
    small_text = _text(small_result)
    small_cost = _cost(cost_fn, "small", small_result)
    if check_fn(prompt, small_text):
        return _record(
            Decision(
                "small",
                "small answer passed the check",
                time.perf_counter() - t0,
                small_cost,
                False,
                small_text,
                prompt,
                getattr(small_result, "model", ""),
            ),
            log,
        )
    try:
        result = _call_with_timeout(large_fn, prompt, _timeout(timeout_s))
    except FALLBACK_ERRORS as exc:
        error = _describe(exc)
        warnings.warn(
            f"the large model failed ({error}); keeping the small model's answer", FallbackWarning, stacklevel=2
        )
        return _record(
            Decision(
                "small",
                "check failed; large failed -> kept small answer",
                time.perf_counter() - t0,
                small_cost,
                True,
                small_text,
                prompt,
                getattr(small_result, "model", ""),
                error,
            ),
            log,
        )
    large_cost = _cost(cost_fn, "large", result)
    total = None if small_cost is None or large_cost is None else small_cost + large_cost  # None: no cost_fn
    return _record(
        Decision(
            "large",
            "small answer failed the check -> escalated",
            time.perf_counter() - t0,
            total,
            False,
            _text(result),
            prompt,
            getattr(result, "model", ""),
        ),
        log,
    )


_REFUSAL_RE = re.compile(r"^\s*(?:i'?m sorry|sorry, |i cannot|i can'?t|as an ai)", re.I)


def basic_check(prompt: str, answer: str) -> bool:
    """A cheap check for cascades: a non-empty, non-refusing answer that contains a number
    when the prompt is maths and code that parses when the prompt asks for code."""
    import ast

    from .evals import extract_code, extract_number

    if not answer or not answer.strip() or _REFUSAL_RE.search(answer):
        return False
    features = task_features(prompt)
    if features["code"]:
        code = extract_code(answer)
        try:
            tree = ast.parse(code)
        except SyntaxError:
            return False
        if not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in ast.walk(tree)):
            return False
    if features["math"] and extract_number(answer) is None:
        return False
    return True


def measure_overhead(router: Callable[[str], Any], prompts: Sequence[str], *, repeats: int = 3) -> float:
    """Seconds one routing decision takes (mean over `repeats` passes over `prompts`)."""
    prompts = list(prompts)
    if not prompts or repeats < 1:
        raise BadInput("need at least one prompt and repeats >= 1", "pass e.g. [t.prompt for t in open_prompts()]")
    router(prompts[0])  # warm-up: lazy imports and caches are not routing cost
    t0 = time.perf_counter()
    for _ in range(repeats):
        for p in prompts:
            router(p)
    return (time.perf_counter() - t0) / (repeats * len(prompts))


def decisions_frame(decisions: Iterable[Decision]):
    """Logged decisions as a DataFrame (for the lesson 07 dashboard)."""
    from dataclasses import asdict

    import pandas as pd

    return pd.DataFrame([asdict(d) for d in decisions])
