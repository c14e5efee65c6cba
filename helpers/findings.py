"""The course's closing page, "What did we find?": every lesson's claims ledger from one executed run,
added up.

Each lesson's last cell shows its ledger (`helpers.claims.Ledger.show`), which stores the rows in its
output's metadata. The site builder (`slm-course book`) reads them from the executed lessons in
`build/executed/`, so the page is built from the very run the site shows, never typed in:

- the verdicts counted per lesson and in all;
- every claim that two lessons judged differently, with the reason from `helpers/data/claims.jsonl`
  (`differs`) - a contradiction without one stops the build;
- the article's three questions (is small enough, when to escalate, what it saves), each answered by
  the rows that bear on it, with the numbers and the conditions they were measured under.

Why a page the site builder makes and not a lesson notebook: it needs every lesson's record, which
exists only once the run is over; a notebook run inside that run would depend on the order of the
tests, and would itself need a ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .claims import CANNOT, CONFIRMED, LEDGER_KEY, REFUTED, load_claims
from .errors import CourseError

WORDS = (CONFIRMED, REFUTED, CANNOT)

#: The article's three questions, and the claims whose verdicts answer each (in reading order).
QUESTIONS = (
    (
        "Is a small model enough?",
        "For which tasks the small model's answers were as good as needed, measured on checkable tasks.",
        (
            "simple-tasks",
            "routine-80",
            "math-phi3",
            "math-gemma",
            "time-phi3-code",
            "instruction-following",
            "fibonacci-prompt",
            "two-plus-two",
            "iot",
            "complex-reasoning",
        ),
    ),
    (
        "When should a request go to the large model?",
        "Whether a rule or a learned router can tell the prompts apart, and what is lost when it cannot.",
        (
            "complex-reasoning",
            "is-simple-task",
            "intelligent-routing",
            "maintain-quality",
            "routine-80",
            "reliability-row",
            "openai-fallback",
        ),
    ),
    (
        "What does it save?",
        "Money (dated API prices against measured local energy) and time (measured on this machine).",
        (
            "price-per-1k",
            "cost-gpt4-turbo",
            "cost-gpt35-turbo",
            "cost-claude3",
            "cost-local",
            "cost-phi3",
            "cost-gemma",
            "cost-60-80",
            "speed-small",
            "realtime",
            "speed-large",
        ),
    ),
)


class FindingsError(CourseError):
    """The findings page cannot be built from these records (the message says what is missing)."""


@dataclass(frozen=True)
class Row:
    """One ledger row of one lesson: the claim, the article's words, what was measured, the verdict."""

    lesson: str
    claim: str
    quote: str
    measured: str
    verdict: str

    @property
    def word(self) -> str:
        """ "confirmed", "refuted" or "cannot check here"."""
        return self.verdict.split(":")[0].strip()

    @property
    def why(self) -> str:
        return self.verdict.split(":", 1)[1].strip() if ":" in self.verdict else ""


def ledger_rows(nb) -> list[Row] | None:
    """The ledger rows an executed lesson (nbformat notebook) shows, or None when it shows none."""
    for cell in reversed([c for c in nb.cells if c.cell_type == "code"]):
        for out in cell.get("outputs", []):
            data = (out.get("metadata") or {}).get(LEDGER_KEY)
            if data:
                return [
                    Row(data["lesson"], r["claim"], r["the article says"], r["measured in this run"], r["verdict"])
                    for r in data["rows"]
                ]
    return None


def read_ledgers(records: Iterable[Path]) -> dict[str, list[Row]]:
    """Every executed lesson's ledger, by lesson number (FindingsError naming a lesson without one)."""
    import nbformat

    ledgers, missing = {}, []
    for path in records:
        rows = ledger_rows(nbformat.read(path, as_version=4))
        if rows is None:
            missing.append(path.name)
        else:
            ledgers[path.name[:2]] = rows
    if missing:
        raise FindingsError(
            f"no claims ledger in the executed {', '.join(missing)}",
            "each lesson's last cell must run ledger.show(); re-run the lesson (make test)",
        )
    return ledgers


def counts(rows: Iterable[Row]) -> dict[str, int]:
    """How many rows got each verdict word."""
    out = dict.fromkeys(WORDS, 0)
    for row in rows:
        out[row.word] += 1
    return out


def contradictions(ledgers: Mapping[str, list[Row]]) -> dict[str, list[Row]]:
    """Claims that two lessons judged with different verdict words, with their rows."""
    by_claim: dict[str, list[Row]] = {}
    for rows in ledgers.values():
        for row in rows:
            by_claim.setdefault(row.claim, []).append(row)
    return {c: rows for c, rows in by_claim.items() if len({r.word for r in rows}) > 1}


def unexplained(ledgers: Mapping[str, list[Row]], explanations: Mapping[str, str] | None = None) -> list[str]:
    """The contradicting claims with no reason why their lessons differ (`differs` in claims.jsonl)."""
    if explanations is None:
        explanations = {c.id: c.differs for c in load_claims().values()}
    return sorted(c for c in contradictions(ledgers) if not (explanations.get(c) or "").strip())


