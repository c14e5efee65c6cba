"""Generate ``labs/`` from ``solutions/``: one source, so a lab and its solution cannot drift.

A solution notebook ``solutions/NN_name.ipynb`` becomes the lab ``labs/NN_name.ipynb``
(run ``slm-course labs``; ``slm-course labs --check`` fails when a lab is out of date).
The markers follow nbgrader's convention, each alone on its own line:

Code cells::

    def area(r):
        ### BEGIN SOLUTION
        return math.pi * r ** 2
        ### END SOLUTION

  become, at the indentation of the ``### BEGIN SOLUTION`` line::

    def area(r):
        # YOUR CODE HERE
        raise NotImplementedError()

Markdown cells: the lines from ``=== BEGIN ANSWER ===`` to ``=== END ANSWER ===`` become
``*Your answer here.*``.

Cell tags: ``solution_only`` drops the cell from the lab; ``hint`` cells are kept (hints are
``<details><summary>Hint</summary>...</details>`` markdown); ``parameters`` is kept for
papermill. Outputs and execution counts are cleared (with the saved widget state and the
per-cell ``execution`` timings, which describe those outputs); all other metadata is kept.
A header cell says the lab is generated. Output is nbformat 4 with ``indent=1`` and a
trailing newline, so regenerating is byte-stable.

A marker that is unbalanced, nested or misspelt (``## BEGIN SOLUTION``) raises ``BadInput``
naming the notebook and cell: a typo must never leak a solution into a lab.

Grading (nbgrader): every lab carries nbgrader's cell metadata, so a class can be autograded
(``slm-course grade``, helpers/authoring/grade.py) from the labs as they are. An *exercise* is
one or more answer cells (code with a solution region: ``solution: true``) followed by its check
cell (a code cell with a top-level ``check("name", ...)`` call: ``grade: true, locked: true``,
``grade_id`` = the name made id-safe, worth ``DEFAULT_POINTS``). A check cell with no answer
cell since the previous check (a lab's setup check) is not graded. A markdown answer cell is a
manually graded cell (``written-1``, ``written-2``, ... worth ``DEFAULT_WRITTEN_POINTS``). Points
are set per exercise in the solution notebook: ``"nbgrader": {"points": 3}`` in the metadata of
the check cell, an answer cell of that exercise, or a markdown answer cell.
``instructor_notebook`` is the instructor's copy nbgrader's ``generate_assignment`` turns into the
release: the same cells with the solutions kept (and a rubric line on each written answer).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput, CourseError
from ..paths import course_root
from .nbhygiene import cell_where

# nbformat is imported where a notebook is read or written, not here: it takes about a second
# to import, and `slm-course` imports this module to build its parser for every command.
if TYPE_CHECKING:
    import nbformat

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
BEGIN_ANSWER = "=== BEGIN ANSWER ==="
END_ANSWER = "=== END ANSWER ==="
ANSWER_STUB = ("*Your answer here.*",)

SOLUTION_ONLY_TAG = "solution_only"
HEADER_ID = "generated-lab-header"
GENERATED_BY = "by `slm-course labs`"
FIX_COMMAND = "slm-course labs"

# Lines that look like a marker but are not exactly one (a typo would leak the solution).
_NEAR_CODE_MARKER = re.compile(r"^#+\s*(BEGIN|END)\s+SOLUTION\b", re.IGNORECASE)
_NEAR_ANSWER_MARKER = re.compile(r"^=+\s*(BEGIN|END)\s+ANSWER\b", re.IGNORECASE)

# nbgrader (helpers/authoring/grade.py): what a graded lab's cells carry
DEFAULT_POINTS = 1  # an autograded exercise (answer cells + their check cell)
DEFAULT_WRITTEN_POINTS = 1  # a free-text answer, graded by hand
NBGRADER_SCHEMA = 3  # nbgrader 0.9's cell metadata format
# a check cell calls check("name", ...) at the top level of the cell (not inside a function)
_CHECK_CALL = re.compile(r"""^check\(\s*(["'])(?P<name>.+?)\1""", re.MULTILINE)
RUBRIC = (
    "*Rubric (instructor's copy only; the release has the stub): give the points when the "
    "answer makes the main points of this model answer, part of them when it makes some.*"
)


@dataclass
class LabsSync:
    """What one run of the generator did: labs written, already up to date, removed."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


def strip_regions(
    source: str, begin: str, end: str, stub: tuple[str, ...], near_marker: re.Pattern[str], where: str
) -> str:
    """Replace each ``begin``..``end`` region of ``source`` by ``stub`` at the begin line's indent."""
    out: list[str] = []
    open_line: int | None = None
    for number, line in enumerate(source.split("\n"), start=1):
        text = line.strip()
        if text == begin:
            if open_line is not None:
                raise BadInput(
                    f"{where}: '{begin}' on line {number} is nested inside the region opened on line {open_line}",
                    f"close the first region with '{end}' before opening another",
                )
            open_line = number
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + s for s in stub)
        elif text == end:
            if open_line is None:
                raise BadInput(
                    f"{where}: '{end}' on line {number} has no '{begin}' before it",
                    f"add '{begin}' above the solution, or remove this line",
                )
            open_line = None
        elif near_marker.match(text):
            raise BadInput(
                f"{where}: line {number} looks like a marker but is not one: {text!r}",
                f"write the marker exactly as '{begin}' / '{end}' on its own line",
            )
        elif open_line is None:
            out.append(line)
    if open_line is not None:
        raise BadInput(
            f"{where}: '{begin}' on line {open_line} is never closed", f"add '{end}' after the solution lines"
        )
    return "\n".join(out)


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read an nbformat-4 notebook, giving cells without an id a stable one (nbformat's are random)."""
    import nbformat
    from nbformat.v4.rwbase import rejoin_lines

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"{path}: cannot read the notebook ({exc})", "open it in Jupyter and save it again, or restore it from git"
        ) from exc
    if not isinstance(data, dict) or data.get("nbformat") != 4:
        raise BadInput(f"{path}: not an nbformat 4 notebook", "open it in a current Jupyter and save it again")
    if data.get("nbformat_minor", 0) >= 5:
        for i, cell in enumerate(data.get("cells", [])):
            if isinstance(cell, dict) and not cell.get("id"):
                cell["id"] = hashlib.sha1(f"{Path(path).name}:{i}".encode()).hexdigest()[:12]
    nb = rejoin_lines(nbformat.from_dict(data))  # sources as one string each
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise BadInput(f"{path}: invalid notebook: {exc.message}", "open it in Jupyter and save it again") from exc
    return nb


def _header_cell(source_name: str, with_id: bool) -> nbformat.NotebookNode:
    """The first cell of every lab: where it comes from and how to change it."""
    import nbformat

    cell = nbformat.v4.new_markdown_cell(
        f"> **Generated lab - do not edit by hand.** This notebook is generated from "
        f"`{source_name}` {GENERATED_BY}. To change it, edit the solution notebook and "
        f"run `{FIX_COMMAND}`.\n"
        f">\n"
        f"> Replace each `# YOUR CODE HERE` with your code, then run the cell after it: it "
        f"checks your answer. Open a *Hint* when you are stuck."
    )
    if with_id:
        cell["id"] = HEADER_ID
    else:
        cell.pop("id", None)
    return cell


def _grade_id(name: str) -> str:
    """An nbgrader grade_id from a check's name: ``"final_number / is_correct"`` -> ``final_number-is_correct``."""
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-") or "exercise"


def _nbgrader(
    cell_type: str,
    *,
    solution: bool = False,
    grade: bool = False,
    locked: bool = False,
    grade_id: str,
    points: float | None = None,
) -> dict:
    """One cell's nbgrader metadata (schema 3; ``points`` only on graded cells), as nbgrader's
    generate_assignment leaves it in a release (less the checksum it adds)."""
    meta = {
        "cell_type": cell_type,
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": NBGRADER_SCHEMA,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = points
    return meta


def _points(cells: list, default: float, where: str) -> float:
    """The points set in the solution cells' ``nbgrader.points`` (all alike), else ``default``."""
    found = {
        c.metadata["nbgrader"]["points"]
        for c in cells
        if isinstance(c.metadata.get("nbgrader"), dict) and "points" in c.metadata["nbgrader"]
    }
    if len(found) > 1:
        raise BadInput(
            f"{where}: the exercise's cells set different points {sorted(found)}",
            "set nbgrader.points on one cell of the exercise (its check cell)",
        )
    if not found:
        return default
    points = found.pop()
    if not isinstance(points, (int, float)) or isinstance(points, bool) or points < 0:
        raise BadInput(
            f"{where}: nbgrader.points must be a number >= 0, got {points!r}",
            'write e.g. "nbgrader": {"points": 2} in the cell metadata',
        )
    return points


def grade_metadata(cells: list, notebook: str) -> None:
    """Write nbgrader's metadata on ``cells`` (a lab's or instructor copy's, in order), in place.

    Answer cells are told apart by their markers, so pass the cells *before* their solutions are
    stripped; ``notebook`` names the file in errors. See the module docstring for the rules."""
    pending: list = []  # answer cells waiting for their check cell
    used: set[str] = set()
    written = 0
    for cell in cells:
        where = f"{notebook}, cell {cell.get('id', '?')}"
        source = cell.source
        if cell.cell_type == "markdown" and any(line.strip() == BEGIN_ANSWER for line in source.split("\n")):
            written += 1
            points = _points([cell], DEFAULT_WRITTEN_POINTS, where)
            cell.metadata["nbgrader"] = _nbgrader(
                "markdown", solution=True, grade=True, grade_id=f"written-{written}", points=points
            )
            continue
        if cell.cell_type != "code":
            continue
        is_answer = any(line.strip() == BEGIN_SOLUTION for line in source.split("\n"))
        call = _CHECK_CALL.search(source)
        if is_answer and call:
            raise BadInput(
                f"{where}: the cell has both a solution region and a check(...) call",
                "put the check in its own cell after the answer, so it can be locked",
            )
        if is_answer:
            pending.append(cell)  # its metadata is written when its check cell is found
        elif call and pending:
            grade_id = _grade_id(call.group("name"))
            if grade_id in used:
                raise BadInput(
                    f"{where}: a second exercise checked as {call.group('name')!r}",
                    "give each exercise's check(...) its own name",
                )
            used.add(grade_id)
            points = _points([*pending, cell], DEFAULT_POINTS, where)
            for n, answer in enumerate(pending, start=1):
                answer.metadata["nbgrader"] = _nbgrader(
                    "code", solution=True, grade_id=f"{grade_id}-answer" + (f"-{n}" if n > 1 else "")
                )
            cell.metadata["nbgrader"] = _nbgrader("code", grade=True, locked=True, grade_id=grade_id, points=points)
            pending = []
    for n, answer in enumerate(pending, start=1):  # answer cells no check follows: answers, not graded
        answer.metadata["nbgrader"] = _nbgrader("code", solution=True, grade_id=f"answer-{n}")
    for cell in cells:  # what nbgrader's LockCells does to a release, so labs/ match it
        meta = cell.metadata.get("nbgrader")
        if meta and meta["solution"]:
            cell.metadata["deletable"] = False
        elif meta and meta["grade"]:
            cell.metadata["deletable"] = cell.metadata["editable"] = False


def lab_notebook(
    solution: nbformat.NotebookNode, source_name: str, *, keep_solutions: bool = False
) -> nbformat.NotebookNode:
    """Build the lab for one solution notebook (``source_name`` is shown in the header and errors).

    With ``keep_solutions`` it is the instructor's copy instead: the same cells and metadata, the
    solution regions kept (markdown answers marked as nbgrader regions, with a rubric line)."""
    import nbformat

    lab = copy.deepcopy(solution)
    lab.metadata.pop("widgets", None)  # widget state belongs to the outputs we clear
    cells = []
    for cell in solution.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_ONLY_TAG not in tags:
            cells.append(copy.deepcopy(cell))
    grade_metadata(cells, source_name)
    for index, cell in enumerate(cells):
        where = cell_where(Path(source_name), index, cell)
        if cell.cell_type == "code":
            stripped = strip_regions(
                cell.source, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB, _NEAR_CODE_MARKER, where
            )  # checks the markers either way
            if not keep_solutions:
                cell.source = stripped
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        elif cell.cell_type == "markdown":
            stripped = strip_regions(cell.source, BEGIN_ANSWER, END_ANSWER, ANSWER_STUB, _NEAR_ANSWER_MARKER, where)
            if not keep_solutions:
                cell.source = stripped
            elif stripped != cell.source:  # nbgrader's markers around the model answer, and the rubric
                cell.source = "\n".join(
                    BEGIN_SOLUTION + "\n" + RUBRIC + "\n"
                    if line.strip() == BEGIN_ANSWER
                    else END_SOLUTION
                    if line.strip() == END_ANSWER
                    else line
                    for line in cell.source.split("\n")
                )
    lab.cells = [_header_cell(source_name, with_id=lab.nbformat_minor >= 5)] + cells
    nbformat.validate(lab)
    return lab


def instructor_notebook(solution_path: Path) -> nbformat.NotebookNode:
    """The instructor's copy of a lab (nbgrader's ``source``): the lab with its solutions kept."""
    solution_path = Path(solution_path)
    source_name = f"{solution_path.parent.name}/{solution_path.name}"
    return lab_notebook(read_notebook(solution_path), source_name, keep_solutions=True)


def render_lab(solution_path: Path) -> str:
    """The exact text of the lab for ``solution_path`` (what would be written to disk)."""
    import nbformat

    solution_path = Path(solution_path)
    source_name = f"{solution_path.parent.name}/{solution_path.name}"
    lab = lab_notebook(read_notebook(solution_path), source_name)
    text = nbformat.writes(lab, version=4)
    return text if text.endswith("\n") else text + "\n"


def _solutions(solutions_dir: Path) -> list[Path]:
    """The solution notebooks, sorted (hidden files and checkpoints excluded)."""
    if not Path(solutions_dir).is_dir():
        raise BadInput(
            f"no solutions folder at {solutions_dir}", "run this from the course folder, or pass --solutions DIR"
        )
    return sorted(p for p in Path(solutions_dir).glob("*.ipynb") if not p.name.startswith("."))


def _is_generated(path: Path) -> bool:
    """True when ``path`` is a lab this module wrote (its first cell is our header)."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        first = cells[0]
        source = "".join(first.get("source", ""))
    except (OSError, ValueError, IndexError, AttributeError, TypeError):
        return False
    return first.get("cell_type") == "markdown" and GENERATED_BY in source


def _write_text(path: Path, text: str) -> None:
    """Write atomically, so a reader never sees half a notebook."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sync_labs(solutions_dir: Path, labs_dir: Path) -> LabsSync:
    """Write every lab that changed and remove generated labs whose solution is gone."""
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    rendered = {p.name: render_lab(p) for p in _solutions(solutions_dir)}  # all errors before writing
    labs_dir.mkdir(parents=True, exist_ok=True)
    report = LabsSync()
    for name, text in rendered.items():
        target = labs_dir / name
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            report.unchanged.append(target)
        else:
            _write_text(target, text)
            report.written.append(target)
    for lab in sorted(labs_dir.glob("*.ipynb")):
        if lab.name not in rendered and _is_generated(lab):
            lab.unlink()
            report.removed.append(lab)
    return report


def generate_labs(solutions_dir: Path, labs_dir: Path) -> list[Path]:
    """Generate ``labs_dir/NN_name.ipynb`` for each solution notebook; return the lab paths, sorted."""
    report = sync_labs(solutions_dir, labs_dir)
    return sorted(report.written + report.unchanged)


def check_labs(solutions_dir: Path, labs_dir: Path) -> list[str]:
    """Problems that keep ``labs_dir`` from matching ``solutions_dir``: missing, stale, orphan labs."""
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    solutions = _solutions(solutions_dir)
    names = {p.name for p in solutions}
    sol, labs = solutions_dir.name, labs_dir.name
    problems = []
    for path in solutions:
        target, expected = labs_dir / path.name, render_lab(path)  # bad markers raise here
        if not target.is_file():
            problems.append(f"missing: {labs}/{path.name} (solution {sol}/{path.name} has no lab)")
        elif target.read_text(encoding="utf-8") != expected:
            problems.append(f"stale: {labs}/{path.name} differs from what {sol}/{path.name} generates")
    if labs_dir.is_dir():
        for lab in sorted(labs_dir.glob("*.ipynb")):
            if lab.name not in names:
                fix = f"`{FIX_COMMAND}` removes it" if _is_generated(lab) else f"delete it, or add {sol}/{lab.name}"
                problems.append(f"orphan: {labs}/{lab.name} has no {sol}/{lab.name} ({fix})")
    return problems


def _default_root() -> Path:
    """The course folder: the current one if it has solutions/, else the one holding helpers/."""
    cwd = Path.cwd()
    return cwd if (cwd / "solutions").is_dir() else course_root()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``slm-course labs``."""
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a lab is missing, stale or orphaned"
    )
    parser.add_argument(
        "--solutions", type=Path, default=None, help="solution notebooks (default: solutions/ of the course folder)"
    )
    parser.add_argument("--labs", type=Path, default=None, help="where labs go (default: labs/ of the course folder)")


def run(args: argparse.Namespace) -> int:
    """Run ``slm-course labs [--check]``; return the exit code."""
    root = _default_root()
    solutions_dir = args.solutions or root / "solutions"
    labs_dir = args.labs or root / "labs"
    try:
        if args.check:
            problems = check_labs(solutions_dir, labs_dir)
            if problems:
                print(f"{len(problems)} lab(s) out of sync with {solutions_dir}:", file=sys.stderr)
                for p in problems:
                    print(f"  {p}", file=sys.stderr)
                print(f"fix: run `{FIX_COMMAND}` (then commit {labs_dir.name}/)", file=sys.stderr)
                return 1
            print(f"labs up to date ({len(_solutions(solutions_dir))} from {solutions_dir})")
            return 0
        report = sync_labs(solutions_dir, labs_dir)
    except CourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in report.written:
        print(f"wrote   {path}")
    for path in report.removed:
        print(f"removed {path} (its solution is gone)")
    print(f"{len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.removed)} removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.authoring.labs [--check]``: the same as ``slm-course labs``."""
    parser = argparse.ArgumentParser(prog="slm-course labs", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
