"""How much does `slm-course serve` cost compared with calling the engine in-process?

The same prompt, model and options, N runs each after a warm-up, measured the same way on both
sides by the caller's wall clock:
- TTFT: from sending the request (calling `Engine.stream`) to the first streamed token;
- decode tokens/s: eval_count (the engine's own count of output tokens) divided by the time from
  the first streamed token to the final chunk. After the first token arrives the engine decodes
  eval_count more times (each output token is fed back), so both sides count the same work.
Over HTTP this includes everything the server adds per token: the thread hand-off, JSON, the
network stack and the client's parsing. The engine's own timer (eval_duration) is printed beside
it for reference only: it is the same code on both sides, so its ratio says nothing.
Targets (issue 3): the server keeps >= 95% of in-process decode speed and adds < 20 ms to TTFT.

    SLM_THREADS=1 python benchmarks/server_overhead.py --runs 7

Writes benchmarks/results/server_overhead.csv (one row per run) and server_overhead.json (summary).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.net import free_loopback_port as free_port  # noqa: E402
from helpers.registry import BUNDLED_MODEL as MODEL  # noqa: E402
from helpers.serving import start_server, stop_server  # noqa: E402
from helpers.serving.engine import get_engine  # noqa: E402

PROMPT = "Write a short paragraph about the history of the bicycle."
RESULTS = ROOT / "benchmarks" / "results"


def _row(where: str, run: int, t0: float, first: float, done: float, eval_count: int, eval_duration_ns: int) -> dict:
    return {
        "where": where,
        "run": run,
        "eval_count": eval_count,
        "ttft_ms": (first - t0) * 1000,
        "decode_tps_wall": eval_count / (done - first),
        "decode_tps_engine_timer": eval_count / eval_duration_ns * 1e9,
    }


def in_process(runs: int, options: dict) -> list[dict]:
    engine = get_engine()
    for _ in engine.stream(MODEL, prompt=PROMPT, options=options):  # warm-up (load)
        pass
    rows = []
    for run in range(1, runs + 1):
        t0 = time.perf_counter()
        first = None
        for chunk in engine.stream(MODEL, prompt=PROMPT, options=options):
            now = time.perf_counter()
            if chunk.text and first is None:
                first = now
            if chunk.done:
                rows.append(_row("in-process", run, t0, first, now, chunk.eval_count, chunk.eval_duration))
    engine.unload(MODEL)
    return rows


def over_http(host: str, runs: int, options: dict) -> list[dict]:
    body = {"model": MODEL, "prompt": PROMPT, "options": options}
    rows = []
    with httpx.Client(timeout=300) as client:
        client.post(f"{host}/api/generate", json={**body, "stream": False})  # warm-up (load)
        for run in range(1, runs + 1):
            t0 = time.perf_counter()
            first = None
            with client.stream("POST", f"{host}/api/generate", json=body) as resp:
                for line in resp.iter_lines():
                    now = time.perf_counter()
                    chunk = json.loads(line)
                    if chunk.get("response") and first is None:
                        first = now
                    if chunk["done"]:
                        rows.append(_row("http", run, t0, first, now, chunk["eval_count"], chunk["eval_duration"]))
    return rows


def summary(rows: list[dict], key: str) -> dict:
    values = [r[key] for r in rows]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--num-predict", type=int, default=128)
    args = parser.parse_args()
    options = {"temperature": 0, "seed": 1, "num_predict": args.num_predict}

    local = in_process(args.runs, options)
    port = free_port()
    proc = start_server(port)  # inherits SLM_THREADS
    try:
        remote = over_http(f"http://127.0.0.1:{port}", args.runs, options)
    finally:
        stop_server(proc)

    s = {
        where: {k: summary(rows, k) for k in ("ttft_ms", "decode_tps_wall", "decode_tps_engine_timer", "eval_count")}
        for where, rows in (("in-process", local), ("http", remote))
    }
    ratio = s["http"]["decode_tps_wall"]["median"] / s["in-process"]["decode_tps_wall"]["median"]
    added_ms = s["http"]["ttft_ms"]["median"] - s["in-process"]["ttft_ms"]["median"]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": MODEL,
        "prompt": PROMPT,
        "options": options,
        "runs": args.runs,
        "threads": get_engine().n_threads,
        "SLM_THREADS": os.environ.get("SLM_THREADS"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "summary": s,
        "decode_speed_ratio_http_over_in_process": ratio,
        "ttft_added_ms": added_ms,
        "targets": {"decode_speed_ratio_min": 0.95, "ttft_added_ms_max": 20},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "server_overhead.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(local[0]))
        writer.writeheader()
        writer.writerows(local + remote)
    (RESULTS / "server_overhead.json").write_text(json.dumps(result, indent=2) + "\n")

    def line(label: str, key: str, unit: str) -> str:
        a, b = s["in-process"][key], s["http"][key]
        return (
            f"{label:<28} in-process {a['median']:7.1f} {unit} ({a['min']:.1f}-{a['max']:.1f})   "
            f"HTTP {b['median']:7.1f} {unit} ({b['min']:.1f}-{b['max']:.1f})"
        )

    print(
        f"model {MODEL}, num_predict {args.num_predict}, {result['threads']} thread(s), "
        f"median (min-max) of {args.runs} runs after a warm-up"
    )
    print(line("TTFT (wall clock)", "ttft_ms", "ms"))
    print(line("decode tokens/s (wall clock)", "decode_tps_wall", "tok/s"))
    print(line("decode tokens/s (engine)", "decode_tps_engine_timer", "tok/s"))
    print(line("output tokens", "eval_count", ""))
    print(f"HTTP / in-process decode speed (wall clock): {ratio:.1%}  (target >= 95%)")
    print(f"TTFT added by the server: {added_ms:+.1f} ms  (target < 20 ms)")
    print(f"saved: {RESULTS / 'server_overhead.csv'}, {RESULTS / 'server_overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
