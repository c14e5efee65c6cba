"""A class at once: `slm-course serve` against llama.cpp's own server code called in-process.

For each model and each number of concurrent clients (1, 2, 4, 8), every client sends its own
prompt and streams a greedy answer of --tokens tokens. Each level runs --rounds times on every side,
the three sides taking turns (their order rotating), so a machine whose speed drifts during the run
costs every side alike; a side's figure is the median over its rounds. Measured by the clients' clocks:
- aggregate tokens/s: all output tokens / the wall time of the level;
- TTFT: from sending a request to its first streamed token (p50 and p90 over the level's requests).
- decode tok/s of one stream: (tokens - 1) / (last token - first token), at the 1-client level
  (what a student alone sees once the answer has started), which runs 8x --rounds; and each HTTP side's
  decode as a share of the in-process one, paired: the median over rounds of this side's rate / the
  in-process rate of the same round (the machine's drift between rounds cancels out).
Three sides, all loaded at once, the same slots, threads and context per slot:
- "raw llama.cpp": xllamacpp's `Server` called in-process, one thread per client (its handlers
  release the GIL): no HTTP, no client process - the ceiling;
- "llama.cpp HTTP": the same `Server`'s own HTTP listener (/v1/chat/completions, streamed),
  reached by the same client as the kit: what llama.cpp's server gives over the wire;
- "slm-course serve": the real server in a child process (OLLAMA_NUM_PARALLEL=--slots), /api/chat.
The HTTP sides are read with the standard library's http.client (--client stdlib), the lightest
reader: the client runs on the same cores as the server, and what it spends per token is taken from
the decode too (httpx, which the `ollama` and `openai` clients use, spends ~0.2 ms per token: with it
even llama.cpp's own C++ server measured 94-98% of in-process). --client httpx measures that way.
Each side also answers one request with default options (sampled, so the prompt cache is used, as
Ollama's default temperature 0.8 does): "TTFT default"; and one greedy prompt asked again after it was
read once: "TTFT again" (llama.cpp's sides with its prompt cache on, whose answer can then differ from
the first one; the kit's from the slot holding that prompt, the same answer - engine.py).

    SLM_THREADS=2 python benchmarks/serving_concurrency.py --slots 8

Writes benchmarks/results/serving_concurrency.json. Numbers, not pass/fail (README: Performance).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

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


#: rounds from here on are the first-token checks' (`interleaved`): questions of their own shape, sharing
#: only the template and their first words with each other
CHECK_ROUNDS = 200


def prompt(client: int, rnd: int) -> str:
    topic = TOPICS[(client * 3 + rnd) % len(TOPICS)]
    if rnd >= CHECK_ROUNDS:
        return f"In one paragraph, describe {topic}. (round {rnd})"
    return f"Write a short paragraph about {topic}. (client {client}, round {rnd})"


def run_level(one_request, clients: int, rounds: int) -> dict:
    """`clients` threads, each sending `rounds` requests in turn; one_request(c, r) -> (ttft_s, tokens, tok/s)."""
    ttfts, rates, tokens, lock = [], [], [0], threading.Lock()

    def client(c: int) -> None:
        for r in range(rounds):
            ttft, n, rate = one_request(c, r)
            with lock:
                ttfts.append(ttft)
                rates.append(rate)
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
        "decode_tok_s": round(statistics.median(rates), 1),
    }


def _timed(stamps: list[float], t0: float, n: int) -> tuple[float, int, float]:
    """(first-token latency, tokens, decode rate) from the arrival times of the content pieces."""
    if len(stamps) < 2:
        return (stamps[0] - t0 if stamps else 0.0), n, 0.0
    return stamps[0] - t0, n, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _body(c: int, r: int, n_tokens: int, greedy: bool, cache: bool = False) -> dict:
    """A raw llama.cpp request; greedy ones read their whole prompt (as the kit's cold ones do)
    unless `cache`: then llama.cpp's own prompt cache, whose answer can differ from a cold one."""
    return {"messages": [{"role": "user", "content": prompt(c, r)}], "max_tokens": n_tokens, "stream": True} | (
        {"temperature": 0, "cache_prompt": cache} if greedy else {}
    )


def raw_side(model: str, slots: int, threads: int, port: int):
    """llama.cpp's server code in-process (xllamacpp), the kit's engine not involved; its own
    HTTP listener on `port`."""
    import xllamacpp as xl

    path = Engine.resolve(model)[1]
    p = xl.CommonParams()
    p.model.path = str(path)
    p.n_parallel = slots
    p.n_ctx = 2048 * slots
    p.n_batch = p.n_ubatch = 512
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    p.cpuparams.poll = p.cpuparams_batch.poll = 0  # as the kit's engine sets it
    p.use_jinja = True
    p.verbosity = -1
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_threads_http = slots + 4  # as llama-server sizes it (n_parallel + 2 at least); -1 here is one thread
    return xl.Server(p)


def in_process(server, n_tokens: int, greedy: bool = True, cache: bool = False):
    def one(c: int, r: int) -> tuple[float, int, float]:
        t0, stamps, final = time.perf_counter(), [], [0]

        def on_chunk(chunk: dict) -> bool:
            delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                stamps.append(time.perf_counter())
            if chunk.get("timings"):
                final[0] = chunk["timings"]["predicted_n"]
            return False

        server.handle_chat_completions(_body(c, r, n_tokens, greedy, cache), on_chunk)
        return _timed(stamps, t0, final[0])

    return one


def stdlib_lines(url: str, body: dict) -> Iterator[str]:
    """The streamed answer's lines read with the standard library: the lightest client, so that the
    figures are the server's (a client on the same two cores takes its CPU from the decode too)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=300)
    try:
        conn.request("POST", u.path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {resp.read(300)!r}")
        while line := resp.readline():
            yield line.decode().rstrip("\r\n")
    finally:
        conn.close()


def httpx_lines(http: httpx.Client) -> Callable[[str, dict], Iterator[str]]:
    """The same with httpx (what the `ollama` and `openai` clients use): 0.2 ms of a core per token."""

    def lines(url: str, body: dict) -> Iterator[str]:
        with http.stream("POST", url, json=body) as resp:
            resp.raise_for_status()
            yield from resp.iter_lines()

    return lines


def over_http(
    lines: Callable[[str, dict], Iterator[str]],
    url: str,
    model: str,
    n_tokens: int,
    greedy: bool = True,
    ollama: bool = True,
    cache: bool = False,
):
    """One streamed request: Ollama's /api/chat (NDJSON) or OpenAI's /v1/chat/completions (SSE)."""

    def one(c: int, r: int) -> tuple[float, int, float]:
        t0, stamps, n = time.perf_counter(), [], 0
        if ollama:
            body = {"model": model, "messages": [{"role": "user", "content": prompt(c, r)}]}
            body["options"] = {"num_predict": n_tokens} | ({"temperature": 0} if greedy else {})
        else:
            body = _body(c, r, n_tokens, greedy, cache)
        for line in lines(url, body):
            if not ollama:
                if not line.startswith("data: {"):
                    continue
                line = line[6:]
            elif not line:
                continue
            chunk = json.loads(line)
            if ollama:
                text = chunk.get("message", {}).get("content")
                n = chunk.get("eval_count", n) if chunk.get("done") else n
            else:
                text = ((chunk.get("choices") or [{}])[0].get("delta") or {}).get("content")
                n = (chunk.get("timings") or {}).get("predicted_n", n)
            if text:
                stamps.append(time.perf_counter())
        return _timed(stamps, t0, n)

    return one


def interleaved(rows: list, model: str, sides: dict, clients: list[int], rounds: int) -> None:
    """Each level on every side in turn, `rounds` times, the sides' order rotating: a machine whose
    speed drifts during the run (a shared VM does, by 15-20% over minutes) then costs every side alike.
    A side's figure is the median over its rounds (each round: every client sends one request)."""
    for one, *_ in sides.values():
        one(0, 99)  # load and warm up
    names = list(sides)
    for n in clients:
        got: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(rounds * 8 if n == 1 else rounds):  # one student: cheap, and the noisiest figure
            for name in names[r % len(names) :] + names[: r % len(names)]:
                got[name].append(run_level(lambda c, _r, one=sides[name][0], r=r: one(c, r), n, 1))
        for name in names:
            row = {"model": model, "side": name, "clients": n, "requests": sum(x["requests"] for x in got[name])}
            for key in ("agg_tok_s", "ttft_p50_ms", "ttft_p90_ms", "decode_tok_s"):
                row[key] = round(statistics.median(x[key] for x in got[name]), 1)
            if n == 1 and name != names[0]:  # decode as a share of the in-process side's, round by round
                pairs = zip(got[name], got[names[0]])
                row["decode_vs_raw_pct"] = round(
                    statistics.median(a["decode_tok_s"] / b["decode_tok_s"] * 100 for a, b in pairs), 1
                )
            rows.append(row)
            print(row, flush=True)
    # prompts of their own per side: llama.cpp's two sides share one server, whose cache would
    # otherwise hold the very prompt the other side has just asked
    for i, (name, (_, one_default, one_again)) in enumerate(sides.items()):
        own = CHECK_ROUNDS + 10 * i
        one_default(1, own + 9)  # its prompt's template prefix into the cache
        ttft = statistics.median(one_default(1, own + r)[0] for r in range(5))
        row = next(r for r in rows if r["model"] == model and r["side"] == name)
        row["ttft_default_ms"] = round(ttft * 1000, 1)
        one_again(1, own + 8)  # one greedy prompt read once, then asked again
        row["ttft_again_ms"] = round(statistics.median(one_again(1, own + 8)[0] for _ in range(5)) * 1000, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2:135m", "qwen2.5-coder:0.5b"])
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--slots", type=int, default=int(os.environ.get("OLLAMA_NUM_PARALLEL", "8")))
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument(
        "--client",
        choices=["stdlib", "httpx"],
        default="stdlib",
        help="how the HTTP sides are read: the standard library (light, the default) or httpx",
    )
    args = ap.parse_args()
    threads = default_threads()
    rows: list[dict] = []
    for model in args.models:
        # a new connection per request on every side: llama.cpp's listener closes idle keep-alive ones
        http = httpx.Client(timeout=300, limits=httpx.Limits(max_keepalive_connections=0))
        lines = stdlib_lines if args.client == "stdlib" else httpx_lines(http)
        kit_port, raw_port = free_port(), free_port()
        proc = start_server(kit_port, env={"OLLAMA_NUM_PARALLEL": str(args.slots)})
        server = raw_side(model, args.slots, threads, raw_port)
        try:
            kit, raw = f"http://127.0.0.1:{kit_port}/api/chat", f"http://127.0.0.1:{raw_port}/v1/chat/completions"
            sides = {
                "raw llama.cpp": (
                    in_process(server, args.tokens),
                    in_process(server, args.tokens, False),
                    in_process(server, args.tokens, cache=True),
                ),
                "llama.cpp HTTP": (
                    over_http(lines, raw, model, args.tokens, ollama=False),
                    over_http(lines, raw, model, args.tokens, False, ollama=False),
                    over_http(lines, raw, model, args.tokens, ollama=False, cache=True),
                ),
                "slm-course serve": (  # the kit decides the cache itself (engine.py: same answer)
                    over_http(lines, kit, model, args.tokens),
                    over_http(lines, kit, model, args.tokens, False),
                    over_http(lines, kit, model, args.tokens),
                ),
            }
            interleaved(rows, model, sides, args.clients, args.rounds)
        finally:
            stop_server(proc)
            del server
        http.close()
    print(
        f"\n{'model':20} {'side':18} {'clients':>7} {'agg tok/s':>9} {'p50 TTFT ms':>11} {'p90 TTFT ms':>11} "
        f"{'decode tok/s':>12} {'TTFT default ms':>15} {'TTFT again ms':>13} {'decode % raw':>12}"
    )
    for r in rows:
        print(
            f"{r['model']:20} {r['side']:18} {r['clients']:>7} {r['agg_tok_s']:>9} {r['ttft_p50_ms']:>11} "
            f"{r['ttft_p90_ms']:>11} {r['decode_tok_s']:>12} {r.get('ttft_default_ms', ''):>15} "
            f"{r.get('ttft_again_ms', ''):>13} {r.get('decode_vs_raw_pct', ''):>12}"
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
                "client": args.client,
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
