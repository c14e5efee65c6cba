"""The widgets, without a browser: the playground streams a real answer from the session's
server into its widgets; the threshold explorer and the lesson-07 dashboard compute and redraw
what they show. (tests/test_browser.py checks the same widgets rendered in JupyterLab.)

The dashboard's arithmetic is checked with hand-made token counts (small Python functions
stand in for the tiers, as in tests/test_routing.py); fall-backs go through real sockets.
"""

from __future__ import annotations

import html
import re
import time
import warnings

import pytest

from conftest import BUNDLED
from helpers.backends import OllamaBackend, OpenAIBackend
from helpers.cost import api_price, query_cost_api
from helpers.dashboard import Dashboard, HybridApp, mixed_tasks, price_for, sample_prompts, silent_endpoint
from helpers.errors import BadInput
from helpers.evals import EvalRecord
from helpers.net import free_loopback_port
from helpers.playground import Playground, ThresholdExplorer, explorer_from_records, tradeoff_point
from helpers.results import Metrics, Result
from helpers.routing import FallbackWarning, is_simple_task

PRICE = api_price("gpt-4o-mini")


# --------------------------------------------------------------------------- playground, live


@pytest.fixture(scope="module")
def backend(ollama_host):
    return OllamaBackend(ollama_host)


@pytest.fixture(scope="module")
def playground(backend):
    return Playground(backend, model=BUNDLED, max_tokens=16, price_as="gpt-4o-mini")


def test_model_picker_is_filled_from_the_server(playground, backend):
    assert list(playground.model.options) == sorted(backend.list_models())
    assert playground.model.value == BUNDLED


def test_send_button_streams_a_real_answer_with_its_numbers(playground, backend):
    playground.prompt.value = "Name one colour of the rainbow."
    playground._on_click(playground.send_button)  # what a click runs
    answer = playground.answer
    assert answer.strip(), "the model's answer reached the widget"
    assert html.escape(answer) in playground.output.value
    # the very text the model gives for this prompt and these options (temperature 0, seed 42)
    direct = backend.generate(BUNDLED, "Name one colour of the rainbow.", options=playground.options())
    assert direct.text == answer
    stats = playground.stats.value
    m = re.search(r"first token (\d+) ms .*?<b>([\d.]+) tokens/s</b>", stats)
    assert m, stats
    assert float(m.group(2)) == pytest.approx(playground.last.metrics.decode_tps, rel=0.01)
    assert f"{playground.last.metrics.output_tokens} tokens" in stats
    assert not playground.send_button.disabled


def test_cost_estimate_follows_the_price_picker(playground):
    if playground.last is None:
        playground.send("Say hi.")
    m = playground.last.metrics
    expected = query_cost_api(PRICE, m.prompt_tokens, m.output_tokens)
    assert f"${expected:.7f}" in playground.cost.value and "gpt-4o-mini" in playground.cost.value
    playground.price_model.value = "gpt-4o"
    dearer = query_cost_api(api_price("gpt-4o"), m.prompt_tokens, m.output_tokens)
    assert "gpt-4o " in playground.cost.value and f"${dearer:.7f}" in playground.cost.value
    assert dearer > expected


def test_send_button_shows_problems_instead_of_raising(backend):
    pg = Playground(backend, model=BUNDLED, max_tokens=8)
    pg.prompt.value = "   "
    pg._on_click()
    assert "the prompt is empty" in pg.stats.value and not pg.send_button.disabled
    pg.model.options = (*pg.model.options, "no-such-model:1b")
    pg.model.value = "no-such-model:1b"
    pg.prompt.value = "Hello"
    pg._on_click()
    assert "no-such-model:1b" in pg.stats.value and "ollama pull" in pg.stats.value
    assert pg.answer == "" and pg.last is None and not pg.send_button.disabled


def test_unknown_price_model_is_bad_input(backend):
    with pytest.raises(BadInput, match="no price"):
        Playground(backend, price_as="gpt-nonexistent-9")


# --------------------------------------------------------------------------- threshold explorer
# Four prompts. Small right on 1 and 2, large right on all. Scores 2, 0, 1, 3. Large calls cost 1.
#   threshold 0: all large           -> quality 1.0, cost 4/4
#   threshold 1: prompts 0, 2, 3     -> quality 1.0, cost 3/4
#   threshold 2: prompts 0, 3        -> quality 1.0, cost 2/4
#   threshold 3: prompt 3            -> quality 0.75 (prompt 0 stays small and is wrong), cost 1/4
#   threshold 4: none                -> quality 0.5, cost 0
FIX = dict(
    q_small=[0, 1, 1, 0], q_large=[1, 1, 1, 1], scores=[2, 0, 1, 3], cost_small=[0, 0, 0, 0], cost_large=[1, 1, 1, 1]
)


