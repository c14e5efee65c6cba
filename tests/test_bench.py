"""helpers.bench: metric definitions, summaries, cold starts, the CLI - and fidelity: the kit's
tokens/s are the engine's own counters, checked through the server (Ollama's eval_count /
eval_duration) and in-process against llama.cpp's perf counters, on the bundled model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import httpx
import ollama
import pandas as pd
import pytest

from conftest import BUNDLED
from helpers.backends import OllamaBackend, OpenAIBackend
from helpers.bench import (
    BENCH_PROMPTS,
    COLUMNS,
    BenchPrompt,
    BenchRow,
    ceiling_table,
    check_latency_claim,
    choose_models,
    cold_vs_warm,
    latency_table,
    load_prompts,
    measure_call,
    model_size_bytes,
    read_csv,
    run_bench,
    save_csv,
    summarise,
    unload,
)
from helpers.errors import BadInput, ModelNotFound
from helpers.results import Metrics

PROMPT = "Write a short story about a robot who learns to paint."


def _row(**kw) -> BenchRow:
    base = dict(
        model="m",
        backend="ollama",
        phase="warm",
        stream=True,
        run=0,
        prompt_id="p0",
        ttft_s=0.1,
        tpot_s=0.01,
        decode_tps=100.0,
        decode_source="engine",
        prompt_tps=500.0,
        e2e_s=1.0,
        load_s=0.0,
        prompt_tokens=20,
        output_tokens=64,
        done_reason="length",
    )
    return BenchRow(**{**base, **kw})


def _df(rows) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)


@pytest.fixture(scope="module")
def server() -> OllamaBackend:
    return OllamaBackend(os.environ["OLLAMA_HOST"])


# --------------------------------------------------------------------------- pure arithmetic
def test_summary_is_median_p90_min_max_of_warm_streamed_rows_in_readable_units():
    ttfts = [0.100, 0.200, 0.300, 0.400, 1.000]
    rows = [_row(ttft_s=t, decode_tps=50.0 + i, run=i) for i, t in enumerate(ttfts)]
    rows += [
        _row(phase="cold", ttft_s=9.0, decode_tps=1.0),  # the cold call is kept apart
        _row(stream=False, ttft_s=7.0, decode_tps=2.0),
    ]  # and so are non-streamed calls
    s = summarise(_df(rows))
    ttft = s.loc[("m", "time to first token")]
    assert ttft["unit"] == "ms" and ttft["n"] == 5
    assert ttft["median"] == 300.0 and ttft["min"] == 100.0 and ttft["max"] == 1000.0
    assert ttft["p90"] == pytest.approx(760.0)  # linear interpolation between 400 and 1000
    assert s.loc[("m", "decode speed"), "median"] == 52.0
    assert summarise(_df(rows), phase="cold").loc[("m", "time to first token"), "median"] == 9000.0
    assert summarise(_df(rows), stream=False).loc[("m", "time to first token"), "median"] == 7000.0


def test_summary_skips_metrics_nobody_reported():
    s = summarise(_df([_row(prompt_tps=None, tpot_s=None)]))
    assert ("m", "prompt reading") not in s.index and ("m", "time per output token") not in s.index
    with pytest.raises(BadInput, match="no warm rows"):
        summarise(_df([_row(phase="cold")]))
    with pytest.raises(BadInput, match="run_bench"):
        summarise(pd.DataFrame({"x": [1]}))


def test_cold_vs_warm_and_latency_tables():
    rows = [
        _row(phase="cold", load_s=0.8, ttft_s=1.0, e2e_s=2.0),
        _row(ttft_s=0.1, e2e_s=1.0),
        _row(ttft_s=0.3, e2e_s=1.2),
    ]
    t = cold_vs_warm(_df(rows)).loc["m"]
    assert t["cold load (ms)"] == 800.0 and t["cold TTFT (ms)"] == 1000.0
    assert t["warm TTFT, median (ms)"] == 200.0 and t["warm end-to-end, median (ms)"] == 1100.0
    with pytest.raises(BadInput, match="cold and a warm"):
        cold_vs_warm(_df(rows[1:]))
    lat = latency_table(_df(rows), _df([_row(stream=False, ttft_s=1.1, e2e_s=1.1)]))
    assert lat.loc[("m", "streaming"), "first words visible (ms)"] == 200.0
    assert lat.loc[("m", "not streaming"), "first words visible (ms)"] == 1100.0


@pytest.mark.parametrize("median_ttft,verdict", [(0.05, "faster"), (0.1, "within"), (0.5, "within"), (0.51, "slower")])
def test_latency_claim_verdicts(median_ttft, verdict):
    df = _df([_row(ttft_s=median_ttft)] * 3)
    check = check_latency_claim(df, "m", 0.1, 0.5)
    assert check.verdict == verdict and check.n == 3
    assert "100-500 ms" in str(check) and "time to first token" in str(check)


def test_latency_claim_rejects_bad_ranges_and_unknown_models():
    df = _df([_row()])
    with pytest.raises(BadInput, match="low <= high"):
        check_latency_claim(df, "m", 0.5, 0.1)
    with pytest.raises(BadInput, match="metric"):
        check_latency_claim(df, "m", 0.1, 0.5, metric="decode_tps")
    with pytest.raises(BadInput, match="no warm measurements of other"):
        check_latency_claim(df, "other", 0.1, 0.5)


def test_ceiling_table_is_bandwidth_over_bytes_and_ignores_wall_clock_rows():
    rows = [_row(decode_tps=v) for v in (40.0, 50.0, 60.0)] + [
        _row(model="api", decode_tps=300.0, decode_source="wall")
    ]
    t = ceiling_table(_df(rows), bandwidth_gbs=20.0, sizes={"m": 200_000_000, "api": None})
    assert list(t.index) == ["m"]
    row = t.loc["m"]
    assert row["ceiling (tokens/s)"] == 100.0 and row["measured median (tokens/s)"] == 50.0
    assert row["share of ceiling"] == 0.5 and row["weights (MB)"] == 200.0
    with pytest.raises(BadInput, match="known size"):
        ceiling_table(_df(rows), 20.0, sizes={})


def test_prompt_files(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"id": "a", "prompt": "Explain DNS."}\n\n{"prompt": "Write a haiku."}\n')
    assert load_prompts(jl) == [BenchPrompt("a", "Explain DNS."), BenchPrompt("p1", "Write a haiku.")]
    txt = tmp_path / "p.txt"
    txt.write_text("Explain DNS.\nWrite a haiku.\n")
    assert [p.text for p in load_prompts(txt)] == ["Explain DNS.", "Write a haiku."]
    (tmp_path / "bad.jsonl").write_text('{"prompt": \n')
    with pytest.raises(BadInput, match="line 1 is not valid JSON"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(BadInput, match="empty"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(BadInput, match="cannot read"):
        load_prompts(tmp_path / "missing.txt")


def test_csv_round_trip(tmp_path):
    rows = [_row(), _row(tpot_s=None, prompt_tps=None, phase="cold")]
    path = save_csv(_df(rows), tmp_path / "sub" / "bench.csv")
    back = read_csv(path)
    assert list(back.columns) == COLUMNS and len(back) == 2
    assert back.loc[1, "tpot_s"] is None and back.loc[0, "decode_tps"] == 100.0
    assert summarise(back).loc[("m", "decode speed"), "median"] == 100.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"models": []}, "non-empty list"),
        ({"models": [""]}, "non-empty list"),
        ({"n_runs": 0}, "n_runs"),
        ({"n_runs": 2.5}, "n_runs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"warmup": -1}, "warmup"),
        ({"prompts": [""]}, "prompt 0"),
        ({"prompts": []}, "empty"),
    ],
)
def test_bad_arguments_fail_before_any_call_with_a_hint(server, kwargs, match):
    args = {"models": [BUNDLED], **kwargs}
    with pytest.raises(BadInput, match=match) as err:
        run_bench(server, args.pop("models"), progress=False, **args)
    assert err.value.hint


def test_unknown_model_names_the_pull_command(server):
    with pytest.raises(ModelNotFound) as err:
        run_bench(server, ["no-such-model:1b"], progress=False)
    assert "ollama pull no-such-model:1b" in err.value.hint
    with pytest.raises(ModelNotFound):
        choose_models(server, ["no-such-model:1b"], verbose=False)
    chosen = choose_models(server, [], verbose=False)  # in course order: offline Qwens after smollm2
    assert chosen[0] == BUNDLED and set(chosen) == {i.name for i in server.list_model_info()}


# --------------------------------------------------------------------------- real calls
class _Recorder(httpx.HTTPTransport):
    """An httpx transport that keeps the raw bytes of every /api/chat answer it passes on."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = bytearray()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/api/chat":
            inner, raw = response.stream, self.raw

            class Tee(httpx.SyncByteStream):
                def __iter__(self):
                    for chunk in inner:
                        raw.extend(chunk)
                        yield chunk

                def close(self):
                    inner.close()

            response.stream = Tee()
        return response


