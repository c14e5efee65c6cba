"""Grading with nbgrader (issue 24): the labs carry nbgrader's metadata, `check()` fails a cell
under nbgrader, `slm-course grade` lays out a course whose release has no solutions, and real
nbgrader autogrades real submissions against the real model server: full, zero and partial
marks, a crashed kernel and an endless loop cost one exercise, an edited check cell is caught.

CPU is scarce: the end-to-end run grades lab 04 (its checks are arithmetic; one ungraded cell
calls the model) for six students, once, in a module-scoped fixture.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import checks
from helpers.authoring import grade, labs
from helpers.cli import main as cli
from helpers.errors import BadInput
from helpers.net import api_answers, free_loopback_port

REPO = Path(__file__).resolve().parents[1]
LAB = "04_cost"
EXERCISES = {"implied_mix": 1.0, "energy_usd_per_mtok": 1.0, "break_even": 1.0}
# per cell in the end-to-end run (the endless loop waits it out, spinning a core): lab 04's checks take
# well under a second, its one model call (the bundled model, a short answer) a second or two
TIMEOUT_S = 10

# skipped without nbgrader, found without importing it: the import costs every xdist worker ~2 s of
# collection; the tests that use it import it themselves
if importlib.util.find_spec("nbgrader") is None:
    pytest.skip("nbgrader is not installed: pip install -e '.[grade]'", allow_module_level=True)


# ---------------------------------------------------------------- check() under nbgrader


@pytest.mark.no_server
def test_check_prints_and_returns_false_for_a_learner(monkeypatch, capsys):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)

    def todo():
        raise NotImplementedError()

    assert checks.check("todo", todo) is False
    assert checks.check("ok", lambda: None) is True
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.no_server
@pytest.mark.parametrize("mode", ["autograde", "validate"])
def test_check_raises_under_nbgrader_after_its_line(monkeypatch, capsys, mode):
    monkeypatch.setenv("NBGRADER_EXECUTION", mode)

    def wrong():
        assert 1 == 2, "one is not two"

    with pytest.raises(checks.CheckFailed, match="one is not two") as info:
        checks.check("sum", wrong, hint="add them")
    assert isinstance(info.value.__cause__, AssertionError)
    out = capsys.readouterr().out
    assert "one is not two" in out and "hint: add them" in out
    with pytest.raises(checks.CheckFailed, match="not done yet"):
        checks.check("todo", lambda: (_ for _ in ()).throw(NotImplementedError()))
    assert checks.check("ok", lambda: None) is True  # a passing check never raises


# ---------------------------------------------------------------- metadata in generated labs


def _lab(tmp_path: Path, *cells, name: str = "01_first.ipynb"):
    nb = new_notebook(
        cells=[new_code_cell("# parameters", metadata={"tags": ["parameters"]}), *cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i}"
    (tmp_path / "solutions").mkdir(exist_ok=True)
    nbformat.write(nb, str(tmp_path / "solutions" / name))
    [path] = labs.generate_labs(tmp_path / "solutions", tmp_path / "labs")
    return nbformat.read(str(path), as_version=4).cells[1:]


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


SETUP_CHECK = "from helpers.checks import check\ncheck('two models', lambda: None)"
ANSWER = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
CHECK = "def _t():\n    assert f() == 1\n\ncheck(\"f / one\", _t, hint='return 1')"
WRITTEN = "**Question.** Why?\n\n=== BEGIN ANSWER ===\nBecause.\n=== END ANSWER ==="


@pytest.mark.no_server
def test_generated_lab_carries_nbgrader_metadata(tmp_path):
    params, setup, answer, check, written, plain = _lab(
        tmp_path,
        new_code_cell(SETUP_CHECK),
        new_code_cell(ANSWER),
        new_code_cell(CHECK),
        new_markdown_cell(WRITTEN),
        new_code_cell("print('try it')"),
    )
    assert "nbgrader" not in params.metadata and "nbgrader" not in plain.metadata
    assert "nbgrader" not in setup.metadata, "a setup check with no answer before it is not graded"
    assert _meta(answer) == {
        "cell_type": "code",
        "grade": False,
        "grade_id": "f-one-answer",
        "locked": False,
        "schema_version": 3,
        "solution": True,
        "task": False,
    }
    assert _meta(check) == {
        "cell_type": "code",
        "grade": True,
        "grade_id": "f-one",
        "locked": True,
        "points": labs.DEFAULT_POINTS,
        "schema_version": 3,
        "solution": False,
        "task": False,
    }
    assert check.metadata["editable"] is False and check.metadata["deletable"] is False
    assert _meta(written)["grade"] and _meta(written)["solution"] and _meta(written)["grade_id"] == "written-1"
    assert _meta(written)["points"] == labs.DEFAULT_WRITTEN_POINTS
    assert written.source.endswith("*Your answer here.*")


@pytest.mark.no_server
def test_points_are_set_in_the_solution_cell_metadata(tmp_path):
    _, answer, check, written = _lab(
        tmp_path,
        new_code_cell(ANSWER, metadata={"nbgrader": {"points": 3}}),
        new_code_cell(CHECK),
        new_markdown_cell(WRITTEN, metadata={"nbgrader": {"points": 2.5}}),
    )
    assert _meta(check)["points"] == 3 and "points" not in _meta(answer)
    assert _meta(written)["points"] == 2.5


@pytest.mark.no_server
@pytest.mark.parametrize(
    "cells, message",
    [
        (
            [
                new_code_cell(ANSWER, metadata={"nbgrader": {"points": 3}}),
                new_code_cell(CHECK, metadata={"nbgrader": {"points": 2}}),
            ],
            "different points",
        ),
        ([new_code_cell(ANSWER), new_code_cell(CHECK, metadata={"nbgrader": {"points": "two"}})], "a number"),
        ([new_code_cell(ANSWER + "\ncheck('f', lambda: None)")], "both a solution region and a check"),
        (
            [new_code_cell(ANSWER), new_code_cell(CHECK), new_code_cell(ANSWER), new_code_cell(CHECK)],
            "a second exercise checked as",
        ),
    ],
)
def test_bad_grading_setups_are_named(tmp_path, cells, message):
    with pytest.raises(BadInput, match=message):
        _lab(tmp_path, *cells)


@pytest.mark.no_server
def test_repo_labs_are_valid_nbgrader_notebooks():
    from nbgrader.nbgraderformat import MetadataValidator

    for path in sorted((REPO / "labs").glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        MetadataValidator().validate_nb(nb)  # nbgrader's own check (ids unique, points present, ...)
        graded = [c for c in nb.cells if _meta(c).get("grade") and c.cell_type == "code"]
        assert graded, f"{path.name}: no autograded exercise"
        assert all(_meta(c)["locked"] and "check(" in c.source for c in graded), path.name


# ---------------------------------------------------------------- init: the release has no solutions


def _sources(path: Path) -> str:
    """Every cell's source of a notebook, joined (a .ipynb stores lines as separate strings)."""
    return "\n".join(c.source for c in nbformat.read(str(path), as_version=4).cells)