@pytest.mark.parametrize(
    "threshold, share, quality, cost",
    [
        (0, 1.0, 1.0, 1.0),
        (1, 0.75, 1.0, 0.75),
        (2, 0.5, 1.0, 0.5),
        (3, 0.25, 0.75, 0.25),
        (4, 0.0, 0.5, 0.0),
    ],
)
def test_tradeoff_point_on_a_hand_fixture(threshold, share, quality, cost):
    p = tradeoff_point(**FIX, threshold=threshold)
    assert (p.share_large, p.quality, p.cost_vs_large) == pytest.approx((share, quality, cost))
    assert p.cost_usd == pytest.approx(cost * 4)


def test_tradeoff_point_rejects_bad_data():
    with pytest.raises(BadInput, match="equal-length"):
        tradeoff_point([1], [1, 0], [0], [0], [1], threshold=0)
    with pytest.raises(BadInput, match="add up to 0"):
        tradeoff_point([1], [1], [0], [0], [0], threshold=0)


def test_slider_redraws_the_point():
    ex = ThresholdExplorer(**FIX, threshold=2)
    assert ex.thresholds == [0, 1, 2, 3, 4]
    assert (ex.slider.min, ex.slider.max) == (0, 4)
    before_caption, before_png = ex.caption.value, ex.image.value
    assert "2 of 4 prompts" in before_caption and bytes(before_png).startswith(b"\x89PNG")
    ex.slider.value = 4  # what dragging the slider does
    assert "threshold <b>4</b>" in ex.caption.value and "0 of 4 prompts" in ex.caption.value
    assert "quality <b>0.50</b>" in ex.caption.value and "cost <b>0%</b>" in ex.caption.value
    assert bytes(ex.image.value) != bytes(before_png)
    assert [p.threshold for p in ex.curve()] == [0, 1, 2, 3, 4]


def _record(task_id, prompt, correct, tokens_in=10, tokens_out=20):
    return EvalRecord(
        task_id,
        "c",
        "easy",
        "number",
        "m",
        "ollama",
        prompt,
        "answer",
        correct,
        0.1,
        prompt_tokens=tokens_in,
        output_tokens=tokens_out,
    )


def test_explorer_from_records_pairs_tasks_and_prices_large_calls():
    small = [
        _record("a", "Say hi.", True),
        _record("b", "What is 17 * 23?", False),
        _record("c", "Write a haiku.", None),
    ]
    large = [_record("b", "What is 17 * 23?", True, 12, 40), _record("a", "Say hi.", True, 8, 10)]
    ex = explorer_from_records(small, large, PRICE)
    q_small, q_large, scores, cost_small, cost_large = ex.data
    assert list(q_small) == [1.0, 0.0] and list(q_large) == [1.0, 1.0]  # "c" was not scored
    assert list(scores) == [0.0, 1.0]  # the maths prompt has one complexity signal
    assert list(cost_small) == [0.0, 0.0]
    assert list(cost_large) == pytest.approx([query_cost_api(PRICE, 8, 10), query_cost_api(PRICE, 12, 40)])
    assert ex.slider.value == 1 and ex.point().quality == 1.0  # is_simple_task routes it right
    with pytest.raises(BadInput):
        explorer_from_records(small[2:], large, PRICE)


# --------------------------------------------------------------------------- the lesson-07 app


def _tier(name: str, tokens_out: int):
    def answer(prompt: str) -> Result:
        return Result(
            f"{name} answer",
            f"{name}-model",
            "test",
            metrics=Metrics(prompt_tokens=len(prompt.split()), output_tokens=tokens_out, total_s=0.01),
        )

    return answer


def test_app_prices_each_route_and_the_always_large_baseline():
    app = HybridApp(small=_tier("small", 30), large=_tier("large", 100), price=PRICE)
    easy = app.ask("Say hello to Ana.")  # 4 words in, 30 out, small
    hard = app.ask("Explain why the sky is blue.")  # 6 words in, 100 out, large
    assert (easy.label, hard.label) == ("small", "large")
    assert easy.decision.cost_usd == 0.0
    assert easy.always_large_usd == pytest.approx(query_cost_api(PRICE, 4, 30))
    assert hard.decision.cost_usd == pytest.approx(query_cost_api(PRICE, 6, 100)) == hard.always_large_usd
    t = app.totals()
    assert (t.calls, t.small, t.large, t.fell_back) == (2, 1, 1, 0)
    assert t.saved_share == pytest.approx(easy.always_large_usd / (easy.always_large_usd + hard.always_large_usd))
    df = app.frame()
    assert list(df["route"]) == ["small", "large"] and list(df.index) == [1, 2]
    # at an 80% routine mix with these per-call costs: saved = 0.8 c_s / (0.8 c_s + 0.2 c_c)
    c_s, c_c = easy.always_large_usd, hard.always_large_usd
    assert app.saving_at_mix(0.8) == pytest.approx(0.8 * c_s / (0.8 * c_s + 0.2 * c_c))
    with pytest.raises(BadInput):
        app.saving_at_mix(1.5)


