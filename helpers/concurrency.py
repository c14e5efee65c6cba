"""Many model calls at once: `map_concurrent` runs a function over items with a bounded number in
flight, as a class of students or an eval would, and returns the results in input order.

A server that decodes requests together (Ollama with OLLAMA_NUM_PARALLEL > 1, `slm-course serve`,
vLLM, a cloud API) answers N requests in much less than N times one; a server with one slot just
queues them, so running concurrently never makes a run slower. Each item's error is kept with
that item (`Outcome.error`); `values()` raises the first one, for callers that must stop on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, TypeVar, cast

from .validate import check_int

T = TypeVar("T")
R = TypeVar("R")

#: requests in flight when the caller does not say: the offline server's slots per model
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One item's result: its value, or the exception its call raised."""

    index: int
    value: R | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def default_concurrency() -> int:
    """OLLAMA_NUM_PARALLEL when it is set (what the server decodes at once), else 4."""
    from .settings import get_settings

    return min(get_settings().num_parallel, MAX_CONCURRENCY)


def map_concurrent(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    concurrency: int | None = None,
    desc: str = "calls",
    progress: bool = True,
) -> list[Outcome[R]]:
    """`fn(item)` for every item, at most `concurrency` at once, with a progress bar.

    Returns one Outcome per item, in input order; an exception is kept in its item's Outcome
    (KeyboardInterrupt stops the run). `concurrency=1` runs the items one after another.
    """
    from tqdm.auto import tqdm

    items = list(items)
    n = default_concurrency() if concurrency is None else concurrency
    n = check_int("concurrency", n, 1, MAX_CONCURRENCY, "e.g. concurrency=4 (what the server decodes at once)")

    def call(pair: tuple[int, T]) -> Outcome[R]:
        i, item = pair
        try:
            return Outcome(i, value=fn(item))
        except Exception as exc:  # kept with its item; the caller decides
            return Outcome(i, error=exc)

    out: list[Outcome[R]] = []
    with tqdm(total=len(items), desc=desc, disable=not progress) as bar:
        if n == 1 or len(items) <= 1:
            for pair in enumerate(items):
                out.append(call(pair))
                bar.update(1)
            return out
        with ThreadPoolExecutor(max_workers=min(n, len(items)), thread_name_prefix="slm-map") as pool:
            for outcome in pool.map(call, enumerate(items)):  # map keeps the input order
                out.append(outcome)
                bar.update(1)
    return out


def values(outcomes: Iterable[Outcome[R]]) -> list[R]:
    """The values, in order; raises the first item's error if any call failed."""
    outcomes = list(outcomes)
    for o in outcomes:
        if o.error is not None:
            raise o.error
    # no error: each call returned, so its value is an R (which may itself allow None)
    return [cast(R, o.value) for o in outcomes]


__all__ = ["Outcome", "map_concurrent", "values", "default_concurrency", "DEFAULT_CONCURRENCY"]
