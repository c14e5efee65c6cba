"""Labs are generated from solutions: markers stripped, outputs cleared, bytes stable, drift detected."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers.authoring import labs
from helpers.authoring.labs import check_labs, generate_labs, render_lab
from helpers.authoring.nbhygiene import check_notebook
from helpers.errors import BadInput

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

REPO = Path(__file__).resolve().parents[1]


def _nb(*cells) -> nbformat.NotebookNode:
    """A course-shaped notebook: python3 kernel, a parameters cell first, stable cell ids."""
    params = new_code_cell("MODEL = 'smollm2:135m'", metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[params, *cells], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i}"
    return nb


def _save(nb: nbformat.NotebookNode, folder: Path, name: str = "01_first.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, str(path))
    return path


def _lab_cells(tmp_path: Path, *cells) -> list[nbformat.NotebookNode]:
    """Generate the lab of a one-notebook course and return its cells after the header."""
    _save(_nb(*cells), tmp_path / "solutions")
    [lab] = generate_labs(tmp_path / "solutions", tmp_path / "labs")
    return nbformat.read(str(lab), as_version=4).cells[1:]


def test_region_inside_function_keeps_its_indentation(tmp_path):
    src = ("import math\n\n"
           "def area(r):\n"
           "    \"\"\"Area of a circle.\"\"\"\n"
           "    ### BEGIN SOLUTION\n"
           "    return math.pi * r ** 2\n"
           "    ### END SOLUTION\n\n"
           "print('done')")
    _, cell = _lab_cells(tmp_path, new_code_cell(src))
    assert cell.source == ("import math\n\n"
                           "def area(r):\n"
                           "    \"\"\"Area of a circle.\"\"\"\n"
                           "    # YOUR CODE HERE\n"
                           "    raise NotImplementedError()\n\n"
                           "print('done')")
    namespace: dict = {}
    exec(compile(cell.source, "lab", "exec"), namespace)  # the stub is valid Python ...
    with pytest.raises(NotImplementedError):              # ... and fails only when called
        namespace["area"](2.0)


def test_several_regions_per_cell_at_different_depths(tmp_path):
    src = ("### BEGIN SOLUTION\n"
           "TOP = 1\n"
           "### END SOLUTION\n"
           "class Router:\n"
           "    def route(self, prompt):\n"
           "        if len(prompt) < 50:\n"
           "            ### BEGIN SOLUTION\n"
           "            return 'small'\n"
           "            ### END SOLUTION\n"
           "        ### BEGIN SOLUTION\n"
           "        return 'large'\n"
           "        ### END SOLUTION\n")
    _, cell = _lab_cells(tmp_path, new_code_cell(src))
    assert cell.source == ("# YOUR CODE HERE\n"
                           "raise NotImplementedError()\n"
                           "class Router:\n"
                           "    def route(self, prompt):\n"
                           "        if len(prompt) < 50:\n"
                           "            # YOUR CODE HERE\n"
                           "            raise NotImplementedError()\n"
                           "        # YOUR CODE HERE\n"
                           "        raise NotImplementedError()\n")
    assert "small" not in cell.source and "large" not in cell.source
    compile(cell.source, "lab", "exec")


def test_markdown_answer_is_replaced(tmp_path):
    md = ("**Question.** Why is the small model faster?\n\n"
          "=== BEGIN ANSWER ===\n"
          "Fewer parameters to read from memory per token.\n"
          "=== END ANSWER ===\n\n"
          "Then run the next cell.")
    _, cell = _lab_cells(tmp_path, new_markdown_cell(md))
    assert cell.source == ("**Question.** Why is the small model faster?\n\n"
                           "*Your answer here.*\n\n"
                           "Then run the next cell.")


def test_tags_solution_only_dropped_hint_and_parameters_kept(tmp_path):
    hint = "<details><summary>Hint</summary>\n\nUse `len(prompt)`.\n</details>"
    cells = _lab_cells(
        tmp_path,
        new_code_cell("print('the full answer')", metadata={"tags": ["solution_only"]}),
        new_markdown_cell(hint, metadata={"tags": ["hint"]}),
        new_markdown_cell("The end."),
    )
    assert [c.source for c in cells] == ["MODEL = 'smollm2:135m'", hint, "The end."]
    assert cells[0].metadata["tags"] == ["parameters"]
    assert cells[1].metadata["tags"] == ["hint"]


def test_outputs_and_counts_cleared_metadata_kept_header_first(tmp_path):
    cell = new_code_cell("1 + 1", execution_count=3, metadata={"course": {"check": True},
                                                               "execution": {"x": "timing"}},
                         outputs=[new_output("execute_result", {"text/plain": "2"},
                                             execution_count=3)])
    nb = _nb(cell)
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    _save(nb, tmp_path / "solutions", "03_speed.ipynb")
    [path] = generate_labs(tmp_path / "solutions", tmp_path / "labs")
    assert path == tmp_path / "labs" / "03_speed.ipynb"
    lab = nbformat.read(str(path), as_version=4)
    header, _, code = lab.cells
    assert header.cell_type == "markdown"
    assert "`solutions/03_speed.ipynb`" in header.source and "`slm-course labs`" in header.source
    assert "do not edit by hand" in header.source
    assert code.outputs == [] and code.execution_count is None
    assert code.metadata == {"course": {"check": True}}
    assert lab.metadata.kernelspec.name == "python3"
    assert lab.metadata.language_info == {"name": "python"} and "widgets" not in lab.metadata
    assert check_notebook(path) == []  # a generated lab is clean by construction


@pytest.mark.parametrize("src, expected", [
    ("x = 1\n### BEGIN SOLUTION\nx = 2", "'### BEGIN SOLUTION' on line 2 is never closed"),
    ("x = 1\n### END SOLUTION", "'### END SOLUTION' on line 2 has no '### BEGIN SOLUTION'"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
    ("## BEGIN SOLUTION\nx = 2\n### END SOLUTION", "looks like a marker"),
])
def test_bad_code_markers_name_the_notebook_and_cell(tmp_path, src, expected):
    _save(_nb(new_markdown_cell("intro"), new_code_cell(src)), tmp_path / "solutions", "05_q.ipynb")
    with pytest.raises(BadInput) as err:
        generate_labs(tmp_path / "solutions", tmp_path / "labs")
    assert "solutions/05_q.ipynb cell 3 (id c2)" in str(err.value)
    assert expected in str(err.value)
    assert err.value.hint
    assert not (tmp_path / "labs" / "05_q.ipynb").exists()  # nothing half-written


def test_unclosed_markdown_answer_is_an_error(tmp_path):
    _save(_nb(new_markdown_cell("=== BEGIN ANSWER ===\nsecret reasoning")), tmp_path / "solutions")
    with pytest.raises(BadInput, match=r"01_first.ipynb cell 2 .*never closed"):
        generate_labs(tmp_path / "solutions", tmp_path / "labs")


def test_regeneration_is_byte_stable(tmp_path):
    _save(_nb(new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
              new_markdown_cell("Café, naïve: ünïcode stays as is.")), tmp_path / "solutions")
    [path] = generate_labs(tmp_path / "solutions", tmp_path / "labs")
    first = path.read_bytes()
    assert first.endswith(b"}\n") and first.startswith(b'{\n "cells": [\n')  # indent=1, newline
    assert "Café".encode() in first  # not \u-escaped
    path.unlink()
    generate_labs(tmp_path / "solutions", tmp_path / "labs")
    assert path.read_bytes() == first
    report = labs.sync_labs(tmp_path / "solutions", tmp_path / "labs")
    assert report.written == [] and report.unchanged == [path]


def test_cells_without_ids_get_stable_ids(tmp_path):
    raw = {"nbformat": 4, "nbformat_minor": 5,
           "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
           "cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]},
                      "source": "N = 1", "outputs": [], "execution_count": None}]}
    solution = tmp_path / "solutions" / "02_lineup.ipynb"
    solution.parent.mkdir()
    solution.write_text(json.dumps(raw))
    texts = {render_lab(solution) for _ in range(3)}
    assert len(texts) == 1  # nbformat would have invented random ids on every read


def test_check_detects_missing_stale_and_orphan(tmp_path):
    sol, lab_dir = tmp_path / "solutions", tmp_path / "labs"
    _save(_nb(new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")), sol, "01_a.ipynb")
    _save(_nb(new_markdown_cell("two")), sol, "02_b.ipynb")
    assert check_labs(sol, lab_dir) == [
        "missing: labs/01_a.ipynb (solution solutions/01_a.ipynb has no lab)",
        "missing: labs/02_b.ipynb (solution solutions/02_b.ipynb has no lab)",
    ]
    generate_labs(sol, lab_dir)
    assert check_labs(sol, lab_dir) == []

    _save(_nb(new_code_cell("### BEGIN SOLUTION\nx = 2\n### END SOLUTION")), sol, "01_a.ipynb")
    assert check_labs(sol, lab_dir) == []  # a new solution inside the markers: same lab
    _save(_nb(new_code_cell("y = 0\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION")), sol, "01_a.ipynb")
    (sol / "02_b.ipynb").rename(sol / "02_renamed.ipynb")
    _save(_nb(new_markdown_cell("hand made")), lab_dir, "09_handmade.ipynb")
    assert check_labs(sol, lab_dir) == [
        "stale: labs/01_a.ipynb differs from what solutions/01_a.ipynb generates",
        "missing: labs/02_renamed.ipynb (solution solutions/02_renamed.ipynb has no lab)",
        "orphan: labs/02_b.ipynb has no solutions/02_b.ipynb (`slm-course labs` removes it)",
        "orphan: labs/09_handmade.ipynb has no solutions/09_handmade.ipynb "
        "(delete it, or add solutions/09_handmade.ipynb)",
    ]
    report = labs.sync_labs(sol, lab_dir)
    assert report.removed == [lab_dir / "02_b.ipynb"]  # ours: removed
    assert (lab_dir / "09_handmade.ipynb").exists()    # someone's work: kept
    assert [p.split(":")[0] for p in check_labs(sol, lab_dir)] == ["orphan"]


def test_check_command_names_stale_files_and_the_fix(tmp_path, capsys):
    sol, lab_dir = tmp_path / "solutions", tmp_path / "labs"
    _save(_nb(new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")), sol, "04_cost.ipynb")
    argv = ["--solutions", str(sol), "--labs", str(lab_dir)]
    assert labs.main([*argv, "--check"]) == 1
    err = capsys.readouterr().err
    assert "labs/04_cost.ipynb" in err and "run `slm-course labs`" in err
    assert labs.main(argv) == 0
    assert labs.main([*argv, "--check"]) == 0
    assert "labs up to date" in capsys.readouterr().out


def test_check_reports_bad_markers_as_an_error_not_a_traceback(tmp_path, capsys):
    sol = tmp_path / "solutions"
    _save(_nb(new_code_cell("### BEGIN SOLUTION\nx = 1")), sol, "04_cost.ipynb")
    assert labs.main(["--check", "--solutions", str(sol), "--labs", str(tmp_path / "labs")]) == 1
    assert "04_cost.ipynb cell 2" in capsys.readouterr().err


def test_missing_solutions_folder_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no solutions folder"):
        check_labs(tmp_path / "nope", tmp_path / "labs")


def test_slm_course_cli_has_the_labs_subcommand(tmp_path):
    from helpers.cli import main as cli_main

    sol = tmp_path / "solutions"
    _save(_nb(), sol)
    args = ["labs", "--solutions", str(sol), "--labs", str(tmp_path / "labs")]
    assert cli_main([*args, "--check"]) == 1
    assert cli_main(args) == 0
    assert cli_main([*args, "--check"]) == 0


def test_repo_labs_match_solutions():
    """The real course: labs/ must be regenerated whenever solutions/ changes."""
    if not (REPO / "solutions").is_dir():  # git keeps no empty folder: no lessons yet, no labs
        assert not list((REPO / "labs").glob("*.ipynb")), "labs/ without solutions/"
        return
    problems = check_labs(REPO / "solutions", REPO / "labs")
    assert problems == [], "\n".join(problems + ["fix: run `slm-course labs`"])
