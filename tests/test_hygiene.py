"""Notebook hygiene: each rule fails a bad notebook and passes a good one; every course notebook is clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers.authoring.nbhygiene import check_notebook, main, notebooks_in, strip_notebook
from helpers.errors import BadInput

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

REPO = Path(__file__).resolve().parents[1]


def _good_cells() -> list:
    return [
        new_code_cell("MODEL = 'smollm2:135m'\nN_PROMPTS = 3", metadata={"tags": ["parameters"]}),
        new_markdown_cell("Prices come from `genai-prices`; see https://example.org/tmp/page."),
        new_code_cell(
            "# NBVAL_CHECK_OUTPUT\nround(0.15 * 1_000_000 / 1e6, 2)",
            execution_count=1,
            outputs=[new_output("execute_result", {"text/plain": "0.15"}, execution_count=1)],
        ),
        new_code_cell(
            "import os\nkey = os.environ.get('OPENAI_API_KEY')\n"
            "data = Path('data') / 'tmp' / 'x.csv'\nhome = Path('~/work/').expanduser()"
        ),
    ]


def _write(tmp_path: Path, cells=None, kernel: str | None = "python3", name="01_x.ipynb") -> Path:
    nb = new_notebook(cells=_good_cells() if cells is None else cells)
    if kernel:
        nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i}"
    path = tmp_path / name
    nbformat.write(nb, str(path))
    return path


def _with(tmp_path: Path, cell) -> list[str]:
    """Problems of a good notebook with one more cell."""
    return check_notebook(_write(tmp_path, _good_cells() + [cell]))


def test_good_notebook_is_clean(tmp_path):
    assert check_notebook(_write(tmp_path)) == []


def test_outputs_only_allowed_under_nbval_check_output(tmp_path):
    out = [new_output("stream", name="stdout", text="Paris\n")]
    [problem] = _with(tmp_path, new_code_cell("print(ask('capital of France?'))", outputs=out))
    assert "cell 5 (id c4)" in problem and "1 stored output(s)" in problem and "--fix" in problem
    assert _with(tmp_path, new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('Paris')", outputs=out, execution_count=1)) == []
    tagged = new_code_cell("print('Paris')", outputs=out, metadata={"tags": ["nbval-check-output"]}, execution_count=1)
    assert _with(tmp_path, tagged) == []


def test_execution_counts_are_problems_in_cells_and_outputs(tmp_path):
    [problem] = _with(tmp_path, new_code_cell("x = 1", execution_count=4))
    assert "execution count" in problem
    # a checked cell is the exception: nbval compares only reference cells that were run
    result = new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    [problem] = _with(tmp_path, new_code_cell("# NBVAL_CHECK_OUTPUT\n1 + 1", outputs=[result]))
    assert "no execution count" in problem and "Unrun reference" in problem
    assert _with(tmp_path, new_code_cell("# NBVAL_CHECK_OUTPUT\n1 + 1", outputs=[result], execution_count=1)) == []
    assert _with(tmp_path, new_code_cell("x = 1", execution_count=None)) == []


@pytest.mark.parametrize("kernel", ["ir", "python2", None])
def test_kernelspec_must_be_python3(tmp_path, kernel):
    [problem] = check_notebook(_write(tmp_path, kernel=kernel))
    assert "kernelspec" in problem and "'python3'" in problem


def test_a_code_cell_tagged_parameters_is_required(tmp_path):
    cells = _good_cells()
    cells[0].metadata["tags"] = []
    [problem] = check_notebook(_write(tmp_path, cells))
    assert "tagged 'parameters'" in problem
    cells[0] = new_markdown_cell("MODEL", metadata={"tags": ["parameters"]})  # papermill needs code
    assert len(check_notebook(_write(tmp_path, cells))) == 1


@pytest.mark.parametrize(
    "source",
    [
        "df = pd.read_csv('/home/ana/course/data.csv')",
        'open("/root/.cache/x")',
        "Path('/Users/bo/Downloads/model.gguf')",
        "cd /work/main && make",
        "log = '/tmp/run.log'",
        "model = r'C:\\Users\\bo\\model.gguf'",
        "url = 'file:///home/ana/x.html'",
        "!docker run -v /home/ana/models:/root/.ollama ollama/ollama",
    ],
)
def test_absolute_paths_of_one_machine_are_problems(tmp_path, source):
    [problem] = _with(tmp_path, new_code_cell(source))
    assert "absolute path" in problem and "cell 5" in problem


def test_absolute_paths_are_found_in_markdown_and_outputs(tmp_path):
    [problem] = _with(tmp_path, new_markdown_cell("Models live in `/home/ana/.ollama`."))
    assert "in the source" in problem
    out = [new_output("stream", name="stdout", text="saved to /tmp/abc/plot.png\n")]
    problems = _with(tmp_path, new_code_cell("# NBVAL_CHECK_OUTPUT\nsave()", outputs=out, execution_count=1))
    assert len(problems) == 1 and "in the output" in problems[0]


@pytest.mark.parametrize(
    "source",
    [
        "client = OpenAI(api_key='sk-" + "a1B2c3D4e5F6g7H8i9J0kLmN" + "')",
        "key = 'sk-proj-" + "Ab12Cd34Ef56Gh78Ij90KlMn" + "'",
        "OPENAI_API_KEY = 'anything'",
        'os.environ["OPENAI_API_KEY"] = "x"',
        "headers = {'Authorization': 'Bearer " + "abcdefghijklmnopqrstuvwxyz012" + "'}",
    ],
)
def test_secrets_are_problems_and_never_echoed(tmp_path, source):
    [problem] = _with(tmp_path, new_code_cell(source))
    assert "looks like a secret" in problem
    assert "a1B2c3D4e5F6" not in problem and "Ab12Cd34" not in problem and "mnopqrstuv" not in problem


def test_ordinary_code_and_docs_are_not_flagged(tmp_path):
    cells = [
        new_code_cell("import sklearn\nfrom sklearn-like import task-runner-with-long-hyphens"),
        new_code_cell("key = os.environ['OPENAI_API_KEY']\nOPENAI_API_KEY = getpass.getpass()"),
        new_markdown_cell('Set it in your shell: `export OPENAI_API_KEY="your key"`.'),
        new_markdown_cell("Send `Authorization: Bearer <token>`."),
        new_markdown_cell("`docker run -v ollama:/root/.ollama ollama/ollama` (container path)"),
    ]
    assert check_notebook(_write(tmp_path, _good_cells() + cells)) == []


def test_secret_in_an_output_is_found(tmp_path):
    out = [new_output("stream", name="stdout", text="key=sk-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2" + "\n")]
    [problem] = _with(tmp_path, new_code_cell("# NBVAL_CHECK_OUTPUT\nshow()", outputs=out, execution_count=1))
    assert "secret" in problem and "in the output" in problem


def test_invalid_json_is_a_problem_and_a_missing_file_is_bad_input(tmp_path):
    bad = tmp_path / "broken.ipynb"
    bad.write_text("{not json")
    [problem] = check_notebook(bad)
    assert "not valid notebook JSON" in problem
    with pytest.raises(BadInput):
        check_notebook(tmp_path / "absent.ipynb")


def test_strip_notebook_fixes_outputs_and_counts_but_keeps_checked_outputs(tmp_path):
    checked = new_output("execute_result", {"text/plain": "0.15"}, execution_count=2)
    cells = _good_cells() + [
        new_code_cell("print('hi')", execution_count=1, outputs=[new_output("stream", name="stdout", text="hi\n")]),
        new_code_cell("# NBVAL_CHECK_OUTPUT\n0.15", execution_count=2, outputs=[checked]),
    ]
    path = _write(tmp_path, cells)
    assert len(check_notebook(path)) == 2
    assert strip_notebook(path) is True
    assert check_notebook(path) == []
    last = nbformat.read(str(path), as_version=4).cells[-1]
    kept = last.outputs
    assert kept[0]["data"] == {"text/plain": "0.15"} and last.execution_count == 1
    assert strip_notebook(path) is False  # nothing left to change


def test_notebooks_in_lists_the_three_course_folders_sorted(tmp_path):
    for rel in [
        "notebooks/01_b.ipynb",
        "notebooks/00_a.ipynb",
        "labs/01_b.ipynb",
        "solutions/01_b.ipynb",
        "notebooks/.ipynb_checkpoints/00_a-checkpoint.ipynb",
        "benchmarks/x.ipynb",
        "notebooks/notes.md",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    found = [p.relative_to(tmp_path).as_posix() for p in notebooks_in(tmp_path)]
    assert found == ["labs/01_b.ipynb", "notebooks/00_a.ipynb", "notebooks/01_b.ipynb", "solutions/01_b.ipynb"]


def test_command_line_exits_1_on_problems(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    good = _write(tmp_path / "notebooks", name="00_ok.ipynb")
    assert main(["--root", str(tmp_path)]) == 0
    bad = _write(tmp_path / "notebooks", _good_cells() + [new_code_cell("x", execution_count=1)], name="01_bad.ipynb")
    assert main(["--root", str(tmp_path)]) == 1
    assert "01_bad.ipynb cell 5" in capsys.readouterr().err
    assert main(["--fix", str(good), str(bad)]) == 0


def _course_notebooks() -> list:
    found = notebooks_in(REPO)
    if not found:  # an empty parametrisation would be skipped; keep one case that still checks
        return [pytest.param(None, id="no-course-notebooks-yet")]
    return [pytest.param(p, id=p.relative_to(REPO).as_posix()) for p in found]


@pytest.mark.parametrize("notebook", _course_notebooks())
def test_course_notebook_is_clean(notebook):
    if notebook is None:  # (git keeps no empty folders, so they may not exist yet)
        assert notebooks_in(REPO) == []
        return
    problems = check_notebook(notebook)
    assert problems == [], "\n".join(problems)
