"""Helpers for the acceptance tests: a server built the way a user builds one
(``StreamingModule.for_root(websocket={'enabled': True, 'port': 0}, ...)`` + ``async with
container:``), runs published through the services, and bounded receive loops for real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from streaming_module import StreamingModule
from streaming_module.gateway.gateway import StreamingWebSocketGateway

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

TIMEOUT = 5.0
FINAL = ("completed", "failed", "cancelled")


@dataclass
class Server:
    container: Any
    gateway: StreamingWebSocketGateway

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}/ws"

    @property
    def root_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}"


@contextlib.asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[Server]:
    """``for_root(websocket={'enabled': True, 'port': 0, ...}, **options)``, started with
    ``async with container``."""
    websocket = {"enabled": True, "port": 0, "host": "127.0.0.1", **options.pop("websocket", {})}
    container = StreamingModule.for_root(websocket=websocket, **options)
    async with container:
        gateway = container.gateway()
        assert gateway.port, "the server did not start"
        yield Server(container, gateway)


async def app_run(
    container: Any,
    execution_id: str,
    words: Sequence[str],
    *,
    node: str = "writer",
    fail: bool = False,
) -> str:
    """A run as application code publishes it through the container's services: status
    started, tokens (buffered), progress per token, a node event, then the final status.
    Returns the text the tokens carry."""
    events = container.event_processor()
    tokens = container.token_streaming()
    progress = container.progress_tracking()
    events.emit_status(execution_id, "started")
    await tokens.initialize_token_stream(
        execution_id=execution_id, node_id=node, config={"buffer_size": 3, "flush_interval": 50}
    )
    tracker = progress.create_tracker(execution_id, node, {"interval": 0})
    events.emit_event(execution_id, "node_start", {"node": node}, node_id=node)
    for i, word in enumerate(words):
        tokens.stream_token(execution_id, node, word)
        await tracker.update(i + 1, len(words))
    await tokens.flush_tokens(execution_id, node)
    tokens.close_token_stream(execution_id, node)
    events.emit_event(execution_id, "node_complete", {"node": node}, node_id=node)
    if fail:
        events.emit_status(execution_id, "failed", error="boom: the model went away")
    else:
        events.emit_status(execution_id, "completed")
    return "".join(words)


async def recv(ws: aiohttp.ClientWebSocketResponse, within: float = TIMEOUT) -> dict[str, Any]:
    msg = await ws.receive(timeout=within)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data}"
    data: dict[str, Any] = json.loads(msg.data)
    return data


def is_final(message: dict[str, Any]) -> bool:
    return message.get("type") == "status" and message["payload"]["status"] in FINAL


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse,
    stop: Callable[[dict[str, Any]], bool] = is_final,
    *,
    limit: int = 20_000,
    within: float = 15.0,
) -> list[dict[str, Any]]:
    """Messages up to and including the first ``stop`` accepts (bounded in count and time)."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(out) < limit:
        message = await recv(ws, max(0.01, deadline - loop.time()))
        out.append(message)
        if stop(message):
            return out
    raise AssertionError(f"no stopping message within {limit} messages: {out[-3:]}")


async def no_message(ws: aiohttp.ClientWebSocketResponse, within: float = 0.2) -> None:
    """Assert nothing arrives for ``within`` seconds."""
    with contextlib.suppress(asyncio.TimeoutError):
        msg = await ws.receive(timeout=within)
        raise AssertionError(f"unexpected message {msg.type} {msg.data!r}")


async def subscribe(
    ws: aiohttp.ClientWebSocketResponse, execution_id: str, **payload: Any
) -> dict[str, Any]:
    await ws.send_json(
        {"type": "subscribe_execution", "payload": {"executionId": execution_id, **payload}}
    )
    reply = await recv(ws)
    assert reply["type"] == "subscribed", reply
    return reply


async def wait_for(predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m["payload"]["content"] for m in messages if m["type"] == "token")


def assert_contiguous(messages: list[dict[str, Any]], first: int = 1) -> None:
    sequences = [m["sequence"] for m in messages if "sequence" in m]
    assert sequences == list(range(first, first + len(sequences))), sequences
