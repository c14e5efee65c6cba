"""Paired small/large runs: saving, per-category Wilson accuracy, the seed's claims, router curves.

Fixtures are hand-made records (no model inference) except for one test of the judge against
the session's server; code answers really run in the sandbox.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.cost import LocalAssumptions, api_price
from helpers.errors import BackendUnavailable, BadInput, ModelNotFound
from helpers.evals import EvalRecord, ModelJudge, humaneval_tasks, open_prompts, parse_judge, wilson_interval
from helpers.quality import (
    LargeChoice,
    choose_judge,
    choose_large,
    code_failure,
    explanation_words,
    is_bare_answer,
    latest_run,
    load_run,
    operating_point,
    out_of_fold_scores,
    paired_counts,
    paired_frame,
    per_query_costs,
    quality_curves,
    router_table,
    run_file,
    run_paired,
    sample_by_category,
    save_run,
    share_for_quality,
    tier_accuracy,
)
from helpers.results import Result
from helpers.routing import apgr, cpt

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

# RouteLLM metrics on the hand fixture of tests/test_routing.py (APGR 0.65, CPT(50%) 0.30, CPT(80%) 0.62)
Q_SMALL = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
Q_LARGE = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
SCORES = [1.0, 0.8, 0.6, 0.4, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1]


def _rec(task_id, category, correct, model="m", text="ans", latency=1.0, tokens=(10, 5), reason="stop"):
    return EvalRecord(
        task_id=task_id,
        category=category,
        difficulty="easy",
        kind="number",
        model=model,
        backend="ollama",
        prompt=f"prompt {task_id}",
        text=text,
        correct=correct,
        latency_s=latency,
        prompt_tokens=tokens[0],
        output_tokens=tokens[1],
        done_reason=reason,
    )


# 6 tasks, two categories. small: a1 a2 right, b1 wrong ...; large right on all but b3.
SMALL = [
    _rec("a1", "a", True),
    _rec("a2", "a", True),
    _rec("a3", "a", False),
    _rec("b1", "b", False),
    _rec("b2", "b", False),
    _rec("b3", "b", None, text='multi\nline, "quoted"'),
]
LARGE = [
    _rec(r.task_id, r.category, c, model="big", latency=2.0, tokens=(20, 40))
    for r, c in zip(SMALL, [True, True, True, True, False, None])
]


def test_paired_frame_lines_up_both_tiers_and_refuses_missing_tasks():
    df = paired_frame(SMALL, LARGE, "toy")
    assert list(df["task_id"]) == ["a1", "a2", "a3", "b1", "b2", "b3"]
    assert df["small_correct"].tolist() == [True, True, False, False, False, None]
    assert df["large_correct"].tolist() == [True, True, True, True, False, None]
    assert set(df["eval_set"]) == {"toy"} and df.loc[0, "large_model"] == "big"
    with pytest.raises(BadInput):
        paired_frame(SMALL, LARGE[:3], "toy")


def test_save_and_load_round_trip_keeps_booleans_none_and_text(tmp_path):
    df = paired_frame(SMALL, LARGE, "toy")
    path = save_run(df, tmp_path / "runs", "smollm2:135m", "gpt-4o-mini", n_tasks=3)
    assert path == run_file(tmp_path / "runs", "smollm2:135m", "gpt-4o-mini")
    assert path.name == "quality_smollm2-135m__vs__gpt-4o-mini.csv"
    back, meta = load_run(tmp_path / "runs", "smollm2:135m", "gpt-4o-mini")
    assert meta["n_tasks"] == 3 and meta["rows"] == 6
    assert back["small_correct"].tolist() == [True, True, False, False, False, None]
    assert back.loc[5, "small_text"] == 'multi\nline, "quoted"'
    assert load_run(tmp_path / "runs", "smollm2:135m", "other") is None


def test_tier_accuracy_counts_per_category_with_wilson_intervals():
    table = tier_accuracy(paired_frame(SMALL, LARGE, "toy"))
    row = table[(table.tier == "small") & (table.category == "a")].iloc[0]
    assert (row.n, row.correct) == (3, 2)
    assert (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(2, 3))
    b = table[(table.tier == "small") & (table.category == "b")].iloc[0]
    assert (b.n, b.correct) == (2, 0)  # the unscored answer is not counted
    all_large = table[(table.tier == "large") & (table.category == "(all)")].iloc[0]
    assert (all_large.n, all_large.correct) == (5, 4)


def test_paired_counts_and_mcnemar():
    p = paired_counts(paired_frame(SMALL, LARGE, "toy"))
    assert (p.both_right, p.only_small, p.only_large, p.both_wrong) == (2, 0, 2, 1)
    assert p.p_value == pytest.approx(0.5)  # 2 of 2 disagreements one way: 2 * 0.5**2
    same = paired_counts(paired_frame(SMALL, SMALL, "toy"))
    assert same.only_small == same.only_large == 0 and same.p_value == 1.0  # exact p, never NaN


def test_code_failure_names_what_went_wrong():
    task = next(t for t in humaneval_tasks() if t.id == "HumanEval/53")  # add(x, y)
    assert code_failure("```python\ndef add(x: int, y: int):\n    return x + y\n```", task) == "passed"
    assert code_failure("```python\ndef add(x: int, y: int):\n    return x - y\n```", task) == "wrong result"
    assert code_failure("```python\ndef add(x: int, y: int):\n    return (x +\n```", task) == "syntax error"
    assert (
        code_failure("```python\ndef add(x: int, y: int):\n    return (x +\n", task, done_reason="length")
        == "syntax error (cut off)"
    )
    assert code_failure("```python\ndef add(x: int, y: int):\n    return undefined_name\n```", task) == "runtime error"
    assert code_failure("You could add the two numbers.", task) == "no code"


def test_explanations_are_counted_in_words_not_numbers():
    assert explanation_words("17 * 23 = 391") == 0
    assert is_bare_answer("The answer is 391.")
    assert not is_bare_answer("First multiply 17 by 20 to get 340, then add 17 times 3, which is 51: 391.")


def test_sample_by_category_covers_categories_first():
    tasks = [t for t in open_prompts() if t.kind != "open"]
    picked = sample_by_category(tasks, 10, seed=1)
    assert len({t.category for t in picked}) == 10
    assert [t.id for t in picked] == [t.id for t in sample_by_category(tasks, 10, seed=1)]
    assert len(sample_by_category(tasks, 1000)) == len(tasks)


def test_router_table_agrees_with_routing_metrics_and_survives_a_zero_gap():
    df = quality_curves(Q_SMALL, Q_LARGE, {"router": SCORES})
    table = router_table(df, share=0.2, cost_small=0.0, cost_large=1.0)
    assert table.loc["router", "APGR"] == pytest.approx(apgr(Q_SMALL, Q_LARGE, SCORES))
    assert table.loc["router", "CPT(80%)"] == pytest.approx(cpt(Q_SMALL, Q_LARGE, SCORES, 0.8))
    assert table.loc["router", "APGR"] == pytest.approx(0.65)
    assert table.loc["router", "CPT(50%)"] == pytest.approx(0.30)
    assert table.loc["router", "CPT(80%)"] == pytest.approx(0.62)
    assert table.loc["random", "APGR"] == pytest.approx(0.5)
    assert table.loc["router", "cost saved@20%"] == pytest.approx(0.8)
    # the same model twice: quality is flat, PGR and its summaries are NaN, nothing raises
    flat = quality_curves(Q_SMALL, Q_SMALL, {"router": SCORES})
    assert flat["quality"].tolist() == pytest.approx([0.5] * len(flat))
    assert flat["pgr"].isna().all()
    flat_table = router_table(flat)
    assert flat_table["APGR"].isna().all() and flat_table["quality@20%"].tolist() == pytest.approx([0.5] * 3)


def test_operating_point_of_a_yes_no_router():
    share, quality = operating_point(Q_SMALL, Q_LARGE, [True] * 2 + [False] * 8)
    assert share == pytest.approx(0.2) and quality == pytest.approx(0.7)
    with pytest.raises(BadInput):
        operating_point(Q_SMALL, Q_LARGE, [True])


def test_out_of_fold_scores_need_both_classes_and_score_every_prompt():
    prompts = [f"What is {i} + {i}?" for i in range(8)] + [f"Prove theorem {i} step by step." for i in range(8)]
    small = [1.0] * 8 + [0.0] * 8
    large = [1.0] * 16
    scores = out_of_fold_scores(prompts, small, large, folds=4)
    assert scores.shape == (16,) and np.all((scores >= 0) & (scores <= 1))
    assert scores[8:].mean() > scores[:8].mean()  # held-out proofs look like they need the large model
    several = out_of_fold_scores(prompts, small, large, folds=4, repeats=3)
    assert several.shape == (3, 16) and np.array_equal(several[0], scores)  # the first split is seed 0's
    assert np.array_equal(several[2], out_of_fold_scores(prompts, small, large, folds=4, seed=2))
    with pytest.raises(BadInput, match="repeats"):
        out_of_fold_scores(prompts, small, large, repeats=0)
    with pytest.raises(BadInput, match="rarer class"):
        out_of_fold_scores(prompts, large, large)


def test_per_query_costs_price_tokens_and_local_seconds():
    df = paired_frame(SMALL, LARGE, "toy")
    price = api_price("gpt-4o-mini")
    local = LocalAssumptions(watts=36.0, price_per_kwh=0.5, hardware_price=0.0, lifetime_years=3, utilisation=1.0)
    small, large = per_query_costs(df, price, local)
    assert large == pytest.approx((20 * price.input_per_mtok + 40 * price.output_per_mtok) / 1e6)
    # 1 s per query at 36 W = 0.01 Wh = 1e-5 kWh -> 5e-6 USD
    assert small == pytest.approx(5e-6)
    assert math.isnan(per_query_costs(df, None, local)[1])
    # measured alone at 4x the speed the run's summed seconds give: a quarter of the energy
    per_s = df["small_output_tokens"].sum() / df["small_latency_s"].sum()
    assert per_query_costs(df, price, local, tokens_per_s=4 * per_s)[0] == pytest.approx(5e-6 / 4)


class _Server:
    """A stand-in for a backend that only lists its models (nothing is generated)."""

    name = "ollama"

    def __init__(self, models):
        self.models = models

    def has_model(self, model):
        return model in self.models

    def list_models(self):
        return self.models

    def describe(self):
        return "test server"


def test_choose_large_detects_the_same_model_and_prices_the_stand_in(monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("SLM_LARGE_BASE_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("SLM_LARGE_MODEL", "gpt-4o-mini")
    server = _Server(["smollm2:135m"])
    same = choose_large(server, "smollm2:135m", "smollm2:135m")
    assert same.same_as_small and same.local_stand_in and same.backend is server
    assert same.price.model == "gpt-4o-mini" and "what it would cost" in same.price_note
    assert "no router can gain quality" in capsys.readouterr().out
    other = choose_large(_Server(["smollm2:135m", "llama3.2:3b"]), "smollm2:135m", "", probe=False, verbose=False)
    assert other.model == "llama3.2:3b" and not other.same_as_small


def test_a_large_tier_that_does_not_answer_falls_back_to_the_small_model(monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("SLM_LARGE_BASE_URL", "https://api.openai.com/v1")

    class Down(_Server):
        def generate(self, model, prompt, **kw):
            raise BackendUnavailable("no answer from the test server", "start it")

    choice = choose_large(Down(["smollm2:135m", "llama3.2:3b"]), "smollm2:135m", "llama3.2:3b")
    assert choice.model == "smollm2:135m" and choice.same_as_small
    out = capsys.readouterr().out
    assert "does not answer: no answer from the test server" in out and "-> start it" in out


def test_choose_pair_takes_the_measured_offline_pair_unless_asked_otherwise(monkeypatch, capsys):
    from helpers.quality import choose_pair

    for var in ("OPENAI_API_KEY", "SLM_SMALL_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLM_LARGE_BASE_URL", "https://api.openai.com/v1")
    three = _Server(["smollm2:135m", "qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b"])
    small, large = choose_pair(three, probe=False)
    assert (small, large.model) == ("qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b")
    assert "offline pair" in capsys.readouterr().out
    small, large = choose_pair(_Server(["smollm2:135m", "qwen2.5-coder:0.5b"]), probe=False, verbose=False)
    assert (small, large.model) == ("smollm2:135m", "qwen2.5-coder:0.5b")  # where the 1.5B does not fit
    small, large = choose_pair(three, "smollm2:135m", probe=False, verbose=False)  # asked for: kept
    assert (small, large.model) == ("smollm2:135m", "qwen2.5-coder:1.5b")
    with_llama = _Server(three.models + ["llama3.2:3b"])  # a better course model than the offline ones
    small, large = choose_pair(with_llama, probe=False, verbose=False)
    assert small == "llama3.2:3b"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # a key: the large tier is the API model
    small, large = choose_pair(three, probe=False, verbose=False)
    assert not large.local_stand_in and large.model != "qwen2.5-coder:1.5b"


def test_share_for_quality_and_latest_run(tmp_path):
    df = quality_curves(Q_SMALL, Q_LARGE, {"router": SCORES})
    shares = share_for_quality(df, 0.9)
    assert shares["oracle"] == pytest.approx(0.4)  # the 4 gap prompts first
    assert shares["router"] == pytest.approx(0.7)
    assert shares["random"] == pytest.approx(1.0)
    assert math.isnan(share_for_quality(df, 0.95)["router"])
    assert latest_run(tmp_path) is None
    save_run(paired_frame(SMALL, LARGE, "toy"), tmp_path, "a:1b", "b:7b")
    frame, meta = latest_run(tmp_path)
    assert meta["small"] == "a:1b" and len(frame) == 6


# ---------------------------------------------------------------------------- the judge


def test_choose_judge_reads_the_setting_and_says_how_to_configure_one(monkeypatch, capsys):
    monkeypatch.delenv("SLM_JUDGE_MODEL", raising=False)
    server = _Server(["smollm2:135m", "llama3.2:3b"])
    tier = LargeChoice(server, "smollm2:135m", True, True, None, "")
    assert choose_judge(server, small="smollm2:135m", large=tier) is None
    assert "SLM_JUDGE_MODEL" in capsys.readouterr().out
    monkeypatch.setenv("SLM_JUDGE_MODEL", "llama3.2:3b")
    judge = choose_judge(server, small="smollm2:135m", large=tier)
    assert isinstance(judge, ModelJudge) and judge.model == "llama3.2:3b" and judge.backend is server
    assert "grades its own" not in capsys.readouterr().out
    assert choose_judge(server, "smollm2:135m", small="smollm2:135m", large=tier).model == "smollm2:135m"
    assert "also the small and large model, so it grades its own answers" in capsys.readouterr().out
    with pytest.raises(ModelNotFound, match="mistral:7b"):
        choose_judge(server, "mistral:7b")


def test_choose_judge_falls_back_to_the_large_tiers_endpoint(monkeypatch):
    monkeypatch.delenv("SLM_JUDGE_MODEL", raising=False)

    class Api(_Server):  # an API endpoint: answers for any model name it knows
        def generate(self, model, prompt, **kw):
            if model not in self.models:
                raise ModelNotFound(f"model '{model}' is not available", "check the name")
            return Result(text="OK", model=model, backend="openai")

    local, api = _Server(["smollm2:135m"]), Api(["gpt-4o-mini", "gpt-4o"])
    tier = LargeChoice(api, "gpt-4o-mini", False, False, None, "")
    judge = choose_judge(local, "gpt-4o", small="smollm2:135m", large=tier, verbose=False)
    assert judge.backend is api and judge.model == "gpt-4o"
    with pytest.raises(ModelNotFound, match="did not answer"):
        choose_judge(local, "claude-x", large=tier, verbose=False)


def test_run_paired_passes_the_judge_to_both_tiers():
    open_tasks = [t for t in open_prompts() if t.kind == "open"][:2]

    class Echo(_Server):  # answers with the prompt, so each tier's answer is known
        def chat(self, model, messages, *, options=None):
            return Result(text=f"{model}: {messages[-1]['content']}", model=model, backend=self.name)

    def judge(prompt):  # a rule, not a model: the large tier's answers get 9, the small one's 3
        return "Fine. [[9]]" if "big: " in prompt else "Weak. Rating: 3"

    server = Echo(["small", "big"])
    tier = LargeChoice(server, "big", True, False, None, "")
    df = run_paired(server, "small", tier, {"open": open_tasks}, progress=False, judge=judge)
    assert df["small_judge_score"].tolist() == [3, 3] and df["large_judge_score"].tolist() == [9, 9]
    assert df["small_correct"].tolist() == [False, False] and df["large_correct"].tolist() == [True, True]
    assert df.loc[0, "large_judge_text"] == "Fine. [[9]]"
    unjudged = run_paired(server, "small", tier, {"open": open_tasks}, progress=False)
    assert unjudged["small_correct"].isna().all() and unjudged["small_judge_text"].isna().all()


def test_a_real_judge_grades_open_prompts_on_the_session_server():
    """Real inference: the bundled model answers two open prompts and grades them itself
    (a tiny judge is no authority - this checks the path, not the grades)."""
    from conftest import BUNDLED
    from helpers import connect

    backend = connect(verbose=False)
    open_tasks = [t for t in open_prompts() if t.kind == "open"][:2]
    tier = LargeChoice(backend, BUNDLED, True, True, None, "")
    judge = ModelJudge(backend, BUNDLED, {"temperature": 0, "seed": 42, "num_predict": 64})
    df = run_paired(
        backend, BUNDLED, tier, {"open": open_tasks}, options={"num_predict": 160}, progress=False, judge=judge
    )
    assert len(df) == 2
    scores = df["small_judge_score"].tolist()
    assert any(s is not None and not math.isnan(s) for s in scores), f"the judge gave no rating: {scores}"
    for score_, verdict, correct, reason in zip(
        scores, df["small_judge_text"], df["small_correct"], df["small_done_reason"]
    ):
        if reason == "length":  # a cut-off answer is left unscored, not judged
            assert correct is None and not isinstance(verdict, str)
            continue
        assert isinstance(verdict, str) and verdict.strip(), "the judge's raw verdict is kept"
        if score_ is None or math.isnan(score_):
            assert correct is None
        else:
            assert 1 <= score_ <= 10 and correct == (score_ >= 7)
            assert parse_judge(verdict) == score_


# ---------------------------------------------------------------------------- answers shared by lessons


class _Counting(_Server):
    """Answers every prompt with its first word after a pause, and counts the calls per model: how
    many questions `paired_answers` really asked (the plumbing, not a model's quality)."""

    def __init__(self, models, pause_s=0.0):
        super().__init__(models)
        self.pause_s, self.calls = pause_s, []
        import threading

        self._guard = threading.Lock()

    def chat(self, model, messages, *, options=None):
        import time

        time.sleep(self.pause_s)
        with self._guard:
            self.calls.append((model, messages[-1]["content"], dict(options or {})))
        return Result(text=messages[-1]["content"].split()[0], model=model, backend=self.name)


def _shared_tasks(n=4):
    from helpers.evals import shared_eval

    routine = [t for t in shared_eval() if t.meta["level"] == "routine"]
    return {"routine": routine[:n], "hard": [t for t in shared_eval() if t.meta["level"] == "hard"][:2]}


def test_paired_answers_asks_once_and_reuses_the_saved_answers(tmp_path):
    from helpers.quality import paired_answers

    server = _Counting(["small", "big"])
    tier = LargeChoice(server, "big", True, False, None, "")
    sets = _shared_tasks()
    first = paired_answers(server, "small", tier, sets, folder=tmp_path, label="lesson 05", progress=False)
    assert (first.asked, first.reused, len(server.calls)) == (6, 0, 12)
    assert list(first.frame.task_id) == [t.id for ts in sets.values() for t in ts], "in the order asked for"
    assert first.path == run_file(tmp_path, "small", "big") and first.path.is_file()

    again = paired_answers(server, "small", tier, {"hard": sets["hard"]}, folder=tmp_path, label="lesson 06")
    assert (again.asked, again.reused, len(server.calls)) == (0, 2, 12), "nothing is asked twice"
    assert again.reused_from.startswith("lesson 05 (") and "UTC" in again.reused_from
    assert "2 answers reused from lesson 05" in again.describe()
    pd_ = again.frame.drop(columns=["settings", "asked_by", "asked_at"])
    assert pd_.small_text.tolist() == first.frame.small_text.tolist()[-2:]

    # one more task: only it is asked, the rest reused
    sets["routine"] = sets["routine"] + [_shared_tasks(5)["routine"][-1]]
    more = paired_answers(server, "small", tier, sets, folder=tmp_path, label="lesson 07", progress=False)
    assert (more.asked, more.reused, len(server.calls)) == (1, 6, 14)
    # other settings are other answers: asked again, and they replace the saved ones
    bigger = paired_answers(server, "small", tier, sets, folder=tmp_path, options={"num_predict": 300}, progress=False)
    assert (bigger.asked, bigger.reused, len(server.calls)) == (7, 0, 28)
    assert {c[2].get("num_predict") for c in server.calls[-14:]} == {300}
    saved, meta = load_run(tmp_path, "small", "big")
    assert len(saved) == meta["rows"] == 7, "one saved answer pair per task"
    assert saved.settings.str.contains('"num_predict": 300').all()


def test_two_lessons_at_once_ask_each_task_once(tmp_path):
    """The second lesson waits for the first and reuses its answers instead of asking beside it."""
    from concurrent.futures import ThreadPoolExecutor

    from helpers.quality import paired_answers

    server = _Counting(["small", "big"], pause_s=0.2)
    tier = LargeChoice(server, "big", True, False, None, "")
    sets = _shared_tasks()
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(
                paired_answers, server, "small", tier, sets, folder=tmp_path, label=f"lesson 0{i}", progress=False
            )
            for i in (5, 6)
        ]
        a, b = (r.result(timeout=120) for r in runs)
    assert len(server.calls) == 12, "every task asked once per tier, not once per lesson"
    first, second = sorted((a, b), key=lambda r: r.reused)
    assert (first.asked, second.asked, second.reused) == (6, 0, 6)
    assert second.waited_s > 0.1 and second.reused_from.startswith("lesson 0")
    assert first.frame.small_text.tolist() == second.frame.small_text.tolist()


def test_a_lock_left_by_a_dead_process_is_released(tmp_path):
    import subprocess
    import sys
    import time

    from helpers.quality import paired_answers

    lock = run_file(tmp_path, "small", "big").with_suffix(".lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from helpers.quality import _FileLock\n"
            f"with _FileLock(Path({str(lock)!r}), 'a crashed lesson', 60):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        server = _Counting(["small", "big"])
        tier = LargeChoice(server, "big", True, False, None, "")
        with pytest.raises(Exception, match="waited 1 s for a crashed lesson"):
            paired_answers(server, "small", tier, _shared_tasks(), folder=tmp_path, progress=False, timeout_s=1)
        holder.kill()  # dies holding the lock: the operating system releases it
        holder.wait(timeout=30)
        t0 = time.monotonic()
        done = paired_answers(server, "small", tier, _shared_tasks(), folder=tmp_path, progress=False)
        assert done.asked == 6 and time.monotonic() - t0 < 30
    finally:
        holder.kill()
        holder.wait(timeout=30)
