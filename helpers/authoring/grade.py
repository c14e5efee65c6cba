"""`slm-course grade`: collect and autograde a class's labs with nbgrader (a thin layer over it).

    slm-course grade init COURSE_DIR           an nbgrader course: source/ = the instructor's copies
                                               of the labs (solutions kept), release/ = what students
                                               get (nbgrader's generate_assignment: no solutions)
    slm-course grade collect COURSE_DIR LAB DOWNLOADS
                                               an LMS download (zips or notebooks) -> submitted/
                                               (nbgrader's zip_collect)
    slm-course grade run COURSE_DIR            autograde submitted/<student>/<lab>/ (nbgrader's
                                               autograde) against a model server, then grades.csv,
                                               grades_by_exercise.csv and feedback/ HTML

Grading itself is nbgrader's: its gradebook (COURSE_DIR/gradebook.db), its execution, its
feedback. This module lays the course out from solutions/, starts the offline model server when
none answers (as `slm-course lab` does), reports check cells a student edited, and writes one more
table (points per exercise). What an exercise is and what it is worth is decided when the labs are
generated (helpers/authoring/labs.py: nbgrader's cell metadata). One addition to nbgrader's
execution: an answer that kills the kernel costs that exercise only; nbgrader alone gives up on
the whole submission (see `recovering_execute`).

COURSE_DIR holds the solutions: keep it out of any repository students can read.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput, CourseError
from . import labs

COURSE_ID = "slm-course"
CELL_TIMEOUT_S = 300  # per cell: a check may call a model several times on a slow, shared CPU
MAX_KERNEL_RESTARTS = 3  # per notebook: answers that kill the kernel, before nbgrader gives up on it
CONFIG_FILE = "nbgrader_config.py"
_STOPPED = {"CellTimeoutError", "KeyboardInterrupt", "DeadKernelError"}  # cells not re-run after a restart
_CONFIG_TEXT = '''\
"""nbgrader's configuration for this course, written by `slm-course grade init`.

nbgrader reads it when you run its commands here (`nbgrader formgrader`, `nbgrader autograde`, ...);
`slm-course grade run` reads it too. Add your own settings below the call.
"""
from helpers.authoring.grade import configure

c = get_config()  # noqa: F821 (nbgrader provides get_config)
configure(c)
'''


def _nbgrader():
    """Import nbgrader, or say how to install it. nbgrader runs the `alembic` command of its
    environment: put that environment's bin/ on PATH when it is used without being activated."""
    try:
        import nbgrader  # noqa: F401
    except ImportError as exc:
        raise BadInput(
            "nbgrader is not installed", "pip install -e '.[grade]' (nbgrader 0.9.6) in the course's environment"
        ) from exc
    bin_dir = Path(sys.executable).parent
    if shutil.which("alembic") is None and shutil.which("alembic", path=str(bin_dir)):
        os.environ["PATH"] = str(bin_dir) + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def recovering_execute():
    """nbgrader's Execute preprocessor, except that a cell that kills the kernel is graded.

    nbgrader drops a whole submission when its kernel dies (an answer calling ``os._exit``, a
    crash in native code). This subclass records the death as that cell's error, restarts the
    kernel, silently re-runs the cells before it but those that killed it (so later exercises
    find their imports and answers) and carries on: the cell's exercise scores zero, the rest are graded. After
    ``MAX_KERNEL_RESTARTS`` deaths in one notebook it gives up as nbgrader does."""
    _nbgrader()
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import run_sync
    from nbformat.v4 import new_output
    from nbgrader.preprocessors import Execute

    class RecoveringExecute(Execute):
        def preprocess(self, nb, resources=None, km=None):
            self._killers: set[int] = set()  # cells that killed the kernel: never re-run
            return super().preprocess(nb, resources, km)

        def preprocess_cell(self, cell, resources, index):
            try:
                return super().preprocess_cell(cell, resources, index)
            except DeadKernelError:
                if len(self._killers) >= MAX_KERNEL_RESTARTS:
                    raise
                self._killers.add(index)
            message = "the kernel died while running this cell; it was restarted and the cells above re-run"
            self.log.warning("cell %d: %s", index, message)
            cell.outputs.append(
                new_output("error", ename="DeadKernelError", evalue=message, traceback=[f"DeadKernelError: {message}"])
            )
            self.kc.stop_channels()
            run_sync(self.km.restart_kernel)(now=True)
            self.start_new_kernel_client()
            for n, earlier in enumerate(self.nb.cells[:index]):
                stopped = any(o.get("ename") in _STOPPED for o in earlier.get("outputs", []))
                if (
                    earlier.cell_type == "code" and earlier.source.strip() and n not in self._killers and not stopped
                ):  # a cell cut at the timeout would only time out again
                    msg_id = self.kc.execute(earlier.source, silent=True, store_history=False, allow_stdin=False)
                    self.wait_for_reply(msg_id, earlier)
            return cell, self.resources

    return RecoveringExecute


