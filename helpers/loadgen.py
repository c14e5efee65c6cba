"""Lesson 09: how one model server copes with a class of students, measured.

`run_load` plays N students at once against Ollama's `POST /api/generate` (streaming) and
records, per request, the time to first token, the total latency and the engine's token
count. `sweep` repeats that for 1, 2, 4, 8 ... students, `plot_sweep` draws throughput and
p90 latency against the number of students, and `sizing_advice` reads the largest class
size that still meets a latency target off the measured table.

Every run is bounded twice: by count (concurrency x requests_per_client) and by time
(`max_duration_s`, after which unfinished requests are cancelled and marked so). Only
loopback servers are load-tested unless `allow_remote=True` (an instructor's own lab
server): a load generator pointed at someone else's machine is a denial-of-service tool.

Works in scripts and inside Jupyter (whose event loop is already running): the sync
functions run the coroutine in a helper thread with its own event loop when needed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Coroutine, Sequence, TypeVar

from .errors import INSTALL_OLLAMA, BackendUnavailable, BadInput, ModelNotFound, pull_hint
from .net import is_loopback_host
from .results import percentile
from .settings import get_settings, normalise_host, reveal
from .validate import check_int, check_number

T = TypeVar("T")

MAX_CONCURRENCY = 256
MAX_REQUESTS_PER_CLIENT = 10_000
MAX_NUM_PREDICT = 8192
DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."

# Row statuses: every planned request ends in exactly one of these.
OK, ERROR, CANCELLED, NOT_STARTED = "ok", "error", "cancelled", "not_started"

SWEEP_COLUMNS = [
    "concurrency",
    "requests",
    "completed",
    "errors",
    "cancelled",
    "not_started",
    "wall_s",
    "throughput_rps",
    "output_tps",
    "latency_p50_s",
    "latency_p90_s",
    "latency_p99_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "stopped_by_time",
]


# --------------------------------------------------------------------------- data shapes
@dataclass
class RequestRow:
    """One request of one simulated student. Times are seconds; `started_s` is relative
    to the start of the run; `ttft_s`/`latency_s` are measured by the client."""

    client: int
    index: int
    status: str = NOT_STARTED
    started_s: float | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    eval_count: int | None = None
    error: str = ""


@dataclass
class LoadResult:
    """Everything one load run measured: the per-request rows plus summary numbers.

    Throughput is over the run's wall-clock time: completed requests per second and
    output tokens (the engine's `eval_count`) per second, summed over all students.
    Latency and TTFT percentiles use completed requests only.
    """

    host: str
    model: str
    concurrency: int
    requests_per_client: int
    num_predict: int
    wall_s: float
    stopped_by_time: bool
    rows: list[RequestRow] = field(default_factory=list)

    def _ok(self) -> list[RequestRow]:
        return [r for r in self.rows if r.status == OK]

    def _count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    @property
    def completed(self) -> int:
        return self._count(OK)

    @property
    def errors(self) -> list[str]:
        """Error texts of the requests that failed (not the cancelled ones)."""
        return [r.error for r in self.rows if r.status == ERROR]

    @property
    def cancelled(self) -> int:
        return self._count(CANCELLED)

    @property
    def not_started(self) -> int:
        return self._count(NOT_STARTED)

    @property
    def throughput_rps(self) -> float:
        """Completed requests per second of wall-clock time."""
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def output_tokens(self) -> int:
        return sum(r.eval_count or 0 for r in self._ok())

    @property
    def output_tps(self) -> float:
        """Output tokens per second served to the whole class (engine token counts)."""
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def latency(self, q: float) -> float | None:
        return percentile([r.latency_s for r in self._ok() if r.latency_s is not None], q)

    def ttft(self, q: float) -> float | None:
        return percentile([r.ttft_s for r in self._ok() if r.ttft_s is not None], q)

    @property
    def latency_p50(self) -> float | None:
        return self.latency(50)

    @property
    def latency_p90(self) -> float | None:
        return self.latency(90)

    @property
    def latency_p99(self) -> float | None:
        return self.latency(99)

    @property
    def ttft_p50(self) -> float | None:
        return self.ttft(50)

    @property
    def ttft_p90(self) -> float | None:
        return self.ttft(90)

    def summary(self) -> dict[str, Any]:
        """One flat row of summary numbers (a row of `sweep`'s table)."""
        return {
            "concurrency": self.concurrency,
            "requests": len(self.rows),
            "completed": self.completed,
            "errors": len(self.errors),
            "cancelled": self.cancelled,
            "not_started": self.not_started,
            "wall_s": self.wall_s,
            "throughput_rps": self.throughput_rps,
            "output_tps": self.output_tps,
            "latency_p50_s": self.latency_p50,
            "latency_p90_s": self.latency_p90,
            "latency_p99_s": self.latency_p99,
            "ttft_p50_s": self.ttft_p50,
            "ttft_p90_s": self.ttft_p90,
            "stopped_by_time": self.stopped_by_time,
        }

    def as_dataframe(self):
        """The per-request rows as a pandas DataFrame (one row per planned request)."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows], columns=[f for f in RequestRow.__dataclass_fields__])

    def __str__(self) -> str:
        def s(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f} s"

        return (
            f"{self.concurrency} students x {self.requests_per_client} requests on {self.model}: "
            f"{self.completed}/{len(self.rows)} completed in {self.wall_s:.1f} s, "
            f"{self.output_tps:.1f} tokens/s, latency p50 {s(self.latency_p50)} "
            f"p90 {s(self.latency_p90)}, first token p50 {s(self.ttft_p50)}, "
            f"{len(self.errors)} errors, {self.cancelled} cancelled"
            + (" (stopped by the time limit)" if self.stopped_by_time else "")
        )


# --------------------------------------------------------------------------- checks
def _check_seconds(name: str, value: Any, hint: str) -> float:
    return check_number(f"{name} (seconds)", value, 0, None, hint, above=True)


def check_target(host: str | None, *, allow_remote: bool = False) -> str:
    """Normalise `host` (default OLLAMA_HOST) and refuse a non-loopback one unless allowed:
    by `allow_remote=True`, or by naming it in SLM_LOADTEST_HOSTS (comma-separated hosts or
    URLs, e.g. `lab-server:11434`), so an instructor's configured lab server works unchanged."""
    if host is not None and not isinstance(host, str):
        raise BadInput(
            f"host must be a string like 'http://127.0.0.1:11434', got {host!r}",
            "pass the server's address, or leave it out to use OLLAMA_HOST",
        )
    settings = get_settings()
    url = normalise_host(host) if host else settings.ollama_host
    configured = {normalise_host(h) for h in settings.loadtest_hosts}
    if not allow_remote and url not in configured and not is_loopback_host(url):
        raise BadInput(
            f"refusing to load-test {url}: it is not this machine (127.0.0.1, ::1, localhost)",
            "a load test floods a server with requests - only run it against your own. "
            f"For a lab server you run, add it to SLM_LOADTEST_HOSTS (e.g. SLM_LOADTEST_HOSTS="
            f"{url.split('://', 1)[1]}) or pass allow_remote=True",
        )
    return url


def _auth_headers() -> dict[str, str]:
    """`Authorization: Bearer $OLLAMA_API_KEY` when that is set, as the `ollama` client sends it
    (a shared `slm-course serve --api-key` requires it)."""
    key = reveal(get_settings().ollama_api_key)
    return {"Authorization": f"Bearer {key}"} if key else {}


# --------------------------------------------------------------------------- one request
async def _one_request(
    client, url: str, payload: dict[str, Any], row: RequestRow, t_run: float, timeout_s: float
) -> None:
    """Stream one generate call into `row`. Errors are recorded, never raised; a
    cancellation marks the row cancelled and propagates."""
    import httpx

    t0 = time.perf_counter()
    row.started_s = t0 - t_run
    row.status = CANCELLED  # until it finishes one way or the other

    async def stream() -> None:
        async with client.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode("utf-8", "replace")
                try:
                    message = json.loads(body).get("error", body)
                except (ValueError, AttributeError):
                    message = body
                row.status, row.error = ERROR, f"HTTP {resp.status_code}: {str(message)[:300]}"
                return
            final: dict[str, Any] | None = None
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                try:
                    chunk = json.loads(line)
                except ValueError:
                    row.status, row.error = ERROR, f"not NDJSON: {line[:200]!r}"
                    return
                if "error" in chunk:
                    row.status, row.error = ERROR, f"stream error: {str(chunk['error'])[:300]}"
                    return
                if row.ttft_s is None and chunk.get("response"):
                    row.ttft_s = time.perf_counter() - t0
                if chunk.get("done"):
                    final = chunk
                    break
            if final is None:
                row.status, row.error = ERROR, "the stream ended without a final done:true chunk"
                return
            row.latency_s = time.perf_counter() - t0
            if final.get("eval_count") is not None:
                row.eval_count = int(final["eval_count"])
            row.status = OK

    try:
        await asyncio.wait_for(stream(), timeout=timeout_s)
    except asyncio.TimeoutError:
        row.status, row.error = ERROR, f"timeout: no complete answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        row.status, row.error = ERROR, f"{type(exc).__name__}: {exc}"[:300]
    except asyncio.CancelledError:
        row.status, row.error = CANCELLED, "cancelled: the run's max_duration_s was reached"
        raise


async def _preflight(host: str, timeout_s: float) -> None:
    """Fail early, with the next step, when nothing answers at `host`."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=min(timeout_s, 10.0), headers=_auth_headers()) as client:
            resp = await client.get(f"{host}/api/version")
            resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"no Ollama-compatible server answered at {host} ({exc})", INSTALL_OLLAMA) from None


# --------------------------------------------------------------------------- the run
def _validate(
    model: Any,
    concurrency: Any,
    requests_per_client: Any,
    prompt: Any,
    num_predict: Any,
    timeout_s: Any,
    max_duration_s: Any,
) -> None:
    if not isinstance(model, str) or not model.strip():
        raise BadInput(
            f"model must be a model name like 'smollm2:135m', got {model!r}",
            "list the server's models with `ollama list`",
        )
    check_int(
        "concurrency",
        concurrency,
        1,
        MAX_CONCURRENCY,
        "concurrency is the number of students asking at the same time, e.g. 1, 2, 4, 8",
    )
    check_int(
        "requests_per_client",
        requests_per_client,
        1,
        MAX_REQUESTS_PER_CLIENT,
        "a few requests per student (2-5) are enough for stable percentiles",
    )
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInput("prompt must be a non-empty string", "pass the question each student sends")
    check_int("num_predict", num_predict, 1, MAX_NUM_PREDICT, "num_predict caps the answer length in tokens, e.g. 64")
    _check_seconds("timeout_s", timeout_s, "the longest one request may take, e.g. 120")
    _check_seconds("max_duration_s", max_duration_s, "the longest the whole run may take, e.g. 300")


async def run_load_async(
    host: str | None,
    model: str,
    *,
    concurrency: int = 4,
    requests_per_client: int = 4,
    prompt: str = DEFAULT_PROMPT,
    num_predict: int = 64,
    timeout_s: float | None = None,
    max_duration_s: float = 300.0,
    allow_remote: bool = False,
    progress: bool = False,
) -> LoadResult:
    """The coroutine behind `run_load` (use it directly from async code)."""
    import httpx

    if timeout_s is None:
        timeout_s = get_settings().timeout
    _validate(model, concurrency, requests_per_client, prompt, num_predict, timeout_s, max_duration_s)
    url = check_target(host, allow_remote=allow_remote)
    await _preflight(url, timeout_s)

    # Same prompt, temperature 0 and a fixed seed: every request asks for the same work,
    # so levels differ only in how many students share the server.
    payload = {
        "model": model,
        "prompt": prompt,
        "stream": True,
        "options": {"num_predict": num_predict, "temperature": 0, "seed": 42},
    }
    rows = [[RequestRow(client=c, index=i) for i in range(requests_per_client)] for c in range(concurrency)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=concurrency * requests_per_client, desc=f"{concurrency} students", unit="req", leave=False)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=_auth_headers()) as client:
        t_run = time.perf_counter()

        async def student(c: int) -> None:
            for row in rows[c]:  # one student asks again only after the previous answer
                await _one_request(client, f"{url}/api/generate", payload, row, t_run, timeout_s)
                if bar is not None:
                    bar.update(1)

        tasks = [asyncio.ensure_future(student(c)) for c in range(concurrency)]
        try:
            _, pending = await asyncio.wait(tasks, timeout=max_duration_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:  # also when the caller cancels us (Ctrl-C in Jupyter)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if bar is not None:
                bar.close()
        wall_s = time.perf_counter() - t_run

    flat = [r for per_client in rows for r in per_client]
    result = LoadResult(
        host=url,
        model=model,
        concurrency=concurrency,
        requests_per_client=requests_per_client,
        num_predict=num_predict,
        wall_s=wall_s,
        stopped_by_time=bool(pending),
        rows=flat,
    )
    failed = [r for r in flat if r.status == ERROR]
    if flat and len(failed) == len(flat) and all(r.error.startswith("HTTP 404") for r in failed):
        raise ModelNotFound(f"the server at {url} does not have model {model!r}: {failed[0].error}", pull_hint(model))
    return result


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is already
    running in this thread (Jupyter): then a helper thread runs it on its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())

    box: dict[str, Any] = {}

    def worker() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        try:
            box["task"] = loop.create_task(make())
            box["value"] = loop.run_until_complete(box["task"])
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            # as asyncio.run does: close streams left half-read (no "Task was destroyed" noise)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=worker, name="slm-loadgen", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:  # interrupt the kernel -> cancel the run, keep nothing running
        loop, task = box.get("loop"), box.get("task")
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_load(
    host: str | None,
    model: str,
    *,
    concurrency: int = 4,
    requests_per_client: int = 4,
    prompt: str = DEFAULT_PROMPT,
    num_predict: int = 64,
    timeout_s: float | None = None,
    max_duration_s: float = 300.0,
    allow_remote: bool = False,
    progress: bool = False,
) -> LoadResult:
    """Simulate `concurrency` students, each sending `requests_per_client` streamed
    generate calls one after another, and measure how the server copes.

    Bounded by count and by time: after `max_duration_s` unfinished requests are cancelled
    and marked `cancelled` (never started ones `not_started`). `timeout_s` bounds each
    request (default SLM_TIMEOUT). `host=None` uses OLLAMA_HOST; only loopback unless
    `allow_remote=True`.
    """
    return _run_sync(
        lambda: run_load_async(
            host,
            model,
            concurrency=concurrency,
            requests_per_client=requests_per_client,
            prompt=prompt,
            num_predict=num_predict,
            timeout_s=timeout_s,
            max_duration_s=max_duration_s,
            allow_remote=allow_remote,
            progress=progress,
        )
    )


async def _warm_up(host: str, model: str, prompt: str, timeout_s: float) -> None:
    """One unrecorded request so that loading the model is not counted as latency."""
    import httpx

    payload = {
        "model": model,
        "prompt": prompt,
        "stream": False,
        "options": {"num_predict": 1, "temperature": 0, "seed": 42},
    }
    try:
        async with httpx.AsyncClient(timeout=timeout_s, headers=_auth_headers()) as client:
            resp = await client.post(f"{host}/api/generate", json=payload)
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"the warm-up request to {host} failed ({exc})", INSTALL_OLLAMA) from None
    if resp.status_code == 404:
        raise ModelNotFound(f"the server at {host} does not have model {model!r}", pull_hint(model))


# --------------------------------------------------------------------------- sweep and advice
def sweep(
    host: str | None,
    model: str,
    levels: Sequence[int] = (1, 2, 4, 8),
    *,
    requests_per_client: int = 3,
    prompt: str = DEFAULT_PROMPT,
    num_predict: int = 64,
    timeout_s: float | None = None,
    max_duration_s: float = 300.0,
    allow_remote: bool = False,
    warm_up: bool = True,
):
    """Run `run_load` at each concurrency level and return one summary row per level
    (columns: SWEEP_COLUMNS). `max_duration_s` bounds each level. With `warm_up`, one
    unrecorded request loads the model first, so level 1 does not pay the cold start."""
    import pandas as pd
    from tqdm.auto import tqdm

    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise BadInput(
            f"levels must be a list of student counts like (1, 2, 4, 8), got {levels!r}", "pass levels=(1, 2, 4, 8)"
        )
    for n in levels:
        check_int("each level", n, 1, MAX_CONCURRENCY, "levels are numbers of students, e.g. 1, 2, 4, 8")
    levels = sorted(set(levels))
    if timeout_s is None:
        timeout_s = get_settings().timeout
    _validate(model, levels[0], requests_per_client, prompt, num_predict, timeout_s, max_duration_s)
    url = check_target(host, allow_remote=allow_remote)
    if warm_up:
        _run_sync(lambda: _warm_up(url, model, prompt, timeout_s))

    rows = []
    bar = tqdm(levels, desc="load sweep", unit="level")
    for n in bar:
        bar.set_postfix_str(f"{n} students")
        result = run_load(
            url,
            model,
            concurrency=n,
            requests_per_client=requests_per_client,
            prompt=prompt,
            num_predict=num_predict,
            timeout_s=timeout_s,
            max_duration_s=max_duration_s,
            allow_remote=allow_remote,
        )
        rows.append(result.summary())
    bar.close()
    df = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    df.attrs.update(host=url, model=model, num_predict=num_predict, requests_per_client=requests_per_client)
    return df


def _check_sweep_df(df: Any) -> None:
    import pandas as pd

    if not isinstance(df, pd.DataFrame) or df.empty:
        raise BadInput("expected the non-empty DataFrame returned by sweep()", "run df = sweep(host, model) first")
    missing = {"concurrency", "latency_p90_s", "output_tps"} - set(df.columns)
    if missing:
        raise BadInput(f"the table lacks columns {sorted(missing)}", "pass the DataFrame from sweep()")


def plot_sweep(df, ax=None, *, target_p90_s: float | None = None):
    """Throughput (output tokens/s, left axis) and p90 latency (right axis) against the
    number of concurrent students. Returns the left axes."""
    import matplotlib.pyplot as plt

    _check_sweep_df(df)
    own_figure = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    d = df.sort_values("concurrency")
    ax.plot(d["concurrency"], d["output_tps"], "o-", color="tab:blue", label="throughput")
    ax.set_xlabel("concurrent students")
    ax.set_ylabel("output tokens/s (whole class)", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(d["concurrency"]))
    ax.set_xticklabels([str(int(c)) for c in d["concurrency"]])
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(d["concurrency"], d["latency_p90_s"], "s--", color="tab:red", label="p90 latency")
    if target_p90_s is not None:
        ax2.axhline(target_p90_s, color="tab:red", alpha=0.4, linestyle=":", label=f"target {target_p90_s:g} s")
    ax2.set_ylabel("p90 latency per request (s)", color="tab:red")
    ax2.set_ylim(bottom=0)
    title = "Serving a class"
    if df.attrs.get("model"):
        title += f": {df.attrs['model']}"
    ax.set_title(title)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(
        lines,
        [ln.get_label() for ln in lines],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.15),
        ncol=len(lines),
        frameon=False,
    )
    if own_figure:
        ax.figure.tight_layout()
    return ax


def sizing_advice(df, target_p90_s: float) -> str:
    """The largest measured number of concurrent students up to which every level met
    `target_p90_s` with no failed or cancelled request, as a sentence derived from `df`."""
    import math

    _check_sweep_df(df)
    target = _check_seconds("target_p90_s", target_p90_s, "e.g. 10 seconds for a full answer")
    d = df.sort_values("concurrency").reset_index(drop=True)

    def clean(row) -> bool:
        bad = sum(int(row.get(k, 0) or 0) for k in ("errors", "cancelled", "not_started"))
        p90 = row["latency_p90_s"]
        return bad == 0 and p90 is not None and not (isinstance(p90, float) and math.isnan(p90))

    passing = []  # levels up to the first one that misses: a limit, not a lucky point
    for _, row in d.iterrows():
        if not (clean(row) and row["latency_p90_s"] <= target):
            break
        passing.append(row)
    measured = ", ".join(str(int(c)) for c in d["concurrency"])
    if not passing:
        first = d.iloc[0]
        why = f"p90 {first['latency_p90_s']:.1f} s" if clean(first) else "requests failed or were cut off"
        return (
            f"No measured level met a p90 of {target:g} s (at {int(first['concurrency'])} "
            f"student(s): {why}). Ask for shorter answers (num_predict), use a smaller model "
            f"or faster hardware, or relax the target."
        )
    best = passing[-1]
    n = int(best["concurrency"])
    text = (
        f"With a p90 latency target of {target:g} s, this server handled up to {n} concurrent "
        f"student(s): p90 {best['latency_p90_s']:.1f} s, {best['output_tps']:.1f} output "
        f"tokens/s for the whole class (levels measured: {measured})."
    )
    above = d[d["concurrency"] > n]
    if above.empty:
        text += f" Every measured level met the target, so the limit lies above {n}: measure higher levels to find it."
    else:
        nxt = above.iloc[0]
        if clean(nxt):
            text += f" At {int(nxt['concurrency'])} the p90 was {nxt['latency_p90_s']:.1f} s."
        else:
            text += f" At {int(nxt['concurrency'])} requests failed or were cut off."
    return text


def kit_sweep(model: str, num_parallel: int, levels: Sequence[int] = (1, 2, 4, 8), **kwargs):
    """The same `sweep`, against a second `slm-course serve` started here with
    OLLAMA_NUM_PARALLEL=`num_parallel` on a free loopback port (stopped afterwards): the offline
    server's two shapes, one at a time (1) or decoded together (>1), side by side."""
    from .net import free_loopback_port
    from .serving.launcher import start_server, stop

    check_int("num_parallel", num_parallel, 1, 16, "e.g. 1 (one at a time) or 4")
    port = free_loopback_port()
    proc = start_server(port, env={"OLLAMA_NUM_PARALLEL": str(num_parallel)})
    try:
        df = sweep(f"http://127.0.0.1:{port}", model, levels, **kwargs)
    finally:
        stop(proc)
    df.attrs["num_parallel"] = num_parallel
    return df


def plot_parallel(sweeps: dict[str, Any], ax=None):
    """p50 latency against concurrent students for several sweeps (label -> sweep table), with the
    one-at-a-time prediction N x s (s: the first sweep's one-student latency). Returns the axes."""
    import matplotlib.pyplot as plt

    if not sweeps:
        raise BadInput("no sweeps to plot", "pass {'1 slot': df1, '4 slots': df4}")
    for df in sweeps.values():
        _check_sweep_df(df)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    first = next(iter(sweeps.values())).sort_values("concurrency")
    s = float(first["latency_p50_s"].iloc[0] / first["concurrency"].iloc[0])
    for label, df in sweeps.items():
        d = df.sort_values("concurrency")
        ax.plot(d["concurrency"], d["latency_p50_s"], "o-", label=f"{label}: measured p50")
    ax.plot(first["concurrency"], first["concurrency"] * s, "k--", label="one at a time: N x s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(first["concurrency"]))
    ax.set_xticklabels([str(int(c)) for c in first["concurrency"]])
    ax.set_xlabel("concurrent students")
    ax.set_ylabel("p50 latency per request (s)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("One at a time, or decoded together")
    return ax