@pytest.mark.no_server
@pytest.mark.slow
def test_release_has_no_solution_and_is_the_lab(tmp_path):
    course = tmp_path / "course"
    assert cli(["grade", "init", str(course)]) == 0
    solutions = sorted((REPO / "solutions").glob("*.ipynb"))
    assert sorted(p.name for p in (course / "release").glob("*/*.ipynb")) == [p.name for p in solutions]
    for solution in solutions:
        released = course / "release" / solution.stem / solution.name
        bodies = grade.solution_bodies(solution)
        assert bodies, f"{solution.name} has no solution region"
        released_code, source_code = _sources(released), _sources(course / "source" / solution.stem / solution.name)
        for body in bodies:  # grep every ### BEGIN SOLUTION body in the release (and find it in the source)
            assert body.strip() not in released_code, f"{released}: leaks {body.strip()[:60]!r}"
            assert body.strip() in source_code
        assert grade.leaked_solutions(released, solution) == []
        text = released.read_text(encoding="utf-8")
        assert "BEGIN SOLUTION" not in text and "BEGIN ANSWER" not in text and "Rubric (instructor" not in text
        # what students get from the release is the lab in labs/, cell for cell
        lab = nbformat.read(str(REPO / "labs" / solution.name), as_version=4)
        rel = nbformat.read(str(released), as_version=4)
        assert [c.source for c in rel.cells] == [c.source for c in lab.cells]
        assert [{k: v for k, v in _meta(c).items() if k != "checksum"} for c in rel.cells] == [
            _meta(c) for c in lab.cells
        ]


@pytest.mark.no_server
def test_the_leak_check_sees_a_solution():
    solution = REPO / "solutions" / f"{LAB}.ipynb"
    assert len(grade.leaked_solutions(solution, solution)) == len(grade.solution_bodies(solution)) == 3  # 3 exercises
    assert grade.leaked_solutions(REPO / "labs" / f"{LAB}.ipynb", solution) == []


