"""The app the cross-process Redis tests serve: ``python -m streaming_module serve --app
redis_app:factory`` (with ``tests/e2e`` on ``PYTHONPATH``).

Configured by the environment: ``SM_REDIS_URLS`` (comma-separated), ``SM_PREFIX`` and
``SM_LEASE_MS``. It registers :class:`StoryWorkflow` (tokens, events and progress, all
decorated) on the gateway's runs API, so ``POST /executions`` ``{"executionId", "prompt",
"words", "delayMs"}`` runs it in this process and ``GET /executions/{id}`` answers from any
process (the run record lives in Redis).
"""

from __future__ import annotations

import os
from typing import TypedDict

from streaming_module.container import StreamingContainerInstance
from streaming_module.demo.model import DemoChatModel
from streaming_module.gateway.runs import StartRequest
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
    delay_ms: float
    content: str
    count: int


@workflow(
    name="story",
    streaming=True,
    channels={"prompt": None, "words": None, "delay_ms": None, "content": None},
)
class StoryWorkflow(DeclarativeWorkflowBase[StoryState]):
    @node(type="llm")
    @stream_token(enabled=True, buffer_size=8, flush_interval=20)
    @stream_progress(enabled=True, interval=0, granularity="fine")
    async def write(self, state: StoryState) -> StoryState:
        words = int(state.get("words") or 20)
        llm = DemoChatModel(token_delay_ms=float(state.get("delay_ms", 5)))
        parts: list[str] = []
        await self.progress.update(0, words)
        async for chunk in llm.astream(state["prompt"], words=words):
            text = chunk.text if isinstance(chunk.text, str) else str(chunk.content)
            parts.append(text)
            await self.progress.update(min(len(parts), words), words)
        return {"content": "".join(parts)}

    @node(type="tool")
    @stream_event(events=[StreamEventType.TOOL_START, StreamEventType.TOOL_COMPLETE])
    async def count(self, state: StoryState) -> StoryState:
        return {"count": len(state.get("content", "").split())}


def story_input(request: StartRequest) -> StoryState:
    return {
        "prompt": request.prompt or "story",
        "words": int(request.options.get("words", 20)),
        "delay_ms": float(request.options.get("delayMs", 5)),
    }


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
    container.gateway().register_workflow(
        "story",
        StoryWorkflow(container=container),
        make_input=story_input,
        options=("words", "delayMs"),
    )
    return container
