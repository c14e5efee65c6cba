"""Lesson 07's hybrid app: the article's `smart_routing` bound to real backends, priced, logged,
and shown live in an ipywidgets dashboard.

`HybridApp` routes each prompt with `helpers.routing.smart_routing` (timeouts, fall-back to the
small model when the large endpoint fails) and keeps, per call, the token counts a price needs.
Large calls are priced with genai-prices; each call also gets its always-large baseline: what
the prompt costs (and takes) on the large model, measured with a `baseline` call when the large
model did not answer it, else estimated from the same token counts at the large model's price.
`Dashboard` redraws counts per route, cumulative cost against that baseline, and latency after
every call.
"""

from __future__ import annotations

import contextlib
import html
import io
import random
import socket
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from .cost import ApiPrice, api_price, query_cost_api
from .errors import BadInput
from .evals import Task, open_prompts
from .results import Result, percentile
from .routing import FALLBACK_ERRORS, Decision, FallbackWarning, is_simple_task, smart_routing
from .settings import get_settings
from .validate import check_int

TABLE_STYLE = (
    "<style>.slm-dashboard table {border-collapse: collapse; font-size: 12px}"
    ".slm-dashboard th, .slm-dashboard td {padding: 1px 8px; text-align: left;"
    " border-bottom: 1px solid #ddd}</style>"
)
ROUTE_COLOURS = {"small": "#5b8e7d", "large": "#f4a259", "fell back": "#bc4b51"}


# --------------------------------------------------------------------------- prices and prompts


def price_for(model: str | None = None, *, default: str | None = None) -> tuple[ApiPrice, str]:
    """The genai-prices price of the large model, and one line saying what was priced.

    A large model genai-prices does not know (a local stand-in, a vLLM model) is priced as
    `default` (SLM_LARGE_MODEL, gpt-4o-mini unless set), and the note says so.
    """
    default = default or get_settings().large_model
    if model:
        try:
            price = api_price(model)
            return price, f"large calls priced as {price.provider}/{price.model}: {price.source}"
        except BadInput:
            pass
    price = api_price(default)
    why = f"{model} has no API price, so " if model else ""
    return price, f"{why}large calls priced as {price.provider}/{price.model}: {price.source}"


def mixed_tasks(n: int, *, seed: int = 0, kinds: Sequence[str] | None = None) -> list[Task]:
    """`n` tasks from the kit's prompt set, simple and complex (by `is_simple_task`) in the
    set's own proportion but at least one of each when n >= 2, in a seeded random order."""
    n = check_int("n", n, 1, None, "e.g. n=12")
    tasks = [t for t in open_prompts() if kinds is None or t.kind in kinds]
    if n > len(tasks):
        raise BadInput(f"asked for {n} tasks, the prompt set has {len(tasks)}", f"use n <= {len(tasks)}")
    rng = random.Random(seed)
    simple: list[Task] = []
    complex_: list[Task] = []
    for t in tasks:
        (simple if is_simple_task(t.prompt) else complex_).append(t)
    n_simple = round(n * len(simple) / len(tasks))
    if n >= 2:
        n_simple = min(max(n_simple, 1), n - 1)
    n_simple = min(n_simple, len(simple))
    picked = rng.sample(simple, n_simple) + rng.sample(complex_, n - n_simple)
    rng.shuffle(picked)
    return picked


def sample_prompts(n: int, *, seed: int = 0) -> list[str]:
    """The prompts of `mixed_tasks(n, seed=seed)`: a realistic batch for the dashboard."""
    return [t.prompt for t in mixed_tasks(n, seed=seed)]


# --------------------------------------------------------------------------- failing endpoints


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """A real loopback server that accepts connections and never answers: a hung endpoint.

    Yields an OpenAI-style base URL. Clients connect fine and then wait, so only a timeout
    saves them. The socket closes when the block ends.
    """
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes handshakes; nobody ever reads or replies
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    finally:
        server.close()


# --------------------------------------------------------------------------- the app


@dataclass
class Routed:
    """One routed request as the dashboard sees it: the routing Decision plus token counts."""

    decision: Decision
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None
    always_large_usd: float  # this prompt on the large model (measured, or the same tokens at its price)
    always_large_s: float | None = None  # seconds of this prompt on the large model, when measured
    baseline_measured: bool = False  # the always-large figures come from the large model's own call
    always_large_tokens: tuple[int, int] | None = None  # (input, output) tokens of that large-model answer

    @property
    def label(self) -> str:
        """'small', 'large' or 'fell back' (routed large, answered small)."""
        return "fell back" if self.decision.fell_back else self.decision.route

    @property
    def routed_to(self) -> str:
        """Where the router sent the prompt, whoever answered in the end."""
        return "large" if self.decision.fell_back else self.decision.route


