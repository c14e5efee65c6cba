"""Decode speed of two llama-cpp-python builds on the same machine, the same run (issue 13).

The course builds llama.cpp portably (helpers/serving/engine_build.py: AVX2/FMA, no AMX, no
-march=native). This measures what that costs against a native build:

    python -m venv /tmp/native && /tmp/native/bin/pip install --no-cache-dir llama-cpp-python
    python benchmarks/build_flags.py .venv/bin/python /tmp/native/bin/python --rounds 3

Each round runs every (model, threads, build) once, interleaved, so a busy machine slows both
builds alike; the figure to read is the best decode rate of each (the least disturbed run).
Greedy decoding of 128 tokens after a short chat prompt; time from the first token.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ONE_RUN = r'''
import json, sys, time, llama_cpp
path, threads = sys.argv[1], int(sys.argv[2])
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                      verbose=False, seed=0)
prompt = b"<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"
toks = llm.tokenize(prompt, add_bos=True, special=True)
rates = []
for _ in range(3):
    llm.reset()
    n, t_first = 0, None
    for _tok in llm.generate(toks, temp=0, top_k=1, reset=True):
        if t_first is None:
            t_first = time.perf_counter()
        n += 1
        if n > 128:
            break
    rates.append((n - 1) / (time.perf_counter() - t_first))
info = llama_cpp.llama_print_system_info()
print(json.dumps({"rates": rates, "info": info.decode() if isinstance(info, bytes) else str(info)}))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pythons", nargs=2, help="the two venvs' python executables (A, then B)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers.registry import bundled_model_path, bundled_models

    models = {m: str(bundled_model_path(m)) for m in bundled_models()}
    best: dict[tuple, float] = {}
    for _ in range(args.rounds):
        for name, path in models.items():
            for threads in args.threads:
                for python in args.pythons:
                    out = subprocess.run([python, "-c", ONE_RUN, path, str(threads)],
                                         capture_output=True, text=True, timeout=600)
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    key = (name, threads, python)
                    best[key] = max([best.get(key, 0.0), *result["rates"]])
    a, b = args.pythons
    print(f"{'model':<22}{'threads':>8}{'A tok/s':>10}{'B tok/s':>10}{'A vs B':>9}")
    for name in models:
        for threads in args.threads:
            ra, rb = best[(name, threads, a)], best[(name, threads, b)]
            print(f"{name:<22}{threads:>8}{ra:>10.1f}{rb:>10.1f}{(ra / rb - 1) * 100:>+8.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