@pytest.mark.no_server
@pytest.mark.slow
def test_collect_from_an_lms_download(tmp_path):
    course = tmp_path / "course"
    assert cli(["grade", "init", str(course), "--labs", LAB]) == 0
    release = course / "release" / LAB / f"{LAB}.ipynb"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "class.zip", "w") as z:  # a zip of student-prefixed files
        z.write(release, f"gina_{LAB}.ipynb")
    (downloads / f"smithjane_1234_5678_{LAB}.ipynb").write_bytes(release.read_bytes())  # Canvas's names
    (downloads / "notes.txt").write_text("not a submission")
    assert grade.collect(course, LAB, downloads) == ["gina", "smithjane"]
    for student in ("gina", "smithjane"):
        assert (course / "submitted" / student / LAB / f"{LAB}.ipynb").read_bytes() == release.read_bytes()
    with pytest.raises(BadInput, match="no assignment"):
        grade.collect(course, "99_nothing", downloads)


@pytest.mark.no_server
def test_run_without_init_says_what_to_do(tmp_path, capsys):
    assert cli(["grade", "run", str(tmp_path / "nowhere")]) == 1
    assert "slm-course grade init" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end with the real server


def _submit(course: Path, student: str, start: Path, edits: dict[str, str]) -> None:
    """A student's notebook: ``start`` with the cells named by grade_id replaced (SOLVED = the
    instructor copy's cell)."""
    nb = json.loads(start.read_text(encoding="utf-8"))
    source = {
        _meta(c).get("grade_id"): c
        for c in nbformat.read(str(course / "source" / LAB / f"{LAB}.ipynb"), as_version=4).cells
    }
    seen = set()
    for cell in nb["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in edits:
            cell["source"] = source[gid].source if edits[gid] == "SOLVED" else edits[gid]
            seen.add(gid)
    assert seen == set(edits), f"no cells {set(edits) - seen}"
    folder = course / "submitted" / student / LAB
    folder.mkdir(parents=True)
    (folder / f"{LAB}.ipynb").write_text(json.dumps(nb, indent=1), encoding="utf-8")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, ollama_host):
    course = tmp_path_factory.mktemp("grade") / "course"
    assert cli(["grade", "init", str(course), "--labs", LAB]) == 0
    release, source = course / "release" / LAB / f"{LAB}.ipynb", course / "source" / LAB / f"{LAB}.ipynb"
    solved = {f"{name}-answer": "SOLVED" for name in EXERCISES}
    _submit(course, "alice", source, {})  # the solution
    _submit(course, "bob", release, {})  # untouched
    _submit(
        course,
        "carol",
        REPO / "labs" / f"{LAB}.ipynb",  # labs/ copy, one solved
        {"energy_usd_per_mtok-answer": "SOLVED"},
    )
    _submit(
        course,
        "dave",
        release,
        {
            **solved,
            "energy_usd_per_mtok-answer":  # kills the kernel
            "import os\n\ndef energy_usd_per_mtok(tokens_per_s, watts, usd_per_kwh):\n    os._exit(1)",
        },
    )
    _submit(
        course,
        "erin",
        release,
        {
            **solved,
            "implied_mix-answer":  # loops forever
            "def implied_mix(*args, **kwargs):\n    while True:\n        pass",
        },
    )
    _submit(course, "frank", release, {"break_even": "print('all correct!')"})  # edits a locked check
    started = time.monotonic()
    code = cli(["grade", "run", str(course), "--timeout", str(TIMEOUT_S)])
    elapsed = time.monotonic() - started
    with open(course / "grades_by_exercise.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    scores = {(r["student_id"], r["exercise"]): float(r["score"]) for r in rows}
    return {"course": course, "code": code, "elapsed": elapsed, "rows": rows, "scores": scores}


def _student(graded, student: str) -> dict[str, float]:
    return {ex: graded["scores"][(student, ex)] for ex in EXERCISES}


@pytest.mark.slow
def test_run_grades_every_submission_and_writes_grades_csv(graded):
    assert graded["code"] == 0
    with open(graded["course"] / "grades.csv", encoding="utf-8") as f:
        totals = {
            r["student_id"]: (float(r["score"]), float(r["max_score"]))
            for r in csv.DictReader(f)
            if r["assignment"] == LAB
        }
    full = sum(EXERCISES.values())
    assert totals == {
        "alice": (full, full),
        "bob": (0, full),
        "carol": (1, full),
        "dave": (2, full),
        "erin": (2, full),
        "frank": (0, full),
    }
    for student in totals:
        html = graded["course"] / "feedback" / student / LAB / f"{LAB}.html"
        assert html.is_file() and "break_even" in html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_solution_scores_full_marks_untouched_lab_zero(graded):
    assert _student(graded, "alice") == EXERCISES
    assert _student(graded, "bob") == dict.fromkeys(EXERCISES, 0.0)
    feedback = (graded["course"] / "feedback" / "bob" / LAB / f"{LAB}.html").read_text(encoding="utf-8")
    assert "CheckFailed" in feedback and "not done yet" in feedback  # the learner's line, in the feedback


@pytest.mark.slow
def test_one_exercise_solved_scores_exactly_its_points(graded):
    assert _student(graded, "carol") == {**dict.fromkeys(EXERCISES, 0.0), "energy_usd_per_mtok": 1.0}


@pytest.mark.slow
def test_a_crashed_kernel_costs_only_its_exercise(graded):
    assert _student(graded, "dave") == {**EXERCISES, "energy_usd_per_mtok": 0.0}
    feedback = (graded["course"] / "feedback" / "dave" / LAB / f"{LAB}.html").read_text(encoding="utf-8")
    assert "DeadKernelError" in feedback


@pytest.mark.slow
def test_an_endless_loop_costs_only_its_exercise_within_the_timeout(graded):
    assert _student(graded, "erin") == {**EXERCISES, "implied_mix": 0.0}
    # six submissions, one loop cut at TIMEOUT_S: the run must not wait on the loop any longer
    assert graded["elapsed"] < TIMEOUT_S * 2 + 150, graded["elapsed"]


@pytest.mark.slow
def test_an_edited_check_cell_is_restored_and_reported(graded):
    assert _student(graded, "frank") == dict.fromkeys(EXERCISES, 0.0)  # nbgrader ran the original check
    edited = {(r["student_id"], r["exercise"]) for r in graded["rows"] if r["check_edited"] == "True"}
    assert edited == {("frank", "break_even")}
    assert grade.edited_locked_cells(graded["course"], "frank", LAB) == ["break_even"]


@pytest.mark.slow
def test_written_answers_wait_for_a_person_and_points_come_from_the_solution(tmp_path, monkeypatch, capsys):
    """A two-cell course of its own (no model call): set points, a written answer, a student's text.
    Nothing answers at OLLAMA_HOST, so `grade run` starts the offline server there, and stops it."""
    host = f"http://127.0.0.1:{free_loopback_port()}"
    monkeypatch.setenv("OLLAMA_HOST", host)
    monkeypatch.setenv("SLM_LOG_DIR", str(tmp_path / "logs"))
    cells = [
        new_code_cell("# parameters", metadata={"tags": ["parameters"]}),
        new_code_cell("from helpers.checks import check"),
        new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
        new_code_cell(
            "def _t():\n    assert double(2) == 4, 'double(2) is 4'\n\ncheck('double', _t)",
            metadata={"nbgrader": {"points": 2}},
        ),
        new_markdown_cell("**Question.** Why?\n\n=== BEGIN ANSWER ===\nBecause two.\n=== END ANSWER ==="),
    ]
    nb = new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    (tmp_path / "solutions").mkdir()
    nbformat.write(nb, str(tmp_path / "solutions" / "01_twice.ipynb"))
    course = tmp_path / "course"
    assert cli(["grade", "init", str(course), "--solutions", str(tmp_path / "solutions")]) == 0
    source = (course / "source" / "01_twice" / "01_twice.ipynb").read_text(encoding="utf-8")
    assert "Rubric (instructor" in source and "Because two." in source
    student = nbformat.read(str(course / "release" / "01_twice" / "01_twice.ipynb"), as_version=4)
    assert "Because two." not in _sources(course / "release" / "01_twice" / "01_twice.ipynb")
    for cell in student.cells:
        if _meta(cell).get("grade_id") == "double-answer":
            cell.source = "def double(x):\n    return x + x"
        elif _meta(cell).get("grade_id") == "written-1":
            cell.source = "Because it is twice."
    (course / "submitted" / "zoe" / "01_twice").mkdir(parents=True)
    nbformat.write(student, str(course / "submitted" / "zoe" / "01_twice" / "01_twice.ipynb"))
    capsys.readouterr()
    assert cli(["grade", "run", str(course), "--timeout", str(TIMEOUT_S)]) == 0
    out = capsys.readouterr().out
    assert "starting the course's offline server" in out and api_answers(host) is None  # started, stopped
    assert "zoe / 01_twice: 2 / 3" in out and "to grade by hand: written-1" in out
    with open(course / "grades_by_exercise.csv", encoding="utf-8") as f:
        rows = {r["exercise"]: r for r in csv.DictReader(f)}
    assert rows["double"]["score"] == "2.0" and rows["double"]["max_score"] == "2.0"
    assert rows["written-1"]["needs_manual_grade"] == "True" and rows["written-1"]["max_score"] == "1.0"
    feedback = (course / "feedback" / "zoe" / "01_twice" / "01_twice.html").read_text(encoding="utf-8")
    assert "Because it is twice." in feedback
