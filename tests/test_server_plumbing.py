"""The pieces under `slm-course serve`, each on its own: keep_alive, JSON checks, bodies, the auth
guard on a tiny app, the chunk bridge, the disconnect watcher and both stream encoders.

No model runs here. The chunks fed to the encoders are made by hand, because these tests check
the framing (one JSON line per chunk, an error as the last line, tool calls held back, `[DONE]`);
test_server.py and test_api_parity.py check the same routes on the bundled model's real answers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from helpers.errors import BadInput, ModelNotFound
from helpers.serving.engine import DEFAULT_KEEP_ALIVE_S, Chunk
from helpers.serving.ollama_api import ChatBody, GenerateBody, ndjson
from helpers.serving.openai_api import sse
from helpers.serving.plumbing import (
    DRAIN_BODY_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
    MAX_KEEP_ALIVE_S,
    SSE_DONE,
    ApiError,
    Inflight,
    ServerState,
    authorized,
    body_of,
    bridge,
    check_json,
    decode,
    guard,
    http_error,
    ndjson_line,
    parse_keep_alive,
    read_body,
    sse_event,
    too_large,
    until_done_or_gone,
)

pytestmark = pytest.mark.no_server  # unit tests: no model server needed


# ----------------------------------------------------------------------------- keep_alive
@pytest.mark.parametrize(
    "value, seconds",
    [
        (None, DEFAULT_KEEP_ALIVE_S),
        ("", DEFAULT_KEEP_ALIVE_S),
        (0, 0.0),
        (90, 90.0),
        (2.5, 2.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        (" 10 ", 10.0),
        ("1.5m", 90.0),
        (-1, MAX_KEEP_ALIVE_S),
        ("-5m", MAX_KEEP_ALIVE_S),
        ("8760h", MAX_KEEP_ALIVE_S),
    ],
)
def test_keep_alive_reads_ollamas_durations(value, seconds):
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value, says",
    [
        (True, "number or a duration"),
        ("5x", "not a duration"),
        ("m5", "not a duration"),
        ("8761h", "out of range"),
        (float("inf"), "out of range"),
        (float("nan"), "out of range"),
    ],
)
def test_keep_alive_refuses_what_is_not_a_duration(value, says):
    with pytest.raises(BadInput) as info:
        parse_keep_alive(value)
    assert says in info.value.message and info.value.hint  # a 400 that names the next step


# ----------------------------------------------------------------------------- JSON checks
def nested(depth: int) -> dict:
    """A request whose 'format' makes the whole body `depth` levels deep."""
    value: list = []
    for _ in range(depth - 2):
        value = [value]
    return {"model": "m", "format": value}


def test_json_depth_is_bounded_and_the_field_named():
    check_json(nested(MAX_JSON_DEPTH))
    with pytest.raises(ApiError) as info:
        check_json(nested(MAX_JSON_DEPTH + 1))
    assert info.value.status == 400 and f"more than {MAX_JSON_DEPTH} levels" in info.value.message
    assert "'format'" in info.value.message
    check_json(nested(10), max_depth=10)
    with pytest.raises(ApiError):
        check_json(nested(11), max_depth=10)


def test_json_value_count_is_bounded():
    check_json({"input": ["x"] * (MAX_JSON_VALUES - 1)})
    with pytest.raises(ApiError) as info:
        check_json({"input": ["x"] * MAX_JSON_VALUES})
    assert "'input'" in info.value.message and f"{MAX_JSON_VALUES:,}" in info.value.message


def test_a_lone_surrogate_is_refused_and_a_pair_is_text():
    check_json({"prompt": "smile \U0001f600"})  # an emoji: JSON's \ud83d\ude00, both halves
    for data in (
        {"prompt": "a \ud800 b"},
        {"messages": [{"content": "\udfff"}]},
        {"\ud800": 1},
        {"stop": ["ok", "\udc00"]},
    ):
        with pytest.raises(ApiError) as info:
            check_json(data)
        assert "lone surrogate" in info.value.message
    # the raw body shows no surrogate at all: the strings are not searched (the fast path)
    check_json({"prompt": "a \ud800 b"}, raw=b'{"prompt": "plain"}')


@pytest.mark.parametrize(
    "raw, says",
    [
        (b"{bad", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"model": "m", "options": {"x": 1e999}}', "finite"),
        (b'{"model": "m", "x": NaN}', "finite"),
        (b'{"prompt": "hi"}', "model is required"),
        (b'{"model": ""}', "model is required"),
        (b'{"model": 3}', "invalid request: model:"),
        (b'{"model": "m", "stream": "yes"}', "stream:"),
        (b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "deep"),
        (b"[" * (MAX_JSON_VALUES + 1), "more arrays and objects"),
    ],
)
def test_decode_refuses_bad_bodies_with_a_400(raw, says):
    with pytest.raises(ApiError) as info:
        decode(raw, GenerateBody)
    assert info.value.status == 400 and says in info.value.message, info.value.message


def test_decode_gives_the_model_and_ignores_unknown_fields():
    body = decode(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "future": 1}', ChatBody)
    assert body.model == "m" and body.messages[0].content == "hi" and body.stream is True


def test_too_large_closes_the_connection_only_past_the_drain_size():
    assert too_large(100, 10).status == 413 and not too_large(100, 10).close
    assert too_large(DRAIN_BODY_BYTES + 1, 10).close
    assert "more than the server's limit of 10 bytes" in too_large(None, 10).message


# ----------------------------------------------------------------------------- body reading
def fake_request(receive) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/api/chat", "headers": []}, receive)


def test_a_body_that_does_not_arrive_in_time_is_a_408():
    async def slow_receive():
        await asyncio.sleep(30)

    async def main():
        t0 = time.monotonic()
        with pytest.raises(ApiError) as info:
            await read_body(fake_request(slow_receive), 1000, 0.2)
        return info.value, time.monotonic() - t0

    err, took = asyncio.run(main())
    assert err.status == 408 and err.close and "within 0.2 s" in err.message and took < 5


def test_a_body_is_counted_as_it_arrives():
    pieces = [{"type": "http.request", "body": b"x" * 40, "more_body": True}] * 3

    async def receive():
        return pieces.pop() if pieces else {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(ApiError) as info:
        asyncio.run(read_body(fake_request(receive), 100, 5))
    assert info.value.status == 413 and not info.value.close  # the rest may be drained
    pieces[:] = [{"type": "http.request", "body": b"ab", "more_body": True}]
    assert asyncio.run(read_body(fake_request(receive), 100, 5)) == b"ab"


# ----------------------------------------------------------------------------- the guard on a tiny app
def tiny_app(api_key: str | None = None, max_body_bytes: int = 1000) -> FastAPI:
    """An app with the kit's guard and error handler around routes that fail on purpose."""
    app = FastAPI()
    app.state.server = ServerState(engine=None, api_key=api_key, max_body_bytes=max_body_bytes)
    app.add_middleware(guard)
    app.add_exception_handler(StarletteHTTPException, http_error)

    @app.get("/")
    async def root():
        return "open"

    for prefix in ("/api", "/v1"):

        @app.post(prefix + "/echo")
        async def echo(request: Request):
            return (await body_of(request, GenerateBody)).model_dump(include={"model", "prompt"})

        @app.get(prefix + "/bad")
        async def bad():
            raise ApiError(400, "bad on purpose")

        @app.get(prefix + "/missing")
        async def missing():
            raise ModelNotFound("no such model", "pull it")

        @app.get(prefix + "/bug")
        async def bug():
            raise RuntimeError("a bug on purpose")

    return app


