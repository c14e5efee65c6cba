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

unit = pytest.mark.no_server  # a unit test: no model server needed

REPO = Path(__file__).resolve().parents[1]


def _nb(*cells) -> nbformat.NotebookNode:
    """A course-shaped notebook: python3 kernel, a parameters cell first, stable cell ids."""
    params = new_code_cell("MODEL = 'smollm2:135m'", metadata={"tags": ["parameters"]})
    nb = new_notebook(
        cells=[params, *cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
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


@unit
def test_region_inside_function_keeps_its_indentation(tmp_path):
    src = (
        "import math\n\n"
        "def area(r):\n"
        '    """Area of a circle."""\n'
        "    ### BEGIN SOLUTION\n"
        "    return math.pi * r ** 2\n"
        "    ### END SOLUTION\n\n"
        "print('done')"
    )
    _, cell = _lab_cells(tmp_path, new_code_cell(src))
    assert cell.source == (
        "import math\n\n"
        "def area(r):\n"
        '    """Area of a circle."""\n'
        "    # YOUR CODE HERE\n"
        "    raise NotImplementedError()\n\n"
        "print('done')"
    )
    namespace: dict = {}
    exec(compile(cell.source, "lab", "exec"), namespace)  # the stub is valid Python ...
    with pytest.raises(NotImplementedError):  # ... and fails only when called
        namespace["area"](2.0)


@unit
def test_several_regions_per_cell_at_different_depths(tmp_path):
    src = (
        "### BEGIN SOLUTION\n"
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
        "        ### END SOLUTION\n"
    )
    _, cell = _lab_cells(tmp_path, new_code_cell(src))
    assert cell.source == (
        "# YOUR CODE HERE\n"
        "raise NotImplementedError()\n"
        "class Router:\n"
        "    def route(self, prompt):\n"
        "        if len(prompt) < 50:\n"
        "            # YOUR CODE HERE\n"
        "            raise NotImplementedError()\n"
        "        # YOUR CODE HERE\n"
        "        raise NotImplementedError()\n"
    )
    assert "small" not in cell.source and "large" not in cell.source
    compile(cell.source, "lab", "exec")


@unit
def test_markdown_answer_is_replaced(tmp_path):
    md = (
        "**Question.** Why is the small model faster?\n\n"
        "=== BEGIN ANSWER ===\n"
        "Fewer parameters to read from memory per token.\n"
        "=== END ANSWER ===\n\n"
        "Then run the next cell."
    )
    _, cell = _lab_cells(tmp_path, new_markdown_cell(md))
    assert cell.source == (
        "**Question.** Why is the small model faster?\n\n*Your answer here.*\n\nThen run the next cell."
    )


@unit
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


@unit
def test_outputs_and_counts_cleared_metadata_kept_header_first(tmp_path):
    cell = new_code_cell(
        "1 + 1",
        execution_count=3,
        metadata={"course": {"check": True}, "execution": {"x": "timing"}},
        outputs=[new_output("execute_result", {"text/plain": "2"}, execution_count=3)],
    )
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


@unit
@pytest.mark.parametrize(
    "src, expected",
    [
        ("x = 1\n### BEGIN SOLUTION\nx = 2", "'### BEGIN SOLUTION' on line 2 is never closed"),
        ("x = 1\n### END SOLUTION", "'### END SOLUTION' on line 2 has no '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
        ("## BEGIN SOLUTION\nx = 2\n### END SOLUTION", "looks like a marker"),
    ],
)
def test_bad_code_markers_name_the_notebook_and_cell(tmp_path, src, expected):
    _save(_nb(new_markdown_cell("intro"), new_code_cell(src)), tmp_path / "solutions", "05_q.ipynb")
    with pytest.raises(BadInput) as err:
        generate_labs(tmp_path / "solutions", tmp_path / "labs")
    assert "solutions/05_q.ipynb cell 3 (id c2)" in str(err.value)
    assert expected in str(err.value)
    assert err.value.hint
    assert not (tmp_path / "labs" / "05_q.ipynb").exists()  # nothing half-written


@unit
def test_unclosed_markdown_answer_is_an_error(tmp_path):
    _save(_nb(new_markdown_cell("=== BEGIN ANSWER ===\nsecret reasoning")), tmp_path / "solutions")
    with pytest.raises(BadInput, match=r"01_first.ipynb cell 2 .*never closed"):
        generate_labs(tmp_path / "solutions", tmp_path / "labs")


@unit
def test_regeneration_is_byte_stable(tmp_path):
    _save(
        _nb(
            new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
            new_markdown_cell("Café, naïve: ünïcode stays as is."),
        ),
        tmp_path / "solutions",
    )
    [path] = generate_labs(tmp_path / "solutions", tmp_path / "labs")
    first = path.read_bytes()
    assert first.endswith(b"}\n") and first.startswith(b'{\n "cells": [\n')  # indent=1, newline
    assert "Café".encode() in first  # not \u-escaped
    path.unlink()
    generate_labs(tmp_path / "solutions", tmp_path / "labs")
    assert path.read_bytes() == first
    report = labs.sync_labs(tmp_path / "solutions", tmp_path / "labs")
    assert report.written == [] and report.unchanged == [path]


@unit
def test_cells_without_ids_get_stable_ids(tmp_path):
    raw = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"tags": ["parameters"]},
                "source": "N = 1",
                "outputs": [],
                "execution_count": None,
            }
        ],
    }
    solution = tmp_path / "solutions" / "02_lineup.ipynb"
    solution.parent.mkdir()
    solution.write_text(json.dumps(raw))
    texts = {render_lab(solution) for _ in range(3)}
    assert len(texts) == 1  # nbformat would have invented random ids on every read


