"""An interactive playground (ipywidgets): try a model by hand and watch the numbers.

`Playground`: a model picker filled from the connected server, a prompt box, the answer
streaming in, and live time to first token, tokens/s and what the call would cost at an API
model's price (genai-prices). `ThresholdExplorer`: a routing-threshold slider that redraws
the cost-quality point of a router on measured data (lesson 06's curve, one point at a time).

Both work headless too: `Playground.send()` returns the `Result`, `ThresholdExplorer.point()`
returns the numbers, so tests and papermill runs check the same logic the widgets show.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .backends import Backend
from .cost import TABLE_MODELS, ApiPrice, api_price, query_cost_api
from .dashboard import figure_png
from .errors import BadInput, CourseError
from .results import Metrics, Result
from .routing import Floats
from .settings import get_settings

START_PROMPT = "Why is the sky blue? Answer in two sentences."


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _usd(value: float) -> str:
    return f"${value:.7f}" if value < 0.01 else f"${value:,.2f}"


def cost_line(price: ApiPrice, metrics: Metrics) -> str:
    """What this call would cost at `price` (and per million such calls); local has no fee."""
    usd = query_cost_api(price, metrics.prompt_tokens, metrics.output_tokens)
    return (
        f"at {price.model} API prices: {_usd(usd)} per call, {_usd(usd * 1e6)} per million calls "
        f"({metrics.prompt_tokens} in + {metrics.output_tokens} out tokens); here: no per-call fee"
    )


class Playground:
    """Pick a model, type a prompt, press Send: the answer streams in with its speed and cost.

    `send(prompt)` does what the button does and returns the whole `Result`. Calls use
    temperature/seed from the sliders and `num_predict` = the max-tokens slider.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        model: str | None = None,
        prompt: str = START_PROMPT,
        max_tokens: int = 120,
        price_as: str | None = None,
        seed: int = 42,
    ) -> None:
        import ipywidgets as widgets

        from .connection import pick_model

        self.backend = backend
        self.seed = seed
        models = backend.list_models()  # a CourseError here says how to start/fix the server
        chosen = pick_model(backend, model, verbose=False)
        price_as = price_as or get_settings().large_model
        self.price = api_price(price_as)  # BadInput with close names when unknown
        self.answer = ""
        self.last: Result | None = None

        self.model = widgets.Dropdown(options=sorted(models), value=chosen, description="model")
        self.model.add_class("slm-model")
        self.prompt = widgets.Textarea(
            value=prompt, placeholder="Ask the model something", layout=widgets.Layout(width="100%", height="70px")
        )
        self.prompt.add_class("slm-prompt")
        wide = {"description_width": "initial"}
        self.max_tokens = widgets.IntSlider(
            value=max_tokens, min=8, max=1024, step=8, description="max tokens", style=wide
        )
        self.temperature = widgets.FloatSlider(
            value=0.0, min=0.0, max=1.5, step=0.1, description="temperature", style=wide
        )
        self.price_model = widgets.Dropdown(
            options=list(dict.fromkeys([self.price.model, *TABLE_MODELS])),
            value=self.price.model,
            description="price as",
        )
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.send_button.add_class("slm-send")
        self.output = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.output.add_class("slm-answer")
        self.stats = widgets.HTML()
        self.stats.add_class("slm-stats")
        self.cost = widgets.HTML()
        self.cost.add_class("slm-cost")

        self.send_button.on_click(self._on_click)
        self.price_model.observe(self._on_price, names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.model, self.price_model]),
                widgets.HBox([self.max_tokens, self.temperature]),
                self.prompt,
                self.send_button,
                self.output,
                self.stats,
                self.cost,
            ]
        )
        self.widget.add_class("slm-playground")
        self._render()

    # ---------------------------------------------------------------- drawing
    def _render(self, note: str = "") -> None:
        body = html.escape(self.answer) if self.answer else f"<i>{html.escape(note or 'Press Send.')}</i>"
        self.output.value = (
            f'<div style="white-space: pre-wrap; border: 1px solid #ccc; padding: 6px; min-height: 3em">{body}</div>'
        )

    def _live(self, ttft: float | None, pieces: int, elapsed_since_first: float) -> str:
        rate = (pieces - 1) / elapsed_since_first if pieces > 1 and elapsed_since_first > 0 else None
        speed = f"{rate:.1f} tokens/s (live)" if rate else "- tokens/s"
        return f"first token {_ms(ttft)} &nbsp;|&nbsp; {pieces} pieces &nbsp;|&nbsp; {speed}"

    def _final(self, result: Result) -> str:
        m = result.metrics
        tps = f"{m.decode_tps:.1f} tokens/s" if m.decode_tps else "- tokens/s"
        source = "engine's counters" if m.decode_source == "engine" else "client clock"
        return (
            f"<b>{result.model}</b>: first token {_ms(m.ttft_s)} &nbsp;|&nbsp; <b>{tps}</b> "
            f"({source}) &nbsp;|&nbsp; {m.output_tokens} tokens in {m.total_s:.2f} s"
            f" &nbsp;|&nbsp; stopped: {result.done_reason}"
        )

    def _on_price(self, change: dict) -> None:
        self.price = api_price(change["new"])
        if self.last is not None:
            self.cost.value = cost_line(self.price, self.last.metrics)

    # ---------------------------------------------------------------- actions
    def options(self) -> dict[str, Any]:
        """The options the next call sends (Ollama names)."""
        return {
            "temperature": float(self.temperature.value),
            "seed": self.seed,
            "num_predict": int(self.max_tokens.value),
        }

    def send(self, prompt: str | None = None) -> Result:
        """Stream one answer into the widget and return it (what the Send button does)."""
        if prompt is not None:
            self.prompt.value = prompt
        text = self.prompt.value
        self.send_button.disabled = True
        self.answer, self.last = "", None
        self.cost.value = ""
        self.stats.value = "waiting for the first token..."  # before the answer: a reader that sees
        self._render("waiting for the first token...")  # a new answer never sees old stats
        t0 = time.perf_counter()
        ttft = t_first = None
        pieces = 0
        final = None
        try:
            for piece in self.backend.stream_generate(self.model.value, text, options=self.options()):
                if piece.text:
                    now = time.perf_counter()
                    if t_first is None:
                        t_first, ttft = now, now - t0
                    pieces += 1
                    self.answer += piece.text
                    self._render()
                    self.stats.value = self._live(ttft, pieces, now - t_first)
                if piece.done:
                    final = piece
        finally:
            self.send_button.disabled = False
        if final is None:
            raise CourseError("the stream ended without its final piece", "press Send again")
        self.last = Result(
            self.answer, final.model, final.backend, done=True, done_reason=final.done_reason, metrics=final.metrics
        )
        self._render("(the model returned no text)")
        self.stats.value = self._final(self.last)
        self.cost.value = cost_line(self.price, self.last.metrics)
        return self.last

    def _on_click(self, _button: Any = None) -> None:
        """The Send button: like send(), but a problem is shown in the widget, not raised."""
        try:
            self.send()
        except CourseError as exc:
            self.stats.value = f'<span style="color: #bc4b51"><b>{html.escape(exc.message)}</b></span>' + (
                f"<br>-> {html.escape(exc.hint)}" if exc.hint else ""
            )
            self._render("no answer")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# --------------------------------------------------------------------------- threshold explorer


