"""The runs API: start, read and cancel registered workflows over HTTP, and watch them over SSE.

A user registers workflows (``gateway.register_workflow("writer", Writer(...))``, or
``RunsApi(broker).register(...)`` for an app of their own) and gets:

- ``POST /executions`` ``{"workflow"?, "input" | "prompt", "executionId"?, ...options}`` →
  ``202 {"executionId"}``: the run starts in a task this API owns;
- ``GET /executions/{id}`` → ``{"executionId", "workflow", "status", "result"}`` (+ ``error``):
  from this process when it runs here, else from the broker's run record (so from every
  instance when the broker is shared);
- ``POST /executions/{id}/cancel`` → the run's task is cancelled (the graph and its subgraphs
  with it); on another instance, through the broker. A client disconnecting never cancels a run;
- ``GET /executions/{id}/events``: the execution's native frames as SSE (``protocol/sse.py``);
- per registration, optionally, AG-UI and AI SDK UI message stream endpoints
  (``gateway/interop.py`` adds them with :meth:`RunsApi.add_routes`).

Errors are ``{"code", "message"}`` with a 4xx/5xx status. Authentication comes first: with JWT
enabled, a missing or bad token gets 401 before any 400, 404 or 204; a token with an
``executions`` claim may only start, read, cancel and watch the executions it lists.

Bounds (:class:`RunsOptions`): at most ``max_running`` runs at once and ``max_executions`` runs
remembered (oldest finished forgotten first; past either, 503 ``busy``); with authentication, at
most ``max_running_per_subject`` runs at once per token subject (``sub``; past it, 429
``too_many_runs``), so one token holder cannot take every run slot; request bodies up to
``max_body_bytes`` (413); a run's result kept here up to ``max_result_bytes`` and in the broker's
record up to ``max_record_bytes`` (larger results are not kept: ``result`` is null with
``resultOmitted: true``), and results kept here total at most ``max_retained_bytes``.

The core (:meth:`RunsApi.parse_start`, :meth:`~RunsApi.start`, :meth:`~RunsApi.describe`,
:meth:`~RunsApi.cancel`, :meth:`~RunsApi.claims_for_token`) is framework-neutral; the
``handle_*`` methods are its aiohttp adapters.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from streaming_module.broker.base import Broker, RunRecord, Subscription
from streaming_module.errors import AuthenticationError, StreamingError, shorten
from streaming_module.gateway.sse import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_RETRY_MS,
    ExecutionStream,
    SseConnections,
    respond,
)
from streaming_module.protocol import sse
from streaming_module.protocol.frames import Frame
from streaming_module.protocol.json import dumps
from streaming_module.protocol.messages import RESERVED_ID_PREFIX

if TYPE_CHECKING:
    from streaming_module.gateway.auth import Claims, JwtAuthenticator

logger = logging.getLogger("streaming_module.gateway.runs")

EXECUTION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""What ``POST /executions`` accepts as an ``executionId`` (and a workflow name): always matched
whole (``fullmatch``), so ``"abc\n"`` is refused."""

SHOWN_ID_CHARS = 80
"""How much of a client-given id an error message repeats."""


def shown_id(value: str) -> str:
    """``value`` quoted for an error message, cut at :data:`SHOWN_ID_CHARS` characters (a 404
    never echoes a kilobyte of id back)."""
    return repr(shorten(value, SHOWN_ID_CHARS))


"""Client-chosen execution ids: 1-128 letters, digits, ``.``, ``_``, ``:``, ``-``."""

CONTROL_CHANNEL = f"{RESERVED_ID_PREFIX}runs/control"
"""The broker "execution" on which instances ask each other to cancel runs (never stored:
frames are published live only). Its id cannot be chosen for a run (see the pattern above)."""

FINAL = frozenset({"completed", "failed", "cancelled"})
_START_FIELDS = frozenset({"workflow", "input", "prompt", "executionId"})


class HttpError(StreamingError):
    """An HTTP error answer: ``status`` and the body ``{"code", "message"}``."""

    default_code = "http_error"

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.headers = headers

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


def _unauthorized(exc: AuthenticationError) -> HttpError:
    return HttpError(401, "unauthorized", exc.message, **{"WWW-Authenticate": "Bearer"})


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(body), status=status, content_type="application/json", headers=headers
    )