@unit
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
    assert (lab_dir / "09_handmade.ipynb").exists()  # someone's work: kept
    assert [p.split(":")[0] for p in check_labs(sol, lab_dir)] == ["orphan"]


@unit
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


@unit
def test_check_reports_bad_markers_as_an_error_not_a_traceback(tmp_path, capsys):
    sol = tmp_path / "solutions"
    _save(_nb(new_code_cell("### BEGIN SOLUTION\nx = 1")), sol, "04_cost.ipynb")
    assert labs.main(["--check", "--solutions", str(sol), "--labs", str(tmp_path / "labs")]) == 1
    assert "04_cost.ipynb cell 2" in capsys.readouterr().err


@unit
def test_missing_solutions_folder_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no solutions folder"):
        check_labs(tmp_path / "nope", tmp_path / "labs")


@unit
def test_slm_course_cli_has_the_labs_subcommand(tmp_path):
    from helpers.cli import main as cli_main

    sol = tmp_path / "solutions"
    _save(_nb(), sol)
    args = ["labs", "--solutions", str(sol), "--labs", str(tmp_path / "labs")]
    assert cli_main([*args, "--check"]) == 1
    assert cli_main(args) == 0
    assert cli_main([*args, "--check"]) == 0


@unit
def test_repo_labs_match_solutions():
    """The real course: labs/ must be regenerated whenever solutions/ changes."""
    if not (REPO / "solutions").is_dir():  # git keeps no empty folder: no lessons yet, no labs
        assert not list((REPO / "labs").glob("*.ipynb")), "labs/ without solutions/"
        return
    problems = check_labs(REPO / "solutions", REPO / "labs")
    assert problems == [], "\n".join(problems + ["fix: run `slm-course labs`"])


# ---------------------------------------------------------------------------------------------
# Every exercise's check accepts the solution and rejects a plausible wrong answer.
#
# The check cell's test function and the solution's function are taken from the solution
# notebook and run in one namespace (no whole notebook is executed); then the wrong answer below
# replaces the solution's function and the same test must fail. Pure exercises run without a
# model server; the others run against the session's real server (the conftest fixture), with
# the CI models of tests/test_notebooks.py.
# ---------------------------------------------------------------------------------------------

import ast  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
import textwrap  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from test_notebooks import CI_PARAMETERS  # noqa: E402

SOLUTIONS = REPO / "solutions"


@dataclass(frozen=True)
class Wrong:
    """A plausible wrong answer to one exercise: what it gets wrong, and its code."""

    lab: str  # solution notebook stem, e.g. "00_setup"
    check: str  # the name its check cell passes to check(...)
    why: str  # the mistake, in words
    code: str  # defines the exercise's function(s) the wrong way
    server: bool = False  # the check calls a model
    slow: bool = False  # over ~6 s (the large model answers, or a timeout is waited for): not in `make check`
    raises: tuple = (AssertionError,)  # how the check reports it (check() prints any of these as wrong)


#: Top-level names of a lab's setup cell that a pure exercise needs (the rest calls a server).
PURE_SETUP = {"04_cost": {"PRICES_AS_OF"}, "08_edge": {"shape"}}
#: Code cells besides the exercises' own that an exercise needs (the lab's fixtures).
EXTRA_CELLS = {"10_structured_output": {"3c1e9468"}}  # the toy model of exercise 2

