"""Self-checks for the labs: each prints correct, what is still wrong, or 'not done yet'.

A lab's TODO lives inside a function, so the lab runs top to bottom before it is done; the
check cell after it calls `check(...)`, which never raises for a learner. When nbgrader runs the
lab (`slm-course grade run`: it sets NBGRADER_EXECUTION to "autograde" or "validate") the same
call prints the same line and then raises `CheckFailed`, so the check cell fails and the
exercise scores zero: nbgrader counts a test cell as passed when it raises nothing.
"""

from __future__ import annotations

import os
from typing import Callable

DONE, WRONG, TODO = "✅", "❌", "⏳"


class CheckFailed(AssertionError):
    """A lab check that did not pass, raised only while nbgrader grades the lab."""


def grading() -> bool:
    """True while nbgrader executes the notebook (autograde or validate)."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def check(name: str, test: Callable[[], object], *, hint: str = "") -> bool:
    """Run `test()` (it asserts); print one friendly line; return True when it passed.

    Under nbgrader (`grading()`) a failed check raises `CheckFailed` with that line instead of
    returning False."""
    try:
        test()
    except NotImplementedError as exc:
        line = f"{TODO} {name}: not done yet - replace `raise NotImplementedError()` with your code."
        return _failed(line, "", exc)
    except AssertionError as exc:
        return _failed(f"{WRONG} {name}: {exc or 'not quite right yet.'}", hint, exc)
    except Exception as exc:  # the learner's code crashed: say how, not a traceback
        return _failed(f"{WRONG} {name}: your code raised {type(exc).__name__}: {exc}", hint, exc)
    print(f"{DONE} {name}: correct!")
    return True


def _failed(line: str, hint: str, cause: BaseException) -> bool:
    """Print the friendly line (and hint); under nbgrader raise it, else return False."""
    print(line)
    if hint:
        print(f"   hint: {hint}")
    if grading():
        raise CheckFailed(line) from cause
    return False
