"""The demo server: the AI content generation workflow behind the gateway, plus its HTTP side.

:class:`DemoServer` builds a container with ``StreamingModule.for_root`` (WebSocket enabled),
adds the demo's routes to the gateway's aiohttp application and serves it:

- ``POST /executions`` ``{"prompt", "executionId"?, "words"?}`` → ``202 {"executionId"}``:
  starts a run in the background (a task this app owns and cancels on shutdown);
- ``GET /executions/{id}`` → ``{"executionId", "status", "result"}`` (``result`` is the final
  state once completed; its ``content`` is exactly the text the token frames carried);
- ``GET /`` (from a browser) and ``GET /demo``: the demo page; ``/static/*`` its assets;
- the gateway's own WebSocket (``/`` and ``/ws``) and ``GET /health``.

With a JWT secret, both ``/executions`` endpoints require the token (``Authorization: Bearer``
or ``?token=``); the page, its assets and ``/health`` do not. A token with an ``executions``
claim may only start and read those executions.

Memory: at most ``max_executions`` runs are remembered (the oldest finished ones are forgotten
first) and at most ``max_running`` run at once; past either bound ``POST /executions`` answers
503 rather than growing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

from streaming_module.core.codec import dumps
from streaming_module.demo.model import DEFAULT_WORDS, MAX_WORDS, DemoChatModel
from streaming_module.errors import AuthenticationError

logger = logging.getLogger("streaming_module.demo")

MAX_PROMPT_LENGTH = 10_000
EXECUTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
STATIC_FILES = {
    "demo.html": "text/html",
    "demo.css": "text/css",
    "demo.js": "text/javascript",
}

ExecutionStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
_FINISHED = frozenset({"completed", "failed", "cancelled"})


def static_file(name: str) -> bytes:
    """A file of the package's ``static/`` directory (the demo page and its assets)."""
    return resources.files("streaming_module").joinpath("static", name).read_bytes()


@dataclass(slots=True)
class ExecutionRecord:
    """What the demo remembers of one run."""

    execution_id: str
    prompt: str
    words: int
    status: ExecutionStatus = "pending"
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "executionId": self.execution_id,
            "status": self.status,
            "result": self.result if self.status == "completed" else None,
        }
        if self.error is not None:
            body["error"] = self.error
        return body


