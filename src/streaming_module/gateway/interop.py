"""AG-UI and the AI SDK UI message stream over HTTP, for workflows registered on a
:class:`~streaming_module.gateway.runs.RunsApi`: ``serve_agui(runs, registration, "/agui")``,
``serve_ai_chat(runs, registration, "/api/chat")`` (the gateway's ``register_workflow(...,
agui=, ai_chat=)`` calls them).

- ``POST {agui}`` takes AG-UI's ``RunAgentInput`` (the last user message's text is the prompt;
  ``forwardedProps`` may carry the registration's options, e.g. the demo's ``words``), starts a
  run whose execution id is the input's ``runId``, and answers with its AG-UI events over SSE
  (``protocol/agui.py``). ``GET {agui}/runs/{runId}/events`` streams any run's events from its
  first frame, or right after ``Last-Event-ID`` (``42`` or ``42.1``), from the broker.
- ``POST {ai_chat}`` takes ``useChat``'s body (``id`` = the chat id, ``messages``), starts a run
  and answers with the UI message stream (``protocol/aisdk.py``), ``start.messageId`` being the
  execution id. ``GET {ai_chat}/{chatId}/stream`` streams the chat's active run from its start,
  or answers 204 when the chat has none (a run is no longer active once its final frame is in the
  broker's log, hence no later than when its final part was sent). A chat id maps to its latest
  run through a run record in the broker (any instance finds it); an execution id works as a
  chat id too, so any run can be watched this way.

Authentication comes first on every endpoint: 401 before any 400, 404 or 204. A token with an
``executions`` claim may only use the runs (AG-UI ``runId``) and chats (AI SDK ``id``) it lists.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from streaming_module.broker.base import RunRecord
from streaming_module.gateway.runs import (
    EXECUTION_ID_PATTERN,
    FINAL,
    HttpError,
    Registration,
    RunsApi,
    StartRequest,
    chat_key,
)
from streaming_module.protocol import agui, aisdk, sse
from streaming_module.protocol.frames import Frame
from streaming_module.protocol.messages import RESERVED_ID_PREFIX

logger = logging.getLogger("streaming_module.gateway.interop")

FINAL_STATE_WAIT = 1.0
"""Seconds the AG-UI stream waits for another instance's run record to show the final state
(for ``STATE_SNAPSHOT``) once the final status frame arrived."""


def thread_key(run_id: str) -> str:
    """The run-record id under which an AG-UI run's thread id is kept."""
    return f"{RESERVED_ID_PREFIX}thread/{run_id}"


def serve_agui(runs: RunsApi, registration: Registration, path: str = "/agui") -> None:
    """``POST {path}`` and ``GET {path}/runs/{runId}/events`` for ``registration``, wherever
    ``runs`` is served."""
    path = path.rstrip("/")
    endpoint = AguiEndpoint(runs, registration)

    def install(app: web.Application) -> None:
        app.router.add_post(path, endpoint.handle_run)
        app.router.add_get(path + "/runs/{run_id}/events", endpoint.handle_events)

    runs.add_routes(install)


def serve_ai_chat(runs: RunsApi, registration: Registration, path: str = "/api/chat") -> None:
    """``POST {path}`` and ``GET {path}/{chatId}/stream`` for ``registration``, wherever
    ``runs`` is served."""
    path = path.rstrip("/")
    endpoint = ChatEndpoint(runs, registration)

    def install(app: web.Application) -> None:
        app.router.add_post(path, endpoint.handle_chat)
        app.router.add_get(path + "/{chat_id}/stream", endpoint.handle_resume)

    runs.add_routes(install)


