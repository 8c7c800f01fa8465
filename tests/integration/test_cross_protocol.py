"""One log, every protocol: a run started through any of POST /executions, POST /agui and
POST /api/chat is watched and resumed through every other (native SSE, WebSocket, AG-UI, the AI
SDK stream), on the instance that runs it and on another gateway sharing its broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from interop_support import Server, read_sse, serve, text_of_frames
from streaming_module.config import StreamingModuleOptions
from streaming_module.gateway.gateway import StreamingWebSocketGateway

WORDS = 300


@asynccontextmanager
async def second_instance(server: Server) -> AsyncIterator[str]:
    """Another gateway on the same broker (as two processes share Redis), with the same
    registrations but none of the first one's runs in memory."""
    options = StreamingModuleOptions.model_validate({"websocket": {"enabled": True, "port": 0}})
    other = StreamingWebSocketGateway(options, broker=server.gateway.broker)
    for name, registration in server.gateway.runs.registrations.items():
        other.register_workflow(
            name,
            registration.workflow,
            options=registration.options,
            agui=registration.agui,
            ai_chat=registration.ai_chat,
        )
    await other.start()
    try:
        yield str(other.url)
    finally:
        await other.stop()


async def via_sse(session: aiohttp.ClientSession, base: str, execution_id: str) -> str:
    async with session.get(f"{base}/executions/{execution_id}/events") as response:
        events, _ = await read_sse(response)
    return text_of_frames([e.json() for e in events])


async def via_websocket(session: aiohttp.ClientSession, base: str, execution_id: str) -> str:
    frames: list[dict[str, Any]] = []
    async with session.ws_connect(base.replace("http", "ws") + "/ws") as ws:
        await ws.send_json(
            {
                "type": "subscribe_execution",
                "payload": {"executionId": execution_id, "lastSequence": 0},
            }
        )
        async with asyncio.timeout(30):
            async for message in ws:
                frame = json.loads(message.data)
                if "sequence" in frame:
                    frames.append(frame)
                if frame["type"] == "status" and frame["payload"]["status"] != "started":
                    break
    return text_of_frames(frames)


async def via_agui(session: aiohttp.ClientSession, base: str, execution_id: str) -> str:
    async with session.get(f"{base}/agui/runs/{execution_id}/events") as response:
        events, _ = await read_sse(response)
    payloads = [e.json() for e in events]
    assert payloads[0]["type"] == "RUN_STARTED" and payloads[-1]["type"] == "RUN_FINISHED"
    return "".join(p["delta"] for p in payloads if p["type"] == "TEXT_MESSAGE_CONTENT")


async def via_ai_sdk(session: aiohttp.ClientSession, base: str, chat_id: str) -> str | None:
    """The chat's active run from its start; None when the chat has none (204)."""
    async with session.get(f"{base}/api/chat/{chat_id}/stream") as response:
        if response.status == 204:
            return None
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        events, _ = await read_sse(response)
    parts = [e.json() for e in events if e.data != "[DONE]"]
    assert parts[0]["type"] == "start" and events[-1].data == "[DONE]"
    return "".join(p["delta"] for p in parts if p["type"] == "text-delta")


async def result_of(server: Server, execution_id: str) -> str:
    run = server.gateway.runs.runs[execution_id]
    await asyncio.wait_for(asyncio.shield(run.task), 30)
    return str(run.result["content"])


async def start(session: aiohttp.ClientSession, base: str, how: str) -> tuple[str, str]:
    """Start a run through ``how``; returns (execution id, chat id) once the request's own
    stream delivered a few events and was dropped (the run goes on)."""
    prompt = f"Write about {how}"
    if how == "executions":
        async with session.post(
            base + "/executions", json={"prompt": prompt, "words": WORDS}
        ) as response:
            execution_id = (await response.json())["executionId"]
        return execution_id, execution_id
    if how == "agui":
        body = {
            "threadId": "thread-x",
            "runId": "agui-x",
            "state": {},
            "tools": [],
            "context": [],
            "forwardedProps": {"words": WORDS},
            "messages": [{"id": "u", "role": "user", "content": prompt}],
        }
        async with session.post(base + "/agui", json=body) as response:
            await read_sse(response, stop_after=3)
        return "agui-x", "thread-x"
    body = {
        "id": "chat-x",
        "words": WORDS,
        "trigger": "submit-message",
        "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": prompt}]}],
    }
    async with session.post(base + "/api/chat", json=body) as response:
        events, _ = await read_sse(response, stop_after=1)
    return events[0].json()["messageId"], "chat-x"


@pytest.mark.parametrize("how", ["executions", "agui", "chat"])
async def test_a_run_started_through_one_protocol_is_watched_through_every_other(
    how: str,
) -> None:
    async with (
        serve(token_delay_ms=4) as server,
        second_instance(server) as other,
        aiohttp.ClientSession() as session,
    ):
        execution_id, chat_id = await start(session, server.url, how)
        # While it runs: the AI SDK's resume finds it by chat id, on either instance.
        live_here, live_there = await asyncio.gather(
            via_ai_sdk(session, server.url, chat_id), via_ai_sdk(session, other, chat_id)
        )
        texts = await asyncio.gather(
            via_sse(session, server.url, execution_id),
            via_sse(session, other, execution_id),
            via_websocket(session, other, execution_id),
            via_agui(session, server.url, execution_id),
            via_agui(session, other, execution_id),
        )
        result = await result_of(server, execution_id)
        assert live_here == live_there == result
        assert list(texts) == [result] * len(texts)
        # Once over, the chat has no active run any more, anywhere.
        assert await via_ai_sdk(session, other, chat_id) is None
        async with session.get(f"{other}/executions/{execution_id}") as response:
            assert (await response.json())["status"] == "completed"


async def test_agui_resumes_on_another_instance_right_after_the_last_event() -> None:
    async with (
        serve(token_delay_ms=4) as server,
        second_instance(server) as other,
        aiohttp.ClientSession() as session,
    ):
        execution_id, _ = await start(session, server.url, "agui")
        async with session.get(f"{server.url}/agui/runs/{execution_id}/events") as response:
            first, _ = await read_sse(response, stop_after=9)
        headers = {"Last-Event-ID": str(first[-1].id)}
        async with session.get(
            f"{other}/agui/runs/{execution_id}/events", headers=headers
        ) as response:
            rest, _ = await read_sse(response)
        async with session.get(f"{server.url}/agui/runs/{execution_id}/events") as response:
            whole, _ = await read_sse(response)
        assert [(e.id, e.data) for e in first + rest] == [(e.id, e.data) for e in whole]
        assert whole[-2].json()["type"] == "STATE_SNAPSHOT"
