"""map_concurrent: bounded, in input order, errors kept per item; and a real server answers a batch
of concurrent requests with the same texts as one at a time (greedy, one slot each time alone)."""

from __future__ import annotations

import threading
import time

import pytest

from helpers.concurrency import map_concurrent, values
from helpers.errors import BadInput


@pytest.mark.no_server
def test_results_come_back_in_input_order_with_errors_kept_per_item():
    def fn(x):
        time.sleep(0.02 * (5 - x % 5))  # later items finish first
        if x == 3:
            raise ValueError("three")
        return x * 10

    out = map_concurrent(fn, range(8), concurrency=4, progress=False)
    assert [o.index for o in out] == list(range(8))
    assert [o.value for o in out if o.ok] == [0, 10, 20, 40, 50, 60, 70]
    assert isinstance(out[3].error, ValueError) and not out[3].ok
    with pytest.raises(ValueError, match="three"):
        values(out)


@pytest.mark.no_server
def test_no_more_than_concurrency_calls_are_in_flight():
    lock, now, peak = threading.Lock(), [0], [0]

    def fn(_):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.01)
        with lock:
            now[0] -= 1

    map_concurrent(fn, range(20), concurrency=3, progress=False)
    assert peak[0] == 3
    peak[0] = 0
    map_concurrent(fn, range(5), concurrency=1, progress=False)
    assert peak[0] == 1


@pytest.mark.no_server
@pytest.mark.parametrize("bad", [0, -1, 65, 2.5, True, "4"])
def test_concurrency_is_checked(bad):
    with pytest.raises(BadInput, match="concurrency"):
        map_concurrent(str, [1], concurrency=bad, progress=False)


def test_run_eval_concurrent_gives_the_records_of_a_sequential_run(ollama_host):
    """The same eval, 1 and 4 at a time, on the real server: same tasks in the same order, each
    scored; the answers of a greedy eval agree where the server ran each request alone."""
    from helpers import connect
    from helpers.evals import arithmetic_tasks, run_eval
    from helpers.registry import BUNDLED_MODEL

    backend = connect(ollama_host, verbose=False)
    tasks = arithmetic_tasks(6)
    one = run_eval(backend, BUNDLED_MODEL, tasks, progress=False, concurrency=1, options={"num_predict": 16})
    four = run_eval(backend, BUNDLED_MODEL, tasks, progress=False, concurrency=4, options={"num_predict": 16})
    assert [r.task_id for r in one] == [r.task_id for r in four] == [t.id for t in tasks]
    assert all(r.output_tokens > 0 and r.text for r in four)
