"""One answer to "where is the course folder?" (helpers.paths.course_root)."""

from __future__ import annotations

import re

import pytest

from helpers.paths import course_root

pytestmark = pytest.mark.no_server


def test_course_root_holds_the_course():
    root = course_root()
    assert (root / "helpers" / "paths.py").is_file()
    assert (root / "solutions").is_dir() and (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file()


def test_labs_default_root_is_the_course_not_helpers(tmp_path, monkeypatch):
    from helpers.authoring.labs import _default_root

    monkeypatch.chdir(tmp_path)  # a folder without solutions/: the course's own
    assert _default_root() == course_root()
    (tmp_path / "solutions").mkdir()  # a course folder of the learner's own
    assert _default_root() == tmp_path


def test_no_module_works_out_the_course_folder_by_itself():
    found = []
    for path in sorted((course_root() / "helpers").rglob("*.py")):
        if path.name == "paths.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"Path\(__file__\)\.resolve\(\)\.parents\[[12]\]", line):
                found.append(f"{path.relative_to(course_root())}:{n}: {line.strip()}")
    assert not found, "use helpers.paths.course_root():\n" + "\n".join(found)
