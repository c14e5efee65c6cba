"""Lessons 05-07 on the two real offline models, through the session's server.

- The default pair (no key, no parameters: the learner's path) is two different models: the
  measured offline pair (`choose_pair`, docs/offline-pair.md).
- Lesson 07 writes a robust `smart_routing` on the page; executed from the notebook, it decides,
  falls back and logs exactly as `helpers.routing.smart_routing` does - on real models (the bundled
  SmolLM2 and qwen2.5-coder:0.5b), a real refused connection and a real hung endpoint.
- `HybridApp`'s always-large baseline is measured on the large model itself.
"""

from __future__ import annotations

import time
import warnings

import pytest
from test_lessons_routing import LESSON_07, page_cells, run_page

from helpers import OpenAIBackend
from helpers.backends import OllamaBackend
from helpers.cost import api_price, query_cost_api
from helpers.dashboard import HybridApp, silent_endpoint
from helpers.net import free_loopback_port
from helpers.quality import choose_pair
from helpers.registry import BUNDLED_MODEL
from helpers.routing import FallbackWarning, smart_routing

OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 6}  # short: the tests compare decisions, not prose
PRICE = api_price("gpt-4o-mini")
SIMPLE = "Say hello to Maria in Spanish."
COMPLEX = "Explain why ice floats on water."
LARGE = "qwen2.5-coder:0.5b"  # the routing tests' large tier (see `pair`)


@pytest.fixture(scope="module")
def default_pair(ollama_host):
    """(backend, small model, LargeChoice) exactly as the lessons choose them with default parameters."""
    backend = OllamaBackend(ollama_host)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no OPENAI_API_KEY: the large tier is local"
        small, large = choose_pair(backend, "", "", verbose=False)
    return backend, small, large


@pytest.fixture(scope="module")
def pair(ollama_host):
    """The pair the routing tests run on, chosen the same way but by name: the bundled SmolLM2 small and
    qwen2.5-coder:0.5b large (the second offline pair). They compare the page's decisions with the kit's,
    which no model size changes; the default large model (the 1.5B where it is installed) would only make
    each answer slower (lessons 05-07 run on it in `make test`)."""
    backend = OllamaBackend(ollama_host)
    if not backend.has_model(LARGE):
        pytest.skip(f"{LARGE} is not installed: `slm-course pull {LARGE}`")
    small, large = choose_pair(backend, BUNDLED_MODEL, LARGE, verbose=False)
    assert (small, large.model, large.same_as_small) == (BUNDLED_MODEL, LARGE, False)
    return backend, small, large


@pytest.fixture(scope="module")
def tiers(pair):
    backend, small, large = pair
    return (
        lambda p: backend.generate(small, p, options=OPTIONS),
        lambda p: large.backend.generate(large.model, p, options=OPTIONS),
    )


def test_default_pair_is_two_different_models(default_pair):
    backend, small, large = default_pair
    assert not large.same_as_small and large.model != small, (
        f"with default parameters both tiers are {small}: lessons 03 and 05-07 would compare a model with "
        "itself. Install the offline large model: `slm-course pull qwen2.5-coder:0.5b` (make install does)"
    )
    assert large.backend.has_model(large.model)


@pytest.fixture(scope="module")
def page_routing():
    """Lesson 07's smart_routing, executed from the notebook's own cells."""
    cells = page_cells(LESSON_07, {"call_with_timeout", "LARGE_FAILURES", "smart_routing"})
    return run_page(cells, preamble="import time\n\n")["smart_routing"]


def _tokens_cost(route, result):
    m = result.metrics
    return query_cost_api(PRICE, m.prompt_tokens, m.output_tokens) if route == "large" else 0.0


def _both(page_routing, prompt, **kw):
    """The same request through the page's function and the kit's: (page decision, kit decision, page log)."""
    log: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = page_routing(prompt, log=log, cost_fn=_tokens_cost, **kw)
        kit = smart_routing(prompt, cost_fn=_tokens_cost, **kw)
    fallbacks = [w for w in caught if issubclass(w.category, FallbackWarning)]
    return page, kit, log, fallbacks


def _same(page, kit):
    for field in ("route", "reason", "fell_back", "text", "model", "error", "cost_usd", "prompt"):
        mine, theirs = getattr(page, field), getattr(kit, field)
        assert mine == theirs, f"{field}: page {mine!r} vs kit {theirs!r}"


