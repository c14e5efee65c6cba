"""The class load generator: target safety, parameter checks, and both bounds (count and time).

The bound tests use a tiny real HTTP server on a free loopback port that streams NDJSON
lines at a set pace: a slow network peer, not a model. It counts the requests it receives,
so the count bound is checked on the server's side, not only in the client's bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import matplotlib
import pytest

matplotlib.use("Agg")

from helpers.errors import BackendUnavailable, BadInput, ModelNotFound  # noqa: E402
from helpers.loadgen import (  # noqa: E402
    CANCELLED,
    NOT_STARTED,
    OK,
    SWEEP_COLUMNS,
    check_target,
    plot_sweep,
    run_load,
    sizing_advice,
    sweep,
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # body ends when the connection closes: simplest streaming

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._json(200, {"version": "0.0.0-test-peer"})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with srv.lock:
            srv.received += 1
            srv.auth.append(self.headers.get("Authorization"))
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
        counted = True  # still in `active`
        try:
            if body.get("model") == "missing":
                self._json(404, {"error": "model 'missing' not found"})
                return
            if not body.get("stream", True):
                self._json(200, {"response": "x", "done": True, "eval_count": 1})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            n = srv.lines
            for i in range(n):
                time.sleep(srv.delay)
                self._line({"model": body.get("model"), "response": f"t{i} ", "done": False})
                with srv.lock:
                    srv.sent += 1
            if body.get("model") == "broken":
                self._line({"error": "the engine crashed"})
                return
            # no longer active before the last line goes out: once the client has read it, it may send its
            # next request, which another thread counts - possibly before this one's `finally` runs
            with srv.lock:
                srv.active -= 1
            counted = False
            self._line(
                {"model": body.get("model"), "response": "", "done": True, "done_reason": "stop", "eval_count": n}
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled request): expected in the time-bound test
        finally:
            if counted:
                with srv.lock:
                    srv.active -= 1

    def _line(self, obj: dict) -> None:
        self.wfile.write((json.dumps(obj) + "\n").encode())
        self.wfile.flush()

    def _json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def peer():
    """A streaming NDJSON peer on 127.0.0.1:<free port>; set .delay and .lines per test."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.received = srv.active = srv.max_active = srv.sent = 0  # sent: answer lines written
    srv.auth = []
    srv.delay, srv.lines = 0.0, 3
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


# --------------------------------------------------------------------------- target safety
@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "http://example.com:11434",
        "192.168.1.5:11434",
        "https://example.com",
        "http://localhost.example.com:11434",
    ],
)
def test_refuses_remote_targets(host):
    with pytest.raises(BadInput) as info:
        run_load(host, "m", concurrency=1, requests_per_client=1, max_duration_s=1)
    assert "allow_remote=True" in info.value.hint and "SLM_LOADTEST_HOSTS" in info.value.hint


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "http://127.0.0.1:11434", "localhost:11434", "http://[::1]:11434", "[::1]", "127.9.8.7:5"]
)
def test_accepts_loopback_targets(host):
    assert check_target(host).startswith("http://")


def test_remote_allowed_when_asked():
    assert check_target("10.0.0.1", allow_remote=True) == "http://10.0.0.1:11434"


def test_remote_allowed_when_configured(monkeypatch):
    monkeypatch.setenv("SLM_LOADTEST_HOSTS", "lab-server:11434, http://10.0.0.7:8080")
    assert check_target("http://lab-server:11434") == "http://lab-server:11434"
    assert check_target("10.0.0.7:8080") == "http://10.0.0.7:8080"
    with pytest.raises(BadInput):  # only the hosts named there
        check_target("10.0.0.7:11434")


# --------------------------------------------------------------------------- parameter checks
@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"concurrency": 257},
        {"concurrency": 2.0},
        {"concurrency": True},
        {"requests_per_client": 0},
        {"num_predict": 0},
        {"prompt": ""},
        {"prompt": None},
        {"timeout_s": 0},
        {"timeout_s": -1},
        {"max_duration_s": 0},
        {"max_duration_s": float("nan")},
    ],
)
def test_rejects_bad_parameters(kwargs):
    args = {"concurrency": 1, "requests_per_client": 1, "max_duration_s": 1, "timeout_s": 1}
    args.update(kwargs)
    with pytest.raises(BadInput) as info:
        run_load("127.0.0.1:9", "m", **args)
    assert info.value.hint