def test_app_falls_back_when_the_large_endpoint_is_down():
    # nothing listens there; no retry (retries are test_connection's): the refusal is immediate
    down = OpenAIBackend(base_url=f"http://127.0.0.1:{free_loopback_port()}/v1", api_key="x", timeout=3, max_retries=0)
    app = HybridApp(small=_tier("small", 30), large=lambda p: down.generate("gpt-4o-mini", p), price=PRICE)
    with pytest.warns(FallbackWarning, match="cannot reach"):
        routed = app.ask("Explain why the sky is blue.")
    assert routed.label == "fell back" and routed.routed_to == "large"
    assert routed.decision.text == "small answer" and routed.decision.cost_usd == 0.0
    assert "BackendUnavailable" in routed.decision.error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quiet: no warning, the decision still says what happened
        assert app.ask("Prove that 2 + 2 = 4.", quiet=True).decision.fell_back
    assert app.totals().fell_back == 2


def test_app_times_out_on_a_hung_endpoint():
    with silent_endpoint() as url:
        hung = OpenAIBackend(base_url=url, api_key="x", timeout=30)
        app = HybridApp(
            small=_tier("small", 5), large=lambda p: hung.generate("gpt-4o-mini", p), price=PRICE, timeout_s=0.5
        )
        t0 = time.perf_counter()
        routed = app.ask("Explain why the sky is blue.", quiet=True)
        waited = time.perf_counter() - t0
    # the app's own 0.5 s timeout ended the wait, not the backend's 30 s one (that would have
    # raised BackendUnavailable); a busy machine only makes the wait longer
    assert routed.label == "fell back" and routed.decision.error.startswith("TimeoutError")
    assert "BackendUnavailable" not in routed.decision.error
    assert waited >= 0.5


def test_dashboard_redraws_after_every_call():
    app = HybridApp(small=_tier("small", 30), large=_tier("large", 100), price=PRICE)
    dash = Dashboard(app)
    empty_png = dash.chart.value
    prompts = ["Say hello.", "What is 17 * 23?", "Name a fruit."]
    seen = []
    app_ask = app.ask

    def spy(prompt, **kw):  # record what the widgets showed before each call
        seen.append((dash.progress.value, dash.summary.value))
        return app_ask(prompt, **kw)

    app.ask = spy
    dash.run(prompts)
    assert [s[0] for s in seen] == [0, 1, 2]  # progress moved after every call
    assert "<b>1</b> calls" in seen[1][1] and "<b>2</b> calls" in seen[2][1]
    assert dash.progress.value == dash.progress.max == 3
    assert "<b>3</b> calls: <b>2</b> small, <b>1</b> large, <b>0</b> fell back" in dash.summary.value
    assert "saved" in dash.summary.value and bytes(dash.chart.value) != bytes(empty_png)
    assert "What is 17 * 23?" in dash.table.value
    dash.run(["Say bye."])  # a second batch continues the count
    assert (dash.progress.value, dash.progress.max) == (4, 4)


def test_prompt_samples_mix_simple_and_complex():
    tasks = mixed_tasks(4, seed=7)
    assert len({t.id for t in tasks}) == 4
    simple = sum(is_simple_task(t.prompt) for t in tasks)
    assert 1 <= simple <= 3
    assert sample_prompts(4, seed=7) == [t.prompt for t in tasks]  # seeded: repeatable
    assert all(t.kind in ("number", "keywords") for t in mixed_tasks(6, kinds=("number", "keywords")))
    with pytest.raises(BadInput):
        mixed_tasks(0)
    with pytest.raises(BadInput):
        mixed_tasks(1000)


def test_price_for_an_unpriced_model_says_what_it_priced_instead():
    price, note = price_for("smollm2:135m", default="gpt-4o-mini")
    assert price.model == "gpt-4o-mini" and note.startswith("smollm2:135m has no API price")
    price, note = price_for("gpt-4o")
    assert price.model == "gpt-4o" and "genai-prices" in note
