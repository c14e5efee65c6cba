"""Lesson 02's lineup against the session's real server: enrichment, pulls, a real run, the claims table."""

from __future__ import annotations

import httpx
import matplotlib
import pandas as pd
import pytest

from conftest import BUNDLED
from helpers import BadInput, connect
from helpers.lineup import (
    SEED_PROMPTS,
    SOURCE_TABLE,
    LineupPrompt,
    enrich_from_show,
    is_local_host,
    lineup_models,
    plot_size_vs_speed,
    pull_what_fits,
    resolve,
    revisit_claims,
    run_lineup,
    seed_claims_table,
    side_by_side,
    skipped,
    speed_by_prompt,
    speed_summary,
)
from helpers.registry import SEED_MODELS

matplotlib.use("Agg")
FAST = {"temperature": 0, "seed": 42, "num_predict": 12}


@pytest.fixture(scope="module")
def backend(ollama_host):
    return connect(ollama_host, fallback=False, verbose=False)


@pytest.fixture(scope="module")
def runs(backend):
    """One real lineup run: the bundled model on two prompts, and phi3:mini (not on the server)."""
    prompts = [SEED_PROMPTS[3], "Name one colour."]
    return run_lineup(backend, [BUNDLED, "phi3:mini"], prompts, FAST, progress=False)


def test_seed_prompts_cover_the_articles_examples():
    names = [p.name for p in SEED_PROMPTS]
    assert names == ["rest_api", "calculus", "summary", "fact"]
    assert "REST API endpoint" in SEED_PROMPTS[0].prompt and "derivative" in SEED_PROMPTS[1].prompt
    assert all(p.expect for p in SEED_PROMPTS)


def test_resolve_matches_tags_and_aliases():
    assert resolve("mistral:7b", ["mistral:latest"]) == "mistral:latest"
    assert resolve("llama2", ["llama2:latest"]) == "llama2:latest"
    assert resolve(BUNDLED, [BUNDLED]) == BUNDLED
    assert resolve("phi3:mini", [BUNDLED]) is None


def test_default_lineup_is_the_articles_four_plus_what_the_server_has(backend):
    default = lineup_models(backend)
    assert default[:4] == list(SEED_MODELS) and BUNDLED in default[4:]
    # the rest is what the server has: the bundled model and any installed offline model
    assert set(default[4:]) == {i.name for i in backend.list_model_info()}
    assert lineup_models(backend, ["qwen2.5:0.5b", BUNDLED, BUNDLED]) == ["qwen2.5:0.5b", BUNDLED]
    with pytest.raises(BadInput):
        lineup_models(backend, "phi3:mini")
    with pytest.raises(BadInput):
        lineup_models(backend, ["phi3:mini", ""])


def test_enrichment_reads_size_and_context_from_the_server(backend, ollama_host):
    info = enrich_from_show(backend, ["phi3:mini", BUNDLED, "no-such-model:1b"])
    tags = httpx.get(f"{ollama_host}/api/tags", timeout=10).json()["models"]
    size = next(m["size"] for m in tags if m["name"] == BUNDLED)
    row = info.loc[BUNDLED]
    assert row["on server"] == BUNDLED and row["source"].startswith("server")
    assert row["size (GB)"] == pytest.approx(size / 1e9, abs=1e-3)
    assert row["params (B)"] == pytest.approx(0.135) and row["context"] == 8192
    assert row["quantization"] == "Q4_1" and row["RAM est. (GB)"] == pytest.approx(0.62, abs=0.06)  # 0.10 GB file
    phi = info.loc["phi3:mini"]
    assert phi["on server"] == "" and phi["source"] == "registry" and phi["article"] == "yes"
    assert phi["size (GB)"] == 2.2 and phi["licence"] == "MIT"
    assert info.loc["no-such-model:1b", "source"] == "unknown to the registry"


def test_pull_what_fits_pulls_skips_and_says_why(backend):
    names = [BUNDLED, "phi3:mini", "mistral:7b", "no-such-model:1b"]
    plan = pull_what_fits(backend, names, ram_gb=4.0, disk_gb=50, pull=False)
    assert list(plan["action"]) == ["have it", "would pull", "skipped", "skipped"]
    assert "needs ~5.4 GB RAM" in plan.loc["mistral:7b", "reason"]
    assert "unknown" in plan.loc["no-such-model:1b", "reason"]
    # a real pull: the kit's offline server refuses any model it does not bundle, with its reason
    done = pull_what_fits(backend, [BUNDLED, "qwen2.5:0.5b"], ram_gb=8, disk_gb=50, pull=True, progress=False)
    assert done.loc[BUNDLED, "action"] == "have it"
    assert done.loc["qwen2.5:0.5b", "action"] == "skipped"
    assert "cannot be downloaded" in done.loc["qwen2.5:0.5b", "reason"]
    assert done.loc["qwen2.5:0.5b", "command"] == "ollama pull qwen2.5:0.5b"
    # disk is a budget used up in order: 1.0 + 1.3 GB do not both fit in 2 GB
    tight = pull_what_fits(backend, ["qwen2.5:1.5b", "llama3.2:1b"], ram_gb=8, disk_gb=2.0, pull=False)
    assert list(tight["action"]) == ["would pull", "skipped"] and "disk" in tight.iloc[1]["reason"]


def test_pull_what_fits_rejects_bad_budgets(backend):
    for ram in (0, -1, "8", True):
        with pytest.raises(BadInput) as err:
            pull_what_fits(backend, [BUNDLED], ram_gb=ram, disk_gb=10)
        assert "machine_summary" in err.value.hint


