"""Each verdict on an article claim depends on what was measured: change the measured input and the
verdict turns. (The lessons call these functions in their ledger cells; test_claims.py checks that
they are the ones called.)"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from helpers import verdicts as v

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.no_server


def _words(finding: v.Finding) -> str:
    return {True: "confirmed", False: "refuted", None: "cannot"}[finding.ok]


def test_price_per_1k_judges_the_articles_models_and_turns_with_a_price():
    inside = {"text-davinci-003": (0.02, 0.02), "gpt-4": (0.03, 0.06), "gpt-4-turbo": (0.01, 0.03)}
    assert v.price_per_1k(inside).ok is True
    assert v.price_per_1k({**inside, "gpt-4": (0.03, 0.12)}).ok is False
    assert v.price_per_1k({}).ok is None
    assert "claude" not in " ".join(v.ARTICLE_LARGE_MODELS)  # the article's row is GPT-3/4


def test_price_per_1k_on_the_real_dated_prices():
    from datetime import datetime, timezone

    from helpers.cost import api_price

    when = datetime(2026, 11, 1, tzinfo=timezone.utc)
    prices = {
        m: (p.input_per_mtok / 1000, p.output_per_mtok / 1000)
        for m, p in ((m, api_price(m, provider="openai", when=when)) for m in v.ARTICLE_LARGE_MODELS)
    }
    assert v.price_per_1k(prices).ok is True, prices


def test_cost_gpt4_turbo_turns_with_the_query_size():
    from datetime import datetime, timezone

    from helpers.cost import api_price, query_cost_api

    turbo = api_price("gpt-4-turbo", when=datetime(2026, 11, 1, tzinfo=timezone.utc))
    short = query_cost_api(turbo, 500, 300) * 1_000_000
    long = query_cost_api(turbo, 1500, 500) * 1_000_000
    assert v.cost_at_query_size(30_000, short, 500, 300, "gpt-4-turbo").ok is False
    assert v.cost_at_query_size(30_000, long, 1500, 500, "gpt-4-turbo").ok is True


def test_cost_local_turns_with_the_energy():
    assert v.cost_local(energy_usd=3.0, machine_days=40).ok is True
    assert v.cost_local(energy_usd=300.0, machine_days=40).ok is False


def test_routine_80_judges_routine_benchmarks_and_names_the_reasoning_one():
    # RouteLLM's recorded shares: GSM8K 75%, MMLU 82% (lesson 06)
    f = v.routine_share({"gsm8k": 0.75, "mmlu": 0.82})
    assert f.ok is True and "gsm8k" in f.why and "complex reasoning" in f.measured
    assert v.routine_share({"gsm8k": 0.95, "mmlu": 0.70}).ok is False
    assert v.routine_share({"gsm8k": 0.75}).ok is None


def test_routine_80_on_the_recorded_data():
    from helpers.recorded import load_routellm

    shares = {
        b: float((df["mixtral_correct"] >= df["gpt4_correct"]).mean())
        for b, df in ((b, load_routellm(b)) for b in ("gsm8k", "mmlu"))
    }
    f = v.routine_share(shares)
    assert f.ok is (shares["mmlu"] >= 0.8), (shares, f)


def test_two_plus_two_judges_the_small_models_answer_not_the_router():
    assert v.small_answers_two_plus_two("2 + 2 = 4", "large", "m").ok is True
    assert v.small_answers_two_plus_two("2 + 2 = 5", "large", "m").ok is False
    assert v.small_answers_two_plus_two("The answer is 4.", "small", "m").ok is True


def test_cost_60_80_turns_with_the_large_tiers_price():
    gpt4 = v.hybrid_saving(0.00002, 0.02, 0.03, large_model="gpt-4")
    mini = v.hybrid_saving(0.00002, 0.00003, 0.00005, large_model="gpt-4o-mini")
    assert gpt4.ok is True and mini.ok is False
    assert v.ARTICLE_LARGE_TIER == "gpt-4"


def test_realtime_is_judged_for_one_user():
    assert v.realtime(ttft_s=0.3, e2e_s=2.0).ok is True
    assert v.realtime(ttft_s=0.8, e2e_s=2.0).ok is False
    assert v.realtime(ttft_s=float("nan"), e2e_s=2.0).ok is None


@pytest.mark.parametrize(
    "code, ok",
    [
        ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", True),
        ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n", True),
        # the answer lesson 01 printed once: no base case, it recurses forever
        ("def fibonacci(n):\n    return fibonacci(n - 1) + fibonacci(n - 2)\n", False),
        ("def fib(n):\n    while True:\n        pass\n", False),
        ("def fib(n):\n    return n\n", False),
        ("print('no function')\n", False),
    ],
)
def test_fibonacci_runs_the_code(code, ok):
    # the working versions get the lesson's 5 s; a wrong one cannot become right with less time,
    # so the endless loop is cut after 1 s instead of waiting 5
    assert v.fibonacci_works(code, timeout_s=5 if ok else 1).ok is ok


def test_smart_home_is_judged_on_content_and_needs_the_network_cut():
    want = {"device": "light", "room": "kitchen", "action": "off"}
    assert v.smart_home([(dict(want), want)], offline=True).ok is True
    assert v.smart_home([(dict(want), want), ({**want, "action": "on"}, want)], offline=True).ok is False
    assert v.smart_home([(None, want)], offline=True).ok is False
    assert v.smart_home([(dict(want), want)], offline=False).ok is None


def test_the_smart_home_step_really_runs_without_network():
    from helpers import edge

    prefix, how = edge.network_cutter()
    if prefix is None:
        pytest.skip(how)
    run = edge.smart_home_offline()
    assert run.offline and run.result is not None, run.stderr
    assert run.result["model server"].startswith("unreachable"), run.result
    assert not [i for i in run.result["interfaces"] if i.endswith("(up)")], run.result
    assert len(run.result["replies"]) == len(edge.SMART_HOME_COMMANDS)


def test_a_fall_back_is_a_rescue_only_when_its_answer_is_right():
    assert v.reliability([True, True], small_here=True).ok is True
    assert v.reliability([True, False], small_here=True).ok is False
    assert v.reliability([None, None], small_here=True).ok is None
    assert v.reliability([True], small_here=False).ok is None


LISTED = {
    "04": ["price_per_1k", "cost_at_query_size", "cost_local"],
    "06": ["routine_share"],
    "07": ["small_answers_two_plus_two", "hybrid_saving", "reliability"],
    "09": ["realtime"],
    "01": ["fibonacci_works"],
    "08": ["smart_home"],
}


@pytest.mark.parametrize("number", sorted(LISTED))
def test_the_lessons_ledgers_use_these_verdicts(number):
    (path,) = (ROOT / "notebooks").glob(f"{number}_*.ipynb")
    code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    for name in LISTED[number]:
        assert f"verdicts.{name}(" in code, f"lesson {number} does not judge with helpers.verdicts.{name}"


def test_doctests_of_the_verdicts_module():
    result = doctest.testmod(v)
    assert result.attempted > 0 and result.failed == 0, result


def test_lesson_07_reprices_the_large_answers_as_gpt4():
    """HybridApp keeps each large answer's tokens, so the saving can be priced as the article's GPT-4
    although the dashboard priced them as the course's default API model."""
    from datetime import datetime, timezone

    from helpers.cost import api_price, query_cost_api
    from helpers.dashboard import HybridApp
    from helpers.results import Metrics, Result

    def tier(name, tokens_out):
        return lambda prompt: Result(
            f"{name} answer",
            name,
            "test",
            metrics=Metrics(prompt_tokens=len(prompt.split()), output_tokens=tokens_out, total_s=0.5),
        )

    when = datetime(2026, 11, 1, tzinfo=timezone.utc)
    mini, gpt4 = api_price("gpt-4o-mini", when=when), api_price(v.ARTICLE_LARGE_TIER, when=when)
    app = HybridApp(
        small=tier("small", 30),
        large=tier("large", 100),
        price=mini,
        baseline=tier("large", 40),
        small_usd_per_s=30 / 1000 / 3600 * 0.30,
    )
    app.ask("Say hello to Ana.")  # simple: small answers, the baseline 40 tokens large
    app.ask("Explain why the sky is blue.")  # complex: large answers, 100 tokens
    small, simple_large, complex_large = app.mean_costs(gpt4)
    assert simple_large == pytest.approx(query_cost_api(gpt4, 4, 40))
    assert complex_large == pytest.approx(query_cost_api(gpt4, 6, 100))
    assert app.mean_costs()[2] == pytest.approx(query_cost_api(mini, 6, 100))
    assert (
        v.hybrid_saving(*app.mean_costs(gpt4), "gpt-4").ok
        != v.hybrid_saving(small * 400, simple_large, complex_large, "gpt-4").ok
    )  # a dearer small call turns it