def configure(c, *, timeout_s: float | None = None) -> None:
    """Set what the course needs on an nbgrader ``Config`` (the course's nbgrader_config.py calls it):
    the lab generator's stubs, a per-cell timeout suited to model calls, the kernel-death recovery,
    deleted check cells put back."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    c.CourseDirectory.course_id = COURSE_ID
    c.ClearSolutions.code_stub = {"python": "\n".join(labs.CODE_STUB)}
    c.ClearSolutions.text_stub = "\n".join(labs.ANSWER_STUB)
    c.Execute.timeout = int(timeout_s or CELL_TIMEOUT_S)
    c.OverwriteCells.add_missing_cells = True
    steps = Autograde.class_traits()["autograde_preprocessors"].default()
    c.Autograde.autograde_preprocessors = [recovering_execute() if s is Execute else s for s in steps]


def _config(course_dir: Path, *, timeout_s: float | None = None):
    """The course's nbgrader_config.py (as nbgrader would read it), rooted at ``course_dir``."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    c = Config()
    if (course_dir / CONFIG_FILE).is_file():
        c.merge(PyFileConfigLoader(CONFIG_FILE, path=str(course_dir)).load_config())
    else:
        configure(c)
    if timeout_s:
        c.Execute.timeout = int(timeout_s)
    c.CourseDirectory.root = str(course_dir.resolve())
    return c


def _api(course_dir: Path, *, timeout_s: float | None = None):
    """nbgrader's own Python API on ``course_dir``."""
    _nbgrader()
    from nbgrader.apps import NbGraderAPI

    return NbGraderAPI(config=_config(course_dir, timeout_s=timeout_s))


