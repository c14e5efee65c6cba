"""Eval sets, scorers, the Wilson interval and run_eval with a non-model backend."""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter

import pytest

from helpers.backends import Backend
from helpers.errors import BadInput
from helpers.evals import (
    CATEGORIES,
    EvalRecord,
    ModelJudge,
    Task,
    accuracy_table,
    answer_program,
    arithmetic_tasks,
    build_program,
    check_code,
    extract_code,
    extract_number,
    humaneval_tasks,
    items_to_separate,
    judge_prompt,
    open_prompts,
    parse_judge,
    run_eval,
    score,
    score_code,
    score_keywords,
    score_number,
    two_digit_sums,
    wilson_interval,
)
from helpers.results import Metrics, Result

pytestmark = pytest.mark.no_server  # a unit test: no model server needed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 391.", 391),
        ("391", 391),
        ("= 3,910", 3910),
        ("17 * 23 = 391", 391),
        ("The answer is 391 (17 x 23).", 391),  # the marked answer wins over a later number
        ("**Answer:** 12", 12),
        ("So the result is \\boxed{42}. Check: 6 * 7", 42),
        ("x = -5", -5),
        ("10-3", 3),  # a minus between digits is not a sign
        ("It costs $1,234.50 in total", 1234.5),
        ("Final answer: 18.0 million dollars", 18),
    ],
)
def test_score_number_accepts(text, expected):
    assert score_number(text, expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 381.", 391),
        ("I don't know.", 391),
        ("", 0),
        ("3,91", 391),
    ],
)
def test_score_number_rejects(text, expected):
    assert not score_number(text, expected)


def test_extract_number_returns_none_without_digits():
    assert extract_number("seven") is None


def _safe_eval(expression: str) -> int:
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def ev(node):
        if isinstance(node, ast.Constant):
            return node.value
        return ops[type(node.op)](ev(node.left), ev(node.right))

    return ev(ast.parse(expression, mode="eval").body)


def test_arithmetic_tasks_are_deterministic_and_correct():
    a, b = arithmetic_tasks(40, seed=3), arithmetic_tasks(40, seed=3)
    assert a == b
    assert [t.prompt for t in arithmetic_tasks(40, seed=4)] != [t.prompt for t in a]
    assert Counter(t.difficulty for t in a if t.category == "arithmetic") == {"easy": 10, "medium": 10, "hard": 10}
    for task in a:
        assert task.kind == "number" and isinstance(task.answer, int)
        match = re.match(r"What is (.+)\?", task.prompt)
        if match:  # pure arithmetic: recompute independently
            assert _safe_eval(match.group(1)) == task.answer
        else:
            assert task.category == "word problem" and task.answer > 0
    with pytest.raises(BadInput):
        arithmetic_tasks(-1)


def test_wilson_interval_matches_a_hand_value():
    # 8 of 10, z = 1.959964: z^2 = 3.841459, denominator 1 + z^2/n = 1.3841459
    # centre = (0.8 + z^2/(2n)) / 1.3841459 = 0.99207295 / 1.3841459 = 0.716738
    # half   = z * sqrt(0.8*0.2/10 + z^2/(4 n^2)) / 1.3841459
    #        = 1.959964 * sqrt(0.016 + 0.0096037) / 1.3841459 = 0.226579
    # -> (0.490159, 0.943317), the textbook value (0.490, 0.943)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490159, abs=1e-5) and high == pytest.approx(0.943317, abs=1e-5)
    # 0 of 10: the lower bound is 0 and the upper is z^2 / (n + z^2) = 3.841459 / 13.841459
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.277533, abs=1e-5)
    with pytest.raises(BadInput):
        wilson_interval(11, 10)


def test_two_digit_sums_are_seeded_easy_sums():
    a = two_digit_sums(20, seed=1)
    assert a == two_digit_sums(20, seed=1) and a != two_digit_sums(20, seed=2)
    for t in a:
        x, y = map(int, re.match(r"What is (\d\d) \+ (\d\d)\?", t.prompt).groups())
        assert t.answer == x + y and (t.category, t.difficulty, t.kind) == ("two-digit sum", "easy", "number")
    assert len({t.id for t in a}) == 20
    with pytest.raises(BadInput):
        two_digit_sums(-1)


