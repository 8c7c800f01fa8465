"""Workflow overhead: a decorated workflow run vs the same LangGraph graph run with plain
``astream(stream_mode=["messages", "updates"])``, in the same process and run.

The workflow has all three decorators on its LLM node (``@stream_token``, ``@stream_event``,
``@stream_progress``), a fake streaming chat model producing ~500 tokens, a tool node reporting
progress and a final task node; a subscriber receives every update. The baseline builds the same
three nodes as a plain ``StateGraph`` and only consumes the stream. Goal: at most 1.10x the time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph

from common import Row, interleaved_medians, row
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.workflow import (
    DeclarativeWorkflowBase,
    node,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)

TEXT = " ".join(f"word{i}" for i in range(250))  # 250 words + 249 spaces ≈ 500 chunks


class State(TypedDict, total=False):
    prompt: str
    content: str
    words: int
    done: bool


def model() -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=TEXT)]))


async def generate_body(state: State) -> State:
    reply = await model().ainvoke(state["prompt"])
    return {"content": str(reply.content)}


async def process_body(state: State) -> State:
    return {"words": len(state["content"].split())}


async def finish_body(state: State) -> State:
    return {"done": True}


@workflow(name="bench")
class BenchWorkflow(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(buffer_size=50, flush_interval=100)
    @stream_event(events=["node_start", "node_complete", "updates", "error"])
    @stream_progress(interval=0)
    async def generate(self, state: State) -> State:
        return await generate_body(state)

    @node(type="tool")
    @stream_event(events=["tool_start", "tool_complete", "progress"])
    async def process(self, state: State) -> State:
        await self.progress.update(1, 1)
        return await process_body(state)

    @node
    async def finish(self, state: State) -> State:
        return await finish_body(state)


def plain_graph() -> Any:
    builder: StateGraph[Any] = StateGraph(State)
    builder.add_node("generate", generate_body)
    builder.add_node("process", process_body)
    builder.add_node("finish", finish_body)
    builder.add_edge(START, "generate")
    builder.add_edge("generate", "process")
    builder.add_edge("process", "finish")
    builder.add_edge("finish", END)
    return builder.compile()


def run(quick: bool = False) -> list[Row]:
    runs = 3 if quick else 10
    repeats = 3 if quick else 7
    tokens = TokenStreamingService()
    events = EventStreamProcessorService()
    progress = ProgressTrackingService()
    received = [0]

    def count(_: Any) -> None:
        received[0] += 1

    tokens.get_global_token_stream().subscribe(on_next=count)
    events.get_event_stream().subscribe(on_next=count)
    progress.get_progress_stream().subscribe(on_next=count)
    wf = BenchWorkflow(token_streaming=tokens, event_processor=events, progress_tracking=progress)
    graph = plain_graph()
    loop = asyncio.new_event_loop()

    async def ours_once() -> None:
        state = await wf.run({"prompt": "go"})
        assert state["done"]

    async def baseline_once() -> None:
        async for _ in graph.astream({"prompt": "go"}, stream_mode=["messages", "updates"]):
            pass

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(runs):
            loop.run_until_complete(fn())
        return (time.perf_counter() - start) / runs

    try:
        timed(ours_once)  # warm up both (imports, first compile of the plain graph's paths)
        timed(baseline_once)
        ours, base = interleaved_medians(
            repeats, lambda: timed(ours_once), lambda: timed(baseline_once)
        )
    finally:
        loop.close()
    return [
        row(
            "workflow_overhead",
            ours,
            "s",
            "langgraph_astream_messages_updates",
            base,
            "<=1.10",
            note=f"seconds per run of a 3-node graph streaming ~500 tokens; {runs} runs x "
            f"{repeats} repeats, interleaved medians",
        )
    ]


if __name__ == "__main__":
    for r in run(quick=False):
        print(r.to_dict())
