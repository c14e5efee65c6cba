"""One model interface over three engines: Ollama, any OpenAI-compatible endpoint, embedded llama.cpp.

Every backend offers the same calls and returns the same `Result`:

    backend.generate(model, prompt, system=None, options=None)        -> Result
    backend.chat(model, messages, options=None)                       -> Result
    backend.stream_generate(...) / backend.stream_chat(...)           -> Iterator[Result]
    backend.complete(model, messages, options=None, format=None)      -> Result  (one non-streaming request)
    backend.unload(model) -> bool        backend.model_size(model) -> int | None

Streams yield `Result` pieces; the last one has `done=True` and the metrics.
`options` is an `Options` or a dict with Ollama's names (temperature, seed, num_predict, top_p,
top_k, stop, num_ctx), checked once here. `backend.capabilities` says which optional calls a
backend has ("pull", "show", "ps"), so no caller needs to ask which class it is.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Union

from .errors import (
    INSTALL_OLLAMA,
    BackendUnavailable,
    BadInput,
    CourseError,
    MissingKey,
    ModelNotFound,
    pull_hint,
)
from .options import Options
from .results import Metrics, Result, collect
from .settings import get_settings, redact_url, reveal
from .validate import Format, base_name, check_format, check_messages, check_model, openai_messages, same_model

Messages = list[dict[str, Any]]
#: How long Ollama keeps waiting for a model to leave memory after `keep_alive: 0`.
UNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ModelInfo:
    """What a server says about one of its models (Ollama's /api/tags); empty when it does not say."""

    name: str
    size_bytes: int | None = None  # the weights on disk
    family: str = ""  # details.family, e.g. "llama", "nomic-bert"
    families: tuple[str, ...] = ()
    parameter_size: str = ""  # details.parameter_size, e.g. "3.8B", "135M"


def model_infos(backend: Any) -> list[ModelInfo]:
    """The backend's models with sizes and families where it reports them (names only otherwise)."""
    lister = getattr(backend, "list_model_info", None)
    if callable(lister):
        return list(lister())
    return [ModelInfo(name) for name in backend.list_models()]


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise BadInput(
            f"prompt must be a string, not {type(prompt).__name__}",
            'pass the prompt as text, e.g. "Why is the sky blue?"',
        )
    if not prompt.strip():
        raise BadInput("the prompt is empty", "type a question or an instruction for the model")
    return prompt


def _user_messages(messages: Any) -> Messages:
    """A lesson's messages, checked as every layer checks them, and with some user text."""
    return check_messages(messages, need_user_text=True)


OptionsIn = Union[Options, Mapping[str, Any], None]


def _all_at_once(result: Result) -> Result:
    """A collected stream as a non-streaming call sees it: the text arrives with the last token."""
    result.metrics.ttft_s = result.metrics.total_s
    return result


class Backend(ABC):
    """What every engine offers. Subclasses implement `list_models` and `_stream_chat`."""

    name: str = "backend"
    #: Optional calls this backend has: "pull" (download a model), "show" (/api/show), "ps" (loaded models).
    capabilities: frozenset[str] = frozenset()

    @abstractmethod
    def list_models(self) -> list[str]:
        """Names of the models this backend can answer with now."""

    @abstractmethod
    def _stream_chat(self, model: str, messages: Messages, options: Options | None) -> Iterator[Result]: ...

    def _complete(self, model: str, messages: Messages, options: Options | None, format: Format) -> Result:
        """One non-streaming request; by default the stream, collected (`format` is not enforced)."""
        return _all_at_once(collect(self._stream_chat(model, messages, options)))

    def _stream_generate(
        self, model: str, prompt: str, system: str | None, options: Options | None
    ) -> Iterator[Result]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self._stream_chat(model, messages, options)

    def stream_chat(self, model: str, messages: Messages, *, options: OptionsIn = None) -> Iterator[Result]:
        """Chat with a list of messages, yielding the answer piece by piece."""
        return self._stream_chat(check_model(model), _user_messages(messages), Options.parse(options))

    def stream_generate(
        self, model: str, prompt: str, *, system: str | None = None, options: OptionsIn = None
    ) -> Iterator[Result]:
        """Complete one prompt (with an optional system prompt), yielding pieces."""
        return self._stream_generate(check_model(model), _check_prompt(prompt), system, Options.parse(options))

    def chat(self, model: str, messages: Messages, *, options: OptionsIn = None) -> Result:
        """Chat with a list of messages; the whole answer with its metrics."""
        return collect(self.stream_chat(model, messages, options=options))

    def generate(self, model: str, prompt: str, *, system: str | None = None, options: OptionsIn = None) -> Result:
        """Complete one prompt; the whole answer with its metrics."""
        return collect(self.stream_generate(model, prompt, system=system, options=options))

    def complete(self, model: str, messages: Messages, *, options: OptionsIn = None, format: Format = None) -> Result:
        """One chat request without streaming (`"stream": false`): the whole answer with its metrics.

        `format` ("json" or a JSON schema) constrains the answer where the backend can enforce it
        (Ollama, OpenAI-compatible APIs, the embedded engine). Without streaming no client sees a
        first token, so `metrics.ttft_s` is the whole request's time.
        """
        return self._complete(
            check_model(model), _user_messages(messages), Options.parse(options), check_format(format)
        )

    def unload(self, model: str, *, timeout_s: float = UNLOAD_TIMEOUT_S) -> bool:
        """Evict `model` from memory so that the next call is a cold start; True once it is gone
        (within `timeout_s`), False where it cannot be done (a remote API)."""
        return False

    def model_size(self, model: str) -> int | None:
        """Bytes of the model's weights on disk (what each decoded token must read); None if unknown."""
        return None

    def list_model_info(self) -> list[ModelInfo]:
        """The models with what the backend knows about them (here: names only)."""
        return [ModelInfo(name) for name in self.list_models()]

    def has_model(self, model: str) -> bool:
        names = self.list_models()
        return any(same_model(model, n) for n in names)

    def describe(self) -> str:
        return self.name

    # The optional calls: a backend has them where their name is in `capabilities` (Ollama's API).
    def show(self, model: str) -> Any:
        """What the server reports about `model` (Ollama's /api/show)."""
        raise self._lacks("show")

    def ps(self) -> Any:
        """The models loaded in memory (Ollama's /api/ps)."""
        raise self._lacks("ps")

    def pull(self, model: str, progress: bool = True) -> None:
        """Download `model` onto the server."""
        raise self._lacks("pull")

    def _lacks(self, call: str) -> CourseError:
        return CourseError(
            f"{self.describe()} has no `{call}` call",
            f"check `'{call}' in backend.capabilities` first, or {INSTALL_OLLAMA}",
        )


# --------------------------------------------------------------------------- Ollama
class OllamaBackend(Backend):
    """Ollama (or the kit's `slm-course serve`) through the official `ollama` client."""

    name = "ollama"
    capabilities = frozenset({"pull", "show", "ps"})

    def __init__(
        self, host: str | None = None, *, timeout: float | None = None, keep_alive: str | float | None = None
    ) -> None:
        import httpx
        import ollama

        settings = get_settings()
        self.host = host or settings.ollama_host
        self.timeout = timeout or settings.timeout
        self.keep_alive = keep_alive
        # the key of a shared `slm-course serve --api-key`, from settings (never printed)
        key = reveal(settings.ollama_api_key)
        headers = {"authorization": f"Bearer {key}"} if key else None
        self.client = ollama.Client(host=self.host, headers=headers, timeout=httpx.Timeout(self.timeout, connect=5.0))

    @property
    def shown_host(self) -> str:
        """The host for messages: without the password a URL may carry."""
        return redact_url(self.host)

    def describe(self) -> str:
        return f"Ollama API at {self.shown_host}"

    def _translate(self, exc: Exception, model: str | None = None) -> CourseError:
        import httpx
        import ollama

        if isinstance(exc, ollama.ResponseError):
            if exc.status_code == 404 and model:
                return ModelNotFound(
                    f"model '{model}' is not available at {self.shown_host}: {exc.error}", pull_hint(model)
                )
            if exc.status_code == 400:
                return BadInput(
                    f"the server refused the request: {exc.error}", "check the prompt, messages and options"
                )
            if exc.status_code in (401, 403):
                return MissingKey(
                    f"the server at {self.shown_host} needs an API key: {exc.error}",
                    "set OLLAMA_API_KEY to the key the server was started with",
                )
            return BackendUnavailable(
                f"the server at {self.shown_host} answered {exc.status_code}: {exc.error}",
                "look at the server's log; restart `ollama serve` if needed",
            )
        if isinstance(exc, httpx.TimeoutException):
            return BackendUnavailable(
                f"no answer from {self.shown_host} within {self.timeout:g} s",
                "the model may still be loading: try again, use a smaller model, or raise SLM_TIMEOUT",
            )
        if isinstance(exc, (ConnectionError, httpx.TransportError)):
            return BackendUnavailable(f"Ollama is not answering at {self.shown_host}", INSTALL_OLLAMA)
        return CourseError(f"unexpected error from {self.shown_host}: {redact_url(str(exc))}", "see the message above")

    def _call(self, fn, *args, for_model: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CourseError:
            raise
        except Exception as exc:  # translated into one clear error type
            raise self._translate(exc, for_model or kwargs.get("model")) from exc

    def version(self) -> str:
        """The server's version string (also a reachability check)."""
        import httpx

        try:
            r = httpx.get(f"{self.host}/api/version", timeout=httpx.Timeout(5.0, connect=2.0))
            r.raise_for_status()
            return r.json().get("version", "?")
        except Exception as exc:
            raise self._translate(exc) from exc

    def list_models(self) -> list[str]:
        resp = self._call(self.client.list)
        return [m.model for m in resp.models if m.model]

    def list_model_info(self) -> list[ModelInfo]:
        """The models of /api/tags with their size on disk, family and parameter size."""
        infos = []
        for m in self._call(self.client.list).models:
            if not m.model:
                continue
            d = m.details
            infos.append(
                ModelInfo(
                    m.model,
                    int(m.size) if m.size else None,
                    (d.family or "") if d else "",
                    tuple((d.families or ()) if d else ()),
                    (d.parameter_size or "") if d else "",
                )
            )
        return infos

    def show(self, model: str) -> Any:
        return self._call(self.client.show, check_model(model), for_model=model)

    def ps(self) -> Any:
        return self._call(self.client.ps)

    def pull(self, model: str, progress: bool = True) -> None:
        """Pull a model, showing Ollama's download progress with a tqdm bar."""
        from tqdm.auto import tqdm

        bar = None
        try:
            for update in self._call(self.client.pull, check_model(model), stream=True, for_model=model):
                if update.total and update.completed is not None and progress:
                    if bar is None or bar.total != update.total:
                        if bar is not None:
                            bar.close()
                        bar = tqdm(total=update.total, unit="B", unit_scale=True, desc=f"pull {model}")
                    bar.n = update.completed
                    bar.refresh()
                elif progress and update.status:
                    print(update.status)
        except CourseError:
            raise
        except Exception as exc:
            raise self._translate(exc, model) from exc
        finally:
            if bar is not None:
                bar.close()

    def _consume(self, model: str, stream: Iterator[Any], t0: float, kind: str) -> Iterator[Result]:
        ttft = None
        try:
            for part in stream:
                text = part.response if kind == "generate" else (part.message.content or "")
                if text and ttft is None:
                    ttft = time.perf_counter() - t0
                if part.done:
                    if text:
                        yield Result(text, model, self.name, done=False)
                    metrics = Metrics.from_ollama(part, ttft_s=ttft, total_s=time.perf_counter() - t0)
                    yield Result("", model, self.name, done=True, done_reason=part.done_reason, metrics=metrics)
                    return
                yield Result(text, model, self.name, done=False)
        except CourseError:
            raise
        except Exception as exc:
            raise self._translate(exc, model) from exc
        raise BackendUnavailable(
            f"the stream from {self.shown_host} ended before the final chunk",
            "try again; if it repeats, look at the server's log",
        )

    def _stream_chat(self, model, messages, options):
        t0 = time.perf_counter()
        stream = self._call(
            self.client.chat,
            model=model,
            messages=messages,
            options=_ollama(options),
            stream=True,
            keep_alive=self.keep_alive,
        )
        return self._consume(model, stream, t0, "chat")

    def _stream_generate(self, model, prompt, system, options):
        t0 = time.perf_counter()
        stream = self._call(
            self.client.generate,
            model=model,
            prompt=prompt,
            system=system,
            options=_ollama(options),
            stream=True,
            keep_alive=self.keep_alive,
        )
        return self._consume(model, stream, t0, "generate")

    def _complete(self, model, messages, options, format):
        t0 = time.perf_counter()
        resp = self._call(
            self.client.chat,
            model=model,
            messages=messages,
            options=_ollama(options),
            format=format,
            stream=False,
            keep_alive=self.keep_alive,
        )
        e2e = time.perf_counter() - t0
        return Result(
            resp.message.content or "",
            model,
            self.name,
            done=True,
            done_reason=resp.done_reason,
            metrics=Metrics.from_ollama(resp, ttft_s=e2e, total_s=e2e),
        )

    def _loaded(self) -> set[str]:
        """Names of the models in memory now (/api/ps), with and without `:latest`."""
        names = set()
        for m in self.ps().models:
            for n in (m.model, getattr(m, "name", None)):
                if n:
                    names |= {n, base_name(n)}
        return names

    def unload(self, model: str, *, timeout_s: float = UNLOAD_TIMEOUT_S) -> bool:
        """Ollama (and `slm-course serve`) unload a model when a request sets `keep_alive: 0`."""
        model = check_model(model)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # asked again every 1.5 s: a request that was still finishing may have renewed the lease
            self._call(self.client.generate, model=model, prompt="", keep_alive=0, for_model=model)
            retry_at = min(deadline, time.monotonic() + 1.5)
            while time.monotonic() < retry_at:
                if base_name(model) not in self._loaded():
                    return True
                time.sleep(0.2)
        return False

    def model_size(self, model: str) -> int | None:
        """The size /api/tags reports for the model."""
        return next((i.size_bytes for i in self.list_model_info() if same_model(i.name, model)), None)


def _ollama(options: Options | None) -> dict[str, Any] | None:
    """Options as the `ollama` client sends them (a JSON object; None: the server's defaults)."""
    return None if options is None else options.to_dict()


# --------------------------------------------------------------------------- OpenAI
class OpenAIBackend(Backend):
    """Any OpenAI-compatible endpoint (OpenAI, Ollama's /v1, vLLM, ...) via the `openai` client.

    OpenAI-compatible servers do not report engine timings, so decode time is measured on the
    client (from the first to the last token) and `metrics.decode_source` is "wall".
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | None = None,
        max_retries: int = 1,
    ) -> None:
        import openai

        settings = get_settings()
        self.base_url = (base_url or settings.large_base_url).rstrip("/")
        key = api_key or reveal(settings.openai_api_key)
        if not key:
            if "api.openai.com" in self.base_url:
                raise MissingKey(
                    "no OpenAI API key is set",
                    "set OPENAI_API_KEY in your environment or in a .env file (never in a notebook)",
                )
            key = "ollama"  # local OpenAI-compatible servers accept any key
        self.timeout = timeout or settings.timeout
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout, max_retries=max_retries)

    @property
    def shown_url(self) -> str:
        """The base URL for messages: without the password a URL may carry."""
        return redact_url(self.base_url)

    def describe(self) -> str:
        return f"OpenAI-compatible API at {self.shown_url}"

    def _translate(self, exc: Exception, model: str | None = None) -> CourseError:
        import openai

        if isinstance(exc, openai.AuthenticationError):
            return MissingKey(f"{self.shown_url} refused the API key", "check OPENAI_API_KEY")
        if isinstance(exc, openai.NotFoundError):
            return ModelNotFound(
                f"model '{model}' is not available at {self.shown_url}",
                "list the models with `backend.list_models()`"
                if "openai.com" in self.base_url
                else pull_hint(model or "<model>"),
            )
        if isinstance(exc, openai.APITimeoutError):
            return BackendUnavailable(
                f"no answer from {self.shown_url} within {self.timeout:g} s", "try again, or raise SLM_TIMEOUT"
            )
        if isinstance(exc, openai.APIConnectionError):
            return BackendUnavailable(
                f"cannot reach {self.shown_url}",
                f"check the network and SLM_LARGE_BASE_URL (for Ollama: {INSTALL_OLLAMA})",
            )
        if isinstance(exc, openai.BadRequestError):
            return BadInput(
                f"{self.shown_url} refused the request: {redact_url(str(exc))}", "check the prompt and options"
            )
        if isinstance(exc, openai.RateLimitError):
            return BackendUnavailable(
                f"{self.shown_url} rate-limited the request", "wait a moment, or check your plan's limits"
            )
        return BackendUnavailable(f"error from {self.shown_url}: {redact_url(str(exc))}", "try again later")

    def list_models(self) -> list[str]:
        try:
            return sorted(m.id for m in self.client.models.list())
        except Exception as exc:
            raise self._translate(exc) from exc

    def _stream_chat(self, model, messages, options):
        t0 = time.perf_counter()
        try:
            stream = self.client.chat.completions.create(
                model=model,
                messages=openai_messages(messages),
                stream=True,
                stream_options={"include_usage": True},
                **(options.openai_params() if options else {}),
            )
        except Exception as exc:
            raise self._translate(exc, model) from exc
        return self._consume(model, stream, t0)

    def _complete(self, model, messages, options, format):
        params = options.openai_params() if options else {}
        if format == "json":
            params["response_format"] = {"type": "json_object"}
        elif format is not None:
            params["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": format}}
        t0 = time.perf_counter()
        try:
            resp = self.client.chat.completions.create(
                model=model, messages=openai_messages(messages), stream=False, **params
            )
        except Exception as exc:
            raise self._translate(exc, model) from exc
        e2e = time.perf_counter() - t0
        usage = resp.usage
        metrics = Metrics(
            ttft_s=e2e,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            total_s=e2e,
            decode_source="wall",
        )  # no stream: the client cannot time decoding
        choice = resp.choices[0]
        return Result(
            choice.message.content or "", model, self.name, done=True, done_reason=choice.finish_reason, metrics=metrics
        )

    def _consume(self, model, stream, t0) -> Iterator[Result]:
        ttft = t_last = None
        usage = None
        reason = ""
        pieces = 0
        try:
            for event in stream:
                if getattr(event, "usage", None):
                    usage = event.usage
                for choice in event.choices or []:
                    text = (choice.delta.content or "") if choice.delta else ""
                    if choice.finish_reason:
                        reason = choice.finish_reason
                    if text:
                        now = time.perf_counter()
                        if ttft is None:
                            ttft = now - t0
                        t_last = now
                        pieces += 1
                        yield Result(text, model, self.name, done=False)
        except Exception as exc:
            raise self._translate(exc, model) from exc
        total = time.perf_counter() - t0
        out_tokens = usage.completion_tokens if usage else pieces
        metrics = Metrics(
            ttft_s=ttft,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=out_tokens,
            prompt_eval_s=ttft or 0.0,
            # the first token arrives at ttft; the remaining ones over (t_last - ttft)
            decode_s=((t_last - t0) - ttft) * out_tokens / max(out_tokens - 1, 1)
            if ttft is not None and t_last is not None and out_tokens > 1
            else 0.0,
            total_s=total,
            decode_source="wall",
        )
        yield Result(
            "", model, self.name, done=True, done_reason={"length": "length"}.get(reason, "stop"), metrics=metrics
        )


# --------------------------------------------------------------------------- embedded
class EmbeddedBackend(Backend):
    """The bundled model run in this Python process by llama.cpp: always works offline."""

    name = "embedded"

    def __init__(self) -> None:
        from .serving.engine import get_engine

        self.engine = get_engine()

    def describe(self) -> str:
        return "embedded llama.cpp engine (bundled model, in this process)"

    def list_models(self) -> list[str]:
        return self.engine.available()

    def list_model_info(self) -> list[ModelInfo]:
        """The bundled models with the size of their GGUF file and the registry's family."""
        from .registry import card

        infos = []
        for name in self.list_models():
            c = card(name)
            infos.append(
                ModelInfo(
                    name,
                    self.engine.resolve(name)[1].stat().st_size,
                    c.family if c else "",
                    (c.family,) if c else (),
                    c.parameter_size if c else "",
                )
            )
        return infos

    def _wrap(self, model: str, chunks, t0: float) -> Iterator[Result]:
        """Results from engine chunks; `t0` is taken before the engine loads, templates and tokenises."""
        ttft = None
        for chunk in chunks:
            if chunk.text and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.done:
                d = chunk.timings()
                yield Result(
                    "",
                    model,
                    self.name,
                    done=True,
                    done_reason=chunk.done_reason,
                    metrics=Metrics.from_ollama(d, ttft_s=ttft, total_s=time.perf_counter() - t0),
                )
            else:
                yield Result(chunk.text, model, self.name, done=False)

    # engine.stream loads the model, applies the chat template and tokenises before it returns,
    # so the clock starts before it: a cold call's load time is part of its TTFT and total
    def _stream_chat(self, model, messages, options):
        t0 = time.perf_counter()
        chunks = self.engine.stream(model, messages=messages, options=options)
        return self._wrap(model, chunks, t0)

    def _stream_generate(self, model, prompt, system, options):
        t0 = time.perf_counter()
        chunks = self.engine.stream(model, prompt=prompt, system=system, options=options)
        return self._wrap(model, chunks, t0)

    def _complete(self, model, messages, options, format):
        t0 = time.perf_counter()
        # the engine compiles "json" or a schema into a grammar, as Ollama does
        chunks = self.engine.stream(model, messages=messages, options=options, json_format=format)
        return _all_at_once(collect(self._wrap(model, chunks, t0)))

    def unload(self, model: str, *, timeout_s: float = UNLOAD_TIMEOUT_S) -> bool:
        """The engine frees the model at once."""
        self.engine.unload(check_model(model))
        return True

    def model_size(self, model: str) -> int | None:
        """The size of the model's GGUF file."""
        return self.engine.resolve(model)[1].stat().st_size
