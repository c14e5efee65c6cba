"""`slm-course serve` speaks Ollama's API: checked through the official clients and plain REST."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest
from fastapi.testclient import TestClient

from conftest import BUNDLED, free_port, start_server, stop_server
from helpers.net import port_in_use
from helpers.serving.engine import Engine
from helpers.serving.server import create_app

DET = {"temperature": 0, "seed": 7, "num_predict": 24}


def wait_until_unloaded(client: ollama.Client, timeout_s: float = 10.0) -> None:
    """Wait (at most timeout_s) until /api/ps no longer lists the bundled model."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(m.model == BUNDLED for m in client.ps().models):
        time.sleep(0.3)


# ----------------------------------------------------------------------------- ollama client
def test_root_and_version(ollama_host):
    assert httpx.get(ollama_host + "/").text == "Ollama is running"
    assert httpx.get(ollama_host + "/api/version").json()["version"]


def test_list_show_ps(client):
    names = [m.model for m in client.list().models]
    assert BUNDLED in names
    info = client.show(BUNDLED)
    assert info.details.family and info.details.quantization_level == "Q4_1"
    assert info.template and "im_start" in info.template
    client.generate(model=BUNDLED, prompt="Hi", options={"num_predict": 2})
    running = client.ps().models
    assert any(m.model == BUNDLED and m.expires_at for m in running)


def test_generate_and_chat_with_metrics(client):
    r = client.generate(model=BUNDLED, prompt="Why is the sky blue?", options=DET)
    assert r.response.strip() and r.done and r.done_reason in ("stop", "length")
    for field in ("total_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"):
        assert getattr(r, field) > 0, field
    assert r.load_duration is not None
    c = client.chat(
        model=BUNDLED,
        messages=[
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is a language model?"},
        ],
        options=DET,
    )
    assert c.message.role == "assistant" and c.message.content.strip()


def test_streaming_matches_non_streaming(client):
    whole = client.generate(model=BUNDLED, prompt="List three fruits.", options=DET)
    parts = list(client.generate(model=BUNDLED, prompt="List three fruits.", options=DET, stream=True))
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == whole.eval_count


def test_system_prompt_reaches_the_model(client):
    """/api/generate's `system` goes into the prompt the model reads (SmolLM2's template puts a
    short default system turn there otherwise): ~45 more prompt tokens, and another answer."""
    ask = {"model": BUNDLED, "prompt": "What are you?", "options": {**DET, "num_predict": 24}}
    plain = client.generate(**ask)
    pirate = client.generate(**ask, system="You are a pirate captain of the seven seas. " * 6)
    assert pirate.prompt_eval_count > plain.prompt_eval_count + 30
    assert pirate.response != plain.response


def test_stop_sequence_cuts_the_answer_before_it(client):
    ask = {
        "model": BUNDLED,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3,",
        "raw": True,
        "options": {**DET, "num_predict": 30},
    }
    free = client.generate(**ask).response
    assert " 7," in free, f"the model counts on without a stop: {free!r}"
    r = client.generate(**{**ask, "options": {**ask["options"], "stop": [" 7,"]}})
    assert r.done_reason == "stop" and " 7," not in r.response
    assert r.response == free[: free.index(" 7,")]  # everything before the stop, nothing after


def test_json_format_is_valid_json(client):
    r = client.chat(
        model=BUNDLED,
        format="json",
        options={**DET, "num_predict": 60},
        messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}],
    )
    text = r.message.content
    if r.done_reason == "stop":
        assert isinstance(json.loads(text), (dict, list))
    else:  # cut by num_predict: still a valid JSON prefix
        assert text.lstrip().startswith(("{", "["))