WRONG = [
    # ---- lab 00 ----
    Wrong(
        "00_setup",
        "fits_comfortably",
        "forgets the 0.5 GB the runtime needs on top of the weights",
        """
          def fits_comfortably(download_gb, free_ram_gb):
              return download_gb * 1.2 <= free_ram_gb * 2 / 3
          """,
    ),
    Wrong(
        "00_setup",
        "size_changes",
        "keeps only the models that grew (a shrunk one changed too)",
        """
          def size_changes(article_sizes, tolerance=0.10):
              by_name = {m.name: m for m in MODELS}
              out = {n: (by_name[n].download_gb - s) / s for n, s in article_sizes.items()}
              return {n: c for n, c in out.items() if c > tolerance}
          """,
    ),
    Wrong(
        "00_setup",
        "size_changes",
        "an absolute change in GB, not a relative one",
        """
          def size_changes(article_sizes, tolerance=0.10):
              by_name = {m.name: m for m in MODELS}
              out = {n: by_name[n].download_gb - s for n, s in article_sizes.items()}
              return {n: c for n, c in out.items() if abs(c) > tolerance}
          """,
    ),
    Wrong(
        "00_setup",
        "models_that_fit",
        "sorts smallest first",
        """
          def models_that_fit(free_ram_gb):
              fitting = [m for m in MODELS if fits_comfortably(m.download_gb, free_ram_gb)]
              return [m.name for m in sorted(fitting, key=lambda m: m.params_b)]
          """,
    ),
    # ---- lab 01 ----
    Wrong(
        "01_first_conversation",
        "ask_rest",
        "leaves streaming on, then parses the body as one JSON object",
        """
          def ask_rest(prompt):
              body = {"model": MODEL, "prompt": prompt, "options": DETERMINISTIC}
              return httpx.post(f"{HOST}/api/generate", json=body, timeout=120).json()["response"]
          """,
        server=True,
        raises=(ValueError,),
    ),
    Wrong(
        "01_first_conversation",
        "join_stream",
        "reads eval_duration as seconds (it is nanoseconds)",
        """
          def join_stream(lines):
              chunks = [json.loads(x) for x in lines if x.strip()]
              final = chunks[-1]
              return "".join(c["response"] for c in chunks), final["eval_count"] / final["eval_duration"]
          """,
        server=True,
    ),
    Wrong(
        "01_first_conversation",
        "join_stream",
        "parses every line, blank ones too",
        """
          def join_stream(lines):
              chunks = [json.loads(x) for x in lines]
              final = chunks[-1]
              return "".join(c["response"] for c in chunks), final["eval_count"] / final["eval_duration"] * 1e9
          """,
        server=True,
        raises=(ValueError,),
    ),
    Wrong(
        "01_first_conversation",
        "chat_turn",
        "sends only the newest message: the model forgets the chat",
        """
          def chat_turn(history, text):
              history.append({"role": "user", "content": text})
              reply = client.chat(model=MODEL, messages=history[-1:], options=DETERMINISTIC)
              history.append({"role": "assistant", "content": reply.message.content})
              return reply.message.content
          """,
        server=True,
    ),
    Wrong(
        "01_first_conversation",
        "chat_turn",
        "forgets the options: the answer is not reproducible",
        """
          def chat_turn(history, text):
              history.append({"role": "user", "content": text})
              reply = client.chat(model=MODEL, messages=history)
              history.append({"role": "assistant", "content": reply.message.content})
              return reply.message.content
          """,
        server=True,
    ),
    # ---- lab 02 ----
    Wrong(
        "02_lineup",
        "answers_table",
        "pivots without restoring the order (pivot sorts rows and columns)",
        """
          def answers_table(pairs):
              rows = [{"prompt": n, "model": r.model, "answer": r.text.strip()} for n, r in pairs]
              return pd.DataFrame(rows).pivot(index="prompt", columns="model", values="answer")
          """,
        server=True,
    ),
    Wrong(
        "02_lineup",
        "weights_read_gbs",
        "accepts a size of zero or less",
        """
          def weights_read_gbs(result, size_gb):
              tps = result.metrics.decode_tps
              return None if tps is None else tps * size_gb
          """,
        server=True,
    ),
    Wrong(
        "02_lineup",
        "choose_pulls",
        "compares each download with the whole disk, not with what is left",
        """
          def choose_pulls(candidates, ram_gb, disk_gb):
              return [n for n in candidates
                      if card(n) is not None and card(n).ram_gb <= ram_gb and card(n).download_gb <= disk_gb]
          """,
    ),
    # ---- lab 03 ----
    Wrong(
        "03_speed",
        "time_answer",
        "overwrites the first-token time on every piece (it becomes the last one's)",
        """
          def time_answer(messages, model=MODEL):
              t0 = time.perf_counter()
              ttft, tokens = None, 0
              for piece in backend.stream_chat(model, messages, options=OPTIONS):
                  if piece.text:
                      ttft = time.perf_counter() - t0
                  if piece.done:
                      tokens = piece.metrics.output_tokens
              return ttft, time.perf_counter() - t0, tokens
          """,
        server=True,
    ),
    Wrong(
        "03_speed",
        "tokens_within",
        "divides the whole budget by the time per token, forgetting the TTFT",
        """
          def tokens_within(budget_s, ttft_s, tpot_s):
              return int(budget_s / tpot_s)
          """,
    ),
    Wrong(
        "03_speed",
        "which_is_faster",
        "compares the medians (noise decides)",
        """
          def which_is_faster(a, b):
              if len(a) < 3 or len(b) < 3:
                  return "can't tell"
              ma, mb = np.median(a), np.median(b)
              return "a" if ma < mb else "b" if mb < ma else "can't tell"
          """,
    ),
    Wrong(
        "03_speed",
        "predict_decode_tps",
        "treats bits per weight as bytes per weight",
        """
          def predict_decode_tps(n_params, quant, bandwidth_gbs, share):
              bpw = bits_per_weight(quant) if isinstance(quant, str) else float(quant)
              return share * bandwidth_gbs * 1e9 / (n_params * bpw)
          """,
    ),
    # ---- lab 04 ----
    Wrong(
        "04_cost",
        "implied_mix",
        "a sign slip in Cramer's rule for the output tokens",
        """
          def implied_mix(total_a, price_a, total_b, price_b, n_queries=1_000_000):
              a1, a2, ra = price_a.input_per_mtok, price_a.output_per_mtok, total_a / n_queries * 1e6
              b1, b2, rb = price_b.input_per_mtok, price_b.output_per_mtok, total_b / n_queries * 1e6
              det = a1 * b2 - a2 * b1
              if abs(det) < 1e-12:
                  return None
              return (ra * b2 - a2 * rb) / det, (ra * b1 - a1 * rb) / det
          """,
    ),
    Wrong(
        "04_cost",
        "energy_usd_per_mtok",
        "divides by 3,600 (watt-hours), not 3,600,000 (kWh)",
        """
          def energy_usd_per_mtok(tokens_per_s, watts, usd_per_kwh):
              return watts * (1_000_000 / tokens_per_s) / 3600 * usd_per_kwh
          """,
    ),
    Wrong(
        "04_cost",
        "break_even",
        "forgets that a local query costs energy too",
        """
          def break_even(fixed_usd_per_month, api_usd_per_query, local_usd_per_query):
              return fixed_usd_per_month / api_usd_per_query if api_usd_per_query > local_usd_per_query else math.inf
          """,
    ),
    # ---- lab 05 ----
    Wrong(
        "05_quality",
        "tasks_needed",
        "assumes p1 is the lower accuracy",
        """
          def tasks_needed(p1, p2, max_n=100_000):
              if p1 == p2:
                  return None
              for n in range(1, max_n + 1):
                  if wilson_interval(round(p1 * n), n)[1] < wilson_interval(round(p2 * n), n)[0]:
                      return n
              return None
          """,
    ),
    Wrong(
        "05_quality",
        "tasks_needed",
        "the normal-approximation rule of thumb instead of the search",
        """
          def tasks_needed(p1, p2, max_n=100_000):
              if p1 == p2:
                  return None
              n = math.ceil(16 * max(p1 * (1 - p1), p2 * (1 - p2), 0.01) / (p1 - p2) ** 2)
              return n if n <= max_n else None
          """,
    ),
    Wrong(
        "05_quality",
        "final_number / is_correct",
        "takes the first number, not the last",
        """
          def final_number(text):
              found = NUMBER.findall(text or "")
              return float(found[0].replace(",", "")) if found else None
          """,
    ),
    Wrong(
        "05_quality",
        "paired_test",
        "a one-sided p-value (forgets to double the tail)",
        """
          def paired_test(small_correct, large_correct):
              s = sum(1 for a, b in zip(small_correct, large_correct) if a and not b)
              g = sum(1 for a, b in zip(small_correct, large_correct) if b and not a)
              d = s + g
              return s, g, min(1.0, sum(math.comb(d, i) for i in range(min(s, g) + 1)) / 2 ** d)
          """,
    ),
    # ---- lab 06 ----
    Wrong(
        "06_routing",
        "my_is_simple_task",
        "wraps the kit's is_simple_task (another rule) with a 60-word limit",
        """
          def my_is_simple_task(prompt):
              return is_simple_task(prompt, max_words=60)
          """,
    ),
    Wrong(
        "06_routing",
        "pgr_at_share",
        "sends the lowest scores to the large model",
        """
          def pgr_at_share(q_small, q_large, scores, share):
              qs, ql, sc = (np.asarray(a, dtype=float) for a in (q_small, q_large, scores))
              to_large = np.zeros(len(qs), dtype=bool)
              to_large[np.argsort(sc, kind="stable")[:round(share * len(qs))]] = True
              if math.isclose(qs.mean(), ql.mean()):
                  return math.nan
              return float((np.where(to_large, ql, qs).mean() - qs.mean()) / (ql.mean() - qs.mean()))
          """,
    ),
    Wrong(
        "06_routing",
        "calibrate",
        "counts the top k prompts, splitting prompts with equal scores",
        """
          def calibrate(q_small, q_large, scores, keep):
              qs, ql, sc = (np.asarray(a, dtype=float) for a in (q_small, q_large, scores))
              gap = ql.mean() - qs.mean()
              if math.isclose(gap, 0.0, abs_tol=1e-12):
                  return math.nan, math.nan
              order = np.argsort(-sc, kind="stable")
              for k in range(len(sc) + 1):
                  to_large = np.zeros(len(sc), dtype=bool)
                  to_large[order[:k]] = True
                  if (np.where(to_large, ql, qs).mean() - qs.mean()) / gap >= keep - 1e-12:
                      return (math.inf if k == 0 else float(sc[order[k - 1]])), k / len(sc)
              return math.nan, math.nan
          """,
    ),
    Wrong(
        "06_routing",
        "cascade",
        "asks both models every time, then picks (pays for the large call always)",
        """
          def cascade(prompt, check=basic_check):
              first, second = ask_small(prompt), ask_large(prompt)
              return (first, "small") if check(prompt, first.text) else (second, "large")
          """,
        server=True,
        slow=True,
    ),
    # ---- lab 07 ----
    Wrong(
        "07_hybrid_app",
        "with_fallback",
        "catches errors but never stops waiting for a hung primary",
        """
          def with_fallback(primary, backup, timeout_s):
              def call(prompt):
                  try:
                      return primary(prompt), "primary"
                  except CourseError:
                      return backup(prompt), "backup"
              return call
          """,
        server=True,
        slow=True,
    ),
    Wrong(
        "07_hybrid_app",
        "smart_routing",
        "logs 'large' when the small model stood in for it",
        """
          def smart_routing(prompt, large=ask_large, timeout_s=30):
              t0 = time.perf_counter()
              if is_simple_task(prompt):
                  result, route = ask_small(prompt), "small"
              else:
                  result, _ = with_fallback(large, ask_small, timeout_s)(prompt)
                  route = "large"
              LOG.append({"prompt": prompt, "route": route, "model": result.model,
                          "latency_s": time.perf_counter() - t0})
              return result
          """,
        server=True,
        slow=True,
    ),
    Wrong(
        "07_hybrid_app",
        "route_with_budget",
        "refuses the last call that exactly fits the budget",
        """
          def route_with_budget(prompt, spent_usd, budget_usd, large_call_usd):
              if is_simple_task(prompt):
                  return "small"
              return "large" if spent_usd + large_call_usd < budget_usd else "small"
          """,
    ),
    Wrong(
        "07_hybrid_app",
        "budget_plan",
        "does not clip the share to [0, 1]",
        """
          def budget_plan(cost_small, cost_large, budget_per_1k, q_small, q_large, scores, keep=0.9):
              per_call = budget_per_1k / 1000
              share = 1.0 if cost_large <= cost_small else (per_call - cost_small) / (cost_large - cost_small)
              ms, ml = float(np.mean(q_small)), float(np.mean(q_large))
              routed = quality_at_share(q_small, q_large, scores, min(max(share, 0), 1))
              kept = math.nan if math.isclose(ms, ml) else (routed - ms) / (ml - ms)
              return {"share": share, "usd_per_1k": 1000 * (share * cost_large + (1 - share) * cost_small),
                      "pgr": kept, "kept": kept >= keep}
          """,
    ),
    # ---- lab 08 ----
    Wrong(
        "08_edge",
        "choose_quant",
        "forgets the KV cache",
        """
          def choose_quant(shape, budget_gb, n_ctx, min_bpw=3.5):
              for level in LEVELS:
                  if bits_per_weight(level) >= min_bpw and weights_bytes(shape.n_params, level) <= budget_gb * 1e9:
                      return level
              return None
          """,
    ),
    Wrong(
        "08_edge",
        "kv_cache_mb",
        "counts the keys only (one cache, not two)",
        """
          def kv_cache_mb(n_layers, n_ctx, n_kv_heads, head_dim, bytes_per_element=2):
              return n_layers * n_ctx * n_kv_heads * head_dim * bytes_per_element / 1e6
          """,
    ),
    Wrong(
        "08_edge",
        "longest_context",
        "does not round down to a multiple of 256",
        """
          def longest_context(budget_gb, shape, bits_per_weight):
              room_mb = budget_gb * 1e3 - weights_bytes(shape.n_params, bits_per_weight) / 1e6
              if room_mb <= 0:
                  return 0
              per_token = kv_cache_mb(shape.n_layers, 1, shape.n_kv_heads, shape.head_dim)
              return min(int(room_mb // per_token), shape.context_length)
          """,
    ),
    Wrong(
        "08_edge",
        "answer",
        "always answers locally (passes while the large tier is down)",
        """
          def answer(prompt, large):
              return backend.generate(MODEL, prompt, options=OPTIONS).text, "local"
          """,
        server=True,
    ),
    Wrong(
        "08_edge",
        "answer",
        "falls back on any error, hiding a bug in the large tier",
        """
          def answer(prompt, large):
              try:
                  return large.generate("gpt-4o-mini", prompt, options=OPTIONS).text, "large"
              except Exception:
                  return backend.generate(MODEL, prompt, options=OPTIONS).text, "local"
          """,
        server=True,
    ),
    # ---- lab 09 ----
    Wrong(
        "09_serving_a_class",
        "p90",
        "calls np.percentile although the exercise is to write it",
        """
          def p90(values):
              return float(np.percentile(values, 90)) if len(values) else None
          """,
        server=True,
    ),
    Wrong(
        "09_serving_a_class",
        "max_students",
        "counts a lucky level after a failing one",
        """
          def max_students(df, target_p90_s):
              ok = df[(df.latency_p90_s <= target_p90_s) & (df.errors == 0) & (df.cancelled == 0)
                      & (df.not_started == 0)]
              return int(ok.concurrency.max()) if len(ok) else 0
          """,
    ),
    Wrong(
        "09_serving_a_class",
        "predict_p50",
        "the mean finishing time, not the median",
        """
          def predict_p50(service_s, students, parallel=1):
              return sum(math.ceil(k / parallel) * service_s for k in range(1, students + 1)) / students
          """,
    ),
    # ---- lab 10 ----
    Wrong(
        "10_structured_output",
        "contact schema",
        "age as any number (3.5 years passes)",
        """
          def contact_schema():
              return {"type": "object",
                      "properties": {"name": {"type": "string", "maxLength": 60},
                                     "email": {"type": "string", "maxLength": 60},
                                     "age": {"type": "number", "minimum": 0, "maximum": 150}},
                      "required": ["name", "email", "age"]}
          """,
        server=True,
    ),
    Wrong(
        "10_structured_output",
        "constrained_greedy",
        "masks only the first token",
        """
          def constrained_greedy(next_scores, allowed, max_steps=8):
              text = ""
              for step in range(max_steps):
                  scores = next_scores(text)
                  if step == 0:
                      scores = {t: s for t, s in scores.items() if any(a.startswith(t) for a in allowed)}
                  if not scores:
                      break
                  text += max(scores, key=scores.get)
                  if text in allowed:
                      break
              return text
          """,
    ),
    Wrong(
        "10_structured_output",
        "tool loop",
        "runs the tools but never sends their results back",
        """
          def answer_with_tools(model, question, tools):
              by_name = {f.__name__: f for f in tools}
              first = client.chat(model=model, messages=[{"role": "user", "content": question}],
                                  tools=tools, options=OPTIONS)
              called = []
              for call in first.message.tool_calls or []:
                  by_name[call.function.name](**call.function.arguments)
                  called.append(call.function.name)
              return first.message.content, called
          """,
        server=True,
        slow=True,
    ),
]


