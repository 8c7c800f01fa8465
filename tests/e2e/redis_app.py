"""The app the cross-process Redis tests serve: ``python -m streaming_module serve --app
redis_app:factory`` (with ``tests/e2e`` on ``PYTHONPATH``).

Configured by the environment: ``SM_REDIS_URLS`` (comma-separated), ``SM_PREFIX`` and
``SM_LEASE_MS``. Besides the gateway it serves two test routes:

- ``POST /test-runs`` ``{"executionId", "words", "delayMs"}`` → 202: runs :class:`StoryWorkflow`
  (tokens, events and progress, all decorated) in this process, saving its run record (``started``,
  then ``completed`` with the final text) in the broker;
- ``GET /test-records/{id}`` → the run record from the broker (any process can answer), 404 when
  there is none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from datetime import UTC, datetime
from typing import Any, TypedDict

from aiohttp import web
from langchain_core.language_models.chat_models import BaseChatModel

from streaming_module.broker.base import RunRecord
from streaming_module.container import StreamingContainerInstance
from streaming_module.demo.model import DemoChatModel
from streaming_module.module import StreamingModule
from streaming_module.types import StreamEventType
from streaming_module.workflow import (
    DeclarativeWorkflowBase,
    node,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)


class StoryState(TypedDict, total=False):
    prompt: str
    words: int
    content: str
    count: int


@workflow(name="story", streaming=True, channels={"prompt": None, "words": None, "content": None})
class StoryWorkflow(DeclarativeWorkflowBase[StoryState]):
    def __init__(self, *, llm: BaseChatModel, **services: Any) -> None:
        super().__init__(**services)
        self.llm = llm

    @node(type="llm")
    @stream_token(enabled=True, buffer_size=8, flush_interval=20)
    @stream_progress(enabled=True, interval=0, granularity="fine")
    async def write(self, state: StoryState) -> StoryState:
        words = int(state.get("words") or 20)
        parts: list[str] = []
        await self.progress.update(0, words)
        async for chunk in self.llm.astream(state["prompt"], words=words):
            text = chunk.text if isinstance(chunk.text, str) else str(chunk.content)
            parts.append(text)
            await self.progress.update(min(len(parts), words), words)
        return {"content": "".join(parts)}

    @node(type="tool")
    @stream_event(events=[StreamEventType.TOOL_START, StreamEventType.TOOL_COMPLETE])
    async def count(self, state: StoryState) -> StoryState:
        return {"count": len(state.get("content", "").split())}


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Runs:
    def __init__(self, container: StreamingContainerInstance) -> None:
        self.container = container
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self, request: web.Request) -> web.Response:
        body = await request.json()
        execution_id = body["executionId"]
        model = DemoChatModel(token_delay_ms=float(body.get("delayMs", 5)))
        story = StoryWorkflow(
            llm=model,
            token_streaming=self.container.token_streaming(),
            event_processor=self.container.event_processor(),
            progress_tracking=self.container.progress_tracking(),
        )
        task = asyncio.create_task(self._run(story, execution_id, int(body.get("words", 20))))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response({"executionId": execution_id}, status=202)

    async def _run(self, story: StoryWorkflow, execution_id: str, words: int) -> None:
        broker = self.container.broker()
        await broker.save_run(RunRecord(execution_id, "started", "story", updated=_now()))
        story_input = {"prompt": f"story {execution_id}", "words": words}
        state = await story.run(story_input, execution_id=execution_id)
        record = RunRecord(execution_id, "completed", "story", dict(state), None, _now())
        await broker.save_run(record)

    async def record(self, request: web.Request) -> web.Response:
        record = await self.container.broker().load_run(request.match_info["execution_id"])
        if record is None:
            return web.json_response({"code": "not_found", "message": "no such run"}, status=404)
        return web.json_response(dataclasses.asdict(record))


def factory() -> StreamingContainerInstance:
    urls = os.environ["SM_REDIS_URLS"].split(",")
    container = StreamingModule.for_root(
        websocket={"enabled": True, "port": 0},
        broker={
            "backend": "redis",
            "redis_url": urls,
            "key_prefix": os.environ["SM_PREFIX"],
            "producer_lease_ms": int(os.environ.get("SM_LEASE_MS", "1000")),
        },
    )
    runs = Runs(container)
    app = container.gateway().app
    app.router.add_post("/test-runs", runs.start)
    app.router.add_get("/test-records/{execution_id}", runs.record)
    return container