def test_simple_tasks_refutes_only_the_articles_slms_and_turns_with_the_count():
    assert v.simple_tasks("qwen2.5-coder:0.5b", 33, 40).ok is True
    assert v.simple_tasks("gemma:2b", 31, 40).ok is False
    below = v.simple_tasks("qwen2.5-coder:0.5b", 20, 40, large_right=30)
    assert below.ok is None and below.why.startswith(v.NOT_SUPPORTED) and "30/40" in below.measured
    assert v.simple_tasks("smollm2:135m", 0, 0).ok is None


def test_complex_reasoning_needs_a_significant_win_and_spares_stand_ins_a_refutation():
    assert v.complex_reasoning("qwen2.5-coder:1.5b", 2, 12, 0.01, 28).ok is True
    assert "stands in" in v.complex_reasoning("qwen2.5-coder:1.5b", 2, 12, 0.01, 28).why
    assert v.complex_reasoning("gpt-4", 2, 12, 0.01, 28).ok is True
    assert v.complex_reasoning("gpt-4", 12, 2, 0.01, 28).ok is False
    stand_in_loses = v.complex_reasoning("qwen2.5-coder:1.5b", 12, 2, 0.01, 28)
    assert stand_in_loses.ok is None and stand_in_loses.why.startswith(v.NOT_SUPPORTED)
    assert v.complex_reasoning("gpt-4", 0, 0, 1.0, 28).ok is None  # no disagreement: p is 1, not NaN
    assert "120" in v.complex_reasoning("gpt-4", 3, 5, 0.73, 28, tasks_needed=120).why
