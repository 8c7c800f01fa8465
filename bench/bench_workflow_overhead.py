"""A decorated workflow against plain LangGraph and against the bare chat model, in the same
process and run.

- ``workflow_overhead``: the run time of a decorated workflow vs the same LangGraph graph run with
  plain ``astream(stream_mode="messages")`` (LangGraph's own token streaming). The workflow has
  all three decorators on its LLM node (``@stream_token``, ``@stream_event``,
  ``@stream_progress``), a fake streaming chat model producing ~500 tokens, a tool node reporting
  progress and a final task node; a subscriber receives every update. The baseline builds the
  same three nodes as a plain ``StateGraph`` and only consumes the stream. Goal: at most 1.00x
  the time (no slower).
- ``workflow_tokens_per_s``: tokens/s of one decorated run — a ``@stream_token`` node calling
  ``ainvoke`` on LangChain's ``GenericFakeChatModel`` for a 2,000-word answer (3,999 chunks),
  tokens counted by a subscriber — vs the bare model's ``astream`` chunks/s, interleaved with
  the bare model under a do-nothing callback handler (the floor of any capture by callback),
  each sample after ``gc.collect()``. Goal: >= 0.9x.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import Any, TypedDict

from langchain_core.callbacks import BaseCallbackHandler
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
LONG_TEXT = " ".join(f"word{i}" for i in range(2000))  # 3,999 chunks


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


@workflow(name="one-node")
class OneNode(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(buffer_size=50, flush_interval=20)
    async def generate(self, state: State) -> State:
        model = GenericFakeChatModel(messages=iter([AIMessage(content=LONG_TEXT)]))
        reply = await model.ainvoke(state["prompt"])
        return {"content": str(reply.content)}


class DoNothing(BaseCallbackHandler):
    """A streaming callback handler that does nothing: the least any capture by callback costs
    (LangChain's dispatch of every chunk to a handler)."""

    run_inline = True

    def tap_output_aiter(self, run_id: Any, output: Any) -> Any:
        return output

    def tap_output_iter(self, run_id: Any, output: Any) -> Any:
        return output

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        pass


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
    token_repeats = 3 if quick else 12
    tokens = TokenStreamingService()
    events = EventStreamProcessorService()
    progress = ProgressTrackingService()
    received = [0]
    tokens_received = [0]

    def count(_: Any) -> None:
        received[0] += 1

    def count_tokens(update: Any) -> None:
        received[0] += 1
        tokens_received[0] += update.data.total_tokens - update.data.index

    tokens.get_global_token_stream().subscribe(on_next=count_tokens)
    events.get_event_stream().subscribe(on_next=count)
    progress.get_progress_stream().subscribe(on_next=count)
    services = {"token_streaming": tokens, "event_processor": events, "progress_tracking": progress}
    wf = BenchWorkflow(**services)
    one = OneNode(**services)
    graph = plain_graph()
    loop = asyncio.new_event_loop()

    async def ours_once() -> None:
        state = await wf.run({"prompt": "go"})
        assert state["done"]

    async def baseline_once() -> None:
        async for _ in graph.astream({"prompt": "go"}, stream_mode="messages"):
            pass

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(runs):
            loop.run_until_complete(fn())
        return (time.perf_counter() - start) / runs

    cpu: dict[str, list[float]] = {"ours": [], "bare": [], "callback": []}

    async def decorated_tokens() -> float:
        tokens_received[0] = 0
        start, cpu_start = time.perf_counter(), time.thread_time()
        await one.run({"prompt": "go"})
        elapsed = time.perf_counter() - start
        cpu["ours"].append((time.thread_time() - cpu_start) / 3999)
        assert tokens_received[0] == 3999, tokens_received[0]
        return tokens_received[0] / elapsed

    async def bare_chunks(callbacks: list[Any] | None = None) -> float:
        model = GenericFakeChatModel(messages=iter([AIMessage(content=LONG_TEXT)]))
        chunks = 0
        start, cpu_start = time.perf_counter(), time.thread_time()
        async for chunk in model.astream("go", config={"callbacks": callbacks}):
            chunks += 1 if chunk.content else 0
        elapsed = time.perf_counter() - start
        cpu["callback" if callbacks else "bare"].append((time.thread_time() - cpu_start) / 3999)
        assert chunks == 3999, chunks
        return chunks / elapsed

    def tokens_per_s() -> tuple[float, float, float]:
        """Decorated run, bare model, bare model with a do-nothing callback handler (what any
        capture by callback costs at least), interleaved; their medians."""
        got: tuple[list[float], list[float], list[float]] = ([], [], [])
        steps = (decorated_tokens, bare_chunks, lambda: bare_chunks([DoNothing()]))
        for i in range(token_repeats):
            for j in (i % 3, (i + 1) % 3, (i + 2) % 3):
                gc.collect()  # no sample pays for the garbage of the one before it
                got[j].append(loop.run_until_complete(steps[j]()))
        return statistics.median(got[0]), statistics.median(got[1]), statistics.median(got[2])

    try:
        timed(ours_once)  # warm up both (imports, first compile of the plain graph's paths)
        timed(baseline_once)
        ours, base = interleaved_medians(
            repeats, lambda: timed(ours_once), lambda: timed(baseline_once)
        )
        loop.run_until_complete(decorated_tokens())
        loop.run_until_complete(bare_chunks())
        for samples in cpu.values():
            samples.clear()
        per_s, bare_per_s, callback_per_s = tokens_per_s()
    finally:
        loop.close()
    return [
        row(
            "workflow_overhead",
            ours,
            "s",
            "langgraph_astream_messages",
            base,
            "<=1.00",
            note=f"seconds per run of a 3-node graph streaming ~500 tokens; {runs} runs x "
            f"{repeats} repeats, interleaved medians",
        ),
        row(
            "workflow_tokens_per_s",
            per_s,
            "tokens/s",
            "bare_model_astream_chunks",
            bare_per_s,
            ">=0.9",
            note="one decorated run (a @stream_token node, ainvoke of GenericFakeChatModel, "
            f"2,000 words = 3,999 chunks) vs the bare model's astream; {token_repeats} repeats, "
            "interleaved medians. The bare model's astream with a do-nothing callback handler: "
            f"{callback_per_s:.0f} chunks/s ({callback_per_s / bare_per_s:.3f}x). Event-loop "
            f"thread CPU per token: ours {statistics.median(cpu['ours']) * 1e6:.1f} us, bare "
            f"{statistics.median(cpu['bare']) * 1e6:.1f} us, do-nothing handler "
            f"{statistics.median(cpu['callback']) * 1e6:.1f} us",
        ),
    ]


if __name__ == "__main__":
    for r in run(quick=False):
        print(r.to_dict())