def test_items_to_separate_is_the_first_n_whose_intervals_part():
    for p1, p2 in [(0.22, 0.26), (0.8, 0.9), (0.3, 0.7), (0.95, 0.6)]:
        n = items_to_separate(p1, p2)
        lo, hi = sorted((p1, p2))
        assert wilson_interval(round(lo * n), n)[1] < wilson_interval(round(hi * n), n)[0]
        assert all(wilson_interval(round(lo * m), m)[1] >= wilson_interval(round(hi * m), m)[0] for m in range(1, n))
        assert items_to_separate(p2, p1) == n
    # a smaller gap needs more items: roughly 1 / gap^2
    assert items_to_separate(0.5, 0.55) > items_to_separate(0.5, 0.6) > items_to_separate(0.5, 0.7)
    assert items_to_separate(0.4, 0.4) is None and items_to_separate(0.5, 0.501, max_n=100) is None
    with pytest.raises(BadInput):
        items_to_separate(22, 26)


def test_doctests_of_the_evals_module():
    import doctest

    import helpers.evals

    result = doctest.testmod(helpers.evals)
    assert result.attempted > 0 and result.failed == 0, result


def test_humaneval_tasks_and_score_code():
    tasks = humaneval_tasks(5, seed=1)
    assert tasks == humaneval_tasks(5, seed=1) and len(tasks) == 5
    assert all(t.kind == "code" and t.category == "code" for t in tasks)
    assert len(humaneval_tasks()) == 164
    task = tasks[0]
    reference = task.answer  # problem prompt + canonical solution
    chatty = f"Sure! Here is the function:\n\n```python\n{reference}\n```\n\nIt loops once."
    assert score_code(chatty, task)
    body_only = reference[len(task.meta["code_prompt"]) :]
    assert score_code(body_only, task)
    wrong = f"```python\ndef {task.meta['entry_point']}(*args):\n    return None\n```"
    assert not score_code(wrong, task)
    assert not score_code("I am not able to write code.", task)
    with pytest.raises(BadInput):
        humaneval_tasks(1000)


def test_a_wrong_answer_cannot_forge_its_score():
    # issue 26: each of these scored as passed when the verdict was the program's exit status
    task = next(t for t in humaneval_tasks() if t.id == "HumanEval/0")
    wrong = "def has_close_elements(numbers, threshold):\n    return False\n"
    forgeries = [
        "import sys\nsys.exit = lambda *a: None\n" + wrong,
        wrong + "import os\nos._exit(0)\n",
        "class Always:\n    def __eq__(self, other):\n        return True\n\n"
        "def has_close_elements(numbers, threshold):\n    return Always()\n",
        "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n" + wrong,
        "import sys\nsys.modules['__main__'].check = lambda candidate: None\n" + wrong,
    ]
    for answer in forgeries:
        assert not score_code(f"```python\n{answer}```", task), answer
    result = check_code(wrong, task)
    assert not result.ok and "AssertionError" in result.stderr and not result.timed_out
    assert score_code(task.answer + "\nimport sys\nsys.exit = lambda *a: None\n", task)  # right stays right


def test_answers_that_return_iterators_or_ranges_are_scored_as_before():
    tasks = {t.id: t for t in humaneval_tasks()}
    # HumanEval/33's test calls tuple(candidate(...)): a generator passes, as in one process
    lazy = (
        "def sort_third(l):\n    thirds = sorted(l[::3])\n"
        "    return (thirds[i // 3] if i % 3 == 0 else x for i, x in enumerate(l))\n"
    )
    assert score_code(lazy, tasks["HumanEval/33"])
    # HumanEval/0 compares with == True: a generator is not True there, nor here
    assert not score_code(
        "def has_close_elements(numbers, threshold):\n    return iter([True])\n", tasks["HumanEval/0"]
    )