async def final_state(runs: RunsApi, execution_id: str, wait: float = FINAL_STATE_WAIT) -> Any:
    """A finished run's result: from this process, else from the broker's record (waiting up to
    ``wait`` seconds for it to be saved). None when unknown or not completed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        run = runs.runs.get(execution_id)
        if run is not None and run.status in FINAL:
            return run.result if run.status == "completed" else None
        if run is None:
            record = await runs.broker.load_run(execution_id)
            if record is not None and record.status in FINAL:
                return record.result if record.status == "completed" else None
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(0.02)


class AguiEndpoint:
    """AG-UI for one registered workflow."""

    def __init__(self, runs: RunsApi, registration: Registration) -> None:
        self.runs = runs
        self.registration = registration

    async def handle_run(self, request: web.Request) -> web.StreamResponse:
        runs = self.runs
        try:
            claims = runs.authenticate(request)
            body = await runs.read_json(request)
            try:
                run_input = agui.RunAgentInput.model_validate(body)
            except ValidationError as exc:
                raise HttpError(
                    400, "invalid_input", f"the body is not an AG-UI RunAgentInput: {exc}"
                ) from None
            run_id = runs.check_execution_id(run_input.run_id, "runId")
            assert run_id is not None
            prompt = runs.check_prompt(agui.prompt_of(run_input), "the last user message")
            props = run_input.forwarded_props
            options = {
                k: props[k]
                for k in self.registration.options
                if isinstance(props, dict) and k in props
            }
            # The thread is the conversation: the AI SDK's resume finds its run as a chat id.
            await runs.start(
                StartRequest(self.registration.name, prompt, None, run_id, options),
                claims=claims,
                chat_id=run_input.thread_id,
            )
            await runs.broker.save_run(
                RunRecord(
                    thread_key(run_id), "started", self.registration.name, run_input.thread_id
                )
            )
            stream = await runs.open_stream(run_id, 0)
        except HttpError as exc:
            return exc.response()
        return await self._respond(
            request, stream, run_id, run_input.thread_id, None, runs.expiry(claims)
        )

    async def handle_events(self, request: web.Request) -> web.StreamResponse:
        runs = self.runs
        run_id = request.match_info["run_id"]
        try:
            claims = runs.authenticate(request)
            runs.check_access(claims, run_id, "watch")
            try:
                resume = agui.parse_event_id(request.headers.get("Last-Event-ID"))
            except sse.ResumeError as exc:
                raise HttpError(400, "invalid_resume_point", str(exc)) from None
            thread_id = request.query.get("threadId")
            if not thread_id:
                record = await runs.broker.load_run(thread_key(run_id))
                thread_id = str(record.result) if record is not None else run_id
            # The encoder replays from the first frame to know what is open (see agui.py).
            stream = await runs.open_stream(run_id, 0)
        except HttpError as exc:
            return exc.response()
        return await self._respond(request, stream, run_id, thread_id, resume, runs.expiry(claims))

    async def _respond(
        self,
        request: web.Request,
        stream: Any,
        run_id: str,
        thread_id: str,
        resume: tuple[int, int] | None,
        until: float | None,
    ) -> web.StreamResponse:
        encoder = agui.AguiEncoder(run_id, thread_id, resume_after=resume)

        async def before_final(frame: Frame) -> None:
            if isinstance(frame.payload, dict) and frame.payload.get("status") == "completed":
                encoder.final_state = await final_state(self.runs, run_id)

        chunks = stream.sse(
            encoder.encode,
            heartbeat=self.runs.options.sse_heartbeat,
            before_final=before_final,
            until=until,
        )
        return await self.runs.respond(request, chunks, run_id)


class ChatEndpoint:
    """The AI SDK UI message stream for one registered workflow."""

    def __init__(self, runs: RunsApi, registration: Registration) -> None:
        self.runs = runs
        self.registration = registration

    @staticmethod
    def check_chat_id(chat_id: Any) -> str:
        if not isinstance(chat_id, str) or not EXECUTION_ID_PATTERN.fullmatch(chat_id):
            raise HttpError(
                400,
                "invalid_chat_id",
                "'id' (the chat id) must be 1-128 characters of letters, digits, '.', '_', ':' "
                "or '-'",
            )
        return chat_id

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        runs = self.runs
        try:
            claims = runs.authenticate(request)
            body = await runs.read_json(request)
            if not isinstance(body, dict):
                raise HttpError(400, "invalid_body", "the body must be useChat's JSON object")
            chat_id = self.check_chat_id(body.get("id"))
            runs.check_access(claims, chat_id, "chat in")
            prompt = runs.check_prompt(
                aisdk.prompt_of(body.get("messages")), "the last user message"
            )
            options = {k: body[k] for k in self.registration.options if k in body}
            run = await runs.start(
                StartRequest(self.registration.name, prompt, None, None, options), chat_id=chat_id
            )
            stream = await runs.open_stream(run.execution_id, 0)
        except HttpError as exc:
            return exc.response()
        return await self._respond(request, stream, run.execution_id, runs.expiry(claims))

    async def handle_resume(self, request: web.Request) -> web.StreamResponse:
        runs = self.runs
        chat_id = request.match_info["chat_id"]
        try:
            claims = runs.authenticate(request)
            runs.check_access(claims, chat_id, "chat in")
            pointer = await runs.broker.load_run(chat_key(chat_id))
            if pointer is not None:
                execution_id: str | None = str(pointer.result)
            elif chat_id in runs.runs or await runs.broker.load_run(chat_id) is not None:
                execution_id = chat_id  # an execution id works as a chat id
            else:
                execution_id = None
            if execution_id is None:
                return web.Response(status=204, headers=runs.cors_headers(request))
            stream = await runs.open_stream(execution_id, 0)
        except HttpError as exc:
            return exc.response()
        if stream.replayed_final:  # the run ended: nothing active to resume
            stream.close()
            return web.Response(status=204, headers=runs.cors_headers(request))
        return await self._respond(request, stream, execution_id, runs.expiry(claims))

    async def _respond(
        self, request: web.Request, stream: Any, execution_id: str, until: float | None
    ) -> web.StreamResponse:
        encoder = aisdk.UIMessageStreamEncoder(execution_id)
        chunks = stream.sse(encoder.encode, heartbeat=self.runs.options.sse_heartbeat, until=until)
        return await self.runs.respond(request, chunks, execution_id, aisdk.HEADERS)


__all__ = [
    "AguiEndpoint",
    "ChatEndpoint",
    "final_state",
    "serve_agui",
    "serve_ai_chat",
    "thread_key",
]