class HttpError(Exception):
    """An HTTP error answer with a JSON body ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return _json({"error": self.code, "message": self.message}, status=self.status)


def _json(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")


class DemoApp:
    """The demo's HTTP endpoints and the runs they start.

    ``workflow`` is anything with ``await workflow.run(input, execution_id=...)`` returning the
    final state (the demo's :class:`~streaming_module.demo.workflow.AIContentGenerationWorkflow`).
    ``authenticator`` (a :class:`~streaming_module.gateway.auth.JwtAuthenticator`, or ``None``)
    guards ``/executions``.
    """

    def __init__(
        self,
        workflow: Any,
        *,
        authenticator: Any = None,
        default_words: int = DEFAULT_WORDS,
        max_executions: int = 1000,
        max_running: int = 64,
    ) -> None:
        self.workflow = workflow
        self.authenticator = authenticator
        self.default_words = default_words
        self.max_executions = max_executions
        self.max_running = max_running
        self.executions: OrderedDict[str, ExecutionRecord] = OrderedDict()
        self._closed = False

    # ------------------------------------------------------------------ routes

    def install(self, app: web.Application) -> None:
        """Add the demo's routes to ``app`` (before it starts)."""
        app.router.add_post("/executions", self.handle_start)
        app.router.add_get("/executions/{execution_id}", self.handle_get)
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

    async def handle_start(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self._authenticate(request)
            prompt, execution_id, words = await self._parse_start(request)
            if claims is not None and not _may_access(claims, execution_id):
                raise HttpError(
                    403, "forbidden", f"this token may not start execution {execution_id!r}"
                )
            record = self.start(prompt, execution_id=execution_id, words=words)
        except HttpError as exc:
            return exc.response()
        return _json({"executionId": record.execution_id}, status=202)

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        execution_id = request.match_info["execution_id"]
        try:
            claims = self._authenticate(request)
            if claims is not None and not _may_access(claims, execution_id):
                raise HttpError(
                    403, "forbidden", f"this token may not read execution {execution_id!r}"
                )
            record = self.executions.get(execution_id)
            if record is None:
                raise HttpError(
                    404,
                    "not_found",
                    f"no execution {execution_id!r} here (unknown, or forgotten after "
                    f"{self.max_executions} newer runs)",
                )
        except HttpError as exc:
            return exc.response()
        return _json(record.to_json())

    def _authenticate(self, request: web.Request) -> Any:
        if self.authenticator is None:
            return None
        try:
            return self.authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            raise HttpError(401, "unauthorized", exc.message) from None

    async def _parse_start(self, request: web.Request) -> tuple[str, str | None, int]:
        try:
            body = await request.json()
        except ValueError:
            raise HttpError(
                400,
                "invalid_json",
                'the body must be JSON like {"prompt": "Write about tides", "words": 300}',
            ) from None
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_body", "the body must be a JSON object")
        unknown = sorted(set(body) - {"prompt", "executionId", "words"})
        if unknown:
            raise HttpError(
                400,
                "invalid_body",
                f"unknown field(s) {unknown}; expected 'prompt', 'executionId' and 'words'",
            )
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise HttpError(400, "invalid_prompt", "'prompt' must be a non-empty string")
        if len(prompt) > MAX_PROMPT_LENGTH:
            raise HttpError(
                400,
                "invalid_prompt",
                f"'prompt' is {len(prompt)} characters; at most {MAX_PROMPT_LENGTH} are accepted",
            )
        execution_id = body.get("executionId")
        if execution_id is not None and (
            not isinstance(execution_id, str) or not EXECUTION_ID_PATTERN.match(execution_id)
        ):
            raise HttpError(
                400,
                "invalid_execution_id",
                "'executionId' must be 1-128 characters of letters, digits, '.', '_', ':' or "
                "'-', starting with a letter or digit",
            )
        words = body.get("words", self.default_words)
        if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= MAX_WORDS:
            raise HttpError(
                400, "invalid_words", f"'words' must be an integer from 1 to {MAX_WORDS:,}"
            )
        return prompt, execution_id, words

    # ------------------------------------------------------------------ runs

    def start(
        self, prompt: str, *, execution_id: str | None = None, words: int | None = None
    ) -> ExecutionRecord:
        """Start a run in the background; raises :class:`HttpError` 409 when ``execution_id``
        is taken, 503 when the bounds are reached or the app is shutting down."""
        if self._closed:
            raise HttpError(503, "shutting_down", "the server is shutting down")
        if execution_id is None:
            execution_id = f"exec-{uuid.uuid4().hex[:16]}"
        elif execution_id in self.executions:
            raise HttpError(
                409,
                "execution_exists",
                f"execution {execution_id!r} already exists; choose another executionId",
            )
        running = sum(1 for r in self.executions.values() if r.status not in _FINISHED)
        if running >= self.max_running:
            raise HttpError(
                503, "busy", f"{running} runs are in progress; try again when one finishes"
            )
        self._make_room()
        record = ExecutionRecord(execution_id, prompt, words or self.default_words)
        self.executions[execution_id] = record
        record.task = asyncio.create_task(self._run(record), name=f"demo-run-{execution_id}")
        logger.info("run %s started (%d words)", execution_id, record.words)
        return record

    def _make_room(self) -> None:
        while len(self.executions) >= self.max_executions:
            oldest = next((k for k, r in self.executions.items() if r.status in _FINISHED), None)
            if oldest is None:
                raise HttpError(503, "busy", "too many runs are in progress")
            del self.executions[oldest]

    async def _run(self, record: ExecutionRecord) -> None:
        record.status = "running"
        try:
            state = await self.workflow.run(
                {"prompt": record.prompt, "words": record.words},
                execution_id=record.execution_id,
            )
        except asyncio.CancelledError:
            record.status = "cancelled"
            record.finished = time.time()
            logger.info("run %s cancelled", record.execution_id)
            raise
        except Exception as exc:
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            record.finished = time.time()
            logger.exception("run %s failed", record.execution_id)
            return
        record.result = dict(state) if isinstance(state, dict) else state
        record.status = "completed"
        record.finished = time.time()
        logger.info(
            "run %s completed in %.2f s", record.execution_id, record.finished - record.created
        )

    async def aclose(self) -> None:
        """Cancel every run still going and wait for them to stop."""
        self._closed = True
        tasks = [r.task for r in self.executions.values() if r.task and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _may_access(claims: Any, execution_id: str | None) -> bool:
    executions = getattr(claims, "executions", None)
    if executions is None:
        return True
    return execution_id is not None and execution_id in executions


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
    ) -> None:
        from streaming_module.demo.workflow import AIContentGenerationWorkflow
        from streaming_module.module import StreamingModule

        options: dict[str, Any] = {
            "websocket": {"enabled": True, "host": host, "port": port},
            "gateway": {
                "enabled": True,
                "authentication": {"enabled": jwt_secret is not None, "secret_key": jwt_secret},
            },
        }
        if redis_url:
            options["broker"] = {"backend": "redis", "redis_url": redis_url}
        self.container = StreamingModule.for_root(options)
        self.model = DemoChatModel(token_delay_ms=token_delay_ms, words=default_words)
        # The services are passed explicitly rather than by wiring: wiring is global (the
        # latest for_root wins), and this workflow must use this container's services.
        self.workflow = AIContentGenerationWorkflow(
            llm=self.model,
            token_streaming=self.container.token_streaming(),
            event_processor=self.container.event_processor(),
            progress_tracking=self.container.progress_tracking(),
        )
        authenticator = None
        if jwt_secret is not None:
            from streaming_module.gateway.auth import JwtAuthenticator

            authenticator = JwtAuthenticator(self.container.options().gateway.authentication)
        self.app = DemoApp(self.workflow, authenticator=authenticator, default_words=default_words)
        self.gateway = self.container.gateway()
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
        pending = self.container.init_resources()
        if pending is not None:
            await pending
        self._started = True

    async def stop(self) -> None:
        await self.app.aclose()
        if self._started:
            self._started = False
            pending = self.container.shutdown_resources()
            if pending is not None:
                await pending

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


__all__ = ["DemoApp", "DemoServer", "ExecutionRecord", "HttpError", "static_file"]