def _gradebook(course_dir: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{(course_dir / 'gradebook.db').resolve()}", course_id=COURSE_ID)


def solution_bodies(solution_path: Path) -> list[str]:
    """The text of every solution region of a solution notebook, markers excluded: the code of each
    ``### BEGIN SOLUTION`` region and the model answer of each ``=== BEGIN ANSWER ===`` region."""
    markers = {"code": (labs.BEGIN_SOLUTION, labs.END_SOLUTION), "markdown": (labs.BEGIN_ANSWER, labs.END_ANSWER)}
    bodies = []
    for cell in labs.read_notebook(Path(solution_path)).cells:
        begin, end = markers.get(cell.cell_type, (None, None))
        body: list[str] | None = None
        for line in cell.source.split("\n"):
            if line.strip() == begin:
                body = []
            elif line.strip() == end and body is not None:
                if "\n".join(body).strip():
                    bodies.append("\n".join(body))
                body = None
            elif body is not None:
                body.append(line)
    return bodies


def leaked_solutions(notebook_path: Path, solution_path: Path) -> list[str]:
    """The solution bodies of ``solution_path`` found in ``notebook_path`` (a release must have none)."""
    sources = "\n".join(cell.source for cell in labs.read_notebook(Path(notebook_path)).cells)
    return [body for body in solution_bodies(solution_path) if body.strip() in sources]


def init_course(course_dir: Path, solutions_dir: Path, *, only: list[str] | None = None) -> list[str]:
    """Lay out an nbgrader course in ``course_dir``: one assignment per lab (named like the lab,
    e.g. ``04_cost``), its instructor's copy in source/, the release made by nbgrader. Returns the
    assignment names. Raises if a release still holds a solution body."""
    _nbgrader()
    course_dir, solutions_dir = Path(course_dir), Path(solutions_dir)
    solutions = labs._solutions(solutions_dir)
    if only:
        names = {Path(n).stem for n in only}
        missing = names - {p.stem for p in solutions}
        if missing:
            raise BadInput(
                f"no solution notebook for {sorted(missing)} in {solutions_dir}",
                f"pick from: {', '.join(p.stem for p in solutions)}",
            )
        solutions = [p for p in solutions if p.stem in names]
    course_dir.mkdir(parents=True, exist_ok=True)
    config = course_dir / CONFIG_FILE
    if not config.exists():
        config.write_text(_CONFIG_TEXT, encoding="utf-8")
    import nbformat

    api = _api(course_dir)
    for path in solutions:
        folder = course_dir / "source" / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(labs.instructor_notebook(path), str(folder / path.name))
        result = api.generate_assignment(path.stem, force=True, create=True)
        if not result["success"]:
            raise CourseError(
                f"nbgrader generate_assignment {path.stem} failed:\n{result.get('log', '')}{result.get('error', '')}",
                "fix the solution notebook it names",
            )
        released = course_dir / "release" / path.stem / path.name
        leaks = leaked_solutions(released, path)
        if leaks:
            shutil.rmtree(course_dir / "release" / path.stem)
            raise CourseError(
                f"{released} still holds {len(leaks)} solution(s), e.g. {leaks[0][:80]!r}; the release was removed",
                "check the markers in " + str(path),
            )
    return [p.stem for p in solutions]


def default_regexp(notebook: str) -> str:
    r"""The file names `collect` recognises for ``notebook``: ``<student>_[anything_]<notebook>``
    (e.g. ``alice_04_cost.ipynb``, Canvas's ``smithjane_1234_5678_04_cost.ipynb``)."""
    return r".*[/\\](?P<student_id>[A-Za-z0-9.@-]+)_(?:[^/\\]*_)?(?P<file_id>" + re.escape(notebook) + ")$"


def collect(course_dir: Path, assignment: str, downloads: Path, *, regexp: str | None = None) -> list[str]:
    """Copy an LMS download (zip files and/or notebooks in ``downloads``) into
    submitted/<student>/<assignment>/ with nbgrader's zip_collect. Returns the students whose
    notebook it wrote (a student already there is replaced: the download is the newer copy)."""
    _nbgrader()
    from nbgrader.apps import ZipCollectApp
    from nbgrader.coursedir import CourseDirectory

    course_dir, downloads = Path(course_dir), Path(downloads)
    if not (course_dir / "source" / assignment).is_dir():
        raise BadInput(
            f"no assignment {assignment!r} in {course_dir}",
            f"run `slm-course grade init {course_dir}` first, or check the name",
        )
    if not downloads.is_dir():
        raise BadInput(f"no folder {downloads}", "pass the folder your LMS download was unpacked or saved in")
    archive = course_dir / "downloaded" / assignment / "archive"
    if archive.exists():
        shutil.rmtree(archive)
    shutil.copytree(downloads, archive)
    config = _config(course_dir)
    config.FileNameCollectorPlugin.named_regexp = regexp or default_regexp(f"{assignment}.ipynb")
    config.ZipCollectApp.force = True
    app = ZipCollectApp(config=config)
    app.coursedir = CourseDirectory(parent=app)
    app.coursedir.assignment_id = assignment

    def stamps() -> dict:
        return {p: p.stat().st_mtime_ns for p in (course_dir / "submitted").glob(f"*/{assignment}/*.ipynb")}

    before = stamps()
    app.init_plugins()
    app.extract_archive_files()
    app.process_extracted_files()
    return sorted({p.parent.parent.name for p, t in stamps().items() if before.get(p) != t})


def edited_locked_cells(course_dir: Path, student: str, assignment: str) -> list[str]:
    """grade_ids of locked cells (the checks) a submission changed or deleted. nbgrader puts the
    original back before grading; this says who tried."""
    import nbformat
    from nbgrader.api import MissingEntry

    edited = []
    with _gradebook(course_dir) as gb:
        for path in sorted((course_dir / "submitted" / student / assignment).glob("*.ipynb")):
            try:
                notebook = gb.find_notebook(path.stem, assignment)
            except MissingEntry:
                continue
            cells = {
                c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nbformat.read(str(path), as_version=4).cells
            }
            for source in notebook.source_cells:
                if source.locked:
                    cell = cells.get(source.name)
                    if cell is None or cell.source != source.source:
                        edited.append(source.name)
    return edited


@dataclass
class Graded:
    """One submission after `grade run`."""

    student: str
    assignment: str
    score: float = 0.0
    max_score: float = 0.0
    needs_manual: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    error: str = ""


def exercise_rows(course_dir: Path) -> list[dict]:
    """One row per submission and graded cell in nbgrader's gradebook (what grades_by_exercise.csv holds)."""
    rows = []
    with _gradebook(course_dir) as gb:
        for assignment in gb.assignments:
            for submission in assignment.submissions:
                student = submission.student.id
                edited = set(edited_locked_cells(course_dir, student, assignment.name))
                for notebook in submission.notebooks:
                    for grade in sorted(notebook.grades, key=lambda x: x.name):
                        rows.append(
                            {
                                "student_id": student,
                                "assignment": assignment.name,
                                "exercise": grade.name,
                                "score": grade.score,
                                "max_score": grade.max_score,
                                "needs_manual_grade": grade.needs_manual_grade,
                                "check_edited": grade.name in edited,
                            }
                        )
    return rows


def _totals(course_dir: Path, graded: list[Graded]) -> None:
    """Fill in each graded submission's score and the written answers still to grade by hand."""
    with _gradebook(course_dir) as gb:
        for g in graded:
            if g.error:
                continue
            submission = gb.find_submission(g.assignment, g.student)
            g.score, g.max_score = submission.score, submission.max_score
            g.needs_manual = sorted(
                grade.name for notebook in submission.notebooks for grade in notebook.grades if grade.needs_manual_grade
            )


def _check_course(course_dir: Path) -> None:
    """Raise unless ``course_dir`` was made by `slm-course grade init`."""
    if not (Path(course_dir) / "gradebook.db").is_file():
        raise BadInput(
            f"{course_dir} is not a course made by `slm-course grade init`",
            f"run `slm-course grade init {course_dir}` first",
        )


def grade_course(
    course_dir: Path,
    *,
    timeout_s: float | None = None,
    students: list[str] | None = None,
    assignments: list[str] | None = None,
    feedback: bool = True,
) -> list[Graded]:
    """Autograde every submission in submitted/<student>/<assignment>/ (or the ones picked) with
    nbgrader, write its grades.csv, grades_by_exercise.csv and feedback/<student>/<assignment>/*.html.
    A model server must answer at OLLAMA_HOST (`run` starts one)."""
    course_dir = Path(course_dir)
    _check_course(course_dir)
    folders = sorted(
        p
        for p in (course_dir / "submitted").glob("*/*")
        if p.is_dir() and (not students or p.parent.name in students) and (not assignments or p.name in assignments)
    )
    if not folders:
        raise BadInput(
            f"no submissions in {course_dir / 'submitted'}",
            "put each student's notebook in submitted/<student>/<lab>/ (e.g. "
            "submitted/alice/04_cost/04_cost.ipynb), or use `slm-course grade collect`",
        )
    api = _api(course_dir, timeout_s=timeout_s)
    from sqlalchemy.exc import SAWarning

    warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's own session use, harmless
    graded = []
    for folder in folders:
        g = Graded(student=folder.parent.name, assignment=folder.name)
        print(f"grading {g.student} / {g.assignment} ...", flush=True)
        g.edited = edited_locked_cells(course_dir, g.student, g.assignment)
        result = api.autograde(g.assignment, g.student, force=True, create=True)
        if not result["success"]:
            g.error = (result.get("error") or result.get("log") or "autograde failed").strip().splitlines()[-1]
        elif feedback:
            result = api.generate_feedback(g.assignment, g.student, force=True)
            if not result["success"]:
                g.error = "feedback: " + (result.get("error") or "failed").strip().splitlines()[-1]
        graded.append(g)
    _totals(course_dir, graded)
    rows = exercise_rows(course_dir)
    with open(course_dir / "grades_by_exercise.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=[
                "student_id",
                "assignment",
                "exercise",
                "score",
                "max_score",
                "needs_manual_grade",
                "check_edited",
            ],
        )
        writer.writeheader()
        writer.writerows(rows)
    from nbgrader.plugins import CsvExportPlugin

    with _gradebook(course_dir) as gb:
        CsvExportPlugin(to=str(course_dir / "grades.csv")).export(gb)
    return graded


