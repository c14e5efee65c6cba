"""Typed results shared by every backend: the text plus normalised speed metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

NS = 1e9


@dataclass
class Metrics:
    """Speed metrics of one call, in seconds and tokens.

    ttft_s        time to first token, measured by the kit on the client side
    load_s        time the server spent loading the model (0 when warm)
    prompt_eval_s time the engine spent reading the prompt
    decode_s      time the engine spent generating the output tokens
    total_s       wall-clock time of the whole call, measured by the kit
    decode_source "engine" when the counters come from the engine, "wall" when estimated
    """

    ttft_s: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    load_s: float = 0.0
    prompt_eval_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    decode_source: str = "engine"

    @property
    def decode_tps(self) -> float | None:
        """Output tokens per second while decoding (tokens / decode time)."""
        if self.output_tokens <= 0 or self.decode_s <= 0:
            return None
        return self.output_tokens / self.decode_s

    @property
    def prompt_tps(self) -> float | None:
        if self.prompt_tokens <= 0 or self.prompt_eval_s <= 0:
            return None
        return self.prompt_tokens / self.prompt_eval_s

    @classmethod
    def from_ollama(cls, final: Any, *, ttft_s: float | None, total_s: float) -> "Metrics":
        """Build metrics from an Ollama final chunk (dict or ollama-client object)."""
        get = (lambda k: final.get(k)) if isinstance(final, dict) else (lambda k: getattr(final, k, None))
        return cls(
            ttft_s=ttft_s,
            prompt_tokens=int(get("prompt_eval_count") or 0),
            output_tokens=int(get("eval_count") or 0),
            load_s=(get("load_duration") or 0) / NS,
            prompt_eval_s=(get("prompt_eval_duration") or 0) / NS,
            decode_s=(get("eval_duration") or 0) / NS,
            total_s=total_s,
            decode_source="engine",
        )


@dataclass
class Result:
    """A model's answer. Streaming yields Results too: `text` is then the new piece,
    `done` is True only on the last one, which carries the metrics."""

    text: str
    model: str
    backend: str
    done: bool = True
    done_reason: str | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __str__(self) -> str:
        return self.text

    def summary(self) -> str:
        m = self.metrics
        tps = f"{m.decode_tps:.1f} tok/s" if m.decode_tps else "n/a tok/s"
        ttft = f"{m.ttft_s * 1000:.0f} ms" if m.ttft_s is not None else "n/a"
        return (
            f"{self.model} via {self.backend}: {m.output_tokens} tokens, "
            f"first token {ttft}, {tps}, total {m.total_s:.2f} s"
        )


def collect(stream: Iterable[Result]) -> Result:
    """Join a stream of Results into one Result (text concatenated, final metrics)."""
    parts: list[str] = []
    last: Result | None = None
    for piece in stream:
        parts.append(piece.text)
        last = piece
    if last is None:
        raise RuntimeError("the stream ended without a single chunk")
    return Result(
        text="".join(parts),
        model=last.model,
        backend=last.backend,
        done=True,
        done_reason=last.done_reason,
        metrics=last.metrics,
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (q from 0 to 100) by linear interpolation, numpy's default; None
    when there are no values. One definition for the bench, the load generator and the dashboard."""
    if len(values) == 0:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))
