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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.backends import OllamaBackend  # noqa: E402
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
    print(f"\n== speed via {backend.describe()}: {runs} runs x {len(df.attrs['prompts'])} prompts, {max_tokens} tokens")
    print(summarise(df).to_string())
    print(cold_vs_warm(df).to_string())
    bw = measure_memory_bandwidth()
    print(f"memory bandwidth: {bw}")
    print(ceiling_table(df, bw.gbs_median, {m: model_size_bytes(backend, m) for m in models}).to_string())
    for m in models:
        print(check_latency_claim(df, m, 0.1, 0.5, metric="ttft_s"), "(target: inside)")
    print(f"rows: {save_csv(df, ROOT / 'benchmarks' / 'results' / 'bench_models.csv')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default=None, help="an Ollama API to measure (default: start slm-course serve)")
    parser.add_argument("--model", "-m", action="append", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-speed", action="store_true")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