def test_rejects_empty_model():
    with pytest.raises(BadInput):
        run_load("127.0.0.1:9", "", concurrency=1, requests_per_client=1, max_duration_s=1)


def test_no_server_gives_next_step(peer):
    port = peer.server_address[1]
    peer.shutdown()
    peer.server_close()
    with pytest.raises(BackendUnavailable) as info:
        run_load(f"127.0.0.1:{port}", "m", concurrency=1, requests_per_client=1, timeout_s=2, max_duration_s=2)
    assert "ollama serve" in info.value.hint


# --------------------------------------------------------------------------- bounds
def test_count_bound_is_exact(peer):
    peer.delay, peer.lines = 0.01, 3
    result = run_load(
        peer.url, "m", concurrency=3, requests_per_client=4, num_predict=3, timeout_s=5, max_duration_s=20
    )
    assert peer.received == 12  # the server saw exactly concurrency x requests
    assert len(result.rows) == 12 and result.completed == 12
    assert peer.max_active <= 3  # never more students at once than asked for
    assert not result.stopped_by_time and result.errors == []
    assert result.output_tokens == 36 and result.output_tps > 0
    assert result.throughput_rps == pytest.approx(12 / result.wall_s)
    for row in result.rows:
        assert row.status == OK
        assert 0 < row.ttft_s < row.latency_s
    assert result.latency_p50 <= result.latency_p90 <= result.latency_p99
    assert result.ttft_p50 <= result.ttft_p90
    df = result.as_dataframe()
    assert len(df) == 12 and {"ttft_s", "latency_s", "eval_count", "status"} <= set(df.columns)
    assert sorted(zip(df.client, df["index"])) == [(c, i) for c in range(3) for i in range(4)]


def test_time_bound_stops_and_marks(peer):
    peer.delay, peer.lines = 0.2, 100  # each answer would take ~20 s
    t0 = time.perf_counter()
    result = run_load(peer.url, "m", concurrency=2, requests_per_client=3, timeout_s=60, max_duration_s=1.0)
    elapsed = time.perf_counter() - t0
    sent = peer.sent  # answer lines the peer had written when run_load returned
    # it returned after the time bound, and long before the two running answers (2 x 100 lines)
    # were done: the peer had sent only a part of them (counted on its side, not timed)
    assert elapsed >= 1.0 and sent < 2 * 100, sent
    assert result.stopped_by_time and result.completed == 0
    statuses = [r.status for r in result.rows]
    assert len(statuses) == 6
    assert statuses.count(CANCELLED) == 2 and statuses.count(NOT_STARTED) == 4
    for row in result.rows:
        if row.status == CANCELLED:
            assert row.ttft_s is not None and row.latency_s is None  # it had started streaming
            assert "max_duration_s" in row.error
    assert result.latency_p90 is None
    assert "stopped by the time limit" in str(result)


def test_per_request_timeout_is_an_error(peer):
    peer.delay, peer.lines = 0.3, 20
    result = run_load(peer.url, "m", concurrency=1, requests_per_client=2, timeout_s=0.5, max_duration_s=10)
    assert [r.status for r in result.rows] == ["error", "error"]
    assert all("timeout" in e for e in result.errors)
    assert not result.stopped_by_time


def test_errors_are_recorded(peer):
    result = run_load(peer.url, "broken", concurrency=2, requests_per_client=1, timeout_s=5, max_duration_s=10)
    assert result.completed == 0 and len(result.errors) == 2
    assert all("engine crashed" in e for e in result.errors)


def test_unknown_model_says_pull(peer):
    with pytest.raises(ModelNotFound) as info:
        run_load(peer.url, "missing", concurrency=2, requests_per_client=1, timeout_s=5, max_duration_s=10)
    assert "ollama pull missing" in info.value.hint