@dataclass
class _Recorded:
    """Stands in for helpers.checks.check while a lab's cells are defined: keeps each test."""

    tests: dict = field(default_factory=dict)

    def __call__(self, name, test, *, hint=""):
        self.tests[name] = (test, hint)
        return True


def _source(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def _code_cells(lab: str):
    return [c for c in labs.read_notebook(SOLUTIONS / f"{lab}.ipynb").cells if c.cell_type == "code"]


def _is_exercise_cell(src: str) -> bool:
    """A solution cell, or a check cell (it calls check(...), not basic_check(...))."""
    return labs.BEGIN_SOLUTION in src or re.search(r"(?<![\w.])check\(", src) is not None


def _pure_setup(src: str, keep: set[str]) -> str:
    """The imports of a setup cell, and the assignments named in `keep` (no server call)."""
    tree = ast.parse(src)
    body = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        or (isinstance(node, ast.Assign) and {t.id for t in node.targets if isinstance(t, ast.Name)} & keep)
    ]
    return ast.unparse(ast.Module(body=body, type_ignores=[]))


_NAMESPACES: dict = {}


def _lab_namespace(lab: str, server: bool) -> tuple[dict, _Recorded]:
    """A namespace holding the lab's setup, exercises and check functions (tests not yet run)."""
    key = (lab, server)
    if key in _NAMESPACES:
        return _NAMESPACES[key]
    cells = _code_cells(lab)
    params = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    setup = cells[cells.index(params) + 1]
    ns: dict = {"__name__": f"lab_{lab}", "display": print}
    exec(compile(_source(params), f"{lab}:parameters", "exec"), ns)
    ns.update({k: v for k, v in CI_PARAMETERS.items() if k in ns})
    src = _source(setup) if server else _pure_setup(_source(setup), PURE_SETUP.get(lab, set()))
    exec(compile(src, f"{lab}:setup", "exec"), ns)
    recorded = _Recorded()
    for cell in cells[cells.index(setup) + 1 :]:
        src = _source(cell)
        if _is_exercise_cell(src) or cell.get("id") in EXTRA_CELLS.get(lab, set()):
            ns["check"] = recorded
            for node in ast.parse(src).body:  # statement by statement: see below
                try:
                    exec(compile(ast.Module(body=[node], type_ignores=[]), f"{lab}:{cell.get('id')}", "exec"), ns)
                except NameError:
                    if server:
                        raise
                    # without a server the setup's model objects do not exist: a pure exercise
                    # skips the other exercises' top-level model calls (defining a function never fails)
    _NAMESPACES[key] = ns, recorded
    return ns, recorded