def test_page_smart_routing_routes_like_the_kit(pair, tiers, page_routing):
    _, small, large = pair
    ask_small, ask_large = tiers
    for prompt, route, model in ((SIMPLE, "small", small), (COMPLEX, "large", large.model)):
        page, kit, log, fallbacks = _both(page_routing, prompt, small=ask_small, large=ask_large, timeout_s=60)
        _same(page, kit)
        assert (page.route, page.model, page.fell_back) == (route, model, False) and not fallbacks
        assert log == [page] and page.latency_s > 0 and page.text.strip()
    page, kit, _, _ = _both(page_routing, COMPLEX, small=ask_small, large=ask_large, router=lambda p: True)
    _same(page, kit)
    assert page.route == "small" and page.reason == "<lambda> chose small"


def test_page_smart_routing_falls_back_like_the_kit_when_the_large_endpoint_is_down(pair, tiers, page_routing):
    _, small, large = pair
    ask_small, _ = tiers
    # nothing listens there; no retry (retries are test_connection's): the refusal is immediate
    down = OpenAIBackend(base_url=f"http://127.0.0.1:{free_loopback_port()}/v1", api_key="x", timeout=3, max_retries=0)
    page, kit, log, fallbacks = _both(
        page_routing,
        COMPLEX,
        small=ask_small,
        large=lambda p: down.generate(large.model, p, options=OPTIONS),
        timeout_s=10,
    )
    _same(page, kit)
    assert page.fell_back and page.model == small and page.error.startswith("BackendUnavailable")
    assert len(fallbacks) == 2 and log == [page]


def test_page_smart_routing_times_out_like_the_kit_on_a_hung_endpoint(pair, tiers, page_routing):
    _, small, large = pair
    ask_small, _ = tiers
    with silent_endpoint() as url:
        hung = OpenAIBackend(base_url=url, api_key="x", timeout=30)
        t0 = time.perf_counter()
        page, kit, _, fallbacks = _both(
            page_routing, COMPLEX, small=ask_small, large=lambda p: hung.generate(large.model, p), timeout_s=0.5
        )
        waited = time.perf_counter() - t0
    _same(page, kit)
    # the page's own 0.5 s timeout ended each wait, not the backend's 30 s one (that would have
    # raised BackendUnavailable); a busy machine only makes the waits longer
    assert page.fell_back and page.error == "TimeoutError: no answer within the timeout"
    assert page.latency_s >= 0.5 and waited >= 1 and len(fallbacks) == 2


def test_app_measures_always_large_on_the_large_model(pair, tiers, page_routing):
    backend, small, large = pair
    ask_small, ask_large = tiers
    baseline_calls = []

    def baseline(prompt):
        baseline_calls.append(prompt)
        return ask_large(prompt)

    app = HybridApp(
        small=ask_small, large=ask_large, price=PRICE, routing=page_routing, baseline=baseline, small_usd_per_s=1e-6
    )
    easy, hard = app.ask(SIMPLE), app.ask(COMPLEX)
    assert (easy.label, hard.label) == ("small", "large")
    assert baseline_calls == [SIMPLE], "the baseline is called only for prompts the large model did not answer"
    direct = ask_large(SIMPLE)  # deterministic: the same tokens the baseline call used
    assert easy.baseline_measured and easy.always_large_usd == pytest.approx(
        query_cost_api(PRICE, direct.metrics.prompt_tokens, direct.metrics.output_tokens)
    )
    assert easy.always_large_s > 0
    assert hard.baseline_measured and hard.always_large_usd == pytest.approx(hard.decision.cost_usd)
    assert easy.decision.cost_usd > 0 and easy.decision.model == small  # its measured seconds at the stated rate
    down = OpenAIBackend(base_url=f"http://127.0.0.1:{free_loopback_port()}/v1", api_key="x", timeout=3, max_retries=0)
    app.large = lambda p: down.generate(large.model, p, options=OPTIONS)
    fell = app.ask(COMPLEX, quiet=True)
    assert fell.label == "fell back" and fell.baseline_measured and baseline_calls[-1] == COMPLEX
    app.baseline = app.large  # a baseline that cannot answer: estimated from the small answer, time unknown
    guessed = app.ask(SIMPLE)
    assert not guessed.baseline_measured and guessed.always_large_s is None
    totals = app.totals()
    assert totals.baseline_measured == 3 and totals.always_large_s is None
    assert totals.latency_s == pytest.approx(sum(r.decision.latency_s for r in app.log))
    assert list(app.frame()["baseline"]) == ["measured", "measured", "measured", "estimated"]