def report(graded: list[Graded], course_dir: Path) -> int:
    """Print one line per submission; return 1 when one could not be graded."""
    failed = 0
    for g in graded:
        if g.error:
            failed += 1
            print(f"[FAIL] {g.student} / {g.assignment}: not graded - {g.error}")
            continue
        line = f"{g.student} / {g.assignment}: {g.score:g} / {g.max_score:g}"
        if g.needs_manual:
            line += f" (+ {len(g.needs_manual)} written answer(s) to grade by hand: {', '.join(g.needs_manual)})"
        if g.edited:
            line += f" [edited check cell(s), restored before grading: {', '.join(g.edited)}]"
        print(line)
    print(
        f"grades: {course_dir / 'grades.csv'} (per exercise: {course_dir / 'grades_by_exercise.csv'}); "
        f"feedback: {course_dir / 'feedback'}"
    )
    if any(g.needs_manual for g in graded):
        print(
            f"written answers: grade them in nbgrader's formgrader (`cd {course_dir} && jupyter lab`, menu "
            "Nbgrader > Formgrader), then run this again to refresh grades.csv and feedback"
        )
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``slm-course grade``."""
    sub = parser.add_subparsers(dest="grade_command", required=True, metavar="{init,collect,run}")
    p = sub.add_parser("init", help="an nbgrader course: source/ from solutions/, release/ without solutions")
    p.add_argument("course_dir", type=Path, metavar="COURSE_DIR")
    p.add_argument("--solutions", type=Path, default=None, help="default: solutions/ of the course folder")
    p.add_argument("--labs", nargs="+", default=None, metavar="LAB", help="only these labs (e.g. 04_cost)")
    p = sub.add_parser("collect", help="an LMS download -> submitted/<student>/LAB/ (nbgrader zip_collect)")
    p.add_argument("course_dir", type=Path, metavar="COURSE_DIR")
    p.add_argument("lab", metavar="LAB", help="the assignment, e.g. 04_cost")
    p.add_argument("downloads", type=Path, metavar="DOWNLOADS", help="folder of zip files and/or notebooks")
    p.add_argument(
        "--regexp",
        default=None,
        help="nbgrader FileNameCollector.named_regexp with "
        "(?P<student_id>...) and (?P<file_id>...) (default: <student>_[anything_]LAB.ipynb)",
    )
    p = sub.add_parser("run", help="autograde submitted/, write grades.csv and feedback/ HTML")
    p.add_argument("course_dir", type=Path, metavar="COURSE_DIR")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"seconds per cell (default: nbgrader_config.py's, {CELL_TIMEOUT_S} as written by init)",
    )
    p.add_argument("--student", nargs="+", default=None, help="only these students")
    p.add_argument("--lab", nargs="+", default=None, help="only these labs")
    p.add_argument("--no-feedback", action="store_true", help="skip the feedback HTML")


def run(args: argparse.Namespace) -> int:
    """Run ``slm-course grade init|collect|run``; return the exit code."""
    try:
        if args.grade_command == "init":
            solutions = args.solutions or labs._default_root() / "solutions"
            names = init_course(args.course_dir, solutions, only=args.labs)
            print(
                f"course ready in {args.course_dir}: {len(names)} lab(s) ({', '.join(names)}); "
                f"give students {args.course_dir / 'release'} (no solutions), keep the rest private"
            )
            return 0
        if args.grade_command == "collect":
            found = collect(args.course_dir, args.lab, args.downloads, regexp=args.regexp)
            print(f"{len(found)} submission(s) of {args.lab}: {', '.join(found) or 'none'}")
            return 0 if found else 1
        from ..serving import launcher
        from ..settings import get_settings

        _check_course(args.course_dir)  # before a server is started for nothing
        proc = launcher.ensure_server(get_settings().ollama_host, user="the grading run")
        try:
            graded = grade_course(
                args.course_dir,
                timeout_s=args.timeout,
                students=args.student,
                assignments=args.lab,
                feedback=not args.no_feedback,
            )
        finally:
            launcher.stop(proc)
        return report(graded, args.course_dir)
    except CourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