def _wrong_id(w: Wrong) -> str:
    return f"{w.lab[:2]}-{w.check.split()[0]}-{WRONG.index(w)}"


def _param(w: Wrong):
    return pytest.param(w, id=_wrong_id(w), marks=(pytest.mark.slow,) if w.slow else () if w.server else (unit,))


@pytest.mark.parametrize("wrong", [_param(w) for w in WRONG])
def test_check_accepts_the_solution_and_rejects_a_wrong_answer(wrong, request):
    if wrong.server:
        request.getfixturevalue("ollama_host")  # the session's server (pure exercises never start it)
    ns, recorded = _lab_namespace(wrong.lab, wrong.server)
    assert wrong.check in recorded.tests, f"{wrong.lab} has no check named {wrong.check!r}: {sorted(recorded.tests)}"
    test, _hint = recorded.tests[wrong.check]
    test()  # the solution passes its own check
    defined = compile(textwrap.dedent(wrong.code), f"wrong answer to {wrong.check}", "exec")
    names = [n.name for n in ast.parse(textwrap.dedent(wrong.code)).body if isinstance(n, ast.FunctionDef)]
    saved = {n: ns[n] for n in names}
    try:
        exec(defined, ns)
        with pytest.raises(wrong.raises):
            test()
    finally:
        ns.update(saved)


