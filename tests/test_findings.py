"""The "What did we find?" page: built from the ledgers an executed run stored, and refused when two
lessons disagree on a claim and nothing says why."""

from __future__ import annotations

import dataclasses

import nbformat
import pytest

from helpers import findings
from helpers.authoring import book
from helpers.claims import LEDGER_KEY, Ledger, load_claims

pytestmark = pytest.mark.no_server


def _record(tmp_path, name: str, ledger: Ledger | None):
    """An executed lesson as the run writes it: a code cell whose output carries the ledger."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("ledger.show()")
    if ledger is not None:
        cell.outputs = [
            nbformat.v4.new_output("display_data", data={"text/plain": "table"}, metadata={LEDGER_KEY: ledger.record()})
        ]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), cell]
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def _run(tmp_path, simple_05: float, simple_10_ok: bool):
    """Two lessons' ledgers with the verdicts a run computed from these measured values."""
    l05 = Ledger("05").add("simple-tasks", f"small {simple_05:.0%}", ok=simple_05 >= 0.8)
    l05.add("complex-reasoning", "n too small", ok=None, why="too few hard tasks")
    l10 = Ledger("10").add("simple-tasks", "fields 90% right", ok=simple_10_ok)
    return [_record(tmp_path, "05_quality.ipynb", l05), _record(tmp_path, "10_structured_output.ipynb", l10)]


def test_the_page_is_built_from_the_records(tmp_path):
    ledgers = findings.read_ledgers(_run(tmp_path, 0.9, True))
    assert findings.counts(ledgers["05"]) == {"confirmed": 1, "refuted": 0, "cannot check here": 1}
    text = findings.page(ledgers, "Executed today.", {"05": ("05_quality", "Lesson 05 - Quality")})
    assert "**3 verdicts**: 2 confirmed, 0 refuted, 1 that this run could not check" in text
    assert "small 90%" in text and "fields 90% right" in text
    for question, _, _ in findings.QUESTIONS:
        assert f"### {question}" in text
    assert "[05](notebooks/05_quality.ipynb)" in text
    assert "No two lessons judged one claim differently" in text


def test_a_contradiction_is_shown_with_its_reason(tmp_path):
    ledgers = findings.read_ledgers(_run(tmp_path, 0.5, True))  # 05 refutes, 10 confirms
    assert set(findings.contradictions(ledgers)) == {"simple-tasks"}
    text = findings.page(ledgers, "Executed today.")
    assert load_claims()["simple-tasks"].differs.split(".")[0] in text


def test_a_contradiction_without_a_reason_fails(tmp_path, monkeypatch):
    ledgers = findings.read_ledgers(_run(tmp_path, 0.5, True))
    assert findings.unexplained(ledgers, explanations={}) == ["simple-tasks"]
    bare = {cid: dataclasses.replace(c, differs="") for cid, c in load_claims().items()}
    monkeypatch.setattr(findings, "load_claims", lambda: bare)
    with pytest.raises(findings.FindingsError, match="simple-tasks"):
        findings.page(ledgers, "Executed today.")
    # the same lessons agreeing need no reason
    agreeing = findings.read_ledgers(_run(tmp_path, 0.9, True))
    assert findings.page(agreeing, "Executed today.")


def test_a_record_without_its_ledger_is_refused(tmp_path):
    with pytest.raises(findings.FindingsError, match="03_speed"):
        findings.read_ledgers([_record(tmp_path, "03_speed.ipynb", None)])


def test_every_claim_several_lessons_check_says_why_they_may_differ():
    for c in load_claims().values():
        if len(c.lessons) > 1:
            assert c.differs.strip(), f"{c.id} is checked in lessons {c.lessons} with no `differs` reason"


def test_the_questions_name_real_claims():
    known = set(load_claims())
    for question, _, ids in findings.QUESTIONS:
        assert set(ids) <= known, (question, set(ids) - known)


def test_the_executed_run_gives_a_page(tmp_path):
    records = [book.RECORDS / s.name for s in book.lessons()]
    fresh = [r for s, r in zip(book.lessons(), records) if not book.record_problems(s, r)]
    if len(fresh) < len(records):
        pytest.skip("no complete executed run in build/executed (make test writes it)")
    text = findings.page(findings.read_ledgers(records), "this run")
    assert "## Same claim, two verdicts" in text