@dataclass(frozen=True)
class TradeoffPoint:
    """Where a router with one threshold lands: share of large calls, quality, cost."""

    threshold: float
    share_large: float  # 0..1 of the prompts sent to the large model
    quality: float  # mean quality of the answers actually returned
    cost_usd: float  # what those calls cost together
    cost_vs_large: float  # cost / the cost of sending everything to the large model


def tradeoff_point(
    q_small: Floats,
    q_large: Floats,
    scores: Floats,
    cost_small: Floats,
    cost_large: Floats,
    threshold: float,
) -> TradeoffPoint:
    """Send a prompt to the large model when its score >= threshold; what that gives.

    Scores mean "how much this prompt needs the large model" (lesson 06's convention).
    """
    arrays = [np.asarray(a, dtype=float) for a in (q_small, q_large, scores, cost_small, cost_large)]
    qs, ql, sc, cs, cl = arrays
    if qs.ndim != 1 or len(qs) == 0 or any(a.shape != qs.shape for a in arrays):
        raise BadInput(
            f"need five equal-length non-empty lists, got shapes {[a.shape for a in arrays]}",
            "one small quality, large quality, score, small cost and large cost per prompt",
        )
    if cl.sum() <= 0:
        raise BadInput("the large model's costs add up to 0", "price the large calls first (genai-prices)")
    large = sc >= threshold
    cost = float(np.where(large, cl, cs).sum())
    return TradeoffPoint(
        float(threshold), float(large.mean()), float(np.where(large, ql, qs).mean()), cost, cost / float(cl.sum())
    )


