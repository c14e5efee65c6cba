"""A class at once: `slm-course serve` against llama.cpp's own server code called in-process.

For each model and each number of concurrent clients (1, 2, 4, 8), every client sends its own
prompt and streams a greedy answer of --tokens tokens, --rounds times. Measured by the clients'
clocks on both sides:
- aggregate tokens/s: all output tokens / the wall time of the whole level;
- TTFT: from sending a request to its first streamed token (p50 and p90 over all requests).
The raw side is xllamacpp's `Server` with the same slots, threads and context per slot, called
from one thread per client (its handlers release the GIL); the kit's side is the real server in a
child process (`slm-course serve`, OLLAMA_NUM_PARALLEL=--slots) reached over HTTP with httpx.

    SLM_THREADS=2 python benchmarks/serving_concurrency.py --slots 4

Writes benchmarks/results/serving_concurrency.json. Numbers, not pass/fail (README: Performance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.net import free_loopback_port as free_port  # noqa: E402
from helpers.serving import start_server, stop_server  # noqa: E402
from helpers.serving.engine import Engine, default_threads, engine_build  # noqa: E402

TOPICS = [
    "the sea",
    "a lighthouse",
    "bread",
    "a violin",
    "the moon",
    "rain",
    "a library",
    "bees",
    "trains",
    "snow",
    "a garden",
    "clocks",
    "the desert",
    "owls",
    "a bridge",
    "tea",
]


def prompt(client: int, rnd: int) -> str:
    return f"Write a short paragraph about {TOPICS[(client * 3 + rnd) % len(TOPICS)]}. (client {client}, round {rnd})"


def run_level(one_request, clients: int, rounds: int) -> dict:
    """`clients` threads, each sending `rounds` requests in turn; one_request(c, r) -> (ttft_s, tokens)."""
    ttfts, tokens, lock = [], [0], threading.Lock()

    def client(c: int) -> None:
        for r in range(rounds):
            ttft, n = one_request(c, r)
            with lock:
                ttfts.append(ttft)
                tokens[0] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(ttfts, n=10) if len(ttfts) > 1 else [ttfts[0]] * 9
    return {
        "clients": clients,
        "requests": len(ttfts),
        "tokens": tokens[0],
        "wall_s": round(wall, 3),
        "agg_tok_s": round(tokens[0] / wall, 1),
        "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_p90_ms": round(q[8] * 1000, 1),
    }


def raw_side(model: str, slots: int, threads: int, n_tokens: int):
    """llama.cpp's server code in-process (xllamacpp), the kit's engine not involved."""
    import xllamacpp as xl

    path = Engine.resolve(model)[1]
    p = xl.CommonParams()
    p.model.path = str(path)
    p.n_parallel = slots
    p.n_ctx = 2048 * slots
    p.n_batch = p.n_ubatch = 512
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    p.use_jinja = True
    p.verbosity = -1
    server = xl.Server(p)

    def one(c: int, r: int) -> tuple[float, int]:
        t0, first, final = time.perf_counter(), [None], [None]

        def on_chunk(chunk: dict) -> bool:
            delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
            if first[0] is None and delta.get("content"):
                first[0] = time.perf_counter() - t0
            if chunk.get("timings"):
                final[0] = chunk["timings"]["predicted_n"]
            return False

        server.handle_chat_completions(
            {
                "messages": [{"role": "user", "content": prompt(c, r)}],
                "stream": True,
                "max_tokens": n_tokens,
                "temperature": 0,
                "cache_prompt": False,
            },
            on_chunk,
        )
        return first[0] or 0.0, final[0] or 0

    return server, one


def kit_side(model: str, host: str, n_tokens: int):
    http = httpx.Client(timeout=300)

    def one(c: int, r: int) -> tuple[float, int]:
        t0, ttft, n = time.perf_counter(), None, 0
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt(c, r)}],
            "options": {"temperature": 0, "num_predict": n_tokens},
        }
        with http.stream("POST", f"{host}/api/chat", json=body) as resp:
            for line in resp.iter_lines():
                if not line:
                    continue
                chunk = json.loads(line)
                if ttft is None and chunk.get("message", {}).get("content"):
                    ttft = time.perf_counter() - t0
                if chunk.get("done"):
                    n = chunk.get("eval_count", 0)
        return ttft or 0.0, n

    return http, one


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2:135m", "qwen2.5-coder:0.5b"])
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--slots", type=int, default=int(os.environ.get("OLLAMA_NUM_PARALLEL", "4")))
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    threads = default_threads()
    rows = []
    for model in args.models:
        server, one = raw_side(model, args.slots, threads, args.tokens)
        one(0, 99)  # warm up
        for n in args.clients:
            rows.append({"model": model, "side": "raw llama.cpp", **run_level(one, n, args.rounds)})
            print(rows[-1], flush=True)
        del server
        port = free_port()
        proc = start_server(port, env={"OLLAMA_NUM_PARALLEL": str(args.slots)})
        try:
            http, one = kit_side(model, f"http://127.0.0.1:{port}", args.tokens)
            one(0, 99)  # load and warm up
            for n in args.clients:
                rows.append({"model": model, "side": "slm-course serve", **run_level(one, n, args.rounds)})
                print(rows[-1], flush=True)
            http.close()
        finally:
            stop_server(proc)
    print(f"\n{'model':20} {'side':18} {'clients':>7} {'agg tok/s':>9} {'p50 TTFT ms':>11} {'p90 TTFT ms':>11}")
    for r in rows:
        print(
            f"{r['model']:20} {r['side']:18} {r['clients']:>7} {r['agg_tok_s']:>9} {r['ttft_p50_ms']:>11} "
            f"{r['ttft_p90_ms']:>11}"
        )
    out = ROOT / "benchmarks" / "results" / "serving_concurrency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "engine": engine_build(),
                "threads": threads,
                "slots": args.slots,
                "tokens": args.tokens,
                "rounds": args.rounds,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
