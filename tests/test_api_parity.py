"""Issue 15: what clients nobody here wrote expect of `slm-course serve`, through those clients.

Every case goes through the official `ollama` and `openai` clients (and one LangChain round trip)
against the session's real server: structured outputs from a JSON schema, tools rendered through
the model's template and parsed back into tool calls, the second turn of an agent loop, content
parts, load/unload with an empty request, numbers in `model_info`, and refusals (400) for what
the models cannot do (thinking, insert, logprobs) instead of silently ignoring it.
"""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from conftest import BUNDLED
from helpers.errors import (
    BackendUnavailable,
    BadInput,
    Cancelled,
    CourseError,
    MissingKey,
    ModelNotFound,
    error_for_status,
)
from helpers.serving.engine import bounded_schema, parse_tool_calls

TOOLS_MODEL = "qwen2.5-coder:0.5b"  # ChatML template with a tools section (`slm-course pull`)
DET = {"temperature": 0, "seed": 42, "num_predict": 120}

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "country", "population"],
}
CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Nairobi", "Toronto", "Sydney", "Mumbai", "Berlin"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city name"}},
            "required": ["city"],
        },
    },
}
ASK_WEATHER = "What is the weather in Paris right now? Use the tool."


@pytest.fixture(scope="module")
def tools_model(client):
    names = [m.model for m in client.list().models]
    if TOOLS_MODEL not in names:
        pytest.skip(f"{TOOLS_MODEL} is not installed: `slm-course pull {TOOLS_MODEL}`")
    return TOOLS_MODEL


# The first turn of the weather question, asked once per API and read by the tests of both the call
# and the agent loop's second turn (asked once: each test asks its own follow-up)
@pytest.fixture(scope="module")
def ollama_weather_call(client, tools_model):
    return client.chat(
        model=tools_model, tools=[WEATHER_TOOL], options=DET, messages=[{"role": "user", "content": ASK_WEATHER}]
    )


@pytest.fixture(scope="module")
def openai_weather_call(oa, tools_model):
    return oa.chat.completions.create(
        model=tools_model,
        temperature=0,
        seed=42,
        max_tokens=120,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": ASK_WEATHER}],
    )


# ----------------------------------------------------------------- 1. JSON schema is enforced
def test_schema_with_required_keys_is_valid_10_of_10_on_smollm2(client):
    valid = 0
    for city in CITIES:
        r = client.chat(
            model=BUNDLED,
            format=CITY,
            options=DET,
            messages=[{"role": "user", "content": f"Give the city, country and population of {city} as JSON."}],
        )
        try:
            jsonschema.validate(json.loads(r.message.content), CITY)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    assert valid == 10


def test_generate_format_schema_types_are_enforced(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
    }
    r = client.generate(model=BUNDLED, prompt="What is 2+3? Answer in JSON.", format=schema, options=DET)
    jsonschema.validate(json.loads(r.response), schema)


def test_openai_json_schema_response_format_is_enforced(oa):
    r = oa.chat.completions.create(
        model=BUNDLED,
        temperature=0,
        seed=42,
        max_tokens=120,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), CITY)


def test_openai_json_schema_without_schema_is_400(oa):
    with pytest.raises(openai.BadRequestError, match="needs a schema"):
        oa.chat.completions.create(
            model=BUNDLED,
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x"}},
        )


@pytest.mark.no_server
def test_bounded_schema_only_narrows_strings():
    out = bounded_schema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "string"},
                "b": {"type": "string", "maxLength": 5},
                "c": {"type": "string", "enum": ["x", "y"]},
                "d": {"type": "array", "items": {"type": "string"}},
            },
        }
    )
    props = out["properties"]
    assert props["a"]["maxLength"] == 64 and props["b"]["maxLength"] == 5
    assert "maxLength" not in props["c"] and props["d"]["items"]["maxLength"] == 64


# ----------------------------------------------------------------- 2. tools reach the model
def test_show_capabilities_say_tools_only_where_the_template_has_them(client, tools_model):
    assert "tools" in client.show(tools_model).capabilities
    assert "tools" not in client.show(BUNDLED).capabilities
    assert "completion" in client.show(BUNDLED).capabilities


def test_ollama_chat_returns_tool_calls(ollama_weather_call):
    calls = ollama_weather_call.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments.get("city", "").lower() == "paris"


def test_ollama_streamed_chat_returns_tool_calls(client, tools_model):
    calls = []
    for part in client.chat(
        model=tools_model,
        tools=[WEATHER_TOOL],
        options=DET,
        stream=True,
        messages=[{"role": "user", "content": ASK_WEATHER}],
    ):
        calls += part.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]


