"""Speed of the course's models on this machine, and how faithful the kit's speed numbers are.

Reports (numbers, not pass/fail):
1. `run_bench` on the models (default: the bundled model, through a fresh `slm-course serve`, or a
   server given with --host): median / p90 / min-max per metric, cold vs warm, and each model's
   share of the memory-bandwidth ceiling.
2. Fidelity, in-process on the bundled model: the kit's decode tokens/s against llama.cpp's own
   perf counters - decode only (t_eval) and decode + sampling (t_eval + t_sample, which is what
   Ollama's eval_duration covers) - per call, with a fast and a slow consumer of the stream.
Targets: kit within 3% of llama.cpp (decode + sampling); small-model warm TTFT within the
article's 100-500 ms.

    python benchmarks/bench_models.py --runs 5 --max-tokens 64
    python benchmarks/bench_models.py --host http://127.0.0.1:11434 -m phi3:mini -m mistral:7b
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.backends import EmbeddedBackend, OllamaBackend  # noqa: E402
from helpers.bench import (  # noqa: E402
    ceiling_table,
    check_latency_claim,
    cold_vs_warm,
    model_size_bytes,
    run_bench,
    save_csv,
    summarise,
)
from helpers.hardware import measure_memory_bandwidth  # noqa: E402
from helpers.net import free_loopback_port as free_port  # noqa: E402
from helpers.registry import BUNDLED_MODEL  # noqa: E402
from helpers.serving import start_server, stop_server  # noqa: E402

PROMPT = "Write a short story about a robot who learns to paint."


def speed_report(host: str, models: list[str], runs: int, max_tokens: int) -> None:
    """Section 1: the benchmark through an Ollama API."""
    backend = OllamaBackend(host)
    df = run_bench(backend, models, n_runs=runs, max_tokens=max_tokens)
    print(f"\n== speed via {backend.describe()}: {runs} runs x {len(df.attrs['prompts'])} prompts, "
          f"{max_tokens} tokens")
    print(summarise(df).to_string())
    print(cold_vs_warm(df).to_string())
    bw = measure_memory_bandwidth()
    print(f"memory bandwidth: {bw}")
    print(ceiling_table(df, bw.gbs_median, {m: model_size_bytes(backend, m) for m in models}).to_string())
    for m in models:
        print(check_latency_claim(df, m, 0.1, 0.5, metric="ttft_s"), "(target: inside)")
    print(f"rows: {save_csv(df, ROOT / 'benchmarks' / 'results' / 'bench_models.csv')}")


def fidelity(runs: int, max_tokens: int, consumer_delay_s: float) -> list[dict]:
    """Section 2: per call, the kit's tokens/s and llama.cpp's, with sampler perf counting on."""
    import llama_cpp
    import llama_cpp.llama_cpp as lowlevel

    default_params = lowlevel.llama_sampler_chain_default_params

    def counting_params():
        params = default_params()
        params.no_perf = False
        return params

    lowlevel.llama_sampler_chain_default_params = counting_params
    from helpers.serving.engine import get_engine

    backend = EmbeddedBackend()
    backend.generate(BUNDLED_MODEL, "Hello", options={"num_predict": 4})
    [llm] = [m.llm for m in get_engine().loaded() if m.name == BUNDLED_MODEL]
    out = []
    try:
        for i in range(runs):
            llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
            messages = [{"role": "system", "content": f"[run {i} {time.time_ns()}] You are helpful."},
                        {"role": "user", "content": PROMPT}]
            final = None
            for piece in backend.stream_chat(BUNDLED_MODEL, messages,
                                             options={"temperature": 0, "seed": 42, "num_predict": max_tokens}):
                if piece.text and consumer_delay_s:
                    time.sleep(consumer_delay_s)  # a slow reader, e.g. printing every piece in Jupyter
                final = piece
            perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
            sampler = llama_cpp.llama_perf_sampler(llm._sampler.sampler)
            sample_ms = sampler.t_sample_ms / max(sampler.n_sample, 1)
            m = final.metrics
            out.append({"kit_tps": m.decode_tps, "tokens": m.output_tokens, "n_eval": perf.n_eval,
                        "eval_only_tps": perf.n_eval / perf.t_eval_ms * 1000,
                        "eval_sample_tps": perf.n_eval / (perf.t_eval_ms + sample_ms * perf.n_eval) * 1000,
                        "kit_ms_per_token": m.decode_s * 1000 / m.output_tokens,
                        "eval_ms_per_token": perf.t_eval_ms / perf.n_eval, "sample_ms_per_token": sample_ms})
    finally:
        lowlevel.llama_sampler_chain_default_params = default_params
    return out


def print_fidelity(rows: list[dict], label: str) -> None:
    med = statistics.median
    vs_eval = [r["kit_tps"] / r["eval_only_tps"] - 1 for r in rows]
    vs_both = [r["kit_tps"] / r["eval_sample_tps"] - 1 for r in rows]
    print(f"\n== fidelity, {label}: {len(rows)} calls of {rows[0]['tokens']} tokens, in-process")
    print(f"kit tokens/s (median)                  {med(r['kit_tps'] for r in rows):8.2f}")
    print(f"llama.cpp decode only (t_eval)          {med(r['eval_only_tps'] for r in rows):8.2f}  "
          f"kit differs by {med(vs_eval):+.2%} (range {min(vs_eval):+.2%} .. {max(vs_eval):+.2%})")
    print(f"llama.cpp decode + sampling             {med(r['eval_sample_tps'] for r in rows):8.2f}  "
          f"kit differs by {med(vs_both):+.2%} (range {min(vs_both):+.2%} .. {max(vs_both):+.2%}; target within 3%)")
    print(f"per token: kit {med(r['kit_ms_per_token'] for r in rows):.3f} ms = decode "
          f"{med(r['eval_ms_per_token'] for r in rows):.3f} + sampling "
          f"{med(r['sample_ms_per_token'] for r in rows):.3f} "
          f"+ rest (Python, detokenising, the consumer) ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default=None, help="an Ollama API to measure (default: start slm-course serve)")
    parser.add_argument("--model", "-m", action="append", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-fidelity", action="store_true")
    args = parser.parse_args()

    if not args.skip_speed:
        proc = None
        host = args.host
        if host is None:
            port = free_port()
            proc = start_server(port)
            host = f"http://127.0.0.1:{port}"
        try:
            speed_report(host, args.model or [BUNDLED_MODEL], args.runs, args.max_tokens)
        finally:
            if proc is not None:
                stop_server(proc)
    if not args.skip_fidelity:
        print_fidelity(fidelity(args.runs, args.max_tokens, 0.0), "consumer takes each piece at once")
        print_fidelity(fidelity(args.runs, args.max_tokens, 0.002), "consumer spends 2 ms per piece")
    return 0


if __name__ == "__main__":
    sys.exit(main())
