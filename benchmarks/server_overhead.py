"""How much does `slm-course serve` cost compared with calling the engine in-process?

Reports decode tokens/s in-process vs through the server (same prompt, same model, same options,
median of N runs after a warm-up) and time to first token in-process vs over HTTP.
Targets (issue 3): the server keeps >= 95% of in-process decode speed and adds < 20 ms to TTFT.

    python benchmarks/server_overhead.py --runs 7
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import free_port, start_server, stop_server  # noqa: E402
from helpers.backends import EmbeddedBackend  # noqa: E402

MODEL = "smollm2:135m"
PROMPT = "Write a short paragraph about the history of the bicycle."


def in_process(runs: int, num_predict: int) -> tuple[list[float], list[float]]:
    backend = EmbeddedBackend()
    opts = {"temperature": 0, "seed": 1, "num_predict": num_predict}
    backend.generate(MODEL, PROMPT, options=opts)  # warm-up (load)
    tps, ttft = [], []
    for _ in range(runs):
        r = backend.generate(MODEL, PROMPT, options=opts)
        tps.append(r.metrics.decode_tps)
        ttft.append(r.metrics.ttft_s)
    backend.engine.unload(MODEL)
    return tps, ttft


def over_http(host: str, runs: int, num_predict: int) -> tuple[list[float], list[float], list[float]]:
    body = {"model": MODEL, "prompt": PROMPT, "options": {"temperature": 0, "seed": 1, "num_predict": num_predict}}
    with httpx.Client(timeout=120) as client:
        client.post(f"{host}/api/generate", json={**body, "stream": False})  # warm-up (load)
        tps, ttft, wall_tps = [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            first = last = None
            with client.stream("POST", f"{host}/api/generate", json=body) as resp:
                for line in resp.iter_lines():
                    chunk = json.loads(line)
                    now = time.perf_counter()
                    if chunk.get("response") and first is None:
                        first = now
                    if chunk["done"]:
                        final, last = chunk, now
            tps.append(final["eval_count"] / final["eval_duration"] * 1e9)
            ttft.append(first - t0)
            wall_tps.append((final["eval_count"] - 1) / (last - first))
    return tps, ttft, wall_tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--num-predict", type=int, default=128)
    args = parser.parse_args()

    med = statistics.median
    tps_in, ttft_in = in_process(args.runs, args.num_predict)
    port = free_port()
    proc = start_server(port)
    try:
        tps_http, ttft_http, wall_http = over_http(f"http://127.0.0.1:{port}", args.runs, args.num_predict)
    finally:
        stop_server(proc)

    ratio = med(tps_http) / med(tps_in)
    added_ms = (med(ttft_http) - med(ttft_in)) * 1000
    print(f"model {MODEL}, {args.num_predict} tokens, median of {args.runs} runs after a warm-up")
    print(f"decode tokens/s  in-process {med(tps_in):7.1f}  (min {min(tps_in):.1f}, max {max(tps_in):.1f})")
    print(f"decode tokens/s  server     {med(tps_http):7.1f}  (min {min(tps_http):.1f}, max {max(tps_http):.1f});"
          f" client wall clock {med(wall_http):.1f}")
    print(f"server / in-process decode speed: {ratio:.1%}  (target >= 95%)")
    print(f"TTFT in-process {med(ttft_in) * 1000:.1f} ms, over HTTP {med(ttft_http) * 1000:.1f} ms: "
          f"+{added_ms:.1f} ms (target < 20 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