def test_ollama_python_function_as_a_tool(client, tools_model):
    def add_two_numbers(a: int, b: int) -> int:
        """Add two numbers.

        Args:
          a: The first number
          b: The second number
        """
        return a + b

    r = client.chat(
        model=tools_model,
        tools=[add_two_numbers],
        options=DET,
        messages=[{"role": "user", "content": "What is 17 plus 25? Use the tool."}],
    )
    call = r.message.tool_calls[0]
    assert call.function.name == "add_two_numbers"
    assert add_two_numbers(**call.function.arguments) == 42


def test_openai_tool_calls_and_finish_reason(openai_weather_call):
    choice = openai_weather_call.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"].lower() == "paris"


def test_openai_streamed_tool_calls(oa, tools_model):
    names, reasons = [], []
    for chunk in oa.chat.completions.create(
        model=tools_model,
        temperature=0,
        seed=42,
        max_tokens=120,
        tools=[WEATHER_TOOL],
        stream=True,
        messages=[{"role": "user", "content": ASK_WEATHER}],
    ):
        for c in chunk.choices:
            names += [t.function.name for t in c.delta.tool_calls or []]
            reasons.append(c.finish_reason)
    assert names == ["get_weather"] and "tool_calls" in reasons


def test_tools_on_a_model_without_them_is_400_in_both_apis(client, oa):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=BUNDLED, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400 and "does not support tools" in info.value.error
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        oa.chat.completions.create(model=BUNDLED, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "hi"}])


@pytest.mark.no_server
def test_parse_tool_calls_reads_qwen_blocks():
    text = 'ok\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    assert parse_tool_calls(text) == ("ok", [{"function": {"index": 0, "name": "f", "arguments": {"x": 1}}}])
    assert parse_tool_calls("<tool_call>{not json}</tool_call>")[1] == []
    assert parse_tool_calls("no call here") == ("no call here", [])


# ----------------------------------------------------------------- 3. the agent loop's second turn
def test_openai_second_turn_with_null_content_and_tool_result(oa, tools_model, openai_weather_call):
    messages = [{"role": "user", "content": ASK_WEATHER}]
    msg = openai_weather_call.choices[0].message
    assert msg.tool_calls
    messages.append({"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in msg.tool_calls]})
    messages.append(
        {
            "role": "tool",
            "tool_call_id": msg.tool_calls[0].id,
            "content": json.dumps({"city": "Paris", "temperature_c": 21, "sky": "sunny"}),
        }
    )
    # the later turns are sampled, not seeded, so the server reuses the cached prefix (a reproducible
    # request takes only its head from the cache); a few tokens: only acceptance and prompt size count
    second = oa.chat.completions.create(
        model=tools_model, temperature=0.8, max_tokens=8, tools=[WEATHER_TOOL], messages=messages
    )
    # accepted (a 400 before), and the tool's result reached the model's prompt: a longer result
    # is that many more prompt tokens. (What the model then says is its own: Qwen2.5-Coder-0.5B
    # often repeats its call, a small model's habit, reported as it is.)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    messages[-1]["content"] = json.dumps(
        {"city": "Paris", "temperature_c": 21, "sky": "sunny", "note": "a longer tool result " * 10}
    )
    longer = oa.chat.completions.create(
        model=tools_model, temperature=0.8, max_tokens=1, tools=[WEATHER_TOOL], messages=messages
    )
    assert longer.usage.prompt_tokens >= second.usage.prompt_tokens + 30


def test_ollama_second_turn_with_tool_result(client, tools_model, ollama_weather_call):
    messages = [{"role": "user", "content": ASK_WEATHER}]
    first = ollama_weather_call
    assert first.message.tool_calls
    messages.append(first.message)
    messages.append(
        {
            "role": "tool",
            "tool_name": "get_weather",
            "content": json.dumps({"city": "Paris", "temperature_c": 21, "sky": "sunny"}),
        }
    )
    # the later turns are sampled, not seeded, so the server reuses the cached prefix (a reproducible
    # request takes only its head from the cache); a few tokens: only acceptance and prompt size count
    sampled = {"temperature": 0.8, "num_predict": 8}
    second = client.chat(model=tools_model, tools=[WEATHER_TOOL], options=sampled, messages=messages)
    assert second.done
    # the tool's result reached the model's prompt: a longer result is that many more tokens
    messages[-1]["content"] += " " + "a longer tool result " * 10
    longer = client.chat(
        model=tools_model, tools=[WEATHER_TOOL], options={**sampled, "num_predict": 1}, messages=messages
    )
    assert longer.prompt_eval_count >= second.prompt_eval_count + 30


def test_tool_role_accepted_on_a_model_without_tools(client, oa):
    """A tool result is just a message: both APIs take it even when no tools are sent."""
    history = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    assert client.chat(model=BUNDLED, options={**DET, "num_predict": 4}, messages=history).done
    assert (
        oa.chat.completions.create(
            model=BUNDLED,
            max_tokens=4,
            messages=[{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "42"}],
        )
        .choices[0]
        .message.content
        is not None
    )


# ----------------------------------------------------------------- 4. content parts on /v1
def test_openai_content_parts_mean_the_same_as_a_string(oa):
    def ask(content):
        return oa.chat.completions.create(
            model=BUNDLED, temperature=0, seed=42, max_tokens=16, messages=[{"role": "user", "content": content}]
        )

    parts = ask([{"type": "text", "text": "Name a colour."}, {"type": "text", "text": " One word."}])
    plain = ask("Name a colour. One word.")
    assert parts.choices[0].message.content == plain.choices[0].message.content != ""


def test_openai_image_part_is_a_clear_400(oa):
    with pytest.raises(openai.BadRequestError, match="read text only"):
        oa.chat.completions.create(
            model=BUNDLED,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ],
        )