def _exercise_checks(lab: str) -> list[str]:
    """The names every check(...) call of a lab passes (the setup's model check is not an exercise)."""
    names = []
    for cell in _code_cells(lab)[2:]:
        for node in ast.walk(ast.parse(_source(cell))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "check"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.append(node.args[0].value)
    return names


@unit
@pytest.mark.parametrize("lab", sorted(p.stem for p in SOLUTIONS.glob("*.ipynb")))
def test_every_exercise_has_a_wrong_answer_here(lab):
    covered = {w.check for w in WRONG if w.lab == lab}
    missing = [name for name in _exercise_checks(lab) if name not in covered]
    assert _exercise_checks(lab), f"{lab} has no exercise checks"
    assert not missing, f"{lab}: no wrong answer in tests/test_labs.py for {missing}"


#: helpers functions that implement an exercise (or its core): a lab that imports one lets a learner
#: wrap it instead of writing the exercise. Its checks compare with worked values instead.
REFERENCES = {
    "02_lineup": ["helpers.lineup:pull_what_fits"],
    "03_speed": ["helpers.hardware:decode_ceiling_tps", "helpers.bench:measure_call"],
    "04_cost": [
        "helpers.cost:local_cost_per_mtok",
        "helpers.cost:break_even_queries",
        "helpers.cost:break_even",
        "helpers.cost:LocalAssumptions",
    ],
    "05_quality": [
        "helpers.evals:items_to_separate",
        "helpers.evals:extract_number",
        "helpers.evals:score_number",
        "helpers.quality:paired_counts",
    ],
    "06_routing": [
        "helpers.routing:pgr",
        "helpers.routing:quality_at_share",
        "helpers.routing:cascade",
        "helpers.routing:share_for_quality",
    ],
    "07_hybrid_app": ["helpers.routing:smart_routing", "helpers.routing:pgr"],
    "08_edge": ["helpers.edge:kv_cache_bytes", "helpers.edge:largest_context", "helpers.edge:estimate_memory"],
    "09_serving_a_class": ["helpers.results:percentile", "helpers.loadgen:sizing_advice"],
    "10_structured_output": ["helpers.structured:tool_loop"],
}


def _brought(tree: ast.AST) -> dict[int, str]:
    """id(object) -> how the lab's imports make it reachable (a module brings all it holds)."""
    out: dict[int, str] = {}

    def bring(obj, how):
        out[id(obj)] = how
        if inspect.ismodule(obj):
            for name, value in vars(obj).items():
                out.setdefault(id(value), f"{how}.{name}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "helpers":
                    bring(importlib.import_module(alias.name), alias.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "helpers":
            module = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(module, alias.name, None)
                if obj is None:  # a submodule: `from helpers import edge`
                    obj = importlib.import_module(f"{node.module}.{alias.name}")
                bring(obj, f"{node.module}.{alias.name}")
    return out


@unit
@pytest.mark.parametrize("lab", sorted(REFERENCES))
def test_no_lab_imports_the_reference_of_its_exercises(lab):
    """A learner cannot solve an exercise by wrapping the kit's own implementation of it."""
    source = "\n".join(
        _source(c) for c in labs.read_notebook(REPO / "labs" / f"{lab}.ipynb").cells if c.cell_type == "code"
    )
    brought = _brought(ast.parse(source))
    for ref in REFERENCES[lab]:
        module, name = ref.split(":")
        obj = getattr(importlib.import_module(module), name)
        assert id(obj) not in brought, f"labs/{lab}.ipynb imports {brought[id(obj)]}, which implements an exercise"


def _solution_lines(src: str) -> list[str]:
    """The code lines inside a cell's solution regions, long enough to be the answer itself."""
    lines, inside = [], False
    for line in src.split("\n"):
        text = line.strip()
        if text == labs.BEGIN_SOLUTION:
            inside = True
        elif text == labs.END_SOLUTION:
            inside = False
        elif inside and len(text) >= 20 and not text.startswith("#"):
            lines.append(" ".join(text.split()))
    return lines


@unit
@pytest.mark.parametrize("lab", sorted(p.stem for p in SOLUTIONS.glob("*.ipynb")))
def test_hints_do_not_hold_a_solution_line(lab):
    """Hints guide; a hint that holds a line of the solution hands it over."""
    cells = labs.read_notebook(SOLUTIONS / f"{lab}.ipynb").cells
    answer = [line for c in cells if c.cell_type == "code" for line in _solution_lines(_source(c))]
    hints = [_source(c) for c in cells if c.cell_type == "markdown" and "<summary>Hint" in _source(c)]
    for c in cells:  # the hint= of each check(...) is shown when the answer is wrong
        for node in ast.walk(ast.parse(_source(c))) if c.cell_type == "code" else ():
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "check":
                hints += [k.value.value for k in node.keywords if k.arg == "hint" and isinstance(k.value, ast.Constant)]
    assert hints, f"{lab} has no hints"
    for hint in hints:
        flat = " ".join(hint.split())
        leaked = [line for line in answer if line in flat]
        assert not leaked, f"a hint of solutions/{lab}.ipynb gives the solution away: {leaked}"


def _md(lab: str) -> str:
    return _source(labs.read_notebook(SOLUTIONS / f"{lab}.ipynb").cells[0])


@unit
@pytest.mark.parametrize("lab", sorted(p.stem for p in SOLUTIONS.glob("*.ipynb")))
def test_each_lab_states_its_time(lab):
    first = _md(lab)
    found = re.search(r"\*Time:\* about (\d+) minutes", first)
    assert found, f"the first cell of solutions/{lab}.ipynb says how long the lab takes ('*Time:* about N minutes')"
    assert 20 <= int(found.group(1)) <= 90


def test_stream_clock_spaces_pieces_that_arrive_in_one_burst():
    """A lab check tells "kept the first piece's time" from "kept the last" by the pieces' times; on a
    busy machine they can arrive in one burst, so the clock holds each later piece back."""
    from helpers import labcheck

    class Source:
        def stream(self):
            return iter("abc")

    s = Source()
    with labcheck.stream_clock(s, "stream", spacing_s=0.02) as calls:
        assert list(s.stream()) == ["a", "b", "c"]
    times = [t for t, _ in calls[0].pieces]
    assert all(later - earlier >= 0.02 for earlier, later in zip(times, times[1:]))
