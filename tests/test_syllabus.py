"""Every lesson opens with its learning objectives, prerequisites and time, and the syllabus (docs,
README, the site's index) lays out every lesson with the same time."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from helpers.authoring import book

ROOT = Path(__file__).resolve().parent.parent
LESSONS = book.lessons(ROOT)
SYLLABUS = (ROOT / "docs" / "syllabus.md").read_text(encoding="utf-8")
pytestmark = pytest.mark.no_server


def _opening(path: Path) -> str:
    return nbformat.read(path, as_version=4).cells[0].source


def _minutes(path: Path) -> int:
    m = re.search(r"^\*\*Time:\*\* about (\d+) minutes", _opening(path), re.M)
    assert m, f"{path.name}: no '**Time:** about N minutes' line in its first cell"
    return int(m.group(1))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_lesson_opens_with_objectives_prerequisites_and_time(path):
    text = _opening(path)
    assert text.startswith("# Lesson "), path.name
    head, _, rest = text.partition("**After this lesson you can**\n")
    assert rest, f"{path.name}: no '**After this lesson you can**' list"
    goals = re.match(r"((?:- .+\n)+)", rest)
    assert goals and 2 <= goals.group(1).count("\n- ") + 1 <= 4, f"{path.name}: 2-4 objectives expected"
    assert re.search(r"^\*\*Prerequisites:\*\* \S", text, re.M), f"{path.name}: no prerequisites"
    assert 5 <= _minutes(path) <= 90
    assert text.index("**After this lesson you can**") < text.index("**What you will do**")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_the_syllabus_gives_each_lesson_its_time(path):
    rows = re.findall(rf"^\| {path.name[:2]} [^|]+\| (\d+) min \|", SYLLABUS, re.M)
    assert rows == [str(_minutes(path))], f"{path.name}: the syllabus says {rows}, the lesson {_minutes(path)} min"


def test_the_syllabus_has_four_to_six_sessions_each_with_what_to_prepare():
    sessions = re.split(r"^## Session \d+ - ", SYLLABUS, flags=re.M)[1:]
    assert 4 <= len(sessions) <= 6
    for s in sessions:
        assert "**Prepare:**" in s, s[:60]


def test_the_readme_sessions_add_up_the_lessons_times():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Syllabus", 1)[1].split("\n## ", 1)[0]
    assert "docs/syllabus.md" in section
    times = {p.name[:2]: _minutes(p) for p in LESSONS}
    seen = []
    for lessons, total in re.findall(r"^\| \d\. [^|]+\| ([^|]+)\| (\d+) min", section, re.M):
        numbers = re.findall(r"\b(\d\d) ", lessons)
        seen += numbers
        assert sum(times[n] for n in numbers) == int(total), (lessons, total)
    assert sorted(seen) == sorted(times)


def test_the_site_index_links_the_syllabus_and_the_findings():
    meta = {"date": "2026-12-05 04:00 UTC", "machine": "m", "host": None, "server": None, "models": [], "seconds": 1.0}
    index = book._index([{"stem": "00_setup", "title": "Lesson 00", "seconds": 1.0, "meta": meta, "lab": False}])
    assert "(docs/syllabus.md)" in index and "(findings.md)" in index
