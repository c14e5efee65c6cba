"""Small tools for the labs' check cells: watch what the learner's code calls, without changing it.

A check that only looks at a function's return value can be fooled by the very bug an exercise is
about (a chat that sends only the last message still returns text). These helpers let a check see
*how* the answer was made, while the real model still answers every call:

- `spy(obj, "method")` records each call of one method of one object (arguments and result);
- `stream_clock(obj, "method")` also records when each streamed piece was handed out;
- `recording(namespace, "name", ...)` records the calls of functions the learner's code looks up
  by name (a lab's `ask_small`, `ask_large`), so a check can tell which one answered;
- `forbid(module, "name", ...)` makes a library function fail when called, for exercises that say
  "write it yourself".

Each restores what it replaced when its `with` block ends, also after an error.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, MutableMapping


@dataclass
class Call:
    """One recorded call: its arguments as they were at the call (a copy: a list the caller changes
    afterwards stays as it was sent), what it returned, and (for streams) when each piece came."""

    args: tuple
    kwargs: dict
    result: Any = None
    started: float = 0.0  # time.perf_counter() at the call
    pieces: list[tuple[float, Any]] = field(default_factory=list)  # (perf_counter, piece) per piece

    def get(self, name: str, position: int | None = None, default: Any = None) -> Any:
        """The argument `name`, whether it was passed by keyword or at `position`."""
        if name in self.kwargs:
            return self.kwargs[name]
        if position is not None and position < len(self.args):
            return self.args[position]
        return default


def _snapshot(value: Any) -> Any:
    """A deep copy when one can be made (messages, option dicts), else the value itself."""
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - an object that cannot be copied is recorded as it is
        return value


class Recorder:
    """A stand-in for a function: calls it, and keeps a `Call` per call in `.calls`."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.calls: list[Call] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = Call(_snapshot(args), _snapshot(kwargs), started=time.perf_counter())
        self.calls.append(call)
        call.result = self.fn(*args, **kwargs)
        return call.result


@contextmanager
def spy(obj: Any, method: str) -> Iterator[list[Call]]:
    """Record every call of `obj.method` inside the block; the real method still runs.

    >>> class Greeter:
    ...     def hello(self, name): return f"hello {name}"
    >>> g = Greeter()
    >>> with spy(g, "hello") as calls:
    ...     _ = g.hello("Ana")
    >>> [(c.args, c.result) for c in calls]
    [(('Ana',), 'hello Ana')]
    >>> "hello" in vars(g)   # the instance is as it was
    False
    """
    recorder = Recorder(getattr(obj, method))
    with _replaced(vars(obj), method, recorder):
        yield recorder.calls


@contextmanager
def stream_clock(obj: Any, method: str, *, spacing_s: float = 0.0) -> Iterator[list[Call]]:
    """Like `spy`, for a method that returns an iterator: each `Call.pieces` holds
    `(time.perf_counter(), piece)` for every piece, taken when the piece was handed to the caller.
    `spacing_s` holds back every piece after the first that long: pieces that arrive in one burst
    (a busy machine) still reach the caller at times a check can tell apart.

    >>> class Source:
    ...     def stream(self): return iter("ab")
    >>> s = Source()
    >>> with stream_clock(s, "stream") as calls:
    ...     got = list(s.stream())
    >>> got, [p for _, p in calls[0].pieces]
    (['a', 'b'], ['a', 'b'])
    """
    real = getattr(obj, method)
    calls: list[Call] = []

    def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
        call = Call(_snapshot(args), _snapshot(kwargs), started=time.perf_counter())
        calls.append(call)
        for piece in real(*args, **kwargs):
            if call.pieces and spacing_s > 0:
                time.sleep(spacing_s)
            call.pieces.append((time.perf_counter(), piece))
            yield piece

    with _replaced(vars(obj), method, timed):
        yield calls


@contextmanager
def recording(namespace: MutableMapping[str, Any], *names: str) -> Iterator[dict[str, Recorder]]:
    """Replace the functions `names` of `namespace` (a notebook's `globals()`) by recorders.

    >>> ns = {"double": lambda x: 2 * x}
    >>> with recording(ns, "double") as rec:
    ...     _ = ns["double"](4)
    >>> rec["double"].calls[0].result, ns["double"](1)
    (8, 2)
    """
    recorders = {name: Recorder(namespace[name]) for name in names}
    saved = {name: namespace[name] for name in names}
    namespace.update(recorders)
    try:
        yield recorders
    finally:
        namespace.update(saved)


@contextmanager
def forbid(module: Any, *names: str, why: str = "write it yourself") -> Iterator[None]:
    """Make `module.name` raise AssertionError when called inside the block.

    >>> import math
    >>> with forbid(math, "sqrt"):
    ...     try:
    ...         math.sqrt(4)
    ...     except AssertionError as err:
    ...         print(err)
    your code called math.sqrt: write it yourself
    >>> math.sqrt(4)
    2.0
    """

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"your code called {module.__name__}.{name}: {why}")

        return refused

    saved = {name: getattr(module, name) for name in names}
    try:
        for name in names:
            setattr(module, name, refuse(name))
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


_MISSING = object()


@contextmanager
def _replaced(mapping: MutableMapping[str, Any], key: str, value: Any) -> Iterator[None]:
    """Set mapping[key] = value for the block, then put back what was there (or nothing)."""
    before = mapping.get(key, _MISSING)
    mapping[key] = value
    try:
        yield
    finally:
        if before is _MISSING:
            mapping.pop(key, None)
        else:
            mapping[key] = before
