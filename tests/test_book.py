"""The course site's machinery (helpers/authoring/book.py, diagrams.py), without building it.

The built site itself is checked in a browser by tests/test_site.py, which `make test` runs after
`slm-course book` has built it from the lessons this run executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from helpers.authoring import book, diagrams

pytestmark = pytest.mark.no_server

ROOT = Path(__file__).resolve().parent.parent


def _lesson(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Lesson 42 - a test\nText."),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("x"),
        nbformat.v4.new_code_cell("print(x)"),
    ]
    (tmp_path / "notebooks").mkdir(exist_ok=True)
    path = tmp_path / "notebooks" / "42_test.ipynb"
    nbformat.write(nb, path)
    return path


def _record_all(source: Path, out: Path, outcome: str = "passed") -> Path:
    rec = book.Recorder(source, {"date": "2026-11-30 12:00 UTC", "machine": "test", "models": ["m:1"]})
    rec.add(0, [], "passed", 0.5)
    rec.add(
        1,
        [{"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}, "execution_count": 7}],
        outcome,
        0.25,
    )
    rec.add(
        2,
        [
            {"output_type": "stream", "name": "stdout", "text": "1\n"},
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {book.WIDGET_MIME: {"model_id": "abc"}, "text/plain": "  0%|  | 0/3"},
            },
            {"output_type": "display_data", "metadata": {}, "data": {book.WIDGET_MIME: {"model_id": "d"}}},
        ],
        "passed",
        1.0,
    )
    return rec.write(out)


def test_a_record_holds_the_run_outputs_counts_and_facts(tmp_path):
    source = _lesson(tmp_path)
    path = _record_all(source, tmp_path / "executed")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3]
    assert code[1].outputs[0]["execution_count"] == 2  # renumbered to this run's count
    # widgets are dropped whole: a progress bar's text is its stale first frame ("0%")
    assert [o["output_type"] for o in code[2].outputs] == ["stream"]
    meta = nb.metadata["slm_course"]
    assert meta["seconds"] == 1.8 and meta["models"] == ["m:1"] and meta["source"] == "notebooks/42_test.ipynb"
    assert book.record_problems(source, path) == []


def test_a_record_is_refused_when_stale_failed_missing_or_foreign(tmp_path):
    source = _lesson(tmp_path)
    out = tmp_path / "executed"
    assert "no executed copy" in book.record_problems(source, out / source.name)[0]
    path = _record_all(source, out, outcome="failed")
    assert book.record_problems(source, path) == ["42_test.ipynb: code cell 1 failed"]
    path = _record_all(source, out)
    nb = nbformat.read(source, as_version=4)
    nb.cells[2].source = "x + 1"  # the lesson changed after the run
    nbformat.write(nb, source)
    assert "older than the lesson's source" in book.record_problems(source, path)[0]
    plain = nbformat.read(source, as_version=4)
    nbformat.write(plain, path)  # an executed copy not made by a course run
    assert "not written by a course run" in book.record_problems(source, path)[0]


def test_an_error_output_is_refused_even_in_a_passed_cell(tmp_path):
    source = _lesson(tmp_path)
    rec = book.Recorder(source, {"date": "d", "machine": "m"})
    for i in range(3):
        rec.add(
            i,
            [{"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}] if i == 2 else [],
            "passed",
            0.1,
        )
    assert book.record_problems(source, rec.write(tmp_path)) == ["42_test.ipynb: a cell raised ValueError: bad"]


def test_source_digest_ignores_outputs_but_not_source():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1")]
    before = book.source_digest(nb)
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="x")]
    nb.cells[0].execution_count = 3
    assert book.source_digest(nb) == before
    nb.cells[0].source = "a = 2"
    assert book.source_digest(nb) != before


def test_assemble_refuses_missing_records_and_names_the_next_step(tmp_path):
    with pytest.raises(book.BookError) as err:
        book.assemble(tmp_path / "nothing", tmp_path / "book")
    assert "00_setup.ipynb: no executed copy" in str(err.value) and "make test" in str(err.value)
    assert not (tmp_path / "book").exists()


def _page(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")


def test_broken_links_finds_missing_files_and_anchors(tmp_path):
    _page(
        tmp_path / "index.html",
        "<a href='notebooks/a.html#part-2'>a</a> <a href='notebooks/b.html'>b</a>"
        "<img src='_images/x.png'> <a href='https://example.org/x'>out</a> <a href='#top' id='top'>t</a>"
        "<a href='mailto:a@b.c'>m</a> <a href='notebooks/a.html#nowhere'>n</a>",
    )
    _page(tmp_path / "notebooks" / "a.html", "<h2 id='part-2'>2</h2><a href='../index.html'>up</a>")
    broken, external = book.broken_links(tmp_path)
    assert broken == [
        "index.html: <a> notebooks/b.html -> no such file",
        "index.html: <img> _images/x.png -> no such file",
        "index.html: <a> notebooks/a.html#nowhere -> no anchor #nowhere",
    ]
    assert external == {"https://example.org/x"}
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "x.png").write_bytes(b"png")
    _page(tmp_path / "notebooks" / "b.html", "")
    assert len(book.broken_links(tmp_path)[0]) == 1


@pytest.mark.parametrize("name", sorted(diagrams.DIAGRAMS))
def test_committed_diagrams_are_what_the_code_draws(name):
    committed = (ROOT / "docs" / "figures" / name).read_text(encoding="utf-8")
    assert committed == diagrams.DIAGRAMS[name](), (
        f"docs/figures/{name} is stale: run `python -m helpers.authoring.diagrams`"
    )


def test_memory_diagram_shows_the_edge_arithmetic():
    from helpers.edge import MODEL_SHAPES, estimate_memory

    svg = diagrams.memory_budget_svg(("phi3:mini",))
    est = estimate_memory(MODEL_SHAPES["phi3:mini"], "Q4_K_M", 4096)
    assert f"{(est.weights_bytes + est.kv_bytes) / 1e9:.1f} GB" in svg
    assert "phone, 8 GB: 3 GB" in svg


def test_lessons_show_the_diagrams_they_are_drawn_for():
    """Each diagram appears in the lesson it explains (and so on GitHub and on the site)."""
    shown = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = "".join(
            "".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"
        )
        for name in diagrams.DIAGRAMS:
            if f"../docs/figures/{name}" in text:
                shown.setdefault(name, []).append(path.name[:2])
    assert set(shown) == set(diagrams.DIAGRAMS), shown


def _execute_three_cells(tmp_path, name: str, second: str, timeout_s: int):
    """Execute a lesson of three code cells, the second one `second`, as `slm-course book
    --execute` does; returns its source, record and the recorded outcomes."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# Lesson {name[:2]}"),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell(second),
        nbformat.v4.new_code_cell("print('never')"),
    ]
    (tmp_path / "notebooks").mkdir()
    source = tmp_path / "notebooks" / name
    nbformat.write(nb, source)
    record = book.execute(source, tmp_path / "executed", host=None, timeout_s=timeout_s)
    meta = nbformat.read(record, as_version=4).metadata["slm_course"]
    return source, record, [c["outcome"] for c in meta["cells"]]


def test_execute_records_a_failing_cell_and_the_build_refuses_it(tmp_path):
    """`slm-course book --execute` runs a lesson with papermill; a cell that raises is recorded as
    failed and the cells after it as not run, so the site is never built from a broken lesson."""
    source, record, outcomes = _execute_three_cells(tmp_path, "43_broken.ipynb", "1 / 0", timeout_s=60)
    assert outcomes == ["passed", "failed", "not run"]
    problems = book.record_problems(source, record)
    assert "43_broken.ipynb: code cell 1 failed" in problems and "43_broken.ipynb: code cell 2 not run" in problems
    assert any("ZeroDivisionError" in p for p in problems)


def test_execute_records_a_cell_that_times_out(tmp_path):
    """A lesson that hangs (a model call that never returns) is stopped, recorded and refused,
    instead of crashing the build with a traceback."""
    source, record, outcomes = _execute_three_cells(
        tmp_path, "44_hangs.ipynb", "import time\ntime.sleep(60)", timeout_s=3
    )
    assert outcomes == ["passed", "failed", "not run"]
    assert any("CellTimeoutError" in p for p in book.record_problems(source, record))
