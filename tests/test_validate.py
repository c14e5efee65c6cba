"""Issue 25: one check per input. The same bad chat messages, `format`, whole numbers and model
names are refused the same way by the validator itself, a lesson's backends (embedded, and Ollama's
client on the kit's server), `/api/chat` and `/v1/chat/completions`; and the settings' repr shows
every field but never a key."""

from __future__ import annotations

import re
import subprocess

import httpx
import numpy as np
import pytest

from conftest import BUNDLED, ROOT
from helpers.backends import EmbeddedBackend, OllamaBackend
from helpers.errors import BadInput
from helpers.validate import (
    base_name,
    check_format,
    check_int,
    check_messages,
    check_number,
    openai_messages,
    same_model,
)

HI = {"role": "user", "content": "Hi"}
NO_NAME = {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}

#: (messages, what the refusal says): each shape passes both APIs' body models, so the one
#: validator is what refuses it everywhere
BAD_MESSAGES = [
    ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
    ([NO_NAME, HI], "has no function name"),
    ([{**NO_NAME, "tool_calls": [{"function": {"name": "add", "arguments": "{oops"}}]}, HI], "not JSON"),
    ([{**NO_NAME, "tool_calls": [{"function": {"name": "add", "arguments": [1, 2]}}]}, HI], "must be an object"),
    ([{"role": 5, "content": "hi"}], "role"),  # the APIs' body models refuse it first, also naming 'role'
]


@pytest.fixture(scope="module")
def embedded():
    return EmbeddedBackend()


def _api_chat(host: str, body: dict) -> httpx.Response:
    return httpx.post(f"{host}/api/chat", json={"model": BUNDLED, "stream": False, **body}, timeout=120)


def _v1_chat(host: str, body: dict) -> httpx.Response:
    return httpx.post(f"{host}/v1/chat/completions", json={"model": BUNDLED, "max_tokens": 4, **body}, timeout=120)


@pytest.mark.parametrize("messages,says", BAD_MESSAGES)
def test_every_layer_refuses_the_same_bad_messages(embedded, ollama_host, messages, says):
    refusals = []
    with pytest.raises(BadInput) as direct:
        check_messages(messages)
    assert direct.value.hint, "the refusal names the next step"
    refusals.append(direct.value.message)
    for backend in (embedded, OllamaBackend(ollama_host)):
        with pytest.raises(BadInput) as via_backend:
            backend.chat(BUNDLED, messages, options={"num_predict": 4})
        refusals.append(via_backend.value.message)
    r = _api_chat(ollama_host, {"messages": messages})
    assert r.status_code == 400, r.text
    refusals.append(r.json()["error"])
    r = _v1_chat(ollama_host, {"messages": messages})
    assert r.status_code == 400, r.text
    refusals.append(r.json()["error"]["message"])
    assert all(says in text for text in refusals), refusals


def test_images_are_refused_by_every_layer_for_a_text_model(embedded, ollama_host):
    """Ollama's `images` and OpenAI's image part are one input: a text-only model refuses both."""
    image = "iVBORw0KGgo="
    with_image = [{"role": "user", "content": "What is this?", "images": [image]}]
    part = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
    ]
    assert check_messages([{"role": "user", "content": part}]) == with_image
    with pytest.raises(BadInput, match="does not support images"):
        embedded.chat(BUNDLED, with_image)
    r = _api_chat(ollama_host, {"messages": with_image})
    assert r.status_code == 400 and "does not support images" in r.json()["error"]
    r = _v1_chat(ollama_host, {"messages": [{"role": "user", "content": part}]})
    assert r.status_code == 400 and "does not support images" in r.json()["error"]["message"]


