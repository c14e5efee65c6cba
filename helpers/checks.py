"""Self-checks for the labs: each prints correct, what is still wrong, or 'not done yet'.

A lab's TODO lives inside a function, so the lab runs top to bottom before it is done; the
check cell after it calls `check(...)`, which never raises.
"""
from __future__ import annotations

from typing import Callable

DONE, WRONG, TODO = "✅", "❌", "⏳"


def check(name: str, test: Callable[[], object], *, hint: str = "") -> bool:
    """Run `test()` (it asserts); print one friendly line; return True when it passed."""
    try:
        test()
    except NotImplementedError:
        print(f"{TODO} {name}: not done yet - replace `raise NotImplementedError()` with your code.")
        return False
    except AssertionError as exc:
        print(f"{WRONG} {name}: {exc or 'not quite right yet.'}")
        if hint:
            print(f"   hint: {hint}")
        return False
    except Exception as exc:  # the learner's code crashed: say how, not a traceback
        print(f"{WRONG} {name}: your code raised {type(exc).__name__}: {exc}")
        if hint:
            print(f"   hint: {hint}")
        return False
    print(f"{DONE} {name}: correct!")
    return True
