"""Lesson 08's memory arithmetic, checked against published figures and the bundled GGUF file;
the measurements' bounds; and the offline path (a closed port fails fast, for real)."""

from __future__ import annotations

import struct
import time

import pytest

from helpers.edge import (
    DEVICES,
    GB,
    MODEL_SHAPES,
    ModelShape,
    bits_per_weight,
    estimate_memory,
    fit_table,
    kv_cache_bytes,
    largest_context,
    measure_rss,
    measure_speed,
    model_path,
    model_shape,
    read_gguf,
    shape_from_metadata,
    weights_bytes,
)
from helpers.errors import BackendUnavailable, BadInput
from helpers.net import free_loopback_port

pytestmark = pytest.mark.no_server  # a unit test: no model server needed

GIB = 2**30


# --------------------------------------------------------------------------- arithmetic
def test_bits_per_weight_of_block_formats_and_llama_cpp_table():
    assert bits_per_weight("Q4_0") == 4.5  # 18 bytes per 32 weights
    assert bits_per_weight("Q4_1") == 5.0  # 20 bytes per 32 weights
    assert bits_per_weight("q8_0") == pytest.approx(8.5, abs=0.01)
    assert bits_per_weight("Q4_K_M") == pytest.approx(4.89, abs=0.01)
    assert bits_per_weight("F16") == pytest.approx(16.0, abs=0.01)
    with pytest.raises(BadInput) as info:
        bits_per_weight("Q4_K_XL")
    assert "Q4_K_M" in info.value.hint


def test_weights_reproduce_the_sizes_in_llama_cpps_table():
    """llama.cpp's table lists Llama-3.1-8B (8.03e9 parameters) at 4.58 GiB in Q4_K_M,
    7.95 GiB in Q8_0 and 14.96 GiB in F16: bpw x parameters / 8 must give the same."""
    n = 8.03e9
    assert weights_bytes(n, "Q4_K_M") / GIB == pytest.approx(4.58, abs=0.01)
    assert weights_bytes(n, "Q8_0") / GIB == pytest.approx(7.95, abs=0.01)
    assert weights_bytes(n, "F16") / GIB == pytest.approx(14.96, abs=0.01)
    assert weights_bytes(1e9, 4.0) == 0.5e9
    for bad in (0, -1, "7B", True):
        with pytest.raises(BadInput):
            weights_bytes(bad, "Q4_0")
    with pytest.raises(BadInput):
        weights_bytes(1e9, 64)


def test_kv_cache_formula():
    # Llama 2 7B: 32 layers x 32 KV heads x 128 -> 0.5 MiB per token in f16, 2 GiB at 4096
    assert kv_cache_bytes(32, 4096, 32, 128) == 2 * GIB
    # Mistral 7B shares each KV head among 4 query heads (8 KV heads): a quarter of that
    assert MODEL_SHAPES["mistral:7b"].kv_bytes(4096) == 512 * 2**20
    assert kv_cache_bytes(32, 4096, 32, 128, bytes_per_element=1) == GIB  # a q8_0-like cache
    assert kv_cache_bytes(10, 2000, 2, 64) == 2 * kv_cache_bytes(10, 1000, 2, 64)  # linear
    for args in ((0, 1, 1, 1), (1, -5, 1, 1), (1, 1, 1.5, 1), (1, 1, 1, True)):
        with pytest.raises(BadInput):
            kv_cache_bytes(*args)
    with pytest.raises(BadInput):
        kv_cache_bytes(1, 1, 1, 1, bytes_per_element=0)


def test_largest_context_and_fit_table_agree_with_the_sums():
    s = MODEL_SHAPES["llama3.2:1b"]
    weights = weights_bytes(s.n_params, "Q4_K_M")
    budget = weights + s.kv_bytes(1000)
    assert largest_context(s, "Q4_K_M", budget) == 768  # the multiple of 256 below 1000
    assert largest_context(s, "Q4_K_M", weights * 0.9) == 0
    assert largest_context(s, "Q4_K_M", 1e12) == s.context_length
    with pytest.raises(BadInput):
        largest_context(s, "Q4_K_M", 0)
    table = fit_table(list(MODEL_SHAPES.values()), n_ctx=4096)
    for name, row in table.iterrows():
        shape = MODEL_SHAPES[name]
        need = estimate_memory(shape, "Q4_K_M", min(4096, shape.context_length)).total_bytes
        assert row["needs (GB)"] == pytest.approx(need / GB, abs=0.01)
        for d in DEVICES:
            assert row[d.name].startswith("yes") == (need <= d.budget_gb * GB), (name, d.name)
    assert table.loc["llama2:7b", "phone, 4 GB"] == "no"
    assert table.loc["qwen2.5:0.5b", "phone, 4 GB"].startswith("yes")