def test_the_answer_program_runs_without_the_test():
    task = humaneval_tasks(1, seed=3)[0]
    body = task.answer[len(task.meta["code_prompt"]) :]
    program = answer_program(body, task)
    assert program == task.answer and "def check" not in program
    assert build_program(body, task) == f"{program}\n\n{task.meta['test']}\n\ncheck({task.meta['entry_point']})\n"
    timed = check_code("def " + task.meta["entry_point"] + "(*a):\n    while True:\n        pass\n", task, timeout_s=1)
    assert not timed.ok and timed.timed_out


def test_extract_code_prefers_the_block_that_defines_the_entry_point():
    text = "```\npip install x\n```\nthen\n```python\ndef f(x):\n    return x\n```\n```py\nprint(f(1))\n```"
    assert extract_code(text, "f").startswith("def f(x)")
    assert extract_code("Here it is:\ndef g():\n    return 1", "g").startswith("def g")
    unterminated = "```python\ndef f(x):\n    return x\n"  # cut off by num_predict
    assert extract_code(unterminated, "f").startswith("def f(x)")
    with pytest.raises(BadInput):
        build_program("def f(): pass", Task("t", "p", None, "code", "easy", "code"))


def test_open_prompts_is_a_sound_labelled_set():
    tasks = open_prompts()
    assert 50 <= len(tasks) <= 80
    assert len({t.id for t in tasks}) == len(tasks)
    per_category = Counter(t.category for t in tasks)
    assert set(per_category) == set(CATEGORIES) and min(per_category.values()) >= 5
    assert set(t.difficulty for t in tasks) == {"easy", "medium", "hard"}
    for t in tasks:
        if t.kind == "number":
            assert isinstance(t.answer, (int, float))
        elif t.kind == "keywords":
            assert t.answer and all(isinstance(k, str) and k for k in t.answer)
        elif t.kind == "code":  # the reference solution passes, a stub does not
            assert score_code(t.answer, t), t.id
            assert not score_code(f"def {t.meta['entry_point']}(*a):\n    return None\n", t), t.id
        else:
            assert t.kind == "open" and t.answer is None
    assert sum(t.kind != "open" for t in tasks) >= 0.8 * len(tasks)  # mostly scorable without a judge


def test_score_dispatch_and_keywords():
    tasks = {t.id: t for t in open_prompts()}
    assert score(tasks["arith-03"], "17 * 23 = 391")
    assert not score(tasks["arith-03"], "17 * 23 = 381")
    assert score(tasks["ext-01"], "The address is Jane.Doe@example.org.")
    assert score(tasks["rew-02"], "Could you send me the report soon?")
    assert score(tasks["doc-01"], "The third quarter had the highest revenue.")
    assert score(tasks["cre-01"], "Waves fold on the sand") is None
    assert score_keywords("Tomorrow they're going", ["they're|they are", "tomorrow"])
    assert not score_keywords("They go", ["they're|they are", "tomorrow"])


def test_judge_prompt_and_parse_judge():
    task = open_prompts()[0]
    text = judge_prompt(task, "¡Hola, María!")
    assert task.prompt in text and "¡Hola, María!" in text and "[[rating]]" in text and "hola" in text
    assert parse_judge("Helpful and correct. Rating: [[8]]") == 8
    assert parse_judge("I'd say 6/10.") == 6
    assert parse_judge("Rating: 7") == 7
    assert parse_judge("[[11]]") is None
    assert parse_judge("no score here") is None
    assert parse_judge('{"rating": 4.0, "why": "short"}') == 4  # the JSON a judge is asked for again


class RuleBackend(Backend):
    """A real `Backend` (its checks, `chat` and `complete` are the interface's own) whose engine is
    a Python rule, not a language model: `reply(messages) -> text`. Records each call's options."""

    name = "rule"

    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def list_models(self):
        return ["m"]

    def _stream_chat(self, model, messages, options):
        self.calls.append((messages, options.to_dict() if options else {}))
        text = self.reply(messages)
        yield Result(
            text=text,
            model=model,
            backend=self.name,
            done=True,
            metrics=Metrics(prompt_tokens=len(messages[-1]["content"].split()), output_tokens=len(text.split())),
        )


