"""WebSocket client helpers shared by the integration and acceptance tests: bounded-time receive
loops for real aiohttp clients speaking the wire protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp

TIMEOUT = 5.0
FINAL = ("completed", "failed", "cancelled")


async def recv(ws: aiohttp.ClientWebSocketResponse, within: float = TIMEOUT) -> dict[str, Any]:
    """The next JSON message (fails the test on close or timeout)."""
    msg = await ws.receive(timeout=within)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data}"
    data: dict[str, Any] = json.loads(msg.data)
    return data


def is_final(message: dict[str, Any]) -> bool:
    """Whether ``message`` is a run's final status frame."""
    return message.get("type") == "status" and message["payload"]["status"] in FINAL


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse,
    stop: Callable[[dict[str, Any]], bool] = is_final,
    *,
    limit: int,
    within: float,
) -> list[dict[str, Any]]:
    """Messages up to and including the first one ``stop`` accepts, bounded by ``limit``
    messages and ``within`` seconds."""
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
    """Send ``subscribe_execution`` and return the ``subscribed`` reply."""
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
