"""Regression guard: a node returning a large output does not stall the event loop.

LangGraph's ``messages`` stream mode, which captured our tokens before, searched every value a node
returned for messages and walked a ``str`` character by character: ~350 ms of blocked loop for the
6 MB text of a 1,000,000-word demo run. Our own token capture never looks at a node's output.

The probe measures the event loop thread's *CPU time* between two wake-ups of a 1 ms ticker, so
what it sees is work done on the loop without yielding, not time the shared machine spent running
other processes. The garbage collector is paused during the run (a full collection is a stall of
its own, unrelated to this path). The bound is generous: the work left per step is a few
milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.types import StreamEventType
from streaming_module.workflow import DeclarativeWorkflowBase, node, stream_token, workflow

STALL_BOUND = 0.050  # seconds: the bound
BIG = "word " * 1_200_000  # 6 MB


class State(TypedDict, total=False):
    prompt: str
    content: str


@workflow
class BigOutput(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(buffer_size=50, flush_interval=20)
    async def generate(self, state: State) -> State:
        model = GenericFakeChatModel(messages=iter([AIMessage(content="a short answer")]))
        await model.ainvoke(state["prompt"])
        return {"content": BIG}

    @node
    async def after(self, state: State) -> State:
        return {"content": state["content"]}


class LoopStallProbe:
    """The longest stretch of loop-thread CPU time between two ticks of a 1 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        last = time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now = time.thread_time()
            self.worst = max(self.worst, now - last)
            self.ticks += 1
            last = now

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def test_a_node_returning_a_6mb_string_does_not_stall_the_loop() -> None:
    services: dict[str, Any] = {
        "token_streaming": TokenStreamingService(),
        "event_processor": EventStreamProcessorService(),
        "progress_tracking": ProgressTrackingService(),
    }
    seen: list[Any] = []
    services["token_streaming"].get_global_token_stream().subscribe(on_next=seen.append)
    wf = BigOutput(**services)
    await wf.run({"prompt": "warm-up"})  # imports and first-call costs are not the subject
    seen.clear()
    gc.collect()
    gc.disable()
    probe = LoopStallProbe()
    try:
        await asyncio.sleep(0.01)
        state = await wf.run({"prompt": "p"})
        await asyncio.sleep(0.01)
    finally:
        await probe.stop()
        gc.enable()
    assert len(state["content"]) == len(BIG)
    assert "".join(u.data.content for u in seen if u.type is StreamEventType.TOKEN) == (
        "a short answer"
    )
    assert probe.ticks > 5
    assert probe.worst < STALL_BOUND, f"the loop was blocked for {probe.worst * 1000:.0f} ms"