def test_works_inside_a_running_event_loop(peer):
    """Jupyter runs an event loop already: the sync call must still work there."""

    async def notebook_cell():
        return run_load(peer.url, "m", concurrency=2, requests_per_client=1, timeout_s=5, max_duration_s=10)

    result = asyncio.run(notebook_cell())
    assert result.completed == 2 and peer.received == 2


# --------------------------------------------------------------------------- sweep, plot, advice
def test_sweep_plot_and_advice(peer):
    peer.delay, peer.lines = 0.01, 2
    df = sweep(peer.url, "m", levels=(2, 1), requests_per_client=2, timeout_s=5, max_duration_s=10)
    assert list(df.columns) == SWEEP_COLUMNS
    assert list(df.concurrency) == [1, 2]
    assert peer.received == 1 + 2 + 4  # warm-up + level 1 + level 2
    assert list(df.completed) == [2, 4]
    ax = plot_sweep(df, target_p90_s=1.0)
    assert ax.get_xlabel() == "concurrent students"
    assert "up to 2 concurrent" in sizing_advice(df, target_p90_s=60)


def _table(p90s, errors=None):
    import pandas as pd

    levels = [1, 2, 4, 8][: len(p90s)]
    return pd.DataFrame(
        {
            "concurrency": levels,
            "latency_p90_s": p90s,
            "output_tps": [10.0 * n for n in levels],
            "errors": errors or [0] * len(p90s),
            "cancelled": [0] * len(p90s),
            "not_started": [0] * len(p90s),
        }
    )


def test_sizing_advice_reads_the_data():
    df = _table([1.0, 2.0, 5.0, 11.0])
    text = sizing_advice(df, target_p90_s=6)
    assert "up to 4 concurrent" in text and "At 8 the p90 was 11.0 s" in text
    assert "up to 1 concurrent" in sizing_advice(df, target_p90_s=1.5)
    assert "No measured level" in sizing_advice(df, target_p90_s=0.5)
    assert "limit lies above 8" in sizing_advice(df, target_p90_s=20)
    # a level with failed requests never counts as meeting the target
    assert "up to 2 concurrent" in sizing_advice(_table([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 0]), 20)


def test_sizing_advice_rejects_bad_input():
    with pytest.raises(BadInput):
        sizing_advice(_table([1.0]), target_p90_s=0)
    with pytest.raises(BadInput):
        sizing_advice("not a table", target_p90_s=1)


def test_sends_the_ollama_api_key_when_set(peer, monkeypatch):
    """A shared `slm-course serve --api-key KEY` needs the key, as the `ollama` client sends it."""
    monkeypatch.setenv("OLLAMA_API_KEY", "class-key")
    run_load(peer.url, "m", concurrency=2, requests_per_client=1, timeout_s=5, max_duration_s=10)
    assert peer.auth == ["Bearer class-key"] * 2
    monkeypatch.delenv("OLLAMA_API_KEY")
    run_load(peer.url, "m", concurrency=1, requests_per_client=1, timeout_s=5, max_duration_s=10)
    assert peer.auth[-1] is None


# --------------------------------------------------------------------------- the real server
def test_real_server_answers_every_request(ollama_host):
    """Against the session's real server (`slm-course serve`, or SLM_TEST_OLLAMA_HOST) with a
    real model: every request completes and the engine reports the tokens it generated."""
    from helpers import OllamaBackend, pick_model

    model = pick_model(OllamaBackend(ollama_host), "smollm2:135m", verbose=False)
    result = run_load(
        ollama_host,
        model,
        concurrency=2,
        requests_per_client=1,
        num_predict=8,
        prompt="Say hello to the class.",
        timeout_s=120,
        max_duration_s=240,
    )
    assert not result.stopped_by_time and result.errors == [], str(result)
    assert result.completed == len(result.rows) == 2
    for row in result.rows:
        assert row.eval_count is not None and 0 < row.eval_count <= 8
        assert 0 < row.ttft_s <= row.latency_s
    assert result.output_tps > 0