# --------------------------------------------------------------------------- the real GGUF
def test_gguf_reader_matches_the_published_shape_of_the_bundled_model():
    gguf = read_gguf(model_path())
    shape = model_shape()
    # SmolLM2-135M's config (hidden 576, 30 layers, 9 heads / 3 KV heads, MLP 1536, vocabulary
    # 49,152, tied embeddings): 49,152 x 576 + 30 x (2 x 576^2 + 2 x 576 x 192 + 3 x 576 x 1536
    # + 2 x 576) + 576 = 134,515,008 parameters, counted by hand, not by the reader
    assert gguf.n_params == shape.n_params == 134_515_008
    assert shape_from_metadata(gguf.metadata, n_params=gguf.n_params, name=shape.name, source=shape.source) == shape
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim) == (30, 9, 3, 64)
    # the rest of the file is the header: metadata (the tokenizer's vocabulary) and padding
    assert 0 < gguf.file_bytes - gguf.tensor_bytes < 5e6
    by_type = gguf.by_type()
    assert by_type["params"].sum() == gguf.n_params
    assert set(by_type.index) == {"Q4_1", "Q8_0", "F32"}
    # a Q4_1 file averages more than 5 bpw: its token embeddings are Q8_0
    assert gguf.tensor_bytes * 8 / gguf.n_params > bits_per_weight("Q4_1")


def test_gguf_reader_rejects_other_files(tmp_path):
    other = tmp_path / "x.gguf"
    other.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(BadInput, match="not a GGUF"):
        read_gguf(other)
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1)[:10])
    with pytest.raises(BadInput):
        read_gguf(truncated)
    with pytest.raises(BadInput):
        read_gguf(tmp_path / "absent.gguf")


def test_shape_from_ollama_style_metadata():
    info = {
        "general.architecture": "llama",
        "general.parameter_count": 7_241_732_096,
        "llama.block_count": 32,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "llama.embedding_length": 4096,
        "llama.context_length": 32768,
    }
    shape = shape_from_metadata(info, name="mistral:7b")
    assert shape.head_dim == 128 and shape.kv_bytes(4096) == 512 * 2**20
    with pytest.raises(BadInput):
        shape_from_metadata({"llama.block_count": 1})
    with pytest.raises(BadInput):
        shape_from_metadata(
            {
                "general.architecture": "llama",
                "llama.block_count": 1,
                "llama.attention.head_count": 1,
                "llama.embedding_length": 64,
                "llama.context_length": 8,
            }
        )  # no parameter count


# --------------------------------------------------------------------------- measurements
def test_measured_rss_is_close_to_the_prediction():
    df = measure_rss(contexts=(512,))
    ratio = df["measured / predicted"].iloc[0]
    assert 0.8 < ratio < 2.0, df.to_string()  # weights + KV explain most of the memory
    with pytest.raises(BadInput):
        measure_rss(contexts=(16,))
    with pytest.raises(BadInput):
        measure_rss(contexts=())


def test_measure_speed_is_bounded_and_real():
    df = measure_speed(threads=(1,), contexts=(64,), num_predict=4, progress=False)
    assert len(df) == 1 and not df.attrs["stopped_by_time"]
    row = df.iloc[0]
    assert row["output tokens"] >= 1 and row["decode tokens/s"] > 0 and row["prompt tokens"] > 1
    t0 = time.monotonic()
    df = measure_speed(threads=(1, 2), contexts=(64, 128), num_predict=4, max_duration_s=1e-6, progress=False)
    assert df.attrs["stopped_by_time"] and len(df) == 0
    assert time.monotonic() - t0 < 30  # at most the one run that had started, cut short
    for kwargs in (
        {"threads": ()},
        {"threads": (0,)},
        {"contexts": (32,)},
        {"fill": 0.9},
        {"num_predict": 0},
        {"repeats": 11},
        {"threads": (1, 2, 3, 4), "repeats": 9},
    ):
        with pytest.raises(BadInput):
            measure_speed(**{"progress": False, **kwargs})


def test_a_closed_port_fails_fast_with_backend_unavailable():
    """The offline demo's premise, for real: nothing listens, the call fails at once."""
    from helpers.backends import OpenAIBackend

    port = free_loopback_port()
    large = OpenAIBackend(f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=10, max_retries=0)
    with pytest.raises(BackendUnavailable) as info:
        large.generate("gpt-4o-mini", "hello", options={"num_predict": 5})
    assert info.value.hint
    # at once: the system refused the connection, no timeout was waited out
    causes, exc = [], info.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(c, ConnectionRefusedError) for c in causes), causes
    assert not any(isinstance(c, TimeoutError) or "Timeout" in type(c).__name__ for c in causes), causes


def test_model_shape_type():
    assert isinstance(MODEL_SHAPES["phi3:mini"], ModelShape)
    # Phi-3-mini: 32 layers, 32 KV heads of 96 (no grouped queries), f16 keys and values: 384 KiB
    assert MODEL_SHAPES["phi3:mini"].kv_bytes_per_token() == 393_216