def test_the_guard_asks_for_the_key_in_each_apis_shape():
    with TestClient(tiny_app(api_key="s3cret")) as tc:
        assert tc.get("/").status_code == 200  # the liveness check stays open, as Ollama's
        r = tc.get("/api/bad")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
        r = tc.get("/v1/bad", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = tc.get("/api/bad", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 400 and r.json() == {"error": "bad on purpose"}
        r = tc.get("/api/bad", headers={"Authorization": "Bearer s3cr\xe9t".encode("latin-1")})
        assert r.status_code == 401  # any byte in a header is compared, never a crash


def test_authorized_compares_the_whole_bearer():
    assert authorized("", None) and authorized("anything", None)
    assert authorized("Bearer k3y", "k3y")
    assert not any(authorized(h, "k3y") for h in ("", "k3y", "Bearer k3", "Bearer k3y ", "bearer k3y"))
    assert authorized("Bearer \xc3\xa9", "\xe9")  # a UTF-8 key arrives as its bytes, read as latin-1


def test_errors_come_in_the_shape_of_the_api_called():
    with TestClient(tiny_app(), raise_server_exceptions=False) as tc:
        assert tc.get("/api/missing").status_code == 404
        assert tc.get("/api/missing").json() == {"error": "no such model (pull it)"}
        r = tc.get("/v1/missing").json()["error"]
        assert r["type"] == "not_found_error" and r["message"] == "no such model (pull it)"
        assert tc.get("/v1/bad").json()["error"]["type"] == "invalid_request_error"
        r = tc.get("/api/bug")
        assert r.status_code == 500 and r.json()["error"] == "internal error: RuntimeError: a bug on purpose"
        assert tc.get("/api/nothing").json() == {"error": "Not Found"}
        assert tc.get("/api/echo").status_code == 405
        assert tc.get("/v1/nothing").json()["error"]["message"] == "Not Found"


def test_the_guard_bounds_the_body_declared_or_streamed():
    with TestClient(tiny_app(max_body_bytes=100)) as tc:
        assert tc.post("/api/echo", json={"model": "m", "prompt": "hi"}).json() == {"model": "m", "prompt": "hi"}
        r = tc.post("/api/echo", json={"model": "m", "prompt": "x" * 200})  # declared: refused unread
        assert r.status_code == 413 and "bytes, more than the server's limit of 100 bytes" in r.json()["error"]
        r = tc.post("/v1/echo", content=iter([b'{"model": "m", "prompt": "', b"x" * 200, b'"}']))  # chunked
        assert r.status_code == 413 and r.json()["error"]["message"].startswith("the request body is more")


# ----------------------------------------------------------------------------- bridge and watcher
def run_of(items, fail: Exception | None = None):
    """A prepared generation as the engine hands it over: its chunks and its cancel event."""

    def chunks():
        yield from items
        if fail is not None:
            raise fail

    return chunks(), threading.Event()


async def drain(agen) -> list:
    return [item async for item in agen]


def test_the_bridge_hands_over_chunks_then_an_error_and_sets_cancel():
    run = run_of([Chunk("a"), Chunk("b")], RuntimeError("decoder broke"))

    async def main():  # the bridge needs the running loop
        return await drain(bridge(run))

    items = asyncio.run(main())
    assert [i.text for i in items[:2]] == ["a", "b"] and isinstance(items[2], RuntimeError)
    assert run[1].is_set()  # released when the stream ends


def test_a_bridge_closed_early_cancels_the_generation():
    cancel = threading.Event()

    def endless():
        while not cancel.is_set():
            yield Chunk("x")
            time.sleep(0.01)

    async def main():
        agen = bridge((endless(), cancel))
        assert (await agen.__anext__()).text == "x"
        await agen.aclose()  # the client went away

    asyncio.run(main())
    assert cancel.is_set()


def test_until_done_or_gone_stops_work_when_the_client_hangs_up():
    async def gone():
        return {"type": "http.disconnect"}

    async def main():
        cancel = threading.Event()
        work = asyncio.to_thread(lambda: "stopped" if cancel.wait(10) else "ran to the end")
        t0 = time.monotonic()
        return await until_done_or_gone(fake_request(gone), work, cancel), time.monotonic() - t0

    result, took = asyncio.run(main())
    assert result == "stopped" and took < 5


def test_until_done_or_gone_returns_the_work_of_a_client_still_there():
    async def waiting():
        await asyncio.sleep(30)

    async def main():
        cancel = threading.Event()
        return await until_done_or_gone(fake_request(waiting), asyncio.sleep(0.01, "done"), cancel), cancel

    result, cancel = asyncio.run(main())
    assert result == "done" and cancel.is_set()  # set when finished either way


def test_inflight_cancels_all_work_and_what_comes_after():
    inflight = Inflight()
    first, second = inflight.new(), inflight.new()
    second.set()
    inflight.cancel_all()
    assert first.is_set() and inflight.new().is_set()


# ----------------------------------------------------------------------------- encoders
FINAL = dict(done=True, done_reason="stop", prompt_eval_count=5, eval_count=2, total_duration=9)


def test_ndjson_and_sse_framing():
    assert ndjson_line({"a": "é"}) == b'{"a": "\\u00e9"}\n'
    assert sse_event({"a": 1}) == b'data: {"a": 1}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_ollama_stream_is_one_json_line_per_chunk_with_timings_last():
    lines = asyncio.run(
        drain(ndjson(run_of([Chunk("Hel"), Chunk("lo"), Chunk("", **FINAL)]), lambda t: {"response": t}, "m"))
    )
    parsed = [json.loads(line) for line in lines]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert "".join(p["response"] for p in parsed) == "Hello" and [p["done"] for p in parsed] == [False, False, True]
    assert parsed[-1]["done_reason"] == "stop" and parsed[-1]["eval_count"] == 2 and parsed[-1]["model"] == "m"
    assert "done_reason" not in parsed[0] and parsed[0]["created_at"].endswith("Z")


def test_ollama_stream_ends_with_an_error_line():
    lines = asyncio.run(
        drain(ndjson(run_of([Chunk("a")], RuntimeError("decoder broke")), lambda t: {"response": t}, "m"))
    )
    assert json.loads(lines[-1]) == {"error": "decoder broke"} and len(lines) == 2


def test_ollama_stream_holds_tool_calls_back_until_the_end():
    call = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    shape = lambda t: {"message": {"role": "assistant", "content": t}}  # noqa: E731
    chunks = [Chunk(call[:20]), Chunk(call[20:]), Chunk("", **FINAL)]
    parsed = [json.loads(line) for line in asyncio.run(drain(ndjson(run_of(chunks), shape, "m", tools=True)))]
    assert len(parsed) == 2 and parsed[0]["done"] is False and parsed[1]["done"] is True
    assert parsed[0]["message"]["tool_calls"] == [{"function": {"index": 0, "name": "add", "arguments": {"a": 1}}}]
    assert parsed[0]["message"]["content"] == "" and parsed[1]["eval_count"] == 2


def events(stream) -> list:
    out = asyncio.run(drain(stream))
    assert out[-1] == SSE_DONE and all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in out)
    return [json.loads(e[6:]) for e in out[:-1]]


def test_openai_stream_chat_chunks_finish_and_usage():
    got = events(
        sse(
            run_of(
                [
                    Chunk("Hi"),
                    Chunk(
                        "!", done=True, done_reason="length", prompt_eval_count=5, prompt_cached_count=4, eval_count=2
                    ),
                ]
            ),
            "chatcmpl-1",
            "m",
            "chat",
            True,
        )
    )
    assert [e["choices"][0]["delta"]["content"] for e in got[:2]] == ["Hi", "!"]
    assert got[0]["choices"][0]["delta"]["role"] == "assistant" and "role" not in got[1]["choices"][0]["delta"]
    assert [e["choices"][0]["finish_reason"] for e in got[:2]] == [None, "length"]
    assert got[2]["choices"] == [] and got[2]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert {e["id"] for e in got} == {"chatcmpl-1"} and {e["object"] for e in got} == {"chat.completion.chunk"}


def test_openai_stream_completion_tool_calls_and_errors():
    got = events(sse(run_of([Chunk("a"), Chunk("b", **FINAL)]), "cmpl-1", "m", "completion", False))
    assert [e["choices"][0]["text"] for e in got] == ["a", "b"] and got[-1]["object"] == "text_completion"
    call = '{"name": "add", "arguments": {"a": 1}}'
    got = events(sse(run_of([Chunk(call), Chunk("", **FINAL)]), "c", "m", "chat", False, tools=True))
    assert len(got) == 1 and got[0]["choices"][0]["finish_reason"] == "tool_calls"
    (tool,) = got[0]["choices"][0]["delta"]["tool_calls"]
    assert tool["index"] == 0 and tool["id"].startswith("call_")
    assert json.loads(tool["function"]["arguments"]) == {"a": 1}  # OpenAI's arguments: a JSON string
    out = asyncio.run(drain(sse(run_of([], RuntimeError("broke")), "c", "m", "chat", False)))
    assert len(out) == 1 and json.loads(out[0][6:])["error"]["message"] == "broke"  # no [DONE] after an error