def _cell(text: str) -> str:
    """Text safe in a MyST table cell: pipes and dollar signs escaped, line breaks flattened."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("$", "\\$")


def _lesson_link(lesson: str, titles: Mapping[str, tuple[str, str]]) -> str:
    stem, title = titles.get(lesson, (None, lesson))
    return f"[{lesson}](notebooks/{stem}.ipynb)" if stem else lesson


def _rows_table(rows: list[Row], titles: Mapping[str, tuple[str, str]], with_quote: bool = True) -> list[str]:
    head = ["| lesson | the article says | measured in this run | verdict |", "|---|---|---|---|"]
    if not with_quote:
        head = ["| lesson | measured in this run | verdict |", "|---|---|---|"]
    out = list(head)
    for r in rows:
        cells = (
            [_lesson_link(r.lesson, titles)]
            + ([_cell(r.quote)] if with_quote else [])
            + [_cell(r.measured), f"**{r.word}**" + (f": {_cell(r.why)}" if r.why else "")]
        )
        out.append("| " + " | ".join(cells) + " |")
    return out


def page(ledgers: Mapping[str, list[Row]], run_line: str, titles: Mapping[str, tuple[str, str]] | None = None) -> str:
    """The markdown of "What did we find?" (FindingsError when a contradiction has no reason).

    `titles` maps a lesson number to (file stem, title) for links; `run_line` says when and where
    the run happened."""
    titles = titles or {}
    missing = unexplained(ledgers)
    if missing:
        raise FindingsError(
            f"lessons disagree on {', '.join(missing)} and nothing says why",
            "add a `differs` reason to those claims in helpers/data/claims.jsonl, "
            "or make the lessons judge the same thing",
        )
    claims = load_claims()
    all_rows = [r for rows in ledgers.values() for r in rows]
    total = counts(all_rows)
    lines = [
        "# What did we find?",
        "",
        "Every lesson ended with a claims ledger: the article's words, what the run measured, and a "
        "verdict computed from the measurement. This page adds them up, from the same run as the "
        "lessons on this site.",
        "",
        "```{admonition} The run these findings come from",
        ":class: note",
        run_line,
        "```",
        "",
        f"In all, **{len(all_rows)} verdicts**: {total[CONFIRMED]} confirmed, {total[REFUTED]} refuted, "
        f"{total[CANNOT]} that this run could not check (a model, a device or a key it did not have). "
        "A verdict holds for the models, prices and machine it names - change them and measure again.",
        "",
        "## The verdicts, lesson by lesson",
        "",
        "| lesson | confirmed | refuted | cannot check here |",
        "|---|---|---|---|",
    ]
    for lesson, rows in ledgers.items():
        c = counts(rows)
        title = titles.get(lesson, (None, lesson))[1]
        stem = titles.get(lesson, (None,))[0]
        name = f"[{_cell(title)}](notebooks/{stem}.ipynb)" if stem else lesson
        lines.append(f"| {name} | {c[CONFIRMED]} | {c[REFUTED]} | {c[CANNOT]} |")
    lines.append(f"| **all lessons** | **{total[CONFIRMED]}** | **{total[REFUTED]}** | **{total[CANNOT]}** |")

    lines += [
        "",
        "## The article's three questions",
        "",
        "Each answer is the run's own verdicts on the claims that bear on the question, with the number "
        "measured and the condition it holds under.",
        "",
    ]
    for question, scope, ids in QUESTIONS:
        rows = [r for cid in ids for r in all_rows if r.claim == cid]
        c = counts(rows)
        lines += [
            f"### {question}",
            "",
            f"{scope} {len(rows)} verdicts bear on it: {c[CONFIRMED]} confirmed, "
            f"{c[REFUTED]} refuted, {c[CANNOT]} not checkable here.",
            "",
        ]
        for word, heading in (
            (CONFIRMED, "Holds in this run"),
            (REFUTED, "Does not hold in this run"),
            (CANNOT, "Not checked here"),
        ):
            group = [r for r in rows if r.word == word]
            if group:
                lines += [f"**{heading}:**", ""]
                lines += [
                    f"- *{_cell(r.quote)}* ({_lesson_link(r.lesson, titles)}): {_cell(r.measured)}"
                    + (f" - {_cell(r.why)}" if r.why else "")
                    for r in group
                ] + [""]

    split = contradictions(ledgers)
    lines += ["## Same claim, two verdicts", ""]
    if not split:
        lines += ["No two lessons judged one claim differently in this run.", ""]
    for cid, rows in split.items():
        lines += [f"**{_cell(claims[cid].quote)}** - {_cell(claims[cid].differs)}", ""]
        lines += _rows_table(rows, titles, with_quote=False) + [""]

    lines += ["## Every verdict", ""]
    for lesson, rows in ledgers.items():
        title = titles.get(lesson, (None, f"Lesson {lesson}"))[1]
        lines += [f"### {_cell(title)}", ""] + _rows_table(rows, titles) + [""]
    return "\n".join(lines).rstrip() + "\n"