class CalculatorBackend(RuleBackend):
    """A plain calculator behind the backend contract, clearly not a language model:
    it evaluates the arithmetic in a prompt and gives up on word problems."""

    name = "calculator"

    def __init__(self):
        super().__init__(self.calculate)

    @staticmethod
    def calculate(messages):
        match = re.match(r"What is (.+)\?", messages[-1]["content"])
        return f"The answer is {_safe_eval(match.group(1))}." if match else "I cannot parse that."


def test_run_eval_and_accuracy_table():
    tasks = arithmetic_tasks(20, seed=0)
    records = run_eval(CalculatorBackend(), "calc-1", tasks, progress=False)
    assert len(records) == 20 and all(isinstance(r, EvalRecord) for r in records)
    assert all(r.correct for r in records if r.category == "arithmetic")
    assert not any(r.correct for r in records if r.category == "word problem")
    assert all(r.latency_s >= 0 and r.output_tokens > 0 for r in records)
    table = accuracy_table(records).set_index("category")
    assert table.loc["arithmetic", "n"] == 15 and table.loc["arithmetic", "accuracy"] == 1.0
    assert table.loc["word problem", "accuracy"] == 0.0
    assert table.loc["(all)", "correct"] == 15
    low, high = wilson_interval(15, 20)
    assert table.loc["(all)", "ci_low"] == pytest.approx(low) and table.loc["(all)", "ci_high"] == pytest.approx(high)
    with pytest.raises(BadInput):
        run_eval(CalculatorBackend(), "calc-1", [], progress=False)
    with pytest.raises(BadInput):
        accuracy_table([])


