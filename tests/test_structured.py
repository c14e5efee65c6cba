"""helpers.structured (lesson 10): the eval set, the scorers, and the tool loop against the server."""

from __future__ import annotations

import doctest
import inspect

import jsonschema
import ollama
import pytest

import helpers.structured as structured
from conftest import BUNDLED
from helpers.structured import (
    MODES,
    TOOLS,
    ExtractTask,
    Record,
    cut_off_lines,
    extract_tasks,
    format_for,
    parse_json,
    pick_pair,
    result_value,
    run_extraction,
    score,
    summary,
    tool_loop,
    tool_tasks,
)

TOOLS_MODEL = "qwen2.5-coder:0.5b"
DET = {"temperature": 0, "seed": 42, "num_predict": 48}


@pytest.mark.no_server
def test_doctests():
    assert doctest.testmod(structured).failed == 0


@pytest.mark.no_server
def test_every_answer_in_the_eval_set_matches_its_own_schema():
    tasks = extract_tasks()
    assert len(tasks) == 12 and len({t.id for t in tasks}) == 12
    for t in tasks:
        jsonschema.validate(t.answer, t.schema)
        assert set(t.answer) == set(t.schema["required"])
        assert score(__import__("json").dumps(t.answer), t).field_accuracy == 1.0


@pytest.mark.no_server
def test_every_tool_task_names_a_tool_and_arguments_it_takes():
    tasks = tool_tasks()
    assert len(tasks) == 6
    for t in tasks:
        signature = inspect.signature(TOOLS[t.tool])
        signature.bind(**t.arguments)  # raises if an argument is missing or unknown
        assert result_value(TOOLS[t.tool](**t.arguments))


@pytest.mark.no_server
def test_scores_separate_shape_from_values():
    t = extract_tasks()[0]  # Maria Lopez, 34, Madrid
    assert score('{"name": "maria lopez", "age": 34, "city": "MADRID"}', t).field_accuracy == 1.0
    wrong_type = score('{"name": "Maria Lopez", "age": "34", "city": "Madrid"}', t)
    assert wrong_type.valid_json and not wrong_type.schema_valid
    assert wrong_type.field_accuracy == pytest.approx(2 / 3)
    assert score('```json\n{"name": "x", "age": 1, "city": "y"}\n```', t).schema_valid
    assert not score("no JSON at all", t).valid_json
    assert parse_json("[1, 2]") == [1, 2] and score("[1, 2]", t).field_accuracy == 0.0


@pytest.mark.no_server
def test_format_for_each_mode():
    t = ExtractTask("x", "", {"type": "object"}, {"a": 1})
    assert [format_for(m, t) for m in MODES] == [None, "json", {"type": "object"}]
    with pytest.raises(ValueError, match="unknown mode"):
        format_for("yaml", t)


@pytest.mark.no_server
def test_summary_leaves_cut_off_replies_out_and_lists_them():
    import math

    t = extract_tasks(1)[0]
    whole = Record("m", "free text", t.id, True, True, 1.0, 30, 10.0, '{"name": "Maria Lopez"}')
    cut = Record("m", "free text", t.id, False, False, 0.0, 96, 12.0, '{"name": "Maria Lo', cut_off=True)
    row = summary([whole, cut]).loc[("m", "free text")]
    assert (row.n, row.cut_off, row.schema_valid, row.field_accuracy) == (1, 1, 1.0, 1.0), (
        "the cut-off reply is not a failure"
    )
    assert row.tokens_per_s == 11.0, "speed counts every reply"
    only_cut = summary([cut]).loc[("m", "free text")]
    assert only_cut.n == 0 and math.isnan(only_cut.schema_valid), "nothing scored: NaN, not 0%"
    assert (
        cut_off_lines([whole, cut]) == [cut_off_lines([cut])[0]]
        and "cut off after 96 tokens" in cut_off_lines([cut])[0]
    )


# ----------------------------------------------------------------------------- against the server
@pytest.fixture(scope="module")
def client(ollama_host):
    return ollama.Client(host=ollama_host, timeout=180)


def test_schema_mode_is_always_schema_valid_on_the_small_model(client):
    records = run_extraction(client, BUNDLED, extract_tasks(6), "format=schema", options=DET)
    assert all(r.schema_valid for r in records), [r.reply for r in records if not r.schema_valid]
    table = summary(records)
    assert table.loc[(BUNDLED, "format=schema"), "schema_valid"] == 1.0
    assert table.loc[(BUNDLED, "format=schema"), "tokens_per_s"] > 0


@pytest.mark.slow  # `make check` leaves it out; `make test` runs it
def test_tool_loop_runs_the_tool_and_reads_the_answer(client):
    if TOOLS_MODEL not in [m.model for m in client.list().models]:
        pytest.skip(f"{TOOLS_MODEL} is not installed: `slm-course pull {TOOLS_MODEL}`")
    task = next(t for t in tool_tasks() if t.tool == "add")
    run = tool_loop(client, TOOLS_MODEL, task, options=DET)
    assert run.called == "add" and run.right_call and run.result == {"sum": 6912}
    assert run.used_result and run.success
    assert run.output_tokens > 0  # both calls' eval_count


def test_tool_loop_on_a_model_without_tools_reports_the_refusal(client):
    run = tool_loop(client, BUNDLED, tool_tasks()[0], options=DET)
    assert not run.success and "does not support tools" in run.error


def test_pick_pair_takes_the_pair_of_lessons_05_to_07(ollama_host):
    from helpers import connect
    from helpers.quality import offline_pair

    backend = connect(fallback=False, verbose=False)
    pair = offline_pair(backend)
    if pair is None:
        pytest.skip("no offline pair installed: `slm-course pull qwen2.5-coder:0.5b`")
    assert pick_pair(backend, verbose=False) == pair, "the measured offline pair, as choose_pair picks it"
    assert pick_pair(backend, BUNDLED, pair[0], verbose=False) == (BUNDLED, pair[0]), "asked-for names win"
