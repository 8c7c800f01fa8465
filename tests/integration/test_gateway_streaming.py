"""A user's stories with the gateway: a run streams to its subscribers in order, a dropped client
resumes with exactly what it missed, filters and delivery modes hold. Real aiohttp server on
127.0.0.1, real clients (aiohttp's and the ``websockets`` package's)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from gateway_support import TIMEOUT, publish_run, recv, recv_until, running_gateway, subscribe
from gateway_support import wait_for as wait_until
from reactivex.subject import Subject

from streaming_module.errors import ClientNotFoundError, WebSocketError
from streaming_module.services.bridge import WebSocketBridgeService
from streaming_module.types import (
    ProgressData,
    StatusData,
    StreamEventType,
    StreamMetadata,
    StreamUpdate,
    TokenData,
    utc_now,
)

WORDS = [f"w{i} " for i in range(200)]


def _is_final(message: dict[str, Any]) -> bool:
    return message["type"] == "status" and message["payload"]["status"] != "started"


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["payload"]["content"] for m in messages if m["type"] == "token")


async def test_a_full_run_reaches_a_subscriber_in_order() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            reply = await subscribe(ws, "exec-1")
            assert reply["payload"]["executionId"] == "exec-1"
            publish_run(server.broker, "exec-1", WORDS)
            messages = await recv_until(ws, _is_final)
    sequences = [m["sequence"] for m in messages]
    assert sequences == list(range(1, len(messages) + 1))
    assert messages[0]["payload"] == {"status": "started"}
    assert messages[-1]["payload"] == {"status": "completed"}
    assert _text(messages) == "".join(WORDS)
    assert all(m["executionId"] == "exec-1" for m in messages)
    assert all(m["timestamp"].endswith("+00:00") for m in messages)
    progress = [m for m in messages if m["type"] == "progress"]
    assert progress and progress[-1]["payload"]["progress"] == 100


async def test_the_manuals_browser_client_at_root_with_the_websockets_package() -> None:
    async with running_gateway() as server:
        url = f"ws://127.0.0.1:{server.gateway.port}"
        async with websockets.connect(url, proxy=None) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe_execution",
                        "payload": {
                            "executionId": "execution-123",
                            "events": ["token", "event", "progress", "status"],
                        },
                    }
                )
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "subscribed"
            publish_run(server.broker, "execution-123", WORDS[:20])
            messages = []
            while not messages or not _is_final(messages[-1]):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
                assert len(messages) < 100
    assert _text(messages) == "".join(WORDS[:20])


async def test_subscribing_before_the_run_starts_gets_every_frame_from_the_first() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with (
            session.ws_connect(server.ws_url) as early,
            session.ws_connect(server.ws_url) as from_zero,
        ):
            await subscribe(early, "later")
            await subscribe(from_zero, "later", lastSequence=0)
            publish_run(server.broker, "later", WORDS[:30])
            for ws in (early, from_zero):
                messages = await recv_until(ws, _is_final)
                assert messages[0]["sequence"] == 1
                assert _text(messages) == "".join(WORDS[:30])


async def test_subscribed_comes_before_the_replayed_frames() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        publish_run(server.broker, "done", WORDS[:5])
        async with session.ws_connect(server.ws_url) as ws:
            await ws.send_json(
                {
                    "type": "subscribe_execution",
                    "payload": {"executionId": "done", "lastSequence": 0},
                }
            )
            first = await recv(ws)
            assert first["type"] == "subscribed"
            assert first["payload"]["lastSequence"] == 0
            messages = await recv_until(ws, _is_final)
            assert messages[0]["sequence"] == 1
            assert _text(messages) == "".join(WORDS[:5])


async def test_a_client_dropped_mid_run_resumes_with_exactly_the_rest() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        received: list[dict[str, Any]] = []
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "run")
            server.broker.publish("run", "status", {"status": "started"})
            for word in WORDS[:50]:
                server.broker.publish("run", "token", {"content": word, "nodeId": "llm"})
            received += await recv_until(ws, lambda m: m["sequence"] == 30)
        # dropped; the run goes on without it
        for word in WORDS[50:]:
            server.broker.publish("run", "token", {"content": word, "nodeId": "llm"})
        last = received[-1]["sequence"]
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "run", lastSequence=last)
            server.broker.publish("run", "status", {"status": "completed"})
            received += await recv_until(ws, _is_final)
    sequences = [m["sequence"] for m in received]
    assert sequences == list(range(1, len(received) + 1)), "no duplicate, no gap"
    assert _text(received) == "".join(WORDS)


async def test_what_the_log_evicted_is_announced_as_a_gap() -> None:
    async with running_gateway(broker={"replayMaxFrames": 10}) as server:
        async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
            for i in range(30):
                server.broker.publish("e", "token", {"content": str(i), "nodeId": "n"})
            await subscribe(ws, "e", lastSequence=5)
            gap = await recv(ws)
            assert gap["type"] == "gap"
            assert gap["payload"] == {"from": 6, "to": 20}
            rest = [await recv(ws) for _ in range(10)]
            assert [m["sequence"] for m in rest] == list(range(21, 31))


async def test_events_filter_selects_kinds_but_workflow_updates_always_pass() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            reply = await subscribe(ws, "f", events=["token", "status"])
            assert reply["payload"]["events"] == ["status", "token"]
            server.broker.publish("f", "progress", {"progress": 10})
            server.broker.publish("f", "event", {"eventType": "node_start"})
            server.broker.publish("f", "token", {"content": "a", "nodeId": "n"})
            await server.gateway.broadcast_to_execution(
                "f", {"type": "workflow_update", "payload": {"step": 1}, "timestamp": "x"}
            )
            server.broker.publish("f", "status", {"status": "completed"})
            messages = await recv_until(ws, _is_final)
    assert [m["type"] for m in messages] == ["token", "workflow_update", "status"]
    assert messages[1]["payload"] == {"step": 1}
    assert [m["sequence"] for m in messages] == [3, 4, 5]


async def test_at_most_once_frames_are_live_only() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as live:
            await subscribe(live, "d")
            server.broker.publish("d", "event", {"n": 1})
            server.broker.publish("d", "event", {"n": 2}, replayable=False)
            server.broker.publish("d", "event", {"n": 3})
            got = [await recv(live) for _ in range(3)]
            assert [m["payload"]["n"] for m in got] == [1, 2, 3]
        async with session.ws_connect(server.ws_url) as resumed:
            await subscribe(resumed, "d", lastSequence=0)
            got = [await recv(resumed) for _ in range(2)]
            assert [(m["sequence"], m["payload"]["n"]) for m in got] == [(1, 1), (3, 3)]


async def test_unsubscribe_ping_ack_and_introspection() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "a")
            await subscribe(ws, "b")
            assert server.gateway.connection_count == 1
            [info] = server.gateway.get_connections()
            assert info["subscriptions"] == ["a", "b"]
            assert server.gateway.get_subscriptions() == {
                "a": [info["clientId"]],
                "b": [info["clientId"]],
            }
            assert server.gateway.get_subscriptions("b") == {"b": [info["clientId"]]}

            await ws.send_json({"type": "ping", "payload": {"t": 7}})
            pong = await recv(ws)
            assert pong["type"] == "pong" and pong["payload"]["t"] == 7

            await ws.send_json({"type": "ack", "payload": {"executionId": "a", "sequence": 4}})
            await ws.send_json({"type": "ack", "payload": {"executionId": "a", "sequence": 2}})
            await ws.send_json({"type": "ack", "payload": {"executionId": "zzz", "sequence": 1}})
            error = await recv(ws)
            assert error["type"] == "error" and error["payload"]["code"] == "not_subscribed"
            assert server.gateway.get_connections()[0]["acks"] == {"a": 4}

            await ws.send_json({"type": "unsubscribe_execution", "payload": {"executionId": "a"}})
            reply = await recv(ws)
            assert reply["type"] == "unsubscribed"
            assert reply["payload"] == {"executionId": "a", "wasSubscribed": True}
            server.broker.publish("a", "token", {"content": "not for you"})
            server.broker.publish("b", "token", {"content": "for you"})
            message = await recv(ws)
            assert message["executionId"] == "b"

            await server.gateway.send_to_client(info["clientId"], {"type": "direct", "x": 1})
            assert await recv(ws) == {"type": "direct", "x": 1}
            with pytest.raises(ClientNotFoundError):
                await server.gateway.send_to_client("nobody", {})
            with pytest.raises(WebSocketError):
                await server.gateway.broadcast_to_execution("b", {"type": "pong", "payload": {}})
        await wait_until(lambda: server.gateway.connection_count == 0)


async def test_broadcast_to_execution_is_sequenced_and_replayable() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        await server.gateway.broadcast_to_execution(
            "b", {"type": "workflow_update", "payload": {"n": 1}, "timestamp": "2026"}
        )
        await server.gateway.broadcast_to_execution("b", {"plain": True})
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "b", lastSequence=0)
            first, second = await recv(ws), await recv(ws)
    assert (first["type"], first["sequence"], first["payload"]) == ("workflow_update", 1, {"n": 1})
    assert (second["sequence"], second["payload"]) == (2, {"plain": True})


async def test_http_endpoints() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with session.get(server.http_url + "/health") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with session.get(server.http_url + "/") as response:
            assert response.status == 200
            assert "/ws" in (await response.json())["websocket"]

        async def page(request: web.Request) -> web.Response:
            return web.Response(text="<html>demo</html>", content_type="text/html")

        server.gateway.set_index_handler(page)
        async with session.get(server.http_url + "/") as response:
            assert await response.text() == "<html>demo</html>"
        async with session.get(server.http_url + "/ws") as response:
            assert response.status == 426


async def test_setup_mounts_the_websocket_into_an_existing_app() -> None:
    from gateway_support import make_options

    from streaming_module.broker.memory import InMemoryBroker
    from streaming_module.gateway.gateway import StreamingWebSocketGateway

    options = make_options()
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    app = web.Application()
    gateway.setup(app, path="/stream")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{port}/stream") as ws,
        ):
            await subscribe(ws, "m")
            broker.publish("m", "token", {"content": "hi", "nodeId": "n"})
            assert (await recv(ws))["payload"]["content"] == "hi"
            await runner.cleanup()  # the user's app shuts down: its clients get 1001
            closing = await ws.receive(timeout=TIMEOUT)
            assert closing.type is aiohttp.WSMsgType.CLOSE
            assert closing.data == 1001
    finally:
        await runner.cleanup()
        await broker.aclose()


def _meta(execution_id: str, node_id: str | None = None, **extra: Any) -> StreamMetadata:
    return StreamMetadata(utc_now(), 1, execution_id, node_id, **extra)


async def test_the_bridge_forwards_each_update_to_its_executions_subscribers_only() -> None:
    tokens: Subject[Any] = Subject()
    events: Subject[Any] = Subject()
    progress: Subject[Any] = Subject()

    class Source:
        def get_global_token_stream(self) -> Subject[Any]:
            return tokens

        def get_event_stream(self) -> Subject[Any]:
            return events

        def get_progress_stream(self) -> Subject[Any]:
            return progress

    source = Source()
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        bridge = WebSocketBridgeService(source, source, source, server.broker)
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "x")
            events.on_next(StreamUpdate(StreamEventType.STATUS, StatusData("started"), _meta("x")))
            tokens.on_next(
                StreamUpdate(StreamEventType.TOKEN, TokenData("other", index=0), _meta("y", "n"))
            )
            tokens.on_next(
                StreamUpdate(
                    StreamEventType.TOKEN,
                    TokenData("Hello", index=0, total_tokens=1),
                    _meta("x", "llm"),
                )
            )
            progress.on_next(
                StreamUpdate(
                    StreamEventType.PROGRESS,
                    ProgressData(50.0, 1, 2, eta=1.5, rate=2.0, text="50%"),
                    _meta("x", "llm"),
                )
            )
            events.on_next(
                StreamUpdate(
                    StreamEventType.NODE_START,
                    {"node": "llm"},
                    _meta("x", "llm", priority="medium", delivery="at-most-once"),
                )
            )
            events.on_next(
                StreamUpdate(StreamEventType.STATUS, StatusData("failed", "boom"), _meta("x"))
            )
            messages = await recv_until(ws, _is_final)
        bridge.close()
        tokens.on_next(StreamUpdate(StreamEventType.TOKEN, TokenData("late"), _meta("x", "n")))
    assert [m["type"] for m in messages] == ["status", "token", "progress", "event", "status"]
    assert [m["sequence"] for m in messages] == [1, 2, 3, 4, 5]
    assert messages[1]["payload"] == {
        "content": "Hello",
        "nodeId": "llm",
        "index": 0,
        "totalTokens": 1,
    }
    assert messages[2]["payload"]["progress"] == 50.0
    assert messages[2]["payload"]["eta"] == 1.5
    assert messages[2]["payload"]["nodeId"] == "llm"
    assert messages[3]["payload"] == {
        "eventType": "node_start",
        "data": {"node": "llm"},
        "nodeId": "llm",
        "priority": "medium",
    }
    assert messages[4]["payload"] == {"status": "failed", "error": "boom"}
    assert server.broker.last_sequence("x") == 0  # ended, and evicted with the broker


async def test_the_bridge_ends_the_execution_on_a_final_status() -> None:
    from streaming_module.broker.memory import InMemoryBroker
    from streaming_module.config import BrokerOptions
    from streaming_module.core.clock import FakeClock

    clock = FakeClock()
    broker = InMemoryBroker(BrokerOptions(retention_after_end_ms=1000), clock)
    bridge = WebSocketBridgeService(None, None, None, broker)
    bridge.forward(StreamUpdate(StreamEventType.STATUS, StatusData("started"), _meta("r")))
    bridge.forward(
        StreamUpdate(StreamEventType.EVENTS, {"x": 1}, _meta("r", delivery="at-most-once"))
    )
    bridge.forward(StreamUpdate(StreamEventType.STATUS, StatusData("completed"), _meta("r")))
    assert bridge.forward(StreamUpdate(StreamEventType.TOKEN, TokenData("x"), None)) is None
    assert broker.last_sequence("r") == 3
    assert broker.retained("r") == 2  # the at-most-once event is not kept
    clock.advance(1.5)
    assert broker.retained("r") == 0


async def test_the_access_log_never_shows_the_token(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with session.get(server.http_url + "/health?token=secret.jwt.value") as response:
            assert response.status == 200
        await wait_until(lambda: any("/health" in r.getMessage() for r in caplog.records))
    assert not any("secret.jwt.value" in r.getMessage() for r in caplog.records)
