"""Verdicts on the article's claims, computed from what a lesson measured.

Each function takes the measured values (and the article's own figures as defaults) and returns a
`Finding`: the measured text for the ledger, `ok` (True, False or None for "cannot check here") and
why. The rules a fair verdict follows (docs/authoring.md, STYLE.md): it judges the claim's own subject
(the article's models and prices), it names the condition it was judged under, and a different
measurement can turn it the other way - `tests/test_verdicts.py` flips each one.

A lesson's ledger cell calls them and records the result::

    ledger.judge("cost-local", verdicts.cost_local(energy_usd=4.2, machine_days=31, n_queries=1_000_000))
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import BadInput
from .validate import base_name

#: The large models of the article's table row "175B+ (GPT-3/4)" that carry the "$0.01-0.06 per 1K
#: tokens", by their genai-prices names: GPT-3 (text-davinci-003), GPT-4 (8k context) and GPT-4 Turbo.
ARTICLE_LARGE_MODELS = ("text-davinci-003", "gpt-4", "gpt-4-turbo")
#: The large model the article's hybrid tip prices against ("# Uses GPT-4" in its smart_routing).
ARTICLE_LARGE_TIER = "gpt-4"
#: Benchmarks of multi-step reasoning: the article sends those to the large model ("escalate to large
#: models for complex reasoning"), so they do not count towards its "80% of routine tasks".
REASONING_BENCHMARKS = frozenset({"gsm8k"})


@dataclass(frozen=True)
class Finding:
    """One verdict: what was measured (as the ledger shows it), ok (None: cannot check here), why."""

    measured: str
    ok: bool | None
    why: str = ""


def _money(usd: float) -> str:
    return f"${usd:,.0f}" if usd >= 10 else f"${usd:,.2f}"


def price_per_1k(
    prices: Mapping[str, tuple[float, float]], low: float = 0.01, high: float = 0.06, when: str = ""
) -> Finding:
    """ "$0.01-0.06 per 1K tokens" for the article's GPT-3/4 models: confirmed when every input and
    output price (USD per 1K tokens) of `prices` lies in [low, high].

    >>> price_per_1k({"gpt-4": (0.03, 0.06), "gpt-4-turbo": (0.01, 0.03)}).ok
    True
    >>> price_per_1k({"gpt-4-32k": (0.06, 0.12)}).why
    'gpt-4-32k outside $0.01-0.06'
    """
    if not prices:
        return Finding("no price of GPT-3/4 looked up", None, "genai-prices has none of the article's models")
    outside = [m for m, (i, o) in prices.items() if not (low <= i <= high and low <= o <= high)]
    measured = "; ".join(f"{m} ${i:g} in / ${o:g} out" for m, (i, o) in prices.items()) + " per 1K tokens"
    measured += f" (genai-prices, {when})" if when else ""
    return Finding(
        measured,
        not outside,
        f"{', '.join(outside)} outside ${low:g}-{high:g}"
        if outside
        else f"the article's row is GPT-3/4: {', '.join(prices)}",
    )


def cost_at_query_size(
    claimed_usd: float, usd: float, input_tokens: int, output_tokens: int, model: str, rel_tol: float = 0.25
) -> Finding:
    """A "$X per 1 million queries" row at a stated query size: confirmed when this lesson's query
    size (`input_tokens` + `output_tokens`, costing `usd` for the million) comes within `rel_tol`.

    The article names no query size, so some size always fits its figure: the verdict says which
    size it judged and what the figure would need.

    >>> cost_at_query_size(30_000, 14_000, 500, 300, "gpt-4-turbo").ok
    False
    >>> cost_at_query_size(30_000, 30_000, 1500, 500, "gpt-4-turbo").ok
    True
    """
    if claimed_usd <= 0 or usd < 0:
        raise BadInput(
            f"costs must be positive, got claimed {claimed_usd!r}, measured {usd!r}",
            "pass the article's figure and the lesson's total in USD",
        )
    factor = claimed_usd / usd if usd else math.inf
    ok = abs(usd - claimed_usd) <= rel_tol * claimed_usd
    return Finding(
        f"{_money(usd)} for 1M queries of {input_tokens:,} + {output_tokens:,} tokens ({model})",
        ok,
        f"within {rel_tol:.0%} at this lesson's query size"
        if ok
        else f"{factor:.1f}x off at this lesson's query size; the article's figure needs "
        f"{'longer' if factor > 1 else 'shorter'} queries (it names no size)",
    )


def cost_local(
    energy_usd: float, machine_days: float, n_queries: int = 1_000_000, precision_usd: float = 100.0
) -> Finding:
    """ "Local deployment: $0 (after initial hardware)": after the hardware, the cost per query is the
    energy. Confirmed when the energy for `n_queries` rounds to $0 at the precision of the
    article's table (its other rows are whole hundreds: $300, $500), refuted otherwise.

    >>> cost_local(4.2, 31).ok, cost_local(180.0, 31).ok
    (True, False)
    """
    if energy_usd < 0 or machine_days < 0:
        raise BadInput("energy and machine-days cannot be negative", "pass the local row of the cost table")
    ok = energy_usd < precision_usd / 2
    days = f"; and one machine busy {machine_days:,.0f} days" if machine_days >= 1 else ""
    return Finding(
        f"energy {_money(energy_usd)} for {n_queries:,} queries{days}",
        ok,
        (
            f"rounds to $0 at the table's ${precision_usd:,.0f} steps"
            if ok
            else f"the energy alone is {_money(energy_usd)}, not $0"
        )
        + " (energy from the measured speed and the stated watts and tariff)",
    )


def routine_share(
    shares: Mapping[str, float], threshold: float = 0.80, reasoning: frozenset[str] | set[str] = REASONING_BENCHMARKS
) -> Finding:
    """ "Use small models for 80% of routine tasks, escalate ... for complex reasoning": the share of
    questions where the small model was enough (at least as good as the large one), judged on the
    routine benchmarks only; reasoning ones (GSM8K) are shown beside them as the escalated kind.

    >>> routine_share({"gsm8k": 0.75, "mmlu": 0.82}).ok
    True
    >>> routine_share({"gsm8k": 0.75, "mmlu": 0.78}).ok
    False
    >>> routine_share({"gsm8k": 0.75}).ok is None
    True
    """
    routine = {b: s for b, s in shares.items() if b not in reasoning}
    escalated = {b: s for b, s in shares.items() if b in reasoning}
    measured = "small model enough on " + ", ".join(
        f"{b} {s:.0%} ({'complex reasoning' if b in reasoning else 'routine'})" for b, s in shares.items()
    )
    if not routine:
        return Finding(measured, None, "only reasoning benchmarks ran, which the article escalates")
    below = [b for b, s in routine.items() if s < threshold]
    note = f"; {', '.join(escalated)} is the reasoning the article escalates" if escalated else ""
    return Finding(
        measured,
        not below,
        (f"below {threshold:.0%} on {', '.join(below)}" if below else f"judged on {', '.join(routine)}") + note,
    )


#: The small models the article names (its "Top Small Language Models"): a verdict that the small
#: tier falls short judges the claim only when one of these ran; below it, the claim is about bigger
#: models than this pair's.
ARTICLE_SMALL_MODELS = ("phi3:mini", "gemma:2b", "mistral:7b", "llama2:7b")
#: The large models the article names ("175B+ (GPT-3/4)"): the same rule for the large tier.
ARTICLE_LARGE_NAMES = ("gpt-4", "gpt-3.5-turbo", "gpt-4-turbo", "gpt-4o")
NOT_SUPPORTED = "not supported on this pair"


def _article_model(model: str, names: Sequence[str]) -> bool:
    base = base_name(model.split("/")[-1].lower())
    return any(base == n or base.startswith(n + "-") for n in names)


def simple_tasks(
    small_model: str, right: int, n: int, large_right: int | None = None, good_enough: float = 0.80
) -> Finding:
    """ "Choose SLMs when: simple, focused tasks": confirmed when the small tier gets at least
    `good_enough` of the routine tasks right. Falling short refutes the claim only when the small
    tier is one of the article's SLMs (ARTICLE_SMALL_MODELS); with a smaller model the verdict is
    "not supported on this pair", a statement about this pair, not about the article's models.

    >>> simple_tasks("phi3:mini", 34, 40).ok, simple_tasks("phi3:mini", 20, 40).ok
    (True, False)
    >>> f = simple_tasks("smollm2:135m", 15, 40)
    >>> f.ok is None and f.why.startswith("not supported on this pair")
    True
    """
    if n <= 0:
        return Finding(f"no routine task of {small_model} was scored", None, "no routine task was scored")
    share = right / n
    measured = f"{right}/{n} routine tasks right ({share:.0%}) with small {small_model}"
    if large_right is not None:
        measured += f"; the large tier {large_right}/{n} ({large_right / n:.0%})"
    if share >= good_enough:
        return Finding(measured, True, f"the small model gets at least {good_enough:.0%} right")
    if _article_model(small_model, ARTICLE_SMALL_MODELS):
        return Finding(measured, False, f"the article's SLM gets fewer than {good_enough:.0%} right")
    return Finding(
        measured,
        None,
        f"{NOT_SUPPORTED}: {small_model} gets fewer than {good_enough:.0%} right, "
        "but it is smaller than the article's SLMs (Phi-3 Mini, Gemma 2B)",
    )


def complex_reasoning(
    large_model: str, only_small: int, only_large: int, p_value: float, n: int, tasks_needed: int | None = None
) -> Finding:
    """ "Choose large LMs when: complex reasoning tasks": on the hard tasks, the large tier must be
    right where the small one is not, more often than the reverse, by McNemar's exact test (p <
    0.05). A win on a stand-in large model confirms it on this pair (the why says so); a loss or a
    tie refutes it only when the large tier is one of the article's (ARTICLE_LARGE_NAMES). Too few
    disagreements: cannot tell.

    >>> complex_reasoning("qwen2.5-coder:1.5b", 1, 12, 0.003, 28).ok
    True
    >>> complex_reasoning("qwen2.5-coder:1.5b", 3, 4, 1.0, 28).ok is None
    True
    >>> complex_reasoning("gpt-4", 9, 1, 0.02, 28).ok
    False
    """
    measured = (
        f"{n} hard tasks: only small right {only_small}, only large ({large_model}) right {only_large}, "
        f"McNemar exact p = {p_value:.3g}"
    )
    article = _article_model(large_model, ARTICLE_LARGE_NAMES)
    if n <= 0:
        return Finding(measured, None, "no hard task was scored")
    if not p_value < 0.05:
        return Finding(
            measured,
            None,
            "this run cannot tell the tiers apart on them"
            + (f": about {tasks_needed:,} hard tasks per model would" if tasks_needed else ""),
        )
    if only_large > only_small:
        return Finding(
            measured,
            True,
            "the large model is right where the small one is not"
            + ("" if article else f" (on this pair: {large_model} stands in for the article's GPT-4)"),
        )
    if article:
        return Finding(measured, False, "the small model did better on the hard tasks")
    return Finding(
        measured,
        None,
        f"{NOT_SUPPORTED}: the small model did better than {large_model}, "
        "which is not one of the article's large models",
    )


def small_answers_two_plus_two(answer: str, routed_to: str, small_model: str) -> Finding:
    """`smart_routing("What's 2+2?") # Uses Phi-3`: the claim is that the small model serves this
    prompt. Confirmed when the small model's own answer is 4 (whatever this page's router chose).

    >>> small_answers_two_plus_two("2 + 2 = 4", "large", "smollm2:135m").ok
    True
    >>> small_answers_two_plus_two("2 + 2 = 5", "small", "smollm2:135m").ok
    False
    """
    from .evals import score_number

    right = score_number(answer, 4)
    return Finding(
        f"{small_model} alone answered {answer.strip()[:40]!r}; this page's router sent it {routed_to}",
        right,
        ("the small model can serve it" if right else "the small model's answer is not 4")
        + ("" if routed_to == "small" else "; the course's is_simple_task routes maths large"),
    )


def saving_at_mix(small_usd: float, simple_large_usd: float, complex_large_usd: float, routine: float = 0.8) -> float:
    """Share of the always-large bill saved when `routine` of the prompts (the simple ones) go to
    the small model: mean USD of a small answer, of a large answer to a simple prompt, of a large
    answer to a complex prompt (lesson 07's HybridApp.mean_costs).

    >>> round(saving_at_mix(0.0, 1.0, 1.0), 2), round(saving_at_mix(1.0, 1.0, 1.0), 2)
    (0.8, 0.0)
    """
    always = routine * simple_large_usd + (1 - routine) * complex_large_usd
    if always <= 0:
        raise BadInput("the large calls must cost something to save on them", "price them with api_price")
    return 1.0 - (routine * small_usd + (1 - routine) * complex_large_usd) / always


def hybrid_saving(
    small_usd: float,
    simple_large_usd: float,
    complex_large_usd: float,
    large_model: str,
    routine: float = 0.8,
    low: float = 0.60,
    high: float = 0.80,
) -> Finding:
    """ "This reduces costs by 60-80%": the saving at the article's routine share, with the large
    answers priced as the article's large model (GPT-4). Confirmed when it lies in [low, high].

    >>> hybrid_saving(0.00001, 0.02, 0.03, "gpt-4").ok
    True
    >>> hybrid_saving(0.001, 0.0012, 0.002, "gpt-4o-mini").ok
    False
    """
    saved = saving_at_mix(small_usd, simple_large_usd, complex_large_usd, routine)
    ok = low <= saved <= high
    return Finding(
        f"{saved:.0%} saved at {routine:.0%} small calls, large answers priced as {large_model} "
        f"(${complex_large_usd:.5f} a complex one; a small answer ${small_usd:.6f})",
        ok,
        f"{'inside' if ok else 'outside'} {low:.0%}-{high:.0%}"
        + ("" if ok else f"; a small answer costs {small_usd / simple_large_usd:.0%} of a large one"),
    )


def rescues(outcomes: Sequence[bool | None]) -> tuple[int, int, int]:
    """(checked, right, unchecked) of the fall-back answers: True right, False wrong, None no check.

    >>> rescues([True, False, None, True])
    (3, 2, 1)
    """
    checked = [o for o in outcomes if o is not None]
    return len(checked), sum(bool(o) for o in checked), len(outcomes) - len(checked)


def reliability(outcomes: Sequence[bool | None], small_here: bool, kinds: str = "") -> Finding:
    """ "Reliability | Internet dependent | Works offline": each large-tier failure the small model
    answered counts as a rescue only when its answer passes the task's check. Confirmed when every
    checked fall-back was right (and at least one was checked) on a small tier on this machine.

    >>> reliability([True, True, None], small_here=True).ok
    True
    >>> reliability([True, False], small_here=True).ok
    False
    >>> reliability([None], small_here=True).ok is None
    True
    """
    checked, right, unchecked = rescues(outcomes)
    measured = (
        f"{len(outcomes)} large-tier failures{f' ({kinds})' if kinds else ''}: the small model answered "
        f"{right} of {checked} checkable ones right ({unchecked} open prompts not scored)"
    )
    if not small_here:
        return Finding(measured, None, "the small tier is not on this machine")
    if not checked:
        return Finding(measured, None, "no fall-back answer had a check")
    return Finding(
        measured,
        right == checked,
        "a fall-back counts only with a right answer"
        if right == checked
        else f"{checked - right} fall-back answer(s) wrong: the app answered, but not well",
    )


def realtime(ttft_s: float, e2e_s: float, budget_s: float = 0.5, users: int = 1) -> Finding:
    """ "Building real-time applications" for one user (the article's setting): confirmed when the
    first token arrives within `budget_s` (the article's "100-500ms response").

    >>> realtime(0.2, 3.0).ok, realtime(0.9, 3.0).ok
    (True, False)
    """
    if not math.isfinite(ttft_s):
        return Finding("no first-token time measured", None, "the load test did not run with one user")
    ok = ttft_s <= budget_s
    return Finding(
        f"{users} user: first token after {ttft_s * 1000:.0f} ms (p90), whole answer {e2e_s:.2f} s",
        ok,
        f"{'within' if ok else 'over'} the article's {budget_s * 1000:.0f} ms for the first word; "
        "lesson 09's class load is a separate question",
    )


_DEF_RE = re.compile(r"^def\s+(\w+)\s*\(", re.M)


def is_fibonacci(printed: str) -> bool:
    """True when `printed` is a list of ten numbers, each the sum of the two before, starting
    (0, 1), (1, 1) or (1, 2).

    >>> is_fibonacci("[1, 1, 2, 3, 5, 8, 13, 21, 34, 55]"), is_fibonacci("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]")
    (True, False)
    """
    import ast

    try:
        x = ast.literal_eval(printed)
    except (ValueError, SyntaxError):
        return False
    if not isinstance(x, list) or len(x) != 10 or not all(isinstance(v, int) for v in x):
        return False
    return tuple(x[:2]) in {(0, 1), (1, 1), (1, 2)} and all(x[i] == x[i - 1] + x[i - 2] for i in range(2, 10))


def _calls_input(node) -> bool:
    import ast

    return any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "input" for n in ast.walk(node))


def fibonacci_program(code: str) -> str | None:
    """A program that calls the first function `code` defines on 1..10 and prints the results as
    one line, or None when `code` defines no function. Top-level statements other than imports,
    definitions and assignments are left out.

    >>> "input(" in fibonacci_program("def f(n):\\n    return n\\n\\nn = int(input())\\nprint(f(n))")
    False
    """
    m = _DEF_RE.search(code)
    if not m:
        return None
    try:  # the function is judged, not the example usage around it (an input() call, a print loop)
        import ast

        tree = ast.parse(code)
        keep = (ast.FunctionDef, ast.Import, ast.ImportFrom, ast.ClassDef)
        code = "\n\n".join(
            ast.get_source_segment(code, node) or ""
            for node in tree.body
            if isinstance(node, keep)
            or (isinstance(node, ast.Assign) and node is not tree.body[-1] and not _calls_input(node))
        )
    except SyntaxError:
        pass  # run as written: the syntax error is the finding
    return f"{code}\n\nimport sys\nsys.setrecursionlimit(200)\nprint('FIB', [{m.group(1)}(n) for n in range(1, 11)])\n"


def fibonacci_works(code: str, *, timeout_s: float = 5.0) -> Finding:
    """ "Write a Python function to calculate fibonacci": run the function the model wrote in the
    sandbox on n = 1..10, with a timeout; confirmed when it returns ten consecutive Fibonacci
    numbers, each the sum of the two before (any of the usual starts: 0, 1 / 1, 1 / 1, 2).

    >>> fibonacci_works("def f(n):\\n    return n if n < 2 else f(n - 1) + f(n - 2)").ok
    True
    >>> fibonacci_works("def f(n):\\n    return f(n - 1) + f(n - 2)").ok
    False
    """
    from .sandbox import run_python

    program = fibonacci_program(code)
    if program is None:
        return Finding("no function in the answer", False, "nothing to run")
    run = run_python(program, timeout_s=timeout_s)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("FIB ")), "")
    got = line[4:].strip()
    if run.timed_out:
        what = f"ran past the {timeout_s:g} s limit"
    elif not run.ok:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        what = f"raised: {last[:80]}"
    else:
        what = f"f(1..10) = {got[:60]}"
    ok = run.ok and is_fibonacci(got)
    return Finding(
        f"ran the function in the sandbox: {what}", ok, "the Fibonacci numbers" if ok else "not the Fibonacci numbers"
    )


def smart_home(pairs: Sequence[tuple[Mapping | None, Mapping[str, str]]], offline: bool, how: str = "") -> Finding:
    """ "IoT Devices: Smart home automation without cloud": with the network cut (`offline`), the
    small model turned each spoken command into its device action (`pairs`: the model's parsed reply,
    or None, and the expected action; every field must match, case and spaces aside). Judged on
    content, not on whether some text came back; None when the network could not be cut.

    >>> want = {"device": "light", "room": "kitchen", "action": "off"}
    >>> smart_home([(dict(want, room="Kitchen"), want)], offline=True).ok
    True
    >>> smart_home([(dict(want, action="on"), want)], offline=True).why
    "1 of 1 wrong: 'light kitchen on' for 'light kitchen off'"
    """

    def norm(v) -> str:
        return re.sub(r"[\s_-]+", " ", str(v)).strip().lower()

    def words(d: Mapping | None, keys) -> str:
        return "no JSON" if d is None else " ".join(norm(d.get(k, "?")) for k in keys)

    wrong = [(r, e) for r, e in pairs if r is None or any(norm(r.get(k, "")) != norm(v) for k, v in e.items())]
    where = "network cut" if offline else "network up"
    measured = f"{where}{f' ({how})' if how else ''}: {len(pairs) - len(wrong)} of {len(pairs)} commands right"
    if not pairs:
        return Finding(measured, None, "no command was asked")
    if not offline:
        return Finding(measured, None, "the network could not be cut here, so 'without cloud' is not shown")
    return Finding(
        measured,
        not wrong,
        "each command became the right device action on this machine"
        if not wrong
        else f"{len(wrong)} of {len(pairs)} wrong: "
        + "; ".join(f"{words(r, e)!r} for {words(e, e)!r}" for r, e in wrong),
    )