@dataclass
class Totals:
    """What a batch of routed calls added up to."""

    calls: int
    small: int
    large: int
    fell_back: int
    cost_usd: float
    always_large_usd: float
    median_latency_s: dict[str, float]
    p95_latency_s: float | None
    latency_s: float = 0.0  # seconds of every routed call together
    always_large_s: float | None = None  # the same prompts on the large model (None: not all measured)
    baseline_measured: int = 0  # calls whose always-large figures were measured

    @property
    def saved_share(self) -> float | None:
        """Fraction of the always-large cost saved (None before any priced call)."""
        if self.always_large_usd <= 0:
            return None
        return 1.0 - self.cost_usd / self.always_large_usd


@dataclass
class HybridApp:
    """The article's smart_routing as a small app: route, time out, fall back, price, log.

    `small` and `large` map a prompt to a `Result` (e.g. `backend.generate` with fixed
    options). Small calls cost `small_usd_per_s` per second of measured call time (a local model's
    energy, an assumption you state) plus `small_usd_per_mtok` per token (0: no per-call fee);
    large calls cost what `price` charges for their tokens.

    `routing` is the routing function (helpers.routing.smart_routing, or a lesson's own with the
    same signature). With a `baseline` (the large tier's own call), every prompt the large model
    did not answer is also sent to it, outside the routed call's timing, so the always-large
    cost and time are *measured* from the large model's own tokens and seconds; without one they
    are estimated from the small answer's tokens.
    """

    small: Callable[[str], Result]
    large: Callable[[str], Result]
    price: ApiPrice
    router: Callable[[str], Any] = is_simple_task
    timeout_s: float = 60.0
    small_usd_per_mtok: float = 0.0
    small_usd_per_s: float = 0.0
    routing: Callable[..., Decision] = smart_routing
    baseline: Callable[[str], Result] | None = None
    log: list[Routed] = field(default_factory=list)

    def _usd(self, route: str, result: Any) -> float:
        m = getattr(result, "metrics", None)
        tokens_in, tokens_out = (m.prompt_tokens, m.output_tokens) if m else (0, 0)
        if route == "large":
            return query_cost_api(self.price, tokens_in, tokens_out)
        seconds = m.total_s if m else 0.0
        return (tokens_in + tokens_out) * self.small_usd_per_mtok / 1e6 + seconds * self.small_usd_per_s

    def ask(self, prompt: str, *, quiet: bool = False) -> Routed:
        """Route one prompt with smart_routing; log and return it. `quiet` hides the
        fall-back warning (the decision still records `fell_back` and the error)."""
        answered: dict[str, Result] = {}

        def via(route: str, fn: Callable[[str], Result]) -> Callable[[str], Result]:
            def call(p: str) -> Result:
                answered[route] = fn(p)
                return answered[route]

            return call

        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", FallbackWarning)
            decision = self.routing(
                prompt,
                small=via("small", self.small),
                large=via("large", self.large),
                router=self.router,
                timeout_s=self.timeout_s,
                cost_fn=self._usd,
            )
        result = answered.get(decision.route)
        m = getattr(result, "metrics", None)
        tokens_in, tokens_out = (m.prompt_tokens, m.output_tokens) if m else (0, 0)
        always_usd, always_s, measured, always_tokens = self._always_large(decision, result, prompt)
        routed = Routed(
            decision, tokens_in, tokens_out, getattr(m, "ttft_s", None), always_usd, always_s, measured, always_tokens
        )
        self.log.append(routed)
        return routed

    def _always_large(
        self, decision: Decision, result: Any, prompt: str
    ) -> tuple[float, float | None, bool, tuple[int, int]]:
        """(USD, seconds, measured?, tokens) of this prompt on the large model: the large call itself
        when it answered, else a call to `baseline`; without one (or when it fails) the small answer's
        tokens at the large price, time unknown."""
        source = result if decision.route == "large" and not decision.fell_back else None
        if source is None and self.baseline is not None:
            try:
                source = self.baseline(prompt)
            except FALLBACK_ERRORS:
                source = None
        if source is not None and getattr(source, "metrics", None) is not None:
            m = source.metrics
            tokens = (m.prompt_tokens, m.output_tokens)
            return query_cost_api(self.price, *tokens), m.total_s, True, tokens
        m = getattr(result, "metrics", None)
        tokens = (m.prompt_tokens, m.output_tokens) if m else (0, 0)
        return query_cost_api(self.price, *tokens), None, False, tokens

    def frame(self, last: int | None = None):
        """The decisions log as a DataFrame, one row per call (the `last` ones if given)."""
        import pandas as pd

        rows = []
        for i, r in enumerate(self.log, 1):
            d = r.decision
            rows.append(
                {
                    "call": i,
                    "prompt": d.prompt if len(d.prompt) <= 48 else d.prompt[:45] + "...",
                    "routed_to": r.routed_to,
                    "route": r.label,
                    "model": d.model,
                    "reason": d.reason,
                    "latency_s": round(d.latency_s, 2),
                    "tokens_in": r.prompt_tokens,
                    "tokens_out": r.output_tokens,
                    "cost_usd": d.cost_usd,
                    "always_large_usd": r.always_large_usd,
                    "always_large_s": r.always_large_s,
                    "baseline": "measured" if r.baseline_measured else "estimated",
                    "error": d.error or "",
                }
            )
        df = pd.DataFrame(
            rows,
            columns=[
                "call",
                "prompt",
                "routed_to",
                "route",
                "model",
                "reason",
                "latency_s",
                "tokens_in",
                "tokens_out",
                "cost_usd",
                "always_large_usd",
                "always_large_s",
                "baseline",
                "error",
            ],
        ).set_index("call")
        return df.tail(last) if last else df

    def totals(self) -> Totals:
        """Counts per route, cost against the always-large baseline, latency median and p95."""
        entries = self.log
        labels = [r.label for r in entries]
        per_route: dict[str, list[float]] = {}
        large_s = [r.always_large_s for r in entries if r.always_large_s is not None]
        for r in entries:
            per_route.setdefault(r.label, []).append(r.decision.latency_s)
        return Totals(
            calls=len(entries),
            small=labels.count("small"),
            large=labels.count("large"),
            fell_back=labels.count("fell back"),
            cost_usd=sum(r.decision.cost_usd or 0.0 for r in entries),
            always_large_usd=sum(r.always_large_usd for r in entries),
            median_latency_s={k: statistics.median(v) for k, v in per_route.items()},
            p95_latency_s=percentile([r.decision.latency_s for r in entries], 95),
            latency_s=sum(r.decision.latency_s for r in entries),
            always_large_s=sum(large_s) if entries and len(large_s) == len(entries) else None,
            baseline_measured=sum(r.baseline_measured for r in entries),
        )

    def mean_costs(self, price: ApiPrice | None = None) -> tuple[float, float, float] | None:
        """Mean USD per call (small answer of a simple prompt, large answer of a simple prompt,
        large answer of a complex prompt), large answers priced at `price` (default: the app's)
        from their measured tokens; None until both routes were used."""
        simple = [r for r in self.log if r.routed_to == "small"]
        complex_ = [r for r in self.log if r.routed_to == "large"]
        if not simple or not complex_:
            return None

        def large_usd(r: Routed) -> float:
            if price is None or r.always_large_tokens is None:
                return r.always_large_usd
            return query_cost_api(price, *r.always_large_tokens)

        return (
            statistics.mean(r.decision.cost_usd or 0.0 for r in simple),
            statistics.mean(large_usd(r) for r in simple),
            statistics.mean(large_usd(r) for r in complex_),
        )

    def saving_at_mix(self, simple_share: float) -> float | None:
        """Share of the always-large cost saved if `simple_share` of prompts were simple, using
        the mean per-call costs measured for each route (None until both routes were used).

        The large route is costed at its always-large price even for calls that fell back.
        """
        if not 0.0 <= simple_share <= 1.0:
            raise BadInput(f"simple_share must be in [0, 1], got {simple_share}", "e.g. 0.8 for 80% routine")
        costs = self.mean_costs()
        if costs is None:
            return None
        small_cost, simple_large, complex_large = costs
        always = simple_share * simple_large + (1 - simple_share) * complex_large
        if always <= 0:
            return None
        return 1.0 - (simple_share * small_cost + (1 - simple_share) * complex_large) / always