def test_embed(client):
    e = client.embed(model=BUNDLED, input=["cats purr", "dogs bark"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) > 100
    norm = sum(v * v for v in e.embeddings[0]) ** 0.5
    assert norm == pytest.approx(1.0, rel=1e-3)


def test_embed_reports_token_counts_and_durations(client, oa):
    texts = ["cats purr", "dogs bark loudly at night"]
    # the same text read as a raw prompt: the generation's own count of its tokens
    counts = [
        client.generate(model=BUNDLED, prompt=t, raw=True, options={"num_predict": 1}).prompt_eval_count for t in texts
    ]
    assert all(n > 0 for n in counts)
    client.generate(model=BUNDLED, prompt="", keep_alive=0)  # unload, to measure a cold load
    wait_until_unloaded(client)
    cold = client.embed(model=BUNDLED, input=texts)
    assert cold.prompt_eval_count == sum(counts)
    assert cold.load_duration > 0 and cold.total_duration > cold.load_duration
    warm = client.embed(model=BUNDLED, input=texts[0])
    assert warm.prompt_eval_count == counts[0]
    assert warm.load_duration == 0 and warm.total_duration > 0
    usage = oa.embeddings.create(model=BUNDLED, input=texts[1]).usage
    assert usage.prompt_tokens == usage.total_tokens == counts[1]


def test_pull_bundled_and_unknown(client):
    statuses = [p.status for p in client.pull(BUNDLED, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("llama2:7b")
    assert info.value.status_code == 404 and "ollama pull llama2:7b" in info.value.error


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="mistral:7b", prompt="hi")
    assert info.value.status_code == 404 and "not found" in info.value.error


def test_keep_alive_zero_unloads(client):
    client.generate(model=BUNDLED, prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    wait_until_unloaded(client)
    assert not any(m.model == BUNDLED for m in client.ps().models)
    client.generate(model=BUNDLED, prompt="Hi", options={"num_predict": 2})  # loads again
    assert any(m.model == BUNDLED for m in client.ps().models)


# ----------------------------------------------------------------------------- plain REST
def test_rest_exactly_as_the_article(ollama_host):
    """The article's curl example, body and all: POST /api/generate with a model and a prompt
    and nothing else (so the server's defaults apply), read line by line as it streams."""
    lines = []
    with httpx.stream(
        "POST",
        f"{ollama_host}/api/generate",
        timeout=300,
        content=json.dumps({"model": BUNDLED, "prompt": "Why is the sky blue?"}),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            if line:
                lines.append(json.loads(line))
    assert len(lines) > 2
    assert all(x["model"] == BUNDLED and "created_at" in x for x in lines)
    assert all(x["done"] is False for x in lines[:-1]) and lines[-1]["done"] is True
    final = lines[-1]
    assert final["done_reason"] in ("stop", "length")
    assert 0 < final["eval_count"] <= 128  # the server's default num_predict, as Ollama's
    if final["done_reason"] == "length":
        assert final["eval_count"] == 128
    assert "".join(x["response"] for x in lines).strip()


def test_rest_stream_false_returns_one_object(ollama_host):
    r = httpx.post(
        f"{ollama_host}/api/chat",
        timeout=120,
        json={
            "model": BUNDLED,
            "stream": False,
            "options": {"num_predict": 8},
            "messages": [{"role": "user", "content": "Hello"}],
        },
    )
    body = r.json()
    assert r.status_code == 200 and body["done"] and body["message"]["content"]


# ----------------------------------------------------------------------------- openai client
def test_openai_models_and_chat(oa):
    assert BUNDLED in [m.id for m in oa.models.list()]
    r = oa.chat.completions.create(
        model=BUNDLED,
        temperature=0,
        seed=1,
        max_tokens=20,
        messages=[{"role": "user", "content": "Say hi to the class."}],
    )
    assert r.choices[0].message.content.strip()
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_openai_streaming_with_usage(oa):
    kwargs = dict(
        model=BUNDLED, temperature=0, seed=1, max_tokens=20, messages=[{"role": "user", "content": "Name two planets."}]
    )
    whole = oa.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(oa.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage.completion_tokens > 0
    # the same greedy request again: its prompt came from the slot that read it (all but the last
    # token), which OpenAI's usage reports as cached_tokens
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_openai_completions_and_embeddings(oa):
    r = oa.completions.create(model=BUNDLED, prompt="The capital of Italy is", max_tokens=8, temperature=0)
    assert r.choices[0].text
    e = oa.embeddings.create(model=BUNDLED, input="hello")
    assert len(e.data[0].embedding) > 100


def test_openai_unknown_model_is_not_found(oa):
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "hi"}])


# ----------------------------------------------------------------------------- bad input
BAD = [
    ("/api/generate", b"{not json", "invalid JSON"),
    ("/api/generate", json.dumps({"prompt": "hi"}), "model is required"),
    ("/api/generate", json.dumps({"model": BUNDLED, "prompt": 5}), "prompt"),
    ("/api/generate", json.dumps({"model": BUNDLED, "prompt": "hi", "stream": "yes"}), "stream"),
    ("/api/generate", json.dumps({"model": BUNDLED, "prompt": "hi", "options": {"num_predict": -9}}), "num_predict"),
    ("/api/generate", json.dumps({"model": BUNDLED, "prompt": "hi", "options": {"num_predict": 10**9}}), "num_predict"),
    (
        "/api/generate",
        json.dumps({"model": BUNDLED, "prompt": "hi", "options": {"temperature": "warm"}}),
        "temperature",
    ),
    ("/api/generate", json.dumps({"model": BUNDLED, "prompt": "word " * 5000}), "longer than the context"),
    ("/api/chat", json.dumps({"model": BUNDLED, "messages": "hi"}), "messages"),  # [] loads (Ollama)
    ("/api/chat", json.dumps({"model": BUNDLED, "messages": [{"content": "hi"}]}), "role"),
    ("/api/chat", json.dumps([1, 2]), "JSON object"),
]


@pytest.mark.parametrize("path,body,needle", BAD)
def test_bad_input_is_400_and_the_next_request_is_served(ollama_host, path, body, needle):
    r = httpx.post(ollama_host + path, content=body, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    ok = httpx.post(
        f"{ollama_host}/api/generate",
        timeout=60,
        json={"model": BUNDLED, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
    )
    assert ok.status_code == 200


def test_openai_bad_input_has_openai_error_shape(ollama_host):
    r = httpx.post(f"{ollama_host}/v1/chat/completions", json={"model": BUNDLED, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["message"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_400_in_both_apis(ollama_host, number):
    chat = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}'
    r = httpx.post(f"{ollama_host}/v1/chat/completions", content=chat % (BUNDLED, number), timeout=60)
    assert r.status_code == 400, r.text
    assert "finite" in r.json()["error"]["message"]
    gen = '{"model": "%s", "prompt": "hi", "options": {"top_p": %s}}'
    r = httpx.post(f"{ollama_host}/api/generate", content=gen % (BUNDLED, number), timeout=60)
    assert r.status_code == 400 and "finite" in r.json()["error"]


def test_unknown_route_is_a_json_error(ollama_host):
    r = httpx.get(f"{ollama_host}/api/nothing-here")
    assert r.status_code == 404 and r.json()["error"]


# ----------------------------------------------------------------------------- faults inside the server
class FaultyEngine(Engine):
    """The real engine with a fault injected at one point; every answer is still the model's."""

    def __init__(self) -> None:
        super().__init__(n_threads=1, num_parallel=1)  # one request at a time here
        self.fail_after_chunks = 3

    def stream(self, model, **kwargs):  # preparing breaks (a bug, not bad input) ...
        if any(m.get("content") == "break the template" for m in kwargs.get("messages") or []):
            raise RuntimeError("injected fault in the chat template")
        return self._failing(super().stream(model, **kwargs))

    def _failing(self, chunks):  # ... or the decoder fails after a few real tokens
        for i, chunk in enumerate(chunks):
            if i == self.fail_after_chunks and not chunk.done:
                raise RuntimeError("injected fault in the decoder")
            yield chunk


@pytest.fixture(scope="module")
def faulty():
    with TestClient(create_app(FaultyEngine()), raise_server_exceptions=False) as tc:
        yield tc


def test_unexpected_error_while_preparing_is_a_json_500(faulty):
    body = {"model": BUNDLED, "stream": False, "messages": [{"role": "user", "content": "break the template"}]}
    r = faulty.post("/api/chat", json=body)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert "injected fault in the chat template" in r.json()["error"]
    r = faulty.post("/v1/chat/completions", json=body)
    assert r.status_code == 500 and "injected fault" in r.json()["error"]["message"]
    r = faulty.post(
        "/api/chat", json={**body, "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 2}}
    )  # fewer chunks than the fault needs
    assert r.status_code == 200 and r.json()["done"]


def test_error_mid_stream_arrives_as_the_last_ndjson_line(faulty):
    lines = []
    with faulty.stream(
        "POST",
        "/api/generate",
        json={
            "model": BUNDLED,
            "prompt": "Write a long story about a dragon.",
            "options": {"temperature": 0, "seed": 1, "num_predict": 64},
        },
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                lines.append(json.loads(line))
    assert len(lines) == 4
    assert all(x["done"] is False and x["response"] for x in lines[:3])  # real tokens first
    assert lines[-1] == {"error": "injected fault in the decoder"}
    # the same fault through the OpenAI route: a last SSE event with an error object
    with faulty.stream(
        "POST",
        "/v1/completions",
        json={"model": BUNDLED, "prompt": "Once upon a time", "stream": True, "max_tokens": 64},
    ) as resp:
        events = [json.loads(e[len("data: ") :]) for e in resp.iter_lines() if e.startswith("data: ")]
    assert events[-1]["error"]["message"] == "injected fault in the decoder"
    # and the model is free again for the next request
    r = faulty.post(
        "/api/generate", json={"model": BUNDLED, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    )
    assert r.status_code == 200 and r.json()["done"]


# ----------------------------------------------------------------------------- load and faults
@pytest.mark.slow  # `make check` leaves it out; `make test` runs it
def test_sixteen_concurrent_clients_each_get_their_own_answer(ollama_host):
    """16 clients x 3 requests at once; each answer must be the one its own prompt gets alone.

    Every prompt is a different run of numbers, so answers differ between prompts; at
    temperature 0 the answer under load must equal the answer computed serially first.
    """
    prompts = {
        (i, j): f"{100 + i * 37 + j * 11}, {101 + i * 37 + j * 11}, {102 + i * 37 + j * 11},"
        for i in range(16)
        for j in range(3)
    }
    opts = {"temperature": 0, "num_predict": 6}
    serial_client = ollama.Client(host=ollama_host, timeout=120)
    expected = {
        k: serial_client.generate(model=BUNDLED, raw=True, prompt=p, options=opts).response for k, p in prompts.items()
    }
    assert len(set(expected.values())) >= 40, "prompts should give different answers"

    def client_run(i: int) -> list[tuple[tuple[int, int], str]]:
        c = ollama.Client(host=ollama_host, timeout=300)
        return [
            ((i, j), c.generate(model=BUNDLED, raw=True, prompt=prompts[i, j], options=opts).response) for j in range(3)
        ]

    with ThreadPoolExecutor(16) as pool:
        results = [pair for rs in pool.map(client_run, range(16)) for pair in rs]
    assert len(results) == 48 and {key for key, _ in results} == set(prompts)
    owner = {}
    for key, answer in expected.items():
        owner.setdefault(answer, set()).add(key)
    for key, answer in results:
        others = owner.get(answer, set()) - {key}
        assert not (others and answer != expected[key]), f"request {key} got the answer of {others}"
        assert answer == expected[key], f"request {key}: {answer!r} instead of {expected[key]!r}"


def test_light_routes_answer_while_requests_queue_on_a_busy_model(ollama_host):
    """A long generation holds the model while generations, embeddings and a reload queue
    behind it: /api/tags, /api/ps and /api/version still answer at once."""
    queued: list[httpx.Response] = []

    def post(path: str, body: dict) -> None:
        queued.append(httpx.post(f"{ollama_host}{path}", json=body, timeout=300))

    bodies = (
        [("/api/embed", {"model": BUNDLED, "input": f"sentence {i}"}) for i in range(10)]
        + [
            ("/api/generate", {"model": BUNDLED, "prompt": f"Say {i}.", "stream": False, "options": {"num_predict": 4}})
            for i in range(6)
        ]
        + [
            (
                "/api/generate",
                {
                    "model": BUNDLED,
                    "prompt": f"Say {i}.",
                    "stream": False,
                    "options": {"num_predict": 4, "num_ctx": 1024},
                },
            )
            for i in range(6)
        ]
    )
    threads = [threading.Thread(target=post, args=pb) for pb in bodies]

    def worst_light_route() -> float:
        worst = 0.0
        for _ in range(3):
            for path in ("/api/tags", "/api/version", "/api/ps"):
                t0 = time.perf_counter()
                r = httpx.get(ollama_host + path, timeout=30)
                worst = max(worst, time.perf_counter() - t0)
                assert r.status_code == 200
        return worst

    idle = worst_light_route()  # the same routes on this machine now, with nothing queued
    with httpx.stream(
        "POST",
        f"{ollama_host}/api/generate",
        timeout=300,
        json={"model": BUNDLED, "prompt": "Write a very long essay about rivers.", "options": {"num_predict": 1800}},
    ) as resp:
        lines = resp.iter_lines()
        for _ in range(3):
            assert not json.loads(next(lines))["done"]  # the long generation is running
        for t in threads:
            t.start()
        time.sleep(1.5)  # let them queue
        worst = worst_light_route()
        assert not json.loads(next(lines))["done"], "the long generation should still be running"
    # hanging up stops the long generation; then every queued request is served
    for t in threads:
        t.join(300)
    # at once: within a second of what they take idle (x 20 for a busy machine), where waiting behind
    # the queue would take the long generation's seconds
    assert worst < 1.0 + 20 * idle, f"a light route took {worst:.2f} s ({idle:.3f} s idle)"
    assert len(queued) == len(bodies) and all(r.status_code == 200 for r in queued), [
        r.text for r in queued if r.status_code != 200
    ]


def test_reload_embed_and_unload_while_streaming_all_answer_correctly(tmp_path):
    """The former crash: a request in flight while another num_ctx reloads the model, an
    embedding arrives and keep_alive=0 unloads it. On its own server, so a crash fails only this."""
    port = free_port()
    proc = start_server(port, log=tmp_path / "serve.log")
    host = f"http://127.0.0.1:{port}"
    prompt = "Why is the sky blue?"

    def generate(num_ctx: int, **extra) -> str:
        r = httpx.post(
            f"{host}/api/generate",
            timeout=300,
            json={
                "model": BUNDLED,
                "prompt": prompt,
                "stream": False,
                **extra,
                "options": {"temperature": 0, "seed": 7, "num_predict": 48, "num_ctx": num_ctx},
            },
        )
        assert r.status_code == 200, r.text
        return r.json()["response"]

    def embed() -> list[float]:
        r = httpx.post(f"{host}/api/embed", json={"model": BUNDLED, "input": "cats purr"}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["embeddings"][0]

    try:
        # alone: right after a (re)load and again with the prompt cached, at both sizes
        expected = {ctx: {generate(ctx), generate(ctx)} for ctx in (1024, 2048)}
        expected_vector = embed()
        out: dict[str, object] = {}
        jobs = {
            "reload": lambda: generate(1024),
            "embed": embed,
            "unload": lambda: generate(2048, keep_alive=0),
            "embed again": embed,
        }

        def run(name: str) -> None:
            out[name] = jobs[name]()

        threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
        parts = []
        with httpx.stream(
            "POST",
            f"{host}/api/generate",
            timeout=300,
            json={
                "model": BUNDLED,
                "prompt": prompt,
                "options": {"temperature": 0, "seed": 7, "num_predict": 48, "num_ctx": 2048},
            },
        ) as resp:
            for i, line in enumerate(resp.iter_lines()):
                chunk = json.loads(line)
                assert "error" not in chunk, chunk
                parts.append(chunk.get("response", ""))
                if i == 1:
                    for t in threads:
                        t.start()
        for t in threads:
            t.join(300)
        assert proc.poll() is None, "the server died"
        assert "".join(parts) in expected[2048]
        assert out["reload"] in expected[1024] and out["unload"] in expected[2048]
        for name in ("embed", "embed again"):
            assert out[name] == pytest.approx(expected_vector, abs=1e-4)
    finally:
        stop_server(proc)


def test_client_disconnect_mid_stream_does_not_wedge_the_server(ollama_host):
    with httpx.stream(
        "POST",
        f"{ollama_host}/api/generate",
        timeout=60,
        json={
            "model": BUNDLED,
            "prompt": "Write a very long essay about rivers.",
            "options": {"num_predict": 2000, "num_ctx": 4096},
        },
    ) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i == 3:
                break  # hang up mid-stream
    t0 = time.monotonic()
    r = httpx.post(
        f"{ollama_host}/api/generate",
        timeout=60,
        json={"model": BUNDLED, "prompt": "hi", "stream": False, "options": {"num_predict": 4, "num_ctx": 4096}},
    )
    assert r.status_code == 200 and r.json()["done"]
    assert time.monotonic() - t0 < 10, "the abandoned generation should have stopped"


def test_reported_timings_agree_with_the_wall_clock(ollama_host):
    t0 = time.perf_counter()
    first = last = None
    with httpx.stream(
        "POST",
        f"{ollama_host}/api/generate",
        timeout=120,
        json={
            "model": BUNDLED,
            "prompt": "Describe a forest in detail.",
            "options": {"temperature": 0, "seed": 3, "num_predict": 120},
        },
    ) as resp:
        for line in resp.iter_lines():
            chunk = json.loads(line)
            now = time.perf_counter()
            if chunk.get("response") and first is None:
                first = now
            if chunk["done"]:
                final, last = chunk, now
    wall_total = last - t0
    assert final["eval_count"] > 20
    # every duration the server reports happened inside the client's wall clock, and its parts
    # fit in its total (a busy machine only widens the client's side). How close the two clocks
    # agree is a measurement, not a test: benchmarks/server_overhead.py prints both.
    parts = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert 0 < final["eval_duration"] and parts <= final["total_duration"] * (1 + 1e-6)
    assert final["total_duration"] / 1e9 <= wall_total
    # decode time reported by the server within the client's first-to-last token time (plus the
    # first token's own decode step: 10% at 120 tokens)
    client_decode = last - first
    assert final["eval_duration"] / 1e9 <= client_decode / 0.9, (final["eval_duration"], client_decode)


# ----------------------------------------------------------------------------- serving rules
def test_port_taken_says_so_and_exits():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "helpers.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    assert "already in use" in proc.stdout


def test_non_loopback_requires_a_key():
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "--api-key" in proc.stdout


def test_ipv6_wildcard_host_is_probed_without_crashing():
    assert port_in_use("::", free_port()) is False
    assert port_in_use("no-such-host.invalid", 80) is False  # cannot probe: let the bind say why
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with listener:
        listener.listen()
        assert port_in_use("::", listener.getsockname()[1]) is True
    # `slm-course serve --host ::` gets as far as asking for a key, without a traceback
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.cli", "serve", "--host", "::", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--api-key" in proc.stdout and "Traceback" not in proc.stderr


def test_api_key_is_enforced_and_the_ollama_client_sends_it(tmp_path, monkeypatch):
    port = free_port()
    proc = start_server(port, "--api-key", "class-secret", log=tmp_path / "log")
    try:
        host = f"http://127.0.0.1:{port}"
        assert httpx.get(host + "/api/tags").status_code == 401
        for sent in ("Bearer clé-secrète".encode(), b"Bearer \xff\xfe"):  # not ASCII
            r = httpx.get(host + "/api/tags", headers={"Authorization": sent})
            assert r.status_code == 401 and r.json()["error"].startswith("unauthorized")
            r = httpx.get(host + "/v1/models", headers={"Authorization": sent})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        monkeypatch.setenv("OLLAMA_API_KEY", "class-secret")
        names = [m.model for m in ollama.Client(host=host).list().models]
        assert BUNDLED in names
    finally:
        stop_server(proc)
