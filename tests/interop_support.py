"""Shared pieces of the runs API / SSE / AG-UI / AI SDK tests: small real workflows, a server
that registers them, and an SSE reader that parses what arrives exactly as a browser would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict

import aiohttp
from langgraph.graph import START, StateGraph

from streaming_module.demo.model import DemoChatModel
from streaming_module.workflow import DeclarativeWorkflowBase, node, stream_token, workflow

TIMEOUT = 30.0


class Draft(TypedDict, total=False):
    prompt: str
    words: int
    content: str
    inner: str


@workflow(name="writer")
class Writer(DeclarativeWorkflowBase[Draft]):
    """One llm node streaming a deterministic answer, then a tool node."""

    def __init__(self, *, llm: DemoChatModel, **services: Any) -> None:
        super().__init__(**services)
        self.llm = llm

    @node(type="llm")
    @stream_token(flush_interval=20, buffer_size=8)
    async def write(self, state: Draft) -> Draft:
        reply = await self.llm.ainvoke(state["prompt"], words=int(state.get("words") or 20))
        return {"content": str(reply.content)}

    @node(type="tool")
    async def count(self, state: Draft) -> Draft:
        return {"words": len(state.get("content", "").split())}


class Gate:
    """What the blocking subgraph saw: started, then cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()


def blocking_subgraph(gate: Gate) -> Any:
    async def inner(state: Draft) -> Draft:
        gate.entered.set()
        try:
            await gate.release.wait()
        except asyncio.CancelledError:
            gate.cancelled.set()
            raise
        return {"inner": "released"}

    graph = StateGraph(Draft)
    graph.add_node("inner", inner)
    graph.add_edge(START, "inner")
    return graph.compile()


def make_blocker(gate: Gate) -> type[DeclarativeWorkflowBase[Draft]]:
    """A workflow whose one node runs a subgraph that waits for ``gate.release``."""
    sub = blocking_subgraph(gate)

    @workflow(name="blocker")
    class Blocker(DeclarativeWorkflowBase[Draft]):
        @node(type="task")
        async def wait(self, state: Draft) -> Draft:
            out = await sub.ainvoke(state)
            return {"inner": out["inner"]}

    return Blocker


def services_of(container: Any) -> dict[str, Any]:
    return {
        "token_streaming": container.token_streaming(),
        "event_processor": container.event_processor(),
        "progress_tracking": container.progress_tracking(),
    }


@dataclass
class Server:
    container: Any
    gateway: Any
    gate: Gate
    url: str


@asynccontextmanager
async def serve(
    *, jwt_secret: str | None = None, token_delay_ms: float = 1.0, **runs_options: Any
) -> AsyncIterator[Server]:
    """A gateway on a free port serving ``writer`` (default) and ``blocker``."""
    from streaming_module.gateway.runs import RunsOptions
    from streaming_module.module import StreamingModule

    container = StreamingModule.for_root(
        websocket={"enabled": True, "port": 0},
        gateway={"authentication": {"enabled": jwt_secret is not None, "secret_key": jwt_secret}},
    )
    gateway = container.gateway()
    if runs_options:
        gateway.runs.options = RunsOptions(**runs_options)
    gate = Gate()
    services = services_of(container)
    gateway.register_workflow(
        "writer",
        Writer(llm=DemoChatModel(token_delay_ms=token_delay_ms), **services),
        options=("words",),
        agui="/agui",
        ai_chat="/api/chat",
    )
    gateway.register_workflow("blocker", make_blocker(gate)(**services))
    async with container:
        yield Server(container, gateway, gate, str(gateway.url))


# --------------------------------------------------------------------------- SSE


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseParser:
    """The SSE grammar as the HTML standard defines it (what ``EventSource`` does), enough for
    tests: fields, comments, multi-line data, the last ``id`` kept across events."""

    buffer: str = ""
    last_id: str | None = None
    comments: list[str] = field(default_factory=list)

    def feed(self, text: str) -> list[SseEvent]:
        self.buffer += text.replace("\r\n", "\n").replace("\r", "\n")
        out: list[SseEvent] = []
        while "\n\n" in self.buffer:
            block, self.buffer = self.buffer.split("\n\n", 1)
            event_type: str | None = None
            data: list[str] = []
            retry: int | None = None
            has_id = False
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    self.last_id, has_id = value, True
                elif name == "event":
                    event_type = value
                elif name == "data":
                    data.append(value)
                elif name == "retry" and value.isdigit():
                    retry = int(value)
            if data or has_id or retry is not None:
                out.append(
                    SseEvent(
                        self.last_id if has_id or data else None, event_type, "\n".join(data), retry
                    )
                )
        return out


async def read_sse(
    response: aiohttp.ClientResponse,
    *,
    stop_after: int | None = None,
    within: float = TIMEOUT,
) -> tuple[list[SseEvent], SseParser]:
    """Read a response's SSE events until it ends (or ``stop_after`` data events), bounded in
    time."""
    parser = SseParser()
    events: list[SseEvent] = []
    async with asyncio.timeout(within):
        async for chunk in response.content.iter_any():
            events.extend(e for e in parser.feed(chunk.decode()) if e.data)
            if stop_after is not None and len(events) >= stop_after:
                break
    return events, parser


def text_of_frames(frames: list[dict[str, Any]]) -> str:
    return "".join(f["payload"]["content"] for f in frames if f["type"] == "token")