# --------------------------------------------------------------------------- the dashboard


def _money(usd: float) -> str:
    return f"${usd:.6f}" if usd < 0.01 else f"${usd:,.4f}"


def dashboard_figure(app: HybridApp, *, title: str = ""):
    """Three panels: calls per route, cumulative cost vs always-large, latency per call."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.0), dpi=80)
    ax_count, ax_cost, ax_lat = fig.subplots(1, 3)
    totals = app.totals()
    names = ["small", "large", "fell back"]
    counts = [totals.small, totals.large, totals.fell_back]
    ax_count.bar(names, counts, color=[ROUTE_COLOURS[n] for n in names])
    ax_count.set_title("calls per route")
    ax_count.set_ylim(0, max(counts + [1]) * 1.2)
    ax_count.yaxis.set_major_locator(MaxNLocator(integer=True))
    for x, c in enumerate(counts):
        ax_count.text(x, c, str(c), ha="center", va="bottom")

    calls = list(range(1, len(app.log) + 1))
    routed = always = 0.0
    routed_cum, always_cum = [], []
    for r in app.log:
        routed += r.decision.cost_usd or 0.0
        always += r.always_large_usd
        routed_cum.append(routed * 1e3)
        always_cum.append(always * 1e3)
    ax_cost.plot(calls, always_cum, "--", color="grey", label="always large")
    ax_cost.plot(calls, routed_cum, "-o", color=ROUTE_COLOURS["large"], ms=3, label="routed")
    ax_cost.set_title(f"cumulative cost ({app.price.model} prices)")
    ax_cost.set_xlabel("call")
    ax_cost.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_cost.set_ylabel("USD for 1,000x this batch")
    ax_cost.legend(fontsize=8)

    for label in names:
        xs = [i for i, r in zip(calls, app.log) if r.label == label]
        ys = [r.decision.latency_s for r in app.log if r.label == label]
        if xs:
            ax_lat.scatter(xs, ys, color=ROUTE_COLOURS[label], label=label, s=18)
    ax_lat.set_title("latency per call")
    ax_lat.set_xlabel("call")
    ax_lat.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lat.set_ylabel("seconds")
    if app.log:
        ax_lat.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    """A matplotlib Figure as PNG bytes (for an ipywidgets Image: works with any backend)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def summary_html(totals: Totals, price: ApiPrice) -> str:
    """One line of the dashboard: counts, cost against always-large, latency."""
    saved = totals.saved_share
    medians = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(totals.median_latency_s.items()))
    p95 = f"{totals.p95_latency_s:.2f} s" if totals.p95_latency_s is not None else "-"
    return (
        f"<b>{totals.calls}</b> calls: <b>{totals.small}</b> small, <b>{totals.large}</b> large, "
        f"<b>{totals.fell_back}</b> fell back &nbsp;|&nbsp; cost {_money(totals.cost_usd)} vs "
        f"always-large {_money(totals.always_large_usd)}"
        + (f" (<b>{saved:.0%}</b> saved)" if saved is not None else "")
        + f" at {price.model} prices &nbsp;|&nbsp; median latency: {medians or '-'}; p95 {p95}"
    )