@pytest.mark.no_server
def test_speeds_of_ollamas_published_example_response():
    """The final chunk of docs.ollama.com/api/usage ("Example response", read 2026-12-05): the
    speeds worked out by hand, not with the kit's formula. 18 tokens in 52,479,709 ns =
    18 / 0.052479709 s = 342.99 tokens/s; 11 prompt tokens in 13,074,791 ns = 841.31 tokens/s."""
    final = {
        "model": "gemma3",
        "done": True,
        "done_reason": "stop",
        "total_duration": 174560334,
        "load_duration": 101397084,
        "prompt_eval_count": 11,
        "prompt_eval_duration": 13074791,
        "eval_count": 18,
        "eval_duration": 52479709,
    }
    m = Metrics.from_ollama(final, ttft_s=None, total_s=0.17456)
    assert m.decode_tps == pytest.approx(342.99, abs=0.005)
    assert m.prompt_tps == pytest.approx(841.31, abs=0.005)
    assert (m.output_tokens, m.prompt_tokens, m.load_s) == (18, 11, 0.101397084)


def test_fidelity_through_the_server_is_ollamas_own_eval_count_over_eval_duration(server):
    """(a) The tokens/s the kit reports equal eval_count / eval_duration of the raw final chunk."""
    backend = OllamaBackend(server.host)
    recorder = _Recorder()
    backend.client = ollama.Client(host=server.host, timeout=120, transport=recorder)
    row = measure_call(backend, BUNDLED, PROMPT, max_tokens=32)
    final = json.loads(bytes(recorder.raw).decode().strip().splitlines()[-1])
    assert final["done"] is True
    assert row.decode_source == "engine"
    assert row.output_tokens == final["eval_count"] > 1
    # the speeds of the raw chunk itself (the arithmetic is checked on Ollama's published example above)
    raw = Metrics.from_ollama(final, ttft_s=None, total_s=0.0)
    assert (row.decode_tps, row.prompt_tps) == (raw.decode_tps, raw.prompt_tps)
    assert row.load_s == final["load_duration"] / 1e9
    # the client-side metrics: first token before the end, TPOT over the tokens after the first
    assert 0 < row.ttft_s < row.e2e_s
    assert row.tpot_s == pytest.approx((row.e2e_s - row.ttft_s) / (row.output_tokens - 1))