def test_the_backends_also_ask_for_some_user_text(embedded):
    """Ollama answers a conversation without user text; a lesson's call with none is a slip."""
    assert check_messages([{"role": "system", "content": "Be brief."}]) == [{"role": "system", "content": "Be brief."}]
    for messages in (
        [{"role": "system", "content": "Be brief."}],
        [{"role": "user", "content": "  "}],
        [{"role": "user"}],
    ):
        with pytest.raises(BadInput, match="no user message has any text"):
            embedded.chat(BUNDLED, messages)


def test_messages_in_either_shape_become_one_shape_and_go_back_to_openais():
    openai_turn = [
        {"role": "user", "content": [{"type": "text", "text": "3 plus 1?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 3}'}}],
        },
        {"role": "tool", "name": "add", "tool_call_id": "c1", "content": "4"},
    ]
    ollama_turn = [
        {"role": "user", "content": "3 plus 1?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 3}}}]},
        {"role": "tool", "tool_name": "add", "tool_call_id": "c1", "content": "4"},
    ]
    assert check_messages(openai_turn) == check_messages(ollama_turn)
    back = openai_messages(check_messages(ollama_turn))
    assert back[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 3}'}
    assert back[2] == {"role": "tool", "content": "4", "name": "add", "tool_call_id": "c1"}


@pytest.mark.parametrize("fmt", ["yaml", "JSON", True])
def test_every_layer_refuses_the_same_bad_format(embedded, ollama_host, fmt):
    with pytest.raises(BadInput, match="format must be"):
        check_format(fmt)
    with pytest.raises(BadInput, match="format must be"):
        embedded.complete(BUNDLED, [HI], format=fmt)
    r = _api_chat(ollama_host, {"messages": [HI], "format": fmt})
    assert r.status_code == 400, r.text
    if isinstance(fmt, str):  # a bool is refused by the body model first
        assert "format must be" in r.json()["error"]


def test_a_schema_too_big_for_a_grammar_is_refused_the_same_on_every_route(embedded, ollama_host):
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 10**9}}}
    with pytest.raises(BadInput, match="out of range"):
        embedded.complete(BUNDLED, [HI], format=schema)
    r = _api_chat(ollama_host, {"messages": [HI], "format": schema})
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = _v1_chat(ollama_host, {"messages": [HI], "response_format": fmt})
    assert r.status_code == 400 and "out of range" in r.json()["error"]["message"]


def test_formats_that_mean_no_constraint_or_any_json():
    assert [check_format(f) for f in (None, "", "json")] == [None, None, "json"]


@pytest.mark.parametrize("value", [True, 3.0, "3", np.float64(3)])
def test_whole_numbers_are_checked_by_one_function_everywhere(value):
    from helpers.concurrency import map_concurrent
    from helpers.cost import million_queries_table
    from helpers.edge import kv_cache_bytes
    from helpers.evals import arithmetic_tasks

    calls = [
        lambda: check_int("n", value, 0, None, "e.g. 3"),
        lambda: kv_cache_bytes(value, 2048, 4, 64),
        lambda: arithmetic_tasks(value),
        lambda: map_concurrent(str, [1], concurrency=value, progress=False),
        lambda: million_queries_table(["gpt-4o-mini"], 100, 100, n_queries=value),
    ]
    for call in calls:
        with pytest.raises(BadInput, match="must be a whole number"):
            call()
    assert check_int("n", np.int32(3), 1, 3, "e.g. 3") == 3 and type(check_int("n", np.int32(3), 1, 3, "")) is int


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), -1.0, "2", None])
def test_positive_numbers_are_checked_by_one_function_everywhere(value):
    from helpers.cost import LocalAssumptions, local_cost_per_mtok
    from helpers.edge import kv_cache_bytes, weights_bytes

    calls = [
        lambda: check_number("x", value, 0, None, "e.g. 2", above=True),
        lambda: weights_bytes(value, 4.0),
        lambda: kv_cache_bytes(1, 1, 1, 1, bytes_per_element=value),
        lambda: local_cost_per_mtok(value, LocalAssumptions(300.0, 0.3, 2000.0, 3.0, 0.5)),
    ]
    for call in calls:
        with pytest.raises(BadInput, match="must be a number"):
            call()