def test_run_lineup_answers_for_real_and_skips_what_is_missing(runs):
    ok = runs[runs["status"] == "ok"]
    assert list(ok["prompt"]) == ["fact", "prompt_2"] and set(ok["model"]) == {BUNDLED}
    assert all(a.strip() for a in ok["answer"])
    assert (ok["output_tokens"] > 0).all() and (ok["output_tokens"] <= FAST["num_predict"]).all()
    assert (ok["tokens_per_s"] > 0).all()
    assert (ok["ttft_s"] <= ok["latency_s"]).all() and (ok["cold_start_s"] > 0).all()
    # the check reads the answer: "Canberra" in the fact answer, nothing to look for in a free prompt
    fact = ok.iloc[0]
    assert fact["expected found"] == ("canberra" in fact["answer"].lower())
    assert pd.isna(ok["expected found"].iloc[1])
    miss = skipped(runs)
    assert list(miss.index) == ["phi3:mini"] and "ollama pull phi3:mini" in miss.loc["phi3:mini", "note"]


def test_run_lineup_rejects_bad_prompts(backend):
    for bad in ([], "Hello", [""], [LineupPrompt("x", "  ")]):
        with pytest.raises(BadInput):
            run_lineup(backend, [BUNDLED], bad, FAST, progress=False)


def test_side_by_side_speed_summary_and_plot(backend, runs):
    table = side_by_side(runs, width=10)
    assert list(table.index) == ["fact", "prompt_2"] and list(table.columns) == [BUNDLED]
    assert all(len(a) <= 10 for a in table[BUNDLED])
    per_prompt = speed_by_prompt(runs)
    assert list(per_prompt.index) == ["fact", "prompt_2"]
    assert per_prompt[("output_tokens", BUNDLED)].tolist() == runs["output_tokens"].iloc[:2].tolist()
    info = enrich_from_show(backend, [BUNDLED])
    summary = speed_summary(runs, info)
    assert list(summary.index) == [BUNDLED] and summary.loc[BUNDLED, "prompts"] == 2
    ok = runs[runs["status"] == "ok"]
    assert summary.loc[BUNDLED, "median tokens/s"] == pytest.approx(ok["tokens_per_s"].median())
    assert summary.loc[BUNDLED, "size (GB)"] == info.loc[BUNDLED, "size (GB)"]
    ax = plot_size_vs_speed(summary)
    assert [t.get_text() for t in ax.texts][0] == BUNDLED
    with pytest.raises(BadInput):
        plot_size_vs_speed(summary.drop(columns=["size (GB)"]))


def _summary(ttft_ms: list[float], params: list[float]) -> pd.DataFrame:
    """A speed summary shaped like speed_summary's, with given numbers (to test the verdicts)."""
    return pd.DataFrame(
        {"median TTFT (ms)": ttft_ms, "median latency (s)": [t / 100 for t in ttft_ms], "params (B)": params},
        index=[f"m{i}" for i in range(len(params))],
    )


def test_revisit_claims_verdicts_follow_the_numbers():
    fast = revisit_claims(_summary([120, 300], [3.8, 7.2]), "http://127.0.0.1:11434")
    assert list(fast.index) == list(SOURCE_TABLE.index)
    assert fast.loc["speed", "verdict"].startswith("confirmed for the first token")
    assert "120-300 ms" in fast.loc["speed", "measured here"]
    assert fast.loc["parameters", "verdict"] == "within 1B-13B"  # the article: "1B-13B (Phi-3, Gemma)"
    assert fast.loc["parameters", "measured here"].startswith("3.8B-7.2B")
    assert fast.loc["privacy", "verdict"].startswith("confirmed")
    assert fast.loc["cost per 1M tokens", "verdict"] == "cannot check here"
    slow = revisit_claims(_summary([900], [0.135]), "http://gpu-box.example.org:11434")
    assert slow.loc["speed", "verdict"].startswith("not confirmed")
    assert slow.loc["parameters", "verdict"].startswith("outside 1B-13B: 0.135B smaller")
    big = revisit_claims(_summary([300], [8.5, 14.0]), "http://127.0.0.1:11434")
    assert big.loc["parameters", "verdict"] == "outside 1B-13B: 14B larger than the article's 'small' range"
    assert slow.loc["privacy", "verdict"].startswith("not on this machine")
    with pytest.raises(BadInput):
        revisit_claims(pd.DataFrame(), "http://127.0.0.1:11434")


def test_is_local_host():
    assert is_local_host("http://127.0.0.1:11434") and is_local_host("localhost:11434")
    assert not is_local_host("http://10.0.0.5:11434") and not is_local_host("https://api.openai.com")


def test_seed_claims_table_reports_missing_models(runs):
    table = seed_claims_table(runs)
    assert list(table.index) == list(SEED_MODELS)
    assert table.loc["phi3:mini", "this run"] == "not run here: `ollama pull phi3:mini`"


def test_embedded_engine_lineup_reads_the_bundled_file_and_cannot_pull():
    from helpers.backends import EmbeddedBackend
    from helpers.registry import BUNDLED_MODEL as _B
    from helpers.serving.weights import local_model_path

    embedded = EmbeddedBackend()
    info = enrich_from_show(embedded, [BUNDLED, "phi3:mini"])
    assert info.loc[BUNDLED, "source"] == "bundled file + registry"
    assert info.loc[BUNDLED, "size (GB)"] == pytest.approx(local_model_path(_B).stat().st_size / 1e9, abs=1e-3)
    plan = pull_what_fits(embedded, [BUNDLED, "phi3:mini"], ram_gb=8, disk_gb=50, pull=True)
    assert list(plan["action"]) == ["have it", "skipped"]
    assert "cannot pull" in plan.loc["phi3:mini", "reason"] and "install Ollama" in plan.loc["phi3:mini", "reason"]
