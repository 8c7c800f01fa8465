"""Helpers for the gateway's integration tests: a real server on 127.0.0.1 (random port) and
bounded-time receive helpers for real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import StreamingModuleOptions
from streaming_module.core.clock import Clock
from streaming_module.gateway.gateway import StreamingWebSocketGateway

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

TIMEOUT = 5.0


@dataclass
class Running:
    gateway: StreamingWebSocketGateway
    broker: InMemoryBroker
    options: StreamingModuleOptions

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


def make_options(**sections: Any) -> StreamingModuleOptions:
    websocket = {"enabled": True, "port": 0, "host": "127.0.0.1", **sections.pop("websocket", {})}
    gateway = {"heartbeat": {"enabled": False}, **sections.pop("gateway", {})}
    return StreamingModuleOptions.model_validate(
        {"websocket": websocket, "gateway": gateway, **sections}
    )


@contextlib.asynccontextmanager
async def running_gateway(
    clock: Clock | None = None, broker_clock: Clock | None = None, **sections: Any
) -> AsyncIterator[Running]:
    options = make_options(**sections)
    broker = InMemoryBroker(options.broker, broker_clock)
    gateway = StreamingWebSocketGateway(options, broker, clock)
    await gateway.start(port=0)
    try:
        yield Running(gateway, broker, options)
    finally:
        await gateway.stop()
        await broker.aclose()


async def recv(ws: aiohttp.ClientWebSocketResponse, within: float = TIMEOUT) -> dict[str, Any]:
    """The next JSON message (fails the test on close or timeout)."""
    msg = await ws.receive(timeout=within)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data}"
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse,
    stop: Callable[[dict[str, Any]], bool],
    *,
    limit: int = 100_000,
    within: float = 10.0,
) -> list[dict[str, Any]]:
    """Messages up to and including the first one ``stop`` accepts (bounded in count and
    time)."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(out) < limit:
        message = await recv(ws, max(0.01, deadline - loop.time()))
        out.append(message)
        if stop(message):
            return out
    raise AssertionError(f"no stopping message within {limit} messages")


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
    """Poll ``predicate`` until true (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def publish_run(broker: InMemoryBroker, execution_id: str, words: list[str]) -> None:
    """A run as the bridge would publish it: started, tokens, progress, completed."""
    broker.publish(execution_id, "status", {"status": "started"})
    for i, word in enumerate(words):
        broker.publish(execution_id, "token", {"content": word, "nodeId": "llm", "index": i})
        if i % 10 == 9:
            broker.publish(
                execution_id, "progress", {"progress": 100 * (i + 1) / len(words), "nodeId": "llm"}
            )
    broker.publish(execution_id, "status", {"status": "completed"})
    broker.end_execution(execution_id)
