"""The demo server: the AI content generation workflow behind the gateway, served by the
library's runs API.

:class:`DemoServer` builds a container with ``StreamingModule.for_root`` (WebSocket enabled),
registers the workflow on the gateway (``gateway.register_workflow``) and serves:

- the runs API (``gateway/runs.py``): ``POST /executions`` ``{"prompt", "executionId"?,
  "words"?}`` → ``202 {"executionId"}``, ``GET /executions/{id}``, ``POST
  /executions/{id}/cancel``, and ``GET /executions/{id}/events`` (SSE);
- AG-UI at ``POST /agui`` (``forwardedProps.words`` sets the length) and the AI SDK UI message
  stream at ``POST /api/chat`` (an optional ``words`` in the body), with their resume endpoints;
- ``GET /`` (from a browser) and ``GET /demo``: the demo page; ``/static/*`` its assets;
- the gateway's own WebSocket (``/`` and ``/ws``) and ``GET /health``.

With a JWT secret, every run endpoint requires the token (``Authorization: Bearer`` or
``?token=``); the page, its assets and ``/health`` do not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources
from types import TracebackType
from typing import Any

from aiohttp import web

from streaming_module.demo.model import DEFAULT_WORDS, MAX_WORDS, DemoChatModel
from streaming_module.gateway.interop import serve_agui, serve_ai_chat
from streaming_module.gateway.runs import HttpError, Run, RunsApi, RunsOptions, StartRequest

logger = logging.getLogger("streaming_module.demo")

WORKFLOW_NAME = "ai-content-generation"
STATIC_FILES = {
    "demo.html": "text/html",
    "demo.css": "text/css",
    "demo.js": "text/javascript",
    "protocols.js": "text/javascript",
}


def static_file(name: str) -> bytes:
    """A file of the package's ``static/`` directory (the demo page and its assets)."""
    return resources.files("streaming_module").joinpath("static", name).read_bytes()


def demo_input(default_words: int = DEFAULT_WORDS) -> Any:
    """The demo workflow's input builder: ``{"prompt", "words"}``, ``words`` checked to be an
    integer from 1 to ``MAX_WORDS`` (400 ``invalid_words`` otherwise)."""

    def make_input(request: StartRequest) -> Any:
        if request.input is not None:
            return request.input
        words = request.options.get("words", default_words)
        if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= MAX_WORDS:
            raise HttpError(
                400, "invalid_words", f"'words' must be an integer from 1 to {MAX_WORDS:,}"
            )
        return {"prompt": request.prompt, "words": words}

    return make_input


class DemoApp:
    """The demo's page and a thin layer over the runs API that serves its workflow.

    ``workflow`` is anything with ``await workflow.run(input, execution_id=...)`` returning the
    final state (the demo's :class:`~streaming_module.demo.workflow.AIContentGenerationWorkflow`).
    ``runs`` is the :class:`RunsApi` to register it on (the gateway's; by default a new one on
    an in-memory broker, for tests).
    """

    def __init__(
        self,
        workflow: Any,
        *,
        runs: RunsApi | None = None,
        default_words: int = DEFAULT_WORDS,
        max_executions: int = 1000,
        max_running: int = 64,
    ) -> None:
        if runs is None:
            from streaming_module.broker.memory import InMemoryBroker

            runs = RunsApi(
                InMemoryBroker(),
                options=RunsOptions(max_executions=max_executions, max_running=max_running),
            )
        self.runs = runs
        self.workflow = workflow
        self.default_words = default_words
        registration = runs.register(
            WORKFLOW_NAME, workflow, make_input=demo_input(default_words), options=("words",)
        )
        serve_agui(runs, registration, "/agui")
        serve_ai_chat(runs, registration, "/api/chat")

    @property
    def executions(self) -> Mapping[str, Run]:
        """The runs this process started, oldest first."""
        return self.runs.runs

    def install(self, app: web.Application) -> None:
        """Add the demo page, its assets and (unless already mounted there) the runs API to
        ``app``, before it starts."""
        self.runs.setup(app)
        app.router.add_get("/demo", self.handle_page)
        app.router.add_get("/static/{name}", self.handle_static)

    async def handle_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=static_file("demo.html"),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def handle_static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=static_file(name),
            content_type=content_type,
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def start(
        self, prompt: str, *, execution_id: str | None = None, words: int | None = None
    ) -> Run:
        """Start a run of the demo workflow (as ``POST /executions`` does)."""
        options = {"words": words} if words is not None else {}
        return await self.runs.start(
            StartRequest(WORKFLOW_NAME, prompt, None, execution_id, options)
        )

    async def aclose(self) -> None:
        """Cancel every run still going and wait for them to stop."""
        await self.runs.aclose()


DEMO_RATE_LIMIT: Mapping[str, Any] = {
    "window_ms": 60_000,
    "max_connections": 600,
    "max_requests_per_connection": 6_000,
    "max_open_connections_per_address": 64,
}
"""The demo's rate limits, on unless ``rate_limit=None`` (``--no-rate-limit``): per address
(and for the whole server), 600 new connections and, per connection, 6,000 frames a minute, and
64 connections open at once per address — far above what a visitor's page does (one connection,
a few frames a run), far below what a flood needs. See docs/security.md."""


class DemoServer:
    """The whole demo: ``async with DemoServer(port=0) as demo: print(demo.url)``.

    Builds the container (WebSocket enabled on ``host``/``port``; port 0 picks a free one), the
    deterministic model paced at ``token_delay_ms``, the workflow and the HTTP routes; on exit,
    cancels the runs still going and shuts the container down (server, streams, tasks).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        token_delay_ms: float = 20.0,
        jwt_secret: str | None = None,
        redis_url: str | list[str] | None = None,
        default_words: int = DEFAULT_WORDS,
        rate_limit: Mapping[str, Any] | None = DEMO_RATE_LIMIT,
    ) -> None:
        from streaming_module.demo.workflow import AIContentGenerationWorkflow
        from streaming_module.module import StreamingModule

        gateway: dict[str, Any] = {
            "enabled": True,
            "authentication": {"enabled": jwt_secret is not None, "secret_key": jwt_secret},
        }
        if rate_limit is not None:
            gateway["rate_limit"] = dict(rate_limit)
        options: dict[str, Any] = {
            "websocket": {"enabled": True, "host": host, "port": port},
            "gateway": gateway,
        }
        if redis_url:
            options["broker"] = {"backend": "redis", "redis_url": redis_url}
        self.container = StreamingModule.for_root(options)
        self.model = DemoChatModel(token_delay_ms=token_delay_ms, words=default_words)
        # Named explicitly: a process may hold several containers (tests run many demos).
        self.workflow = AIContentGenerationWorkflow(llm=self.model, container=self.container)
        self.gateway = self.container.gateway()
        self.app = DemoApp(self.workflow, runs=self.gateway.runs, default_words=default_words)
        self._started = False

    @property
    def port(self) -> int:
        """The port being served (the real one when started with port 0)."""
        port = self.gateway.port
        if port is None:
            raise RuntimeError("the demo server is not started")
        return int(port)

    @property
    def url(self) -> str:
        host = self.container.options().websocket.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def start(self) -> None:
        self.app.install(self.gateway.app)
        self.gateway.set_index_handler(self.app.handle_page)
        await self.container.init_resources()
        self._started = True

    async def stop(self) -> None:
        await self.app.aclose()
        if self._started:
            self._started = False
            await self.container.shutdown_resources()

    async def __aenter__(self) -> DemoServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


__all__ = ["WORKFLOW_NAME", "DemoApp", "DemoServer", "demo_input", "static_file"]
