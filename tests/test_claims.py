"""The claims ledger: every quote is verbatim from the article, every lesson ends with a ledger."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
import tomllib

from helpers.claims import Ledger, claim, close_to, load_claims, model_seconds, quoted_in, verdict
from helpers.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = ROOT.parent / "shared" / "article.txt"
#: Every numbered lesson ends with its ledger cell (a new lesson too).
WITH_LEDGER = sorted(p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.no_server


def _lesson(number: str) -> Path:
    (path,) = (ROOT / "notebooks").glob(f"{number}_*.ipynb")
    return path


def _last_code_cell(number: str) -> str:
    cells = json.loads(_lesson(number).read_text(encoding="utf-8"))["cells"]
    return "".join([c for c in cells if c["cell_type"] == "code"][-1]["source"])


@pytest.mark.parametrize("claim_id", sorted(load_claims()))
def test_quote_is_verbatim_in_the_article(claim_id):
    if not ARTICLE.exists():
        pytest.skip(f"{ARTICLE} does not exist here (CI has it beside the project)")
    c = claim(claim_id)
    assert quoted_in(c.quote, ARTICLE.read_text(encoding="utf-8")), f"{claim_id}: {c.quote!r} is not in the article"


def test_claims_name_the_article_and_real_lessons():
    lessons = {p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    title = ARTICLE.read_text(encoding="utf-8").splitlines()[0].strip() if ARTICLE.exists() else None
    for c in load_claims().values():
        assert set(c.lessons) <= lessons, f"{c.id}: unknown lesson in {c.lessons}"
        assert c.quote.strip() and c.source.strip()
        if title is not None:
            assert c.source == title, f"{c.id}: source {c.source!r} is not the article's title {title!r}"


def test_the_data_file_ships_with_the_package():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["helpers"]
    assert any(fnmatch.fnmatch("data/claims.jsonl", g) for g in globs), globs


def _check_ledger_cell(number: str) -> None:
    source = _last_code_cell(number)
    assert f'Ledger("{number}")' in source, f"lesson {number}: the last code cell is not its claims ledger"
    assert source.rstrip().endswith(".show()"), f"lesson {number}: the ledger cell must end with ledger.show()"
    used = set(re.findall(r'"([a-z0-9-]+)"', source)) & set(load_claims())  # ids named in the cell
    listed = {c.id for c in load_claims().values() if number in c.lessons}
    assert used <= listed, f"lesson {number} uses claims not listed for it: {sorted(used - listed)}"
    assert listed <= used, f"lesson {number} lists claims its ledger never checks: {sorted(listed - used)}"
    for ok in re.findall(r"\bok=(True|False)\b", source):
        raise AssertionError(f"lesson {number}: a verdict typed in (ok={ok}); compute it from the run")


@pytest.mark.parametrize("number", WITH_LEDGER)
def test_lesson_ends_with_its_ledger(number):
    _check_ledger_cell(number)


def test_verdicts_are_computed_words():
    assert verdict(True) == "confirmed"
    assert verdict(False, "2x off") == "refuted: 2x off"
    assert verdict(None, "needs a key") == "cannot check here: needs a key"
    with pytest.raises(BadInput):
        verdict(None)
    assert close_to(2.2, 2.3) and not close_to(1.7, 1.4)


def test_ledger_rows_and_mistakes():
    ledger = Ledger("04")
    ledger.add("cost-gpt4-turbo", "$14,000", ok=14_000 > 27_000)
    ledger.add("cost-phi3", "no GPU", ok=None, why="needs a GPU server")
    table = ledger.table()
    assert table.loc["cost-gpt4-turbo", "the article says"] == "GPT-4 Turbo: $30,000 (API costs)"
    assert table.loc["cost-gpt4-turbo", "verdict"] == "refuted"
    assert ledger.counts() == {"confirmed": 0, "refuted": 1, "cannot check here": 1}
    with pytest.raises(BadInput):
        ledger.add("no-such-claim", "x", ok=True)
    with pytest.raises(BadInput):
        ledger.add("size-phi3", "x", ok=True)  # a lesson-00/02 claim, not lesson 04's
    with pytest.raises(BadInput):
        Ledger("01").show()


def test_model_seconds_is_a_bandwidth_bound():
    est = model_seconds(1000, 20.0)
    # mistral:7b at Q4_K_M is ~4.4 GB: at 20 GB/s at most ~4.5 tokens/s, so 1000 tokens >= 200 s
    assert 150 < est["mistral:7b"] < 300
    assert est["llama3.2:3b"] < est["mistral:7b"]


def test_doctests_of_the_claims_module():
    import doctest

    import helpers.claims

    result = doctest.testmod(helpers.claims)
    assert result.attempted > 0 and result.failed == 0, result