@dataclass(slots=True)
class StartRequest:
    """What a client asked to run: a registered ``workflow`` (None: the default one), with
    either ``input`` (given to the workflow as is) or ``prompt`` (turned into the input by the
    registration's ``make_input``), an optional ``execution_id`` and the extra ``options`` the
    registration accepts (the demo's ``words``)."""

    workflow: str | None = None
    prompt: str | None = None
    input: Any = None
    execution_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def default_input(request: StartRequest) -> Any:
    """``input`` when given, else ``{"prompt": prompt, **options}``."""
    if request.input is not None:
        return request.input
    return {"prompt": request.prompt, **request.options}


InputBuilder = Callable[[StartRequest], Any]
"""Turns a :class:`StartRequest` into the workflow's input; raises :class:`HttpError` (400)
for options it does not accept."""


@dataclass(slots=True)
class Registration:
    """One registered workflow and the HTTP surfaces it is served on."""

    name: str
    workflow: Any
    make_input: InputBuilder
    options: frozenset[str]


@dataclass(slots=True)
class RunsOptions:
    """Bounds of a :class:`RunsApi` (see the module docstring)."""

    max_executions: int = 1000
    max_running: int = 64
    max_running_per_subject: int = 8
    max_body_bytes: int = 256 * 1024
    max_prompt_length: int = 10_000
    max_result_bytes: int = 64 * 1024 * 1024
    max_record_bytes: int = 1024 * 1024
    max_retained_bytes: int = 256 * 1024 * 1024
    sse_heartbeat: float = DEFAULT_HEARTBEAT
    sse_max_queue: int = DEFAULT_MAX_QUEUE
    sse_retry_ms: int = DEFAULT_RETRY_MS
    cancel_wait: float = 5.0


@dataclass(slots=True)
class Run:
    """A run this process started."""

    execution_id: str
    workflow: str
    status: str = "pending"
    result: Any = None
    error: Any = None
    result_omitted: bool = False
    result_bytes: int = 0
    created: float = field(default_factory=time.time)
    finished: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    chat_id: str | None = None
    subject: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _describe(
            self.execution_id,
            self.workflow,
            self.status,
            self.result,
            self.error,
            self.result_omitted,
        )


def _describe(
    execution_id: str,
    workflow: str | None,
    status: str,
    result: Any,
    error: Any,
    omitted: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "executionId": execution_id,
        "workflow": workflow,
        "status": status,
        "result": result if status == "completed" else None,
    }
    if error is not None:
        body["error"] = error
    if omitted and status == "completed":
        body["resultOmitted"] = True
    return body


def _now() -> str:
    return datetime.now(UTC).isoformat()


def chat_key(chat_id: str) -> str:
    """The run-record id under which a chat's current run is kept (not a valid execution id,
    so it never collides with one)."""
    return f"{RESERVED_ID_PREFIX}chat/{chat_id}"


