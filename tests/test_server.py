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

from conftest import BUNDLED, free_port, start_server, stop_server

DET = {"temperature": 0, "seed": 7, "num_predict": 24}


@pytest.fixture(scope="module")
def client(ollama_host):
    return ollama.Client(host=ollama_host, timeout=120)


@pytest.fixture(scope="module")
def oa(ollama_host):
    return openai.OpenAI(base_url=f"{ollama_host}/v1", api_key="ollama", timeout=120, max_retries=0)


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
    for field in ("total_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                  "eval_duration"):
        assert getattr(r, field) > 0, field
    assert r.load_duration is not None
    c = client.chat(model=BUNDLED, messages=[
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is a language model?"}], options=DET)
    assert c.message.role == "assistant" and c.message.content.strip()


def test_streaming_matches_non_streaming(client):
    whole = client.generate(model=BUNDLED, prompt="List three fruits.", options=DET)
    parts = list(client.generate(model=BUNDLED, prompt="List three fruits.", options=DET, stream=True))
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == whole.eval_count


def test_system_prompt_and_stop_sequence(client):
    r = client.generate(model=BUNDLED, prompt="Count: one, two, three, four, five, six",
                        options={**DET, "num_predict": 40, "stop": ["four"]})
    assert "four" not in r.response


def test_json_format_is_valid_json(client):
    r = client.chat(model=BUNDLED, format="json", options={**DET, "num_predict": 60},
                    messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}])
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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(m.model == BUNDLED for m in client.ps().models):
        time.sleep(0.3)
    assert not any(m.model == BUNDLED for m in client.ps().models)
    client.generate(model=BUNDLED, prompt="Hi", options={"num_predict": 2})  # loads again
    assert any(m.model == BUNDLED for m in client.ps().models)


# ----------------------------------------------------------------------------- plain REST
def test_rest_exactly_as_the_article(ollama_host):
    """The article's curl example: POST /api/generate with model and prompt, read line by line."""
    with httpx.stream("POST", f"{ollama_host}/api/generate", timeout=120,
                      json={"model": BUNDLED, "prompt": "Why is the sky blue?",
                            "options": {"num_predict": 16}}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert all(l["model"] == BUNDLED and "created_at" in l for l in lines)
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 16
    assert "".join(l["response"] for l in lines).strip()


def test_rest_stream_false_returns_one_object(ollama_host):
    r = httpx.post(f"{ollama_host}/api/chat", timeout=120, json={
        "model": BUNDLED, "stream": False, "options": {"num_predict": 8},
        "messages": [{"role": "user", "content": "Hello"}]})
    body = r.json()
    assert r.status_code == 200 and body["done"] and body["message"]["content"]


# ----------------------------------------------------------------------------- openai client
def test_openai_models_and_chat(oa):
    assert BUNDLED in [m.id for m in oa.models.list()]
    r = oa.chat.completions.create(model=BUNDLED, temperature=0, seed=1, max_tokens=20,
                                   messages=[{"role": "user", "content": "Say hi to the class."}])
    assert r.choices[0].message.content.strip()
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_openai_streaming_with_usage(oa):
    kwargs = dict(model=BUNDLED, temperature=0, seed=1, max_tokens=20,
                  messages=[{"role": "user", "content": "Name two planets."}])
    whole = oa.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(oa.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage.completion_tokens > 0


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
    ("/api/generate", json.dumps({"model": BUNDLED, "prompt": "hi", "options": {"temperature": "warm"}}), "temperature"),
    ("/api/generate", json.dumps({"model": BUNDLED, "prompt": "word " * 5000}), "longer than the context"),
    ("/api/chat", json.dumps({"model": BUNDLED, "messages": []}), "messages"),
    ("/api/chat", json.dumps({"model": BUNDLED, "messages": [{"content": "hi"}]}), "role"),
    ("/api/chat", json.dumps([1, 2]), "JSON object"),
]


@pytest.mark.parametrize("path,body,needle", BAD)
def test_bad_input_is_400_and_the_next_request_is_served(ollama_host, path, body, needle):
    r = httpx.post(ollama_host + path, content=body, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    ok = httpx.post(f"{ollama_host}/api/generate", timeout=60, json={
        "model": BUNDLED, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    assert ok.status_code == 200


def test_openai_bad_input_has_openai_error_shape(ollama_host):
    r = httpx.post(f"{ollama_host}/v1/chat/completions", json={"model": BUNDLED, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["message"]


# ----------------------------------------------------------------------------- load and faults
def test_sixteen_concurrent_clients_each_get_their_own_answer(ollama_host):
    """16 clients x 3 requests at once; each answer must be the one its own prompt gets alone.

    Every prompt is a different run of numbers, so answers differ between prompts; at
    temperature 0 the answer under load must equal the answer computed serially first.
    """
    prompts = {(i, j): f"{100 + i * 37 + j * 11}, {101 + i * 37 + j * 11}, {102 + i * 37 + j * 11},"
               for i in range(16) for j in range(3)}
    opts = {"temperature": 0, "num_predict": 6}
    serial_client = ollama.Client(host=ollama_host, timeout=120)
    expected = {k: serial_client.generate(model=BUNDLED, raw=True, prompt=p, options=opts).response
                for k, p in prompts.items()}
    assert len(set(expected.values())) >= 40, "prompts should give different answers"

    def client_run(i: int) -> list[tuple[tuple[int, int], str]]:
        c = ollama.Client(host=ollama_host, timeout=300)
        return [((i, j), c.generate(model=BUNDLED, raw=True, prompt=prompts[i, j], options=opts).response)
                for j in range(3)]

    with ThreadPoolExecutor(16) as pool:
        results = [pair for rs in pool.map(client_run, range(16)) for pair in rs]
    assert len(results) == 48
    same = sum(answer == expected[key] for key, answer in results)
    assert same >= 46, f"answers equal to their own serial answer: {same}/48"


def test_client_disconnect_mid_stream_does_not_wedge_the_server(ollama_host):
    with httpx.stream("POST", f"{ollama_host}/api/generate", timeout=60, json={
            "model": BUNDLED, "prompt": "Write a very long essay about rivers.",
            "options": {"num_predict": 2000, "num_ctx": 4096}}) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i == 3:
                break  # hang up mid-stream
    t0 = time.monotonic()
    r = httpx.post(f"{ollama_host}/api/generate", timeout=60, json={
        "model": BUNDLED, "prompt": "hi", "stream": False, "options": {"num_predict": 4, "num_ctx": 4096}})
    assert r.status_code == 200 and r.json()["done"]
    assert time.monotonic() - t0 < 10, "the abandoned generation should have stopped"


def test_reported_timings_agree_with_the_wall_clock(ollama_host):
    t0 = time.perf_counter()
    first = last = None
    with httpx.stream("POST", f"{ollama_host}/api/generate", timeout=120, json={
            "model": BUNDLED, "prompt": "Describe a forest in detail.",
            "options": {"temperature": 0, "seed": 3, "num_predict": 120}}) as resp:
        for line in resp.iter_lines():
            chunk = json.loads(line)
            now = time.perf_counter()
            if chunk.get("response") and first is None:
                first = now
            if chunk["done"]:
                final, last = chunk, now
    wall_total = last - t0
    assert final["eval_count"] > 20
    assert final["total_duration"] / 1e9 <= wall_total
    assert final["total_duration"] / 1e9 >= 0.8 * wall_total
    # decode time reported by the server against the client's first-to-last token time
    client_decode = last - first
    assert final["eval_duration"] / 1e9 == pytest.approx(client_decode, rel=0.25, abs=0.05)


# ----------------------------------------------------------------------------- serving rules
def test_port_taken_says_so_and_exits():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "helpers.cli", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "already in use" in proc.stdout


def test_non_loopback_requires_a_key():
    proc = subprocess.run([sys.executable, "-m", "helpers.cli", "serve", "--host", "0.0.0.0",
                           "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--api-key" in proc.stdout


def test_api_key_is_enforced_and_the_ollama_client_sends_it(tmp_path, monkeypatch):
    port = free_port()
    proc = start_server(port, "--api-key", "class-secret", log=tmp_path / "log")
    try:
        host = f"http://127.0.0.1:{port}"
        assert httpx.get(host + "/api/tags").status_code == 401
        monkeypatch.setenv("OLLAMA_API_KEY", "class-secret")
        names = [m.model for m in ollama.Client(host=host).list().models]
        assert BUNDLED in names
    finally:
        stop_server(proc)