def test_model_names_have_one_canonical_form():
    from helpers.registry import card, resolve

    assert base_name(" phi3:latest ") == "phi3" and base_name("smollm2:135m") == "smollm2:135m"
    assert same_model("llama2", "llama2:latest") and not same_model("llama2:7b", "llama2:13b")
    assert card(f"{BUNDLED}:latest") is card(BUNDLED) is not None
    assert resolve("llama2", ["llama2:latest"]) == "llama2:latest" and resolve("phi3:latest", ["phi3"]) == "phi3"


def test_no_other_copy_of_the_latest_rule():
    """`:latest` is dropped in one place: a new copy elsewhere would drift from it."""
    found = subprocess.run(
        ["git", "grep", "-n", 'removesuffix(":latest")', "--", "helpers"], cwd=ROOT, capture_output=True, text=True
    ).stdout.splitlines()
    assert [line.split(":", 1)[0] for line in found] == ["helpers/validate.py"], found


# ----------------------------------------------------------------------------- settings
def test_settings_repr_lists_every_field_and_never_a_key(monkeypatch, tmp_path):
    from helpers.settings import Settings, get_settings

    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    secrets = {"OPENAI_API_KEY": "sk-one-1234", "OLLAMA_API_KEY": "ol-two-5678", "SLM_SERVE_API_KEY": "sv-three-9"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    s = get_settings()
    shown = repr(s)
    assert re.findall(r"(\w+)=", shown) == list(Settings.model_fields), shown
    assert not any(value in shown or value in str(s) for value in secrets.values())
    assert shown.count("=<set>") == 3 and s.has_key
    assert s.openai_api_key.get_secret_value() == "sk-one-1234"


def test_settings_read_a_dotenv_below_the_environment(monkeypatch, tmp_path):
    from helpers.settings import get_settings

    (tmp_path / ".env").write_text("SLM_TIMEOUT=7\nSLM_LOADTEST_HOSTS=a, b,\nSLM_JUDGE_MODEL=judge:1b\nOTHER=x\n")
    (tmp_path / "lesson").mkdir()
    monkeypatch.chdir(tmp_path / "lesson")  # a parent's .env counts
    for name in ("SLM_TIMEOUT", "SLM_LOADTEST_HOSTS", "SLM_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    s = get_settings()
    assert (s.timeout, s.loadtest_hosts, s.judge_model) == (7.0, ("a", "b"), "judge:1b")
    monkeypatch.setenv("SLM_TIMEOUT", "9")
    assert get_settings().timeout == 9.0, "the environment wins over .env"


@pytest.mark.parametrize(
    "name,value",
    [
        ("SLM_TIMEOUT", "soon"),
        ("SLM_TIMEOUT", "-1"),
        ("SLM_THREADS", "two"),
        ("OLLAMA_NUM_PARALLEL", "99"),
        ("SLM_SERVE_READ_TIMEOUT", "nan"),
        ("OLLAMA_HOST", "ftp://x"),
    ],
)
def test_a_bad_setting_names_its_variable_and_the_fix(monkeypatch, tmp_path, name, value):
    from helpers.settings import get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(BadInput) as info:
        get_settings()
    assert name in str(info.value) and info.value.hint


def test_empty_settings_mean_their_defaults(monkeypatch, tmp_path):
    from helpers.settings import DEFAULT_LARGE_MODEL, get_settings

    monkeypatch.chdir(tmp_path)
    for name in ("SLM_TIMEOUT", "SLM_THREADS", "OLLAMA_NUM_PARALLEL", "SLM_LARGE_MODEL", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "")
    s = get_settings()
    assert (s.timeout, s.threads, s.num_parallel, s.large_model, s.openai_api_key) == (
        120.0,
        0,
        8,  # the measured default (README, "Performance")
        DEFAULT_LARGE_MODEL,
        None,
    )