# ----------------------------------------------------------------- 5. load and unload
def _loaded(client) -> bool:
    return any(m.model == BUNDLED for m in client.ps().models)


def test_empty_chat_loads_and_keep_alive_zero_unloads(client):
    r = client.chat(model=BUNDLED, messages=[])
    assert r.done and r.done_reason == "load" and _loaded(client)
    r = client.chat(model=BUNDLED, messages=[], keep_alive=0)
    assert r.done_reason == "unload" and not _loaded(client)


def test_generate_without_prompt_loads_and_unloads(client):
    assert client.generate(model=BUNDLED).done_reason == "load" and _loaded(client)
    assert client.generate(model=BUNDLED, keep_alive=0).done_reason == "unload"
    assert not _loaded(client)


def test_unload_of_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="mistral:7b", messages=[], keep_alive=0)
    assert info.value.status_code == 404


# ----------------------------------------------------------------- 6. model_info numbers
def test_show_model_info_numbers_are_numbers(client):
    info = client.show(BUNDLED).modelinfo
    assert isinstance(info["llama.attention.layer_norm_rms_epsilon"], float)
    assert info["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert info["llama.block_count"] == 30 and info["general.architecture"] == "llama"


@pytest.mark.no_server
def test_metadata_values_become_numbers_only_when_they_are_numbers():
    from helpers.serving.server import _metadata_value

    assert [_metadata_value(v) for v in ("30", "-2", "0.000010", "1e-06", "llama", "1.2.3", "")] == [
        30,
        -2,
        1e-05,
        1e-06,
        "llama",
        "1.2.3",
        "",
    ]


# ----------------------------------------------------------------- refused, never ignored
def test_think_is_400_for_a_model_without_thinking(client, oa):
    with pytest.raises(ollama.ResponseError, match="does not support thinking"):
        client.chat(model=BUNDLED, think=True, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError, match="does not support thinking"):
        client.generate(model=BUNDLED, think=True, prompt="hi")
    assert client.chat(
        model=BUNDLED, think=False, options={"num_predict": 2}, messages=[{"role": "user", "content": "hi"}]
    ).done
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        oa.chat.completions.create(model=BUNDLED, reasoning_effort="low", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError) as info:  # an unknown model is still a 404 first
        client.chat(model="mistral:7b", think=True, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404


def test_suffix_is_400_for_a_model_without_insert(client, oa):
    with pytest.raises(ollama.ResponseError, match="does not support insert"):
        client.generate(model=BUNDLED, prompt="def add(a, b):", suffix="    return c")
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        oa.completions.create(model=BUNDLED, prompt="def add(a, b):", suffix="    return c")


def test_logprobs_are_refused_not_ignored(oa):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        oa.chat.completions.create(
            model=BUNDLED, logprobs=True, top_logprobs=2, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        oa.completions.create(model=BUNDLED, prompt="hi", logprobs=2)


# ----------------------------------------------------------------- LangChain round trip
def test_langchain_bind_tools_and_structured_output(ollama_host, tools_model):
    langchain_ollama = pytest.importorskip("langchain_ollama")
    from pydantic import BaseModel

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}"

    llm = langchain_ollama.ChatOllama(model=tools_model, base_url=ollama_host, temperature=0, seed=42, num_predict=120)
    reply = llm.bind_tools([get_weather]).invoke(ASK_WEATHER)
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    assert reply.tool_calls[0]["args"]["city"].lower() == "paris"

    class City(BaseModel):
        city: str
        country: str
        population: int

    small = langchain_ollama.ChatOllama(model=BUNDLED, base_url=ollama_host, temperature=0, seed=42, num_predict=120)
    out = small.with_structured_output(City, method="json_schema").invoke(
        "Give the city, country and population of Tokyo."
    )
    assert isinstance(out, City) and out.city


# ----------------------------------------------------------------- issue 17: one status mapping
@pytest.mark.no_server
def test_error_classes_carry_their_http_status_both_ways():
    assert (
        CourseError.status,
        BadInput.status,
        ModelNotFound.status,
        MissingKey.status,
        Cancelled.status,
        BackendUnavailable.status,
    ) == (400, 400, 404, 401, 503, 503)
    for cls in (BadInput, ModelNotFound, MissingKey, BackendUnavailable):
        assert error_for_status(cls.status) is cls