class ThresholdExplorer:
    """A slider over a router's threshold that redraws its cost-quality point.

    The grey line is every threshold's point (the router's curve); the dashed line the random
    router between all-small and all-large; the big dot the slider's threshold.
    """

    def __init__(
        self,
        q_small: Floats,
        q_large: Floats,
        scores: Floats,
        cost_small: Floats,
        cost_large: Floats,
        *,
        score_name: str = "router score",
        threshold: float | None = None,
    ) -> None:
        import ipywidgets as widgets

        qs, ql, sc, cs, cl = (np.asarray(a, dtype=float) for a in (q_small, q_large, scores, cost_small, cost_large))
        self.data = (qs, ql, sc, cs, cl)
        tradeoff_point(*self.data, threshold=0.0)  # validates the data once
        self.integer = bool(np.all(sc == np.round(sc)))
        step = 1.0 if self.integer else 0.01
        top = float(sc.max()) + step  # above every score: everything small
        self.thresholds = sorted(set(sc.tolist()) | {top})
        self.score_name = score_name
        start = self.thresholds[len(self.thresholds) // 2] if threshold is None else threshold
        if self.integer:
            self.slider = widgets.IntSlider(
                value=int(start),
                min=int(sc.min()),
                max=int(top),
                step=1,
                description="threshold",
                continuous_update=False,
            )
        else:
            self.slider = widgets.FloatSlider(
                value=float(start),
                min=float(sc.min()),
                max=top,
                step=step,
                description="threshold",
                continuous_update=False,
            )
        self.slider.add_class("slm-threshold")
        self.image = widgets.Image(format="png")
        self.caption = widgets.HTML()
        self.caption.add_class("slm-tradeoff")
        self.slider.observe(lambda change: self.redraw(), names="value")
        self.widget = widgets.VBox([self.slider, self.caption, self.image])
        self.widget.add_class("slm-explorer")
        self.redraw()

    def point(self, threshold: float | None = None) -> TradeoffPoint:
        """The point at `threshold` (default: the slider's)."""
        return tradeoff_point(*self.data, threshold=self.slider.value if threshold is None else threshold)

    def curve(self) -> list[TradeoffPoint]:
        """Every distinct threshold's point, from all-large to all-small."""
        return [self.point(t) for t in self.thresholds]

    def figure(self):
        """Quality against cost (% of always-large): the curve, the random line, this point."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 3.4), dpi=80)
        ax = fig.subplots()
        pts = self.curve()
        ax.plot(
            [p.cost_vs_large * 100 for p in pts],
            [p.quality for p in pts],
            "o-",
            color="#999999",
            ms=4,
            label=f"router ({self.score_name})",
        )
        ends = [pts[-1], pts[0]]  # all small, all large
        ax.plot(
            [p.cost_vs_large * 100 for p in ends],
            [p.quality for p in ends],
            "--",
            color="grey",
            lw=1,
            label="random router",
        )
        here = self.point()
        ax.plot(
            [here.cost_vs_large * 100],
            [here.quality],
            "o",
            color="#bc4b51",
            ms=11,
            label=f"threshold {self.slider.value:g}",
        )
        ax.set_xlabel("cost (% of sending everything to the large model)")
        ax.set_ylabel("quality (share correct)")
        ax.set_xlim(-5, 105)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return fig

    def redraw(self) -> None:
        """Recompute the point for the slider's threshold and redraw the plot."""
        p = self.point()
        n = len(self.data[0])
        same = bool(np.array_equal(self.data[0], self.data[1]))
        self.caption.value = (
            f"threshold <b>{self.slider.value:g}</b>: {round(p.share_large * n)} of {n} prompts to the "
            f"large model ({p.share_large:.0%}) &nbsp;|&nbsp; quality <b>{p.quality:.2f}</b> &nbsp;|&nbsp; "
            f"cost <b>{p.cost_vs_large:.0%}</b> of always-large"
            + (
                "<br><i>Both tiers gave the same answers here, so quality cannot move: set "
                "OPENAI_API_KEY or pull a bigger model to see the trade-off.</i>"
                if same
                else ""
            )
        )
        self.image.value = figure_png(self.figure())

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def explorer_from_records(
    small_records: Sequence[Any], large_records: Sequence[Any], price: ApiPrice, *, small_usd_per_mtok: float = 0.0
) -> ThresholdExplorer:
    """A ThresholdExplorer on two eval runs (helpers.evals.run_eval) of the same tasks.

    Scores are the heuristic's complexity counts (threshold 1 = the article's is_simple_task);
    large calls are priced at `price` from their own token counts, small ones at
    `small_usd_per_mtok` (0: local, no per-call fee). Unscored answers are left out.
    """
    from .routing import heuristic_scores

    large_by_id = {r.task_id: r for r in large_records if r.correct is not None}
    pairs = [(s, large_by_id[s.task_id]) for s in small_records if s.correct is not None and s.task_id in large_by_id]
    if not pairs:
        raise BadInput("no task was scored in both runs", "run both tiers on the same checkable tasks")
    return ThresholdExplorer(
        [float(s.correct) for s, _ in pairs],
        [float(big.correct) for _, big in pairs],
        heuristic_scores([s.prompt for s, _ in pairs]),
        [(s.prompt_tokens + s.output_tokens) * small_usd_per_mtok / 1e6 for s, _ in pairs],
        [query_cost_api(price, big.prompt_tokens, big.output_tokens) for _, big in pairs],
        score_name="complexity signals",
        threshold=1,
    )
