"""Measure the offline models on the shared eval set: the table of docs/offline-pair.md.

Each model gets its own `slm-course serve` (so its peak memory is its own): the shared set runs
4 requests at a time (aggregate tok/s = output tokens / wall time), then one request alone gives the
single-client decode speed. Prints one row per model and saves every answer to runs/offline_pair/.

    SLM_THREADS=1 python benchmarks/offline_pair.py smollm2:135m qwen2.5-coder:0.5b qwen2.5-coder:1.5b
    python benchmarks/offline_pair.py --rescore   # score the saved answers again with today's checks
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from helpers.backends import OllamaBackend
from helpers.evals import EvalRecord, run_eval, score, shared_eval

OUT = Path("runs") / "offline_pair"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def measure(model: str) -> dict:
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "helpers.cli", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        backend = OllamaBackend(host)
        for _ in range(120):
            try:
                backend.version()
                break
            except Exception:
                time.sleep(1)
        backend.chat(model, [{"role": "user", "content": "Hi"}], options={"num_predict": 4})  # load
        tasks = shared_eval()
        t0 = time.perf_counter()
        records = run_eval(backend, model, tasks, progress=False, concurrency=4)
        wall = time.perf_counter() - t0
        single = backend.chat(
            model,
            [{"role": "user", "content": "Describe the water cycle in a paragraph."}],
            options={"temperature": 0, "seed": 42, "num_predict": 128},
        )
        row = {
            "model": model,
            "wall_s": round(wall, 1),
            "aggregate_tps": round(sum(r.output_tokens for r in records) / wall, 1),
            "single_tps": round(single.metrics.decode_tps or float("nan"), 1),
            "peak_rss_gb": round(peak_rss_gb(server.pid), 2),
        }
        for level in ("routine", "hard"):
            mine = [r for r, t in zip(records, tasks) if t.meta["level"] == level]
            scored = [r for r in mine if r.correct is not None]
            row[level] = f"{sum(bool(r.correct) for r in scored)}/{len(scored)}"
            row[f"{level}_cut_off"] = sum(r.cut_off for r in mine)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{model.replace(':', '_')}.jsonl").write_text(
            "".join(json.dumps(asdict(r)) + "\n" for r in records), encoding="utf-8"
        )
        return row
    finally:
        server.terminate()
        server.wait(timeout=30)


def rescore() -> None:
    """The saved answers scored again with the current checks (the answers do not change), paired with
    McNemar's test between each two models."""
    from helpers.quality import paired_counts, paired_frame

    tasks = {t.id: t for t in shared_eval()}
    runs = {}
    for path in sorted(OUT.glob("*.jsonl")):
        records = [EvalRecord(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
        for r in records:
            r.correct = None if r.cut_off else score(tasks[r.task_id], r.text)
        runs[records[0].model] = records
        row = {"model": records[0].model}
        for level in ("routine", "hard"):
            mine = [r for r in records if tasks[r.task_id].meta["level"] == level]
            row[level] = f"{sum(bool(r.correct) for r in mine)}/{sum(r.correct is not None for r in mine)}"
            row[f"{level}_cut_off"] = [r.task_id for r in mine if r.cut_off]
        print(json.dumps(row))
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for level in ("routine", "hard"):
                keep = [t for t in tasks if tasks[t].meta["level"] == level]
                pa = [r for r in runs[a] if r.task_id in keep]
                pb = [r for r in runs[b] if r.task_id in keep]
                pc = paired_counts(paired_frame(pa, pb, level))
                print(
                    f"{level:>7}: {a} vs {b}: only {a} right {pc.only_small}, only {b} right "
                    f"{pc.only_large}, McNemar p = {pc.p_value:.4f}"
                )


if __name__ == "__main__":
    if sys.argv[1:] == ["--rescore"]:
        rescore()
        sys.exit()
    for name in sys.argv[1:] or ["smollm2:135m", "qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b"]:
        print(json.dumps(measure(name)), flush=True)