def test_cold_start_is_measured_apart_after_unloading(server):
    df = run_bench(server, [BUNDLED], [PROMPT], n_runs=2, max_tokens=8, progress=False)
    assert list(df["phase"]) == ["cold", "warm", "warm"] and list(df["run"]) == [0, 0, 1]
    cold, warm = df.iloc[0], df.iloc[1:]
    assert cold["load_s"] > 0.01 and cold["load_s"] > 10 * warm["load_s"].max()
    assert all(df["decode_source"] == "engine") and all(df["output_tokens"] <= 8)
    assert df.attrs["max_tokens"] == 8 and df.attrs["prompts"] == ["p0"]
    assert unload(server, BUNDLED) is True
    assert BUNDLED not in [m.model for m in server.ps().models]
    table = cold_vs_warm(df)
    assert table.loc[BUNDLED, "cold load (ms)"] == round(cold["load_s"] * 1000, 1)


def test_without_streaming_the_first_words_arrive_with_the_last(server):
    row = measure_call(server, BUNDLED, BENCH_PROMPTS[0], max_tokens=8, stream=False)
    assert row.stream is False and row.ttft_s == row.e2e_s and row.tpot_s is None
    assert row.decode_source == "engine" and row.decode_tps > 0 and row.prompt_id == "explain"


def test_an_openai_compatible_endpoint_is_timed_on_the_wall_clock(server):
    api = OpenAIBackend(f"{server.host}/v1")
    row = measure_call(api, BUNDLED, PROMPT, max_tokens=8)
    assert row.backend == "openai" and row.decode_source == "wall"
    assert row.prompt_tps is None and row.load_s == 0.0
    assert row.decode_tps > 0 and 0 < row.ttft_s <= row.e2e_s
    assert unload(api, BUNDLED) is False  # a remote API cannot be unloaded
    assert model_size_bytes(api, BUNDLED) is None
    assert model_size_bytes(server, BUNDLED) > 50e6


def test_command_line_prints_the_summary_and_saves_rows(tmp_path, capsys):
    from helpers.cli import main

    prompts = tmp_path / "one.txt"
    prompts.write_text("Name three colours.\n")
    csv = tmp_path / "rows.csv"
    code = main(
        [
            "bench",
            "-m",
            BUNDLED,
            "--runs",
            "2",
            "--max-tokens",
            "6",
            "--prompts",
            str(prompts),
            "--csv",
            str(csv),
            "--quiet",
            "--no-cold",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "time to first token" in out and "decode speed" in out and str(csv) in out
    rows = read_csv(csv)
    assert len(rows) == 2 and set(rows["phase"]) == {"warm"}
    assert main(["bench", "-m", "no-such-model:1b", "--quiet"]) == 1
    assert "ollama pull no-such-model:1b" in capsys.readouterr().err


def test_calls_can_be_measured_several_at_a_time(server):
    """`slm-course bench --concurrency 4`: the same rows, sent four at a time (helpers.concurrency)."""
    df = run_bench(
        server, [BUNDLED], [PROMPT, "Name a colour."], n_runs=2, max_tokens=8, cold=False, progress=False, concurrency=4
    )
    assert len(df) == 4 and set(df["run"]) == {0, 1} and all(df["output_tokens"] > 0)
    assert df.attrs["concurrency"] == 4 and df.attrs["wall_s"] > 0
    with pytest.raises(BadInput, match="concurrency"):
        run_bench(server, [BUNDLED], n_runs=1, concurrency=0, progress=False)
