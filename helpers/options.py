"""Generation settings as one typed model, checked once where a call enters the helpers.

`Options` carries Ollama's names (as ollama-python's `Options` does): temperature, seed,
num_predict, top_p, top_k, min_p, repeat_penalty, stop, num_ctx, num_thread. Other Ollama
settings (mirostat, ...) pass through unchecked, as Ollama ignores what it does not know.

    >>> Options.parse({"temperature": 0, "stop": "\\n"}).to_dict()
    {'temperature': 0.0, 'stop': ['\\n']}
    >>> Options.parse(None) is None
    True
    >>> Options.merge({"temperature": 0, "num_predict": 64}, {"num_predict": 8}).to_dict()
    {'temperature': 0.0, 'num_predict': 8}
    >>> Options.parse({"seed": True})
    Traceback (most recent call last):
    ...
    helpers.errors.BadInput: option 'seed' must be a whole number, not bool
      -> e.g. {"temperature": 0, "seed": 42}
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .errors import BadInput
from .validate import is_int

#: Largest `num_predict` and the range of `num_ctx` the kit accepts (the engine's limits).
MAX_NUM_PREDICT = 131_072
MIN_NUM_CTX, MAX_NUM_CTX = 32, 131_072
_HINT = 'e.g. {"temperature": 0, "seed": 42}'
_WHOLE = ("seed", "num_predict", "top_k", "num_ctx", "num_thread")
_NUMBER = ("temperature", "top_p", "min_p", "repeat_penalty")


#: stop sequences a request may set, and their length (each is checked against every new token)
MAX_STOP = 16
MAX_STOP_CHARS = 256


class Options(BaseModel):
    """Every generation setting a lesson passes, with Ollama's names; None = the server's default."""

    model_config = ConfigDict(extra="allow", frozen=True)

    temperature: float | None = None
    seed: int | None = None
    num_predict: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    stop: list[str] | None = None
    num_ctx: int | None = None
    num_thread: int | None = None

    @field_validator(*_WHOLE, mode="before")
    @classmethod
    def _whole(cls, value: Any, info) -> Any:
        if value is not None and not is_int(value):
            raise BadInput(f"option {info.field_name!r} must be a whole number, not {type(value).__name__}", _HINT)
        return None if value is None else int(value)

    @field_validator(*_NUMBER, mode="before")
    @classmethod
    def _number(cls, value: Any, info) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise BadInput(f"option {info.field_name!r} must be a number, not {type(value).__name__}", _HINT)
        if not math.isfinite(value):
            raise BadInput(f"option {info.field_name!r} is {value}, not a finite number", "use e.g. 0.7")
        return value.item() if isinstance(value, (np.integer, np.floating)) else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            raise BadInput("option 'stop' must be a string or a list of strings", 'e.g. {"stop": ["\\n\\n"]}')
        if len(value) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in value):
            raise BadInput(
                f"option 'stop' takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} "
                f"characters (got {len(value)})",
                'e.g. {"stop": ["\\n\\n", "User:"]}',
            )
        return [s for s in value if s]

    @field_validator("num_predict")
    @classmethod
    def _num_predict(cls, value: int | None) -> int | None:
        if value is not None and (value == 0 or not -2 <= value <= MAX_NUM_PREDICT):
            raise BadInput(
                f"num_predict={value} is out of range",
                f"use a value from 1 to {MAX_NUM_PREDICT} (-1 = until the context is full)",
            )
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise BadInput("temperature must be >= 0", "use 0 for deterministic answers")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise BadInput("top_p must be in (0, 1]", "use e.g. 0.9")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise BadInput("top_k must be >= 0", "use e.g. 40")
        return value

    @field_validator("num_ctx")
    @classmethod
    def _num_ctx(cls, value: int | None) -> int | None:
        if value is not None and not MIN_NUM_CTX <= value <= MAX_NUM_CTX:
            raise BadInput(
                f"num_ctx={value} is out of range", f"use a context from {MIN_NUM_CTX} to {MAX_NUM_CTX} tokens"
            )
        return value

    @classmethod
    def parse(cls, options: Options | Mapping[str, Any] | None) -> Options | None:
        """Check `options` once: an `Options`, a mapping with Ollama's names, or None (no options)."""
        if options is None or isinstance(options, Options):
            return options
        if hasattr(options, "model_dump"):  # ollama-python's own Options
            options = options.model_dump(exclude_none=True)
        if not isinstance(options, Mapping):
            raise BadInput(f"options must be a dict, not {type(options).__name__}", _HINT)
        if not all(isinstance(k, str) for k in options):
            raise BadInput("option names must be strings", _HINT)
        try:
            return cls(**options)
        except ValidationError as exc:  # a BadInput raised by a validator arrives wrapped
            cause = exc.errors()[0].get("ctx", {}).get("error")
            if isinstance(cause, BadInput):
                raise cause from None
            raise BadInput(f"invalid options: {exc.errors()[0]['msg']}", _HINT) from None

    @classmethod
    def merge(cls, base: Options | Mapping[str, Any] | None, override: Options | Mapping[str, Any] | None) -> Options:
        """`base` with every setting `override` gives replacing its own."""
        a, b = cls.parse(base), cls.parse(override)
        return cls(**{**(a.to_dict() if a else {}), **(b.to_dict() if b else {})})

    def to_dict(self) -> dict[str, Any]:
        """The settings that are set, as the JSON `options` object of Ollama's API."""
        return self.model_dump(exclude_none=True)

    def openai_params(self) -> dict[str, Any]:
        """The settings an OpenAI-compatible API takes, under its names (num_predict -> max_tokens)."""
        params: dict[str, Any] = {}
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("seed", "seed"),
            ("num_predict", "max_tokens"),
            ("stop", "stop"),
        ):
            value = getattr(self, ours)
            if value is not None:
                params[theirs] = value
        if params.get("max_tokens", 1) < 0:  # -1/-2 mean "until the context is full": no limit
            params.pop("max_tokens")
        return params
