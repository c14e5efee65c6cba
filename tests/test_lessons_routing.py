"""The article's code written on the page of lessons 06 and 07, held to the kit.

- Lesson 06 builds `is_simple_task` in visible cells (keyword list, regexes, function). Executed
  from the notebook, it must decide every prompt the kit has - its own prompts, the eval sets,
  HumanEval, RouteLLM's recorded questions - as `helpers.routing` does, for the same reasons.
  A page that drifts is caught (the mutation tests below show the comparison can fail).
- Lessons 06 and 07 quote the article's `smart_routing` sketch verbatim.
- Lessons 03 and 05-07 end with a checked cell saying that small and large were two different
  models and that every metric printed is finite. nbval compares that cell with its stored output
  on every `make test`, so a run on one model, or a NaN metric, fails the suite; here we check the
  stored reference says what it must.

No model server is needed (pure code on fixed prompts).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from helpers.evals import arithmetic_tasks, humaneval_tasks, open_prompts, shared_eval, two_digit_sums
from helpers.recorded import load_routellm
from helpers.routing import is_simple_task as kit_is_simple_task
from helpers.routing import task_features

pytestmark = pytest.mark.no_server

LESSON_06 = ROOT / "notebooks" / "06_routing.ipynb"
LESSON_07 = ROOT / "notebooks" / "07_hybrid_app.ipynb"
#: Where DESIGN.md says the article lives, beside the repository (absent in a plain clone).
ARTICLE = ROOT.parent / "shared" / "article.txt"
#: The article's routing code as its page prints it (indentation lost), copied from the article.
ARTICLE_SKETCH = """\
def smart_routing(prompt):
# Use small model first
if is_simple_task(prompt):
return query_small_model(prompt)
else:
return query_large_model(prompt)
# Example usage
result = smart_routing("What's 2+2?") # Uses Phi-3
complex_result = smart_routing("Analyze this legal document...") # Uses GPT-4
"""
HEURISTIC_NAMES = {
    "LONG_PROMPT_WORDS",
    "COMPLEX_KEYWORDS",
    "KEYWORD_RES",
    "CODE_RE",
    "MATH_RE",
    "complexity_reasons",
    "is_simple_task",
}


# ---------------------------------------------------------------------------- page code


def _defined(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def page_cells(path: Path, names: set[str]) -> list[str]:
    """The code cells of a notebook that define any of `names` at top level, in page order."""
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and _defined(c.source) & names]
    found = set().union(*(_defined(s) for s in cells)) if cells else set()
    assert names <= found, f"{path.name} no longer defines {sorted(names - found)} on the page"
    return cells


def run_page(cells: list[str], preamble: str = "") -> dict:
    """Execute page cells in a fresh namespace, as the kernel would."""
    namespace: dict = {}
    exec(compile(preamble + "\n\n".join(cells), "<page>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """Every prompt the kit has: its own, the eval sets, HumanEval, the recorded RouteLLM questions,
    the article's examples and a few edge cases around each rule."""
    prompts = [t.prompt for t in open_prompts()]
    prompts += [t.prompt for t in arithmetic_tasks(40, seed=0)]
    prompts += [t.prompt for t in humaneval_tasks()]
    prompts += [t.prompt for t in two_digit_sums(20)]  # lesson 05's one-skill illustration
    prompts += [t.prompt for t in shared_eval()]  # the shared set lessons 05-07 route on
    prompts += load_routellm("gsm8k")["prompt"].tolist()
    prompts += load_routellm("mmlu")["prompt"].sample(2000, random_state=0).tolist()  # 57 subjects, seeded
    prompts += [
        "What's 2+2?",
        "Analyze this legal document...",
        "How can I improve my essay?",
        " ".join(["word"] * 120),
        " ".join(["word"] * 121),
        "import os\nprint(os.name)",
        "int x = 1;",
        "What is 3 x 4?",
        "Give me 15 % of 80.",
        "WHY IS the sky blue?",
    ]
    return prompts


def _disagreements(page: dict, prompts: list[str], *, first: bool = False) -> list[str]:
    out = []
    for p in prompts:
        if (
            page["is_simple_task"](p) != kit_is_simple_task(p)
            or page["complexity_reasons"](p) != task_features(p)["reasons"]
        ):
            out.append(p)
            if first:
                break
    return out


def test_page_is_simple_task_agrees_with_helpers_routing(corpus):
    page = run_page(page_cells(LESSON_06, HEURISTIC_NAMES))
    different = _disagreements(page, corpus)
    assert not different, (
        f"lesson 06's is_simple_task and helpers.routing disagree on {len(different)} of "
        f"{len(corpus)} prompts, e.g. {different[0][:120]!r}"
    )
    # the comparison exercised every rule, and both answers
    reasons = [r for p in corpus for r in task_features(p)["reasons"]]
    for signal in ("long (", "reasoning keywords:", "code", "maths"):
        assert any(r.startswith(signal) for r in reasons), f"no prompt in the corpus triggers {signal!r}"
    assert any(map(kit_is_simple_task, corpus)), "no prompt in the corpus is simple"


@pytest.mark.parametrize(
    "old, new",
    [
        ('"compare", ', ""),  # a reasoning keyword dropped
        ("LONG_PROMPT_WORDS = 120", "LONG_PROMPT_WORDS = 200"),  # a different length limit
        ("|sum of|", "|"),  # a maths word dropped
    ],
)
def test_a_drifting_page_is_caught(corpus, old, new):
    cells = page_cells(LESSON_06, HEURISTIC_NAMES)
    assert any(old in c for c in cells), f"the page no longer contains {old!r}: update this test"
    page = run_page([c.replace(old, new) for c in cells])
    assert _disagreements(page, corpus, first=True), f"changing {old!r} to {new!r} on the page went unnoticed"


# ---------------------------------------------------------------------------- the article, verbatim


def _fenced(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [
        m.group(1)
        for c in nb.cells
        if c.cell_type == "markdown"
        for m in re.finditer(r"```[^\n]*\n(.*?)```", c.source, re.S)
    ]


@pytest.mark.parametrize("lesson", [LESSON_06, LESSON_07], ids=lambda p: p.stem)
def test_lessons_quote_the_articles_smart_routing_verbatim(lesson):
    assert ARTICLE_SKETCH in _fenced(lesson), f"{lesson.name} does not quote the article's sketch exactly"


@pytest.mark.skipif(not ARTICLE.is_file(), reason="the article is not beside this checkout (../shared/article.txt)")
def test_the_quote_is_the_articles_text():
    assert ARTICLE_SKETCH in ARTICLE.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- the trust cells

TRUST_LESSONS = ["03_speed", "05_quality", "06_routing", "07_hybrid_app"]


def _stored_text(cell) -> str:
    return "".join(
        o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain", "")
        for o in cell.get("outputs", [])
    )


@pytest.mark.parametrize("name", TRUST_LESSONS)
def test_lesson_checks_two_models_and_finite_metrics_against_a_stored_reference(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cells = [
        c
        for c in nb.cells
        if c.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in c.source and "two different models" in c.source
    ]
    assert len(cells) == 1, f"{name}: one checked cell must say whether small and large are two models"
    text = _stored_text(cells[0])
    lines = [line for line in text.splitlines() if line.strip()]
    assert "small and large are two different models: True" in lines, f"{name}: stored reference is\n{text}"
    assert len(lines) >= 2 and all(line.endswith("True") for line in lines), (
        f"{name}: every line of the reference must end True (nbval then fails a run that prints False):\n{text}"
    )