class RunsApi:
    """Registered workflows, the runs they started, and their HTTP endpoints.

    ``broker`` is where frames and run records live (the gateway's); ``authenticator`` a
    :class:`~streaming_module.gateway.auth.JwtAuthenticator` (None or disabled: open);
    ``cors`` the gateway's CORS options, used for the headers of streamed responses.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        authenticator: JwtAuthenticator | None = None,
        options: RunsOptions | None = None,
        cors: Any = None,
    ) -> None:
        self.broker = broker
        self.authenticator = authenticator
        self.options = options or RunsOptions()
        self.cors = cors
        self.registrations: dict[str, Registration] = {}
        self.default_workflow: str | None = None
        self.runs: OrderedDict[str, Run] = OrderedDict()
        self.sse_connections = SseConnections()
        self._apps: list[web.Application] = []
        self._routes: list[Callable[[web.Application], None]] = []
        self._control: Subscription | None = None
        self._control_lock = asyncio.Lock()
        self._closed = False

    # ------------------------------------------------------------------ registration

    def register(
        self,
        name: str,
        workflow: Any,
        *,
        make_input: InputBuilder | None = None,
        options: Iterable[str] = (),
        default: bool | None = None,
    ) -> Registration:
        """Serve ``workflow`` (anything with ``await workflow.run(input, execution_id=...)``)
        as ``name``.

        ``make_input`` builds its input from a :class:`StartRequest` (default
        :func:`default_input`); ``options`` names the extra body fields it accepts. The first
        registration is the default (``"workflow"`` omitted) unless ``default`` says otherwise.
        To serve it to AG-UI clients and to the AI SDK's ``useChat`` too, hand the registration
        to :func:`~streaming_module.gateway.interop.serve_agui` /
        :func:`~streaming_module.gateway.interop.serve_ai_chat` (the gateway's
        ``register_workflow(..., agui=, ai_chat=)`` does).
        """
        if not isinstance(name, str) or not EXECUTION_ID_PATTERN.fullmatch(name):
            raise ValueError(f"workflow name {name!r}: use letters, digits, '.', '_', ':' or '-'")
        run = getattr(workflow, "run", None)
        if not callable(run):
            raise TypeError(f"{workflow!r} has no run(input, execution_id=...) method")
        if name in self.registrations:
            raise ValueError(f"a workflow named {name!r} is registered already")
        extra = frozenset(options)
        clashing = sorted(extra & _START_FIELDS)
        if clashing:
            raise ValueError(f"options {clashing} clash with the start request's own fields")
        registration = Registration(name, workflow, make_input or default_input, extra)
        self.registrations[name] = registration
        if default or (default is None and self.default_workflow is None):
            self.default_workflow = name
        return registration

    def setup(self, app: web.Application, *, prefix: str = "") -> None:
        """Add the runs endpoints (and the routes given to :meth:`add_routes`) to ``app``,
        before it starts; its shutdown cancels the runs still going. Setting up the same app
        again does nothing."""
        if app in self._apps:
            return
        app.router.add_post(prefix + "/executions", self.handle_start)
        app.router.add_get(prefix + "/executions/{execution_id}", self.handle_get)
        app.router.add_post(prefix + "/executions/{execution_id}/cancel", self.handle_cancel)
        app.router.add_get(prefix + "/executions/{execution_id}/events", self.handle_events)
        for install in self._routes:
            install(app)
        app.on_shutdown.append(self._on_shutdown)
        self._apps.append(app)

    def add_routes(self, install: Callable[[web.Application], None]) -> None:
        """Serve more endpoints wherever this API is served: ``install(app)`` runs for every
        app set up so far and every later one (how ``gateway/interop.py`` adds AG-UI and the
        AI SDK stream)."""
        self._routes.append(install)
        for app in self._apps:
            install(app)

    def registration(self, name: str | None) -> Registration:
        """The registration called ``name`` (None: the default one); 404 when there is none."""
        key = name if name is not None else self.default_workflow
        registration = self.registrations.get(key) if key is not None else None
        if registration is None:
            known = ", ".join(sorted(self.registrations)) or "none"
            raise HttpError(
                404,
                "unknown_workflow",
                f"no workflow {shown_id(key) if key is not None else 'by default'} is "
                f"registered (known: {known})",
            )
        return registration

    # ------------------------------------------------------------------ auth

    def claims_for_token(self, token: str | None) -> Claims | None:
        """Verify a request's token (from a header or ``?token=``); None when authentication
        is off. Raises :class:`HttpError` 401."""
        authenticator = self.authenticator
        if authenticator is None or not authenticator.enabled:
            return None
        if not token:
            raise HttpError(
                401,
                "unauthorized",
                "authentication is required: pass a JWT in an 'Authorization: Bearer <token>' "
                "header or as ?token=<token>",
                **{"WWW-Authenticate": "Bearer"},
            )
        try:
            return authenticator.verify(token)
        except AuthenticationError as exc:
            raise _unauthorized(exc) from None

    def authenticate(self, request: web.BaseRequest) -> Claims | None:
        """:meth:`claims_for_token` for an aiohttp request."""
        authenticator = self.authenticator
        if authenticator is None or not authenticator.enabled:
            return None
        try:
            return authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            raise _unauthorized(exc) from None

    @staticmethod
    def expiry(claims: Claims | None) -> float | None:
        """When a stream opened with these claims must end: the token's ``exp`` (epoch
        seconds), or None."""
        exp = claims.raw.get("exp") if claims is not None else None
        return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None

    @staticmethod
    def check_access(claims: Claims | None, execution_id: str, action: str = "read") -> None:
        """404 for the server's own channels and records (ids beginning with ``@``); 403 unless
        the token may touch ``execution_id`` (its ``executions`` claim)."""
        if execution_id.startswith(RESERVED_ID_PREFIX):
            raise HttpError(404, "not_found", f"no execution {shown_id(execution_id)} is known")
        if claims is not None and not claims.may_subscribe(execution_id):
            raise HttpError(
                403,
                "forbidden",
                f"this token may not {action} execution {shown_id(execution_id)} (its 'executions' "
                "claim does not list it)",
            )

    # ------------------------------------------------------------------ starting

    def parse_start(self, body: Any) -> StartRequest:
        """Validate a ``POST /executions`` body (400s name the field at fault)."""
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_body", "the body must be a JSON object")
        workflow = body.get("workflow")
        if workflow is not None and not isinstance(workflow, str):
            raise HttpError(400, "invalid_body", "'workflow' must be the name of a workflow")
        registration = self.registration(workflow)
        unknown = sorted(set(body) - _START_FIELDS - registration.options)
        if unknown:
            allowed = sorted(
                {"workflow", "input", "prompt", "executionId"} | set(registration.options)
            )
            raise HttpError(
                400, "invalid_body", f"unknown field(s) {unknown}; expected some of {allowed}"
            )
        has_input = "input" in body
        prompt = body.get("prompt")
        if has_input and prompt is not None:
            raise HttpError(400, "invalid_body", "give either 'input' or 'prompt', not both")
        if not has_input:
            prompt = self.check_prompt(prompt)
        execution_id = self.check_execution_id(body.get("executionId"))
        options = {k: body[k] for k in registration.options if k in body}
        return StartRequest(registration.name, prompt, body.get("input"), execution_id, options)

    def check_prompt(self, prompt: Any, field: str = "prompt") -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise HttpError(
                400, "invalid_prompt", f"'{field}' must be a non-empty string (or give 'input')"
            )
        if len(prompt) > self.options.max_prompt_length:
            raise HttpError(
                400,
                "invalid_prompt",
                f"'{field}' is {len(prompt)} characters; at most "
                f"{self.options.max_prompt_length} are accepted",
            )
        return prompt

    @staticmethod
    def check_execution_id(execution_id: Any, field: str = "executionId") -> str | None:
        if execution_id is None:
            return None
        if not isinstance(execution_id, str) or not EXECUTION_ID_PATTERN.fullmatch(execution_id):
            raise HttpError(
                400,
                "invalid_execution_id",
                f"'{field}' must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit",
            )
        return execution_id

    async def start(
        self, request: StartRequest, *, claims: Claims | None = None, chat_id: str | None = None
    ) -> Run:
        """Start a run in the background and return it (its ``task`` is running).

        403 when the token may not start that execution id, 409 when the id is taken (here or
        in the broker's records), 503 past the bounds or while shutting down; 400 from the
        registration's ``make_input``."""
        if self._closed:
            raise HttpError(503, "shutting_down", "the server is shutting down")
        registration = self.registration(request.workflow)
        execution_id = request.execution_id or f"exec-{uuid.uuid4().hex[:16]}"
        self.check_access(claims, execution_id, "start")
        if execution_id in self.runs or await self.broker.load_run(execution_id) is not None:
            raise HttpError(
                409,
                "execution_exists",
                f"execution {shown_id(execution_id)} already exists; choose another executionId",
            )
        workflow_input = registration.make_input(request)
        subject = claims.subject if claims is not None else None
        running = [r for r in self.runs.values() if r.status not in FINAL]
        if len(running) >= self.options.max_running:
            raise HttpError(
                503, "busy", f"{len(running)} runs are in progress; try again when one finishes"
            )
        if claims is not None:
            mine = sum(1 for r in running if r.subject == subject)
            if mine >= self.options.max_running_per_subject:
                raise HttpError(
                    429,
                    "too_many_runs",
                    f"this token's subject already has {mine} runs in progress (at most "
                    f"{self.options.max_running_per_subject}); wait for one to finish",
                )
        self._make_room(self.options.max_executions - 1)
        await self._ensure_control()
        run = Run(execution_id, registration.name, chat_id=chat_id, subject=subject)
        self.runs[execution_id] = run
        await self._save(run)
        if chat_id is not None:
            await self.broker.save_run(
                RunRecord(
                    chat_key(chat_id), "started", registration.name, execution_id, None, _now()
                )
            )
        run.task = asyncio.create_task(
            self._run(run, registration, workflow_input), name=f"run-{execution_id}"
        )
        logger.info("run %s of %s started", execution_id, registration.name)
        return run

    def _make_room(self, keep: int) -> None:
        while len(self.runs) > keep:
            oldest = next((k for k, r in self.runs.items() if r.status in FINAL), None)
            if oldest is None:
                raise HttpError(503, "busy", "too many runs are in progress")
            del self.runs[oldest]

    def _retain(self, run: Run) -> None:
        """Forget the results of the oldest finished runs while the kept ones exceed
        ``max_retained_bytes`` (their status stays known)."""
        total = sum(r.result_bytes for r in self.runs.values())
        for other in self.runs.values():
            if total <= self.options.max_retained_bytes:
                break
            if other is not run and other.result_bytes:
                total -= other.result_bytes
                other.result, other.result_bytes, other.result_omitted = None, 0, True

    async def _run(self, run: Run, registration: Registration, workflow_input: Any) -> None:
        run.status = "started"
        await self._save(run)
        try:
            state = await registration.workflow.run(workflow_input, execution_id=run.execution_id)
        except asyncio.CancelledError:
            run.status, run.finished = "cancelled", time.time()
            await asyncio.shield(self._save(run))
            logger.info("run %s cancelled", run.execution_id)
            raise
        except Exception as exc:
            run.status, run.finished = "failed", time.time()
            run.error = {"code": "workflow_failed", "message": f"{type(exc).__name__}: {exc}"}
            logger.exception("run %s failed", run.execution_id)
            await self._save(run)
            return
        result = dict(state) if isinstance(state, Mapping) else state
        try:
            size = len(dumps(result))
        except TypeError:
            size = self.options.max_result_bytes + 1
        if size <= self.options.max_result_bytes:
            run.result, run.result_bytes = result, size
        else:
            run.result_omitted = True
        run.status, run.finished = "completed", time.time()
        self._retain(run)
        await self._save(run)
        logger.info("run %s completed in %.2f s", run.execution_id, run.finished - run.created)

    async def _save(self, run: Run) -> None:
        result = run.result if run.result_bytes <= self.options.max_record_bytes else None
        try:
            await self.broker.save_run(
                RunRecord(run.execution_id, run.status, run.workflow, result, run.error, _now())
            )
        except Exception:
            logger.exception("could not save the record of run %s", run.execution_id)

    # ------------------------------------------------------------------ reading, cancelling

    async def describe(self, execution_id: str, *, claims: Claims | None = None) -> dict[str, Any]:
        """``{"executionId", "workflow", "status", "result"}`` (+ ``error``); 404 when neither
        this process nor the broker knows the execution."""
        self.check_access(claims, execution_id)
        run = self.runs.get(execution_id)
        if run is not None:
            return run.to_json()
        record = await self.broker.load_run(execution_id)
        if record is None:
            raise HttpError(
                404,
                "not_found",
                f"no execution {shown_id(execution_id)} is known (unknown, or forgotten after "
                f"{self.options.max_executions} newer runs)",
            )
        return _describe(
            record.execution_id, record.workflow, record.status, record.result, record.error
        )

    async def cancel(self, execution_id: str, *, claims: Claims | None = None) -> dict[str, Any]:
        """Cancel a run: here, cancel its task and wait (up to ``cancel_wait`` s) for its final
        status; on another instance, ask it through the broker (``status: "cancelling"``).
        404 when unknown, 409 when it already ended."""
        self.check_access(claims, execution_id, "cancel")
        run = self.runs.get(execution_id)
        if run is None:
            description = await self.describe(execution_id)
            if description["status"] in FINAL:
                raise self._finished(execution_id, description["status"])
            await self._ensure_control()
            self.broker.publish(
                CONTROL_CHANNEL, "cancel", {"executionId": execution_id}, replayable=False
            )
            return {**description, "status": "cancelling"}
        if run.status in FINAL:
            raise self._finished(execution_id, run.status)
        await self._cancel_local(run)
        return run.to_json()

    @staticmethod
    def _finished(execution_id: str, status: str) -> HttpError:
        return HttpError(
            409, "not_running", f"execution {shown_id(execution_id)} already ended ({status})"
        )

    async def _cancel_local(self, run: Run) -> None:
        task = run.task
        if task is None or task.done():
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.options.cancel_wait)
        if not done:
            logger.warning(
                "run %s did not stop within %.1f s", run.execution_id, self.options.cancel_wait
            )

    async def _ensure_control(self) -> None:
        """Listen (live only) for cancel requests from other instances, once."""
        if self._control is not None or self._closed:
            return
        async with self._control_lock:
            if self._control is None and not self._closed:
                self._control = await self.broker.subscribe(CONTROL_CHANNEL, self._on_control)

    def _on_control(self, frame: Frame) -> None:
        payload = frame.payload
        if frame.type != "cancel" or not isinstance(payload, dict):
            return
        run = self.runs.get(str(payload.get("executionId")))
        if run is not None and run.task is not None and not run.task.done():
            logger.info("run %s cancelled at another instance's request", run.execution_id)
            run.task.cancel()

    async def aclose(self) -> None:
        """Cancel every run still going and wait for them to stop; end the SSE streams."""
        self._closed = True
        if self._control is not None:
            self._control.close()
            self._control = None
        tasks = [r.task for r in self.runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.sse_connections.close_all()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ aiohttp handlers

    async def read_json(self, request: web.Request) -> Any:
        """The request's JSON body, at most ``max_body_bytes`` (413 beyond, 400 if not JSON)."""
        limit = self.options.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, "too_large", f"the body is over {limit} bytes")
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise HttpError(413, "too_large", f"the body is over {limit} bytes")
        try:
            import orjson

            return orjson.loads(data)
        except ValueError:
            raise HttpError(
                400,
                "invalid_json",
                'the body must be JSON like {"prompt": "Write about tides"}',
            ) from None

    async def handle_start(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self.authenticate(request)
            start = self.parse_start(await self.read_json(request))
            run = await self.start(start, claims=claims)
        except HttpError as exc:
            return exc.response()
        return json_response({"executionId": run.execution_id}, status=202)

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self.authenticate(request)
            body = await self.describe(request.match_info["execution_id"], claims=claims)
        except HttpError as exc:
            return exc.response()
        return json_response(body)

    async def handle_cancel(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self.authenticate(request)
            body = await self.cancel(request.match_info["execution_id"], claims=claims)
        except HttpError as exc:
            return exc.response()
        return json_response(body, status=202 if body["status"] == "cancelling" else 200)

    async def handle_events(self, request: web.Request) -> web.StreamResponse:
        """``GET /executions/{id}/events``: the native frames as SSE (``protocol/sse.py``)."""
        execution_id = request.match_info["execution_id"]
        try:
            claims = self.authenticate(request)
            self.check_access(claims, execution_id, "watch")
            try:
                after = sse.resume_point(
                    request.headers.get("Last-Event-ID"), request.query.get("lastSequence")
                )
            except sse.ResumeError as exc:
                raise HttpError(400, "invalid_resume_point", str(exc)) from None
            stream = await self.open_stream(execution_id, after)
        except HttpError as exc:
            return exc.response()
        if stream.complete:
            stream.close()
            return web.Response(status=204, headers=self.cors_headers(request))
        chunks = stream.sse(
            sse.encode_frame,
            prelude=sse.retry(self.options.sse_retry_ms),
            heartbeat=self.options.sse_heartbeat,
            until=self.expiry(claims),
        )
        return await self.respond(request, chunks, execution_id)

    # ------------------------------------------------------------------ SSE helpers

    async def open_stream(self, execution_id: str, after: int) -> ExecutionStream:
        return await ExecutionStream.open(
            self.broker, execution_id, after=after, max_queue=self.options.sse_max_queue
        )

    def cors_headers(self, request: web.BaseRequest) -> dict[str, str]:
        from streaming_module.gateway.cors import cors_headers

        return cors_headers(self.cors, request.headers.get("Origin"))

    async def respond(
        self,
        request: web.Request,
        chunks: Any,
        execution_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Write an SSE stream (with CORS headers: a streamed response is prepared before the
        CORS middleware could add them)."""
        return await respond(
            request,
            chunks,
            connections=self.sse_connections,
            execution_id=execution_id,
            headers={**self.cors_headers(request), **(headers or {})},
        )


__all__ = [
    "CONTROL_CHANNEL",
    "EXECUTION_ID_PATTERN",
    "SHOWN_ID_CHARS",
    "HttpError",
    "InputBuilder",
    "Registration",
    "Run",
    "RunsApi",
    "RunsOptions",
    "StartRequest",
    "chat_key",
    "default_input",
    "json_response",
]