class Dashboard:
    """A live view of a HybridApp: progress, counts per route, cost vs always-large, latency,
    and the last decisions. `run(prompts)` routes a batch and redraws after every call."""

    def __init__(self, app: HybridApp, *, title: str = "Hybrid app: live routing", table_rows: int = 6) -> None:
        import ipywidgets as widgets

        self.app = app
        self.title = title
        self.table_rows = table_rows
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="routed", bar_style="info")
        self.status = widgets.HTML()
        self.summary = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.table = widgets.HTML()
        self.widget = widgets.VBox(
            [
                widgets.HTML(f"<h3>{title}</h3>"),
                widgets.HBox([self.progress, self.status]),
                self.summary,
                self.chart,
                self.table,
            ]
        )
        self.widget.add_class("slm-dashboard")
        self.refresh()

    def refresh(self) -> None:
        """Redraw every panel from the app's log."""
        self.summary.value = summary_html(self.app.totals(), self.app.price)
        self.chart.value = figure_png(dashboard_figure(self.app))
        cols = ["prompt", "route", "latency_s", "tokens_out", "cost_usd", "error"]
        table = self.app.frame(last=self.table_rows)[cols].to_html(
            border=0, float_format=lambda x: f"{x:.7f}" if x < 0.01 else f"{x:.2f}"
        )
        self.table.value = TABLE_STYLE + f"<b>last {self.table_rows} decisions</b>" + table

    def run(self, prompts: Sequence[str], *, quiet: bool = True) -> list[Routed]:
        """Route every prompt through the app, redrawing after each call."""
        prompts = list(prompts)
        before = len(self.app.log)
        self.progress.max = max(before + len(prompts), 1)
        self.progress.value = before
        self.progress.bar_style = "info"
        done = []
        for i, prompt in enumerate(prompts, 1):
            self.status.value = f"&nbsp;call {before + i}/{before + len(prompts)}: <i>{html.escape(prompt[:60])}</i>"
            done.append(self.app.ask(prompt, quiet=quiet))
            self.progress.value = before + i
            self.refresh()
        self.status.value = f"&nbsp;done: {len(self.app.log)} calls"
        self.progress.bar_style = "success"
        return done

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
