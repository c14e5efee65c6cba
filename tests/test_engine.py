"""The embedded engine: option checks, and it never runs a request on a freed llama.cpp model.

A request prepared (tokenized) and then waiting for its model used to decode on a model that a
reload with another num_ctx, an embedding, an explicit unload or the keep_alive reaper had closed
meanwhile: a segfault. Each scenario runs in a subprocess, so a crash fails the test instead
of killing pytest, and every answer is checked against the one the same request gets alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from helpers.engine import GenOptions
from helpers.errors import BadInput


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_options_are_refused(value):
    with pytest.raises(BadInput, match="finite"):
        GenOptions.parse({"temperature": value})
    with pytest.raises(BadInput, match="finite"):
        GenOptions.parse({"top_p": value})

SCRIPT = textwrap.dedent('''
    import math, random, sys, threading, time
    from helpers.engine import Engine

    M = "smollm2:135m"
    P = "Why is the sky blue?"
    DET = {"temperature": 0, "seed": 7, "num_predict": 24}
    e = Engine(n_threads=1)

    def gen(chunks):
        return "".join(c.text for c in chunks)

    def run(ctx):
        return gen(e.stream(M, prompt=P, options={**DET, "num_ctx": ctx}))

    def vec():
        out = e.embed(M, "cats purr")
        return getattr(out, "vectors", out)[0]

    # Answers alone: right after a load and with the prompt cached (llama.cpp reuses a cached
    # prefix, which may change the last digits of the logits), at both context sizes.
    expected = {}
    for ctx in (2048, 1024):
        e.unload(M)
        expected[ctx] = {run(ctx), run(ctx)}
    expected_vec = vec()
    assert expected[2048] and expected[1024]

    errors = []

    def check(name, ok, got):
        if not ok:
            errors.append(f"{name}: unexpected {got!r}")

    for rnd in range(int(sys.argv[1])):
        rng = random.Random(rnd)
        prepared = e.stream(M, prompt=P, options={**DET, "num_ctx": 2048})  # prepared, not started
        waiting = e.stream(M, prompt=P, options={**DET, "num_ctx": 2048})
        out = {}

        def consume_waiting():
            out["waiting"] = gen(waiting)

        def reload():
            time.sleep(rng.random() * 0.05)
            out["reload"] = run(1024)

        def embed():
            time.sleep(rng.random() * 0.05)
            out["embed"] = vec()

        def unload():
            time.sleep(rng.random() * 0.2)
            out["unload"] = e.unload(M)

        def reaper():  # keep_alive has run out for every model, as far as this reaper knows
            for _ in range(200):
                e.unload_expired(now=time.time() + 1e9)
                time.sleep(0.002)

        threads = [threading.Thread(target=f) for f in (consume_waiting, reload, embed, unload, reaper)]
        rng.shuffle(threads)
        for t in threads:
            t.start()
        time.sleep(rng.random() * 0.05)
        out["prepared"] = gen(prepared)
        for t in threads:
            t.join(120)
            if t.is_alive():
                errors.append("a thread is stuck")
        check("prepared", out["prepared"] in expected[2048], out["prepared"])
        check("waiting", out.get("waiting") in expected[2048], out.get("waiting"))
        check("reload", out.get("reload") in expected[1024], out.get("reload"))
        v = out.get("embed")
        check("embed", v is not None and len(v) == len(expected_vec) and all(
            math.isclose(a, b, abs_tol=1e-4) for a, b in zip(v, expected_vec)), "a different vector")
        check("unload", out.get("unload") in (True, False), out.get("unload"))
    print("\\n".join(errors) if errors else "all answers correct")
    sys.exit(1 if errors else 0)
''')


def run_script(rounds: int, root=ROOT) -> subprocess.CompletedProcess:
    """Run the scenario with the `helpers` package found in `root` (the kit's, by default)."""
    env = {**os.environ, "SLM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(rounds)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_reload_embed_unload_and_reaper_never_free_a_model_in_use():
    proc = run_script(rounds=5)
    assert proc.returncode != -11, "segfault: a request decoded on a freed llama.cpp model"
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "all answers correct" in proc.stdout