def test_run_eval_uses_a_judge_for_open_tasks():
    open_task = next(t for t in open_prompts() if t.kind == "open")

    def echo():  # repeats the prompt back: a deterministic stand-in with no model
        return RuleBackend(lambda messages: messages[-1]["content"])

    def length_judge(prompt: str) -> str:  # a rule, not a model: rates by answer length
        answer = prompt.split("[The Start of Assistant's Answer]\n")[1].split("\n[The End")[0]
        return f"Rating: [[{min(10, 1 + len(answer) // 5)}]]"

    unjudged = run_eval(echo(), "echo", [open_task], progress=False)[0]
    judged = run_eval(echo(), "echo", [open_task], progress=False, judge=length_judge)[0]
    assert unjudged.correct is None and unjudged.judge_score is None
    assert judged.judge_score == min(10, 1 + len(open_task.prompt) // 5)
    assert judged.correct == (judged.judge_score >= 7)


def test_model_judge_asks_again_for_a_missing_rating_and_keeps_both_replies():
    # rambles first; gives the rating only when asked for it alone
    backend = RuleBackend(lambda messages: '{"rating": 6}' if len(messages) > 1 else "The answer is nice, I think.")
    open_task = next(t for t in open_prompts() if t.kind == "open")
    record = run_eval(backend, "m", [open_task], progress=False, judge=ModelJudge(backend, "judge"))[0]
    assert record.judge_score == 6 and record.correct is False
    assert record.judge_text.startswith("The answer is nice") and '{"rating": 6}' in record.judge_text
    (first, first_opts), (again, again_opts) = backend.calls[1:]  # calls[0] is the answer itself
    assert first_opts["temperature"] == 0 and again[-1]["content"].startswith("Now give only your rating")
    assert again[1] == {"role": "assistant", "content": "The answer is nice, I think."}
    assert again_opts["num_predict"] < first_opts["num_predict"]

    decisive = RuleBackend(lambda messages: "Good. Rating: [[8]]")
    assert ModelJudge(decisive, "judge")("grade this") == "Good. Rating: [[8]]"
    assert len(decisive.calls) == 1  # a rating on the first reply: no second question


# ---------------------------------------------------------------------------- the shared set


def _shared_rows():
    import json

    from helpers.evals import SHARED_EVAL_FILE

    return {row["id"]: row for row in map(json.loads, SHARED_EVAL_FILE.read_text(encoding="utf-8").splitlines())}


def test_the_shared_set_has_routine_and_hard_items_of_every_type_with_a_budget():
    from helpers.evals import TYPE_BUDGETS, shared_eval

    tasks = shared_eval()
    routine, hard = shared_eval(level="routine"), shared_eval(level="hard")
    assert len(tasks) >= 60 and len(routine) + len(hard) == len(tasks) and len(hard) >= 25
    assert {t.category for t in routine} == {
        "factual",
        "extraction",
        "classification",
        "formatting",
        "summary",
        "arithmetic",
    }
    assert {t.category for t in hard} == {"word problem", "code", "instructions"}
    assert all(t.difficulty == ("easy" if t in routine else "hard") for t in tasks)
    assert all(t.meta["num_predict"] == TYPE_BUDGETS[t.category] for t in tasks)
    assert len({t.id for t in tasks}) == len(tasks)
    with pytest.raises(BadInput, match="level"):
        shared_eval(level="medium")


def test_every_shared_item_scores_its_written_reference_right():
    from helpers.evals import shared_eval

    rows = _shared_rows()
    wrong = [t.id for t in shared_eval() if score(t, rows[t.id]["reference"]) is not True]
    assert wrong == []


@pytest.mark.parametrize(
    "task_id, answer",
    [
        ("fact-01", "The capital of Australia is Sydney."),
        ("fact-09", "A leap year has 365 days."),
        ("extract-03", "From Denver to Boston"),
        ("extract-05", "It is at 2 pm."),
        ("extract-01", "For refunds, write to Dana Lee at dana.lee@example.com before Friday."),  # an echo
        ("classify-01", "Positive and negative."),
        ("classify-05", "technical"),
        ("format-01", "The Quick Brown Fox"),
        ("format-04", 'Here it is: {"name": "Alice", "age": 30}'),
        ("format-06", "Ahmed, Ben, Maria, Lucy"),
        ("summary-02", "Because her alarm did not ring, Maria missed her bus and walked to work in the rain late."),
        ("word-04", "Tom is 3 times 12. Answer: 24"),
        ("code-04", "```python\ndef roman_to_int(s):\n    return len(s)\n```"),
        ("code-07", "```python\ndef fizzbuzz(n):\n    return [str(i) for i in range(1, n + 1)]\n```"),
        ("instr-01", "Moon: one.\nMoon: two."),
        ("instr-02", "apple\ncherry\nbanana\nmango\norange"),
        ("instr-03", '{"city": "Paris", "country": "France", "height": 330}'),
        ("instr-04", "The ocean is a blaze of blue."),
        ("instr-07", "SUNLIGHT SCATTERS. Blue light scatters most."),
        ("instr-08", "How to Save Money!"),
    ],
)
def test_shared_items_fail_a_wrong_answer(task_id, answer):
    from helpers.evals import shared_eval

    task = next(t for t in shared_eval() if t.id == task_id)
    assert score(task, answer) is False


def test_run_eval_uses_each_tasks_budget_and_leaves_a_cut_off_answer_unscored():
    from helpers.evals import TYPE_BUDGETS, shared_eval

    class Truncating(RuleBackend):  # stops at 5 words, as num_predict would, and says so
        def _stream_chat(self, model, messages, options):
            self.calls.append((messages, options.to_dict()))
            words = ("The answer is 12 " + "and more " * 10).split()
            cut = len(words) > 5
            yield Result(
                text=" ".join(words[:5]),
                model=model,
                backend=self.name,
                done=True,
                done_reason="length" if cut else "stop",
                metrics=Metrics(output_tokens=5),
            )

    tasks = [t for t in shared_eval() if t.id in ("arith-01", "word-01")]
    backend = Truncating(None)
    records = run_eval(backend, "m", tasks, progress=False, concurrency=1)
    assert [opts["num_predict"] for _, opts in backend.calls] == [TYPE_BUDGETS[t.category] for t in tasks]
    assert all(r.cut_off and r.correct is None and r.done_reason == "length" for r in records)
    run_eval(backend, "m", tasks[:1], progress=False, options={"num_predict": 7})
    assert backend.calls[-1][1]["num_predict"] == 7  # the caller's budget wins
    table = accuracy_table(records).set_index("category")
    assert table.loc["(all)", "n"] == 0 and table.loc["(all)", "unscored"] == 2
