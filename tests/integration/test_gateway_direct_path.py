"""The gateway's direct path: a broadcast frame is framed once and written straight to each idle,
uncompressed client's transport; everything else (compression, a paused or full transport, a
non-empty queue, a writer mid-send) goes through the bounded queue and writer task, in order.

The first tests drive a :class:`ClientConnection` over a fake aiohttp WebSocket (so a paused
transport can be set exactly); the others use the real server with aiohttp and ``websockets``
clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets
from gateway_support import TIMEOUT, recv, recv_until, running_gateway, subscribe
from gateway_support import wait_for as wait_until

from fake_ws import FakeWebSocket
from streaming_module.core.clock import FakeClock
from streaming_module.gateway._aiohttp import direct_transport, ws_frame, ws_text_frame
from streaming_module.gateway.connection import DIRECT_WRITE_LIMIT, ClientConnection
from streaming_module.protocol.frames import Frame


def _frame(seq: int, content: str = "x") -> Frame:
    return Frame("e", seq, "token", "2026-01-01T00:00:00Z", {"content": content, "nodeId": "n"})


async def _connection(ws: FakeWebSocket) -> ClientConnection:
    conn = ClientConnection("c1", ws, clock=FakeClock())  # type: ignore[arg-type]
    conn.start()
    await asyncio.sleep(0)  # the writer task waits on its queue
    return conn


def _sequences(out: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
    result = []
    for path, data in out:
        body = json.loads(data[data.index(b"{") :] if path == "direct" else data)
        result.append((path, body.get("sequence", 0)))
    return result


async def test_an_idle_uncompressed_connection_gets_the_pre_framed_bytes_directly() -> None:
    ws = FakeWebSocket()
    conn = await _connection(ws)
    frames = [_frame(i) for i in range(1, 4)]
    for frame in frames:
        conn.deliver(frame)
    assert ws.out == [("direct", ws_frame(frame)) for frame in frames]
    assert ws_frame(frames[0]) == ws_text_frame(frames[0].encoded())
    assert ws_frame(frames[0]) is ws_frame(frames[0])  # framed once per broadcast
    assert conn.direct_writes == 3 and conn.frames_sent == 3 and conn.queued == 0
    assert conn.info()["directWrites"] == 3
    await conn.aclose()


@pytest.mark.parametrize(
    "make_busy",
    [
        pytest.param(lambda ws: setattr(ws._writer.protocol, "writing_paused", True), id="paused"),
        pytest.param(
            lambda ws: setattr(ws._writer.transport, "buffered", DIRECT_WRITE_LIMIT),
            id="write-buffer-full",
        ),
        pytest.param(lambda ws: setattr(ws._writer.transport, "closing", True), id="closing"),
        pytest.param(lambda ws: setattr(ws, "closed", True), id="ws-closed"),
    ],
)
async def test_a_busy_transport_falls_back_to_the_queue_and_writer_task(make_busy: Any) -> None:
    ws = FakeWebSocket()
    conn = await _connection(ws)
    make_busy(ws)
    conn.deliver(_frame(1))
    assert ws.out == [] and conn.queued == 1
    await wait_until(lambda: conn.queued == 0)
    assert _sequences(ws.out) == [("queued", 1)]
    assert conn.direct_writes == 0 and conn.frames_sent == 1
    await conn.aclose()


async def test_a_non_empty_queue_keeps_order_then_the_direct_path_resumes() -> None:
    ws = FakeWebSocket()
    conn = await _connection(ws)
    conn.send(b'{"type":"subscribed","payload":{}}')  # a reply waits in the queue ...
    conn.deliver(_frame(1))  # ... so this frame queues behind it
    conn.deliver(_frame(2))
    assert ws.out == [] and conn.queued == 3
    await wait_until(lambda: conn.queued == 0)
    conn.deliver(_frame(3))  # idle again: direct
    assert _sequences(ws.out) == [("queued", 0), ("queued", 1), ("queued", 2), ("direct", 3)]
    await conn.aclose()


async def test_a_writer_mid_send_keeps_frames_behind_it() -> None:
    ws = FakeWebSocket()
    ws.hold = asyncio.Event()
    conn = await _connection(ws)
    conn.send(b'{"type":"pong","payload":{}}')
    await wait_until(lambda: conn.queued == 0)  # popped, its send has not returned
    conn.deliver(_frame(1))
    assert conn.queued == 1 and conn.direct_writes == 0
    ws.hold.set()
    await wait_until(lambda: conn.queued == 0)
    assert _sequences(ws.out) == [("queued", 0), ("queued", 1)]
    await conn.aclose()


def test_direct_transport_is_detected_only_where_it_is_safe() -> None:
    assert direct_transport(FakeWebSocket()) is not None  # type: ignore[arg-type]
    assert direct_transport(FakeWebSocket(compress=15)) is None  # type: ignore[arg-type]
    masked = FakeWebSocket()
    masked._writer.use_mask = True
    assert direct_transport(masked) is None  # type: ignore[arg-type]
    unprepared = FakeWebSocket()
    unprepared._writer = None  # type: ignore[assignment]
    assert direct_transport(unprepared) is None  # type: ignore[arg-type]
    changed = FakeWebSocket()  # an aiohttp whose writer no longer has what we use
    del changed._writer.protocol.writing_paused
    assert direct_transport(changed) is None  # type: ignore[arg-type]
    other = FakeWebSocket()
    other._writer.transport = object()  # type: ignore[assignment]
    assert direct_transport(other) is None  # type: ignore[arg-type]


async def test_a_compressed_connection_never_takes_the_direct_path() -> None:
    ws = FakeWebSocket(compress=15)
    conn = await _connection(ws)
    conn.deliver(_frame(1))
    await wait_until(lambda: conn.queued == 0)
    assert _sequences(ws.out) == [("queued", 1)] and conn.direct_writes == 0
    await conn.aclose()


# ---------------------------------------------------------------------- the real server


def _connection_of(server: Any) -> ClientConnection:
    [info] = server.gateway.get_connections()
    conn = server.gateway.get_connection(info["clientId"])
    assert conn is not None
    return conn  # type: ignore[no-any-return]


async def test_a_real_idle_client_is_served_by_the_direct_path_in_order() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.ws_url)
        await subscribe(ws, "run")
        conn = _connection_of(server)
        for i in range(50):
            server.broker.publish("run", "token", {"content": f"{i} ", "nodeId": "n"})
            if i % 10 == 9:
                await asyncio.sleep(0.01)  # let the client read: the transport stays idle
        server.broker.publish("run", "status", {"status": "completed"})
        messages = await recv_until(ws, lambda m: m["type"] == "status")
        assert [m["sequence"] for m in messages] == list(range(1, 52))
        assert "".join(m["payload"]["content"] for m in messages[:-1]) == "".join(
            f"{i} " for i in range(50)
        )
        assert conn.direct_writes == 51  # every frame; only the 'subscribed' reply queued
        await ws.close()


async def test_a_real_compressed_client_is_served_by_the_writer_task() -> None:
    compression = {"enabled": True, "threshold": 0}
    async with (
        running_gateway(gateway={"compression": compression}) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.ws_url, compress=15) as ws,
    ):
        await subscribe(ws, "run")
        conn = _connection_of(server)
        for i in range(20):
            server.broker.publish("run", "token", {"content": f"{i} ", "nodeId": "n"})
        messages = [await recv(ws) for _ in range(20)]
        assert [m["sequence"] for m in messages] == list(range(1, 21))
        assert conn.direct_writes == 0 and conn.frames_sent == 21


async def test_a_resume_replays_then_goes_live_with_no_gap_or_duplicate() -> None:
    async with running_gateway() as server, aiohttp.ClientSession() as session:
        for i in range(30):
            server.broker.publish("run", "token", {"content": f"{i} ", "nodeId": "n"})
        ws = await session.ws_connect(server.ws_url)
        await subscribe(ws, "run", lastSequence=10)
        for i in range(30, 40):
            server.broker.publish("run", "token", {"content": f"{i} ", "nodeId": "n"})
        server.broker.publish("run", "status", {"status": "completed"})
        messages = await recv_until(ws, lambda m: m["type"] == "status")
        assert [m["sequence"] for m in messages] == list(range(11, 42))
        await ws.close()


BOUNDARIES = (125, 126, 127, 65535, 65536, 65537)


async def test_a_websockets_client_decodes_direct_frames_of_every_length_encoding() -> None:
    """Payload lengths on both sides of the 7-bit, 16-bit and 64-bit length encodings."""
    async with running_gateway() as server:
        async with websockets.connect(server.ws_url, proxy=None, max_size=2**20) as client:
            await client.send(
                json.dumps({"type": "subscribe_execution", "payload": {"executionId": "big"}})
            )
            assert json.loads(await asyncio.wait_for(client.recv(), TIMEOUT))["type"] == (
                "subscribed"
            )
            conn = _connection_of(server)
            # The JSON around a string payload is ~100 bytes: learn it, then size the payloads
            # so the encoded frames land exactly on each boundary.
            probe = server.broker.publish("big", "workflow_update", "")
            sent: list[Frame] = [probe]
            overhead = len(probe.encoded())
            for target in BOUNDARIES:
                for _ in range(3):  # the overhead may shift (sequence digits, a timestamp
                    # without microseconds): correct it and retry
                    content = "y" * (target - overhead)
                    frame = server.broker.publish("big", "workflow_update", content)
                    sent.append(frame)
                    overhead = len(frame.encoded()) - len(content)
                    await asyncio.sleep(0.02)  # let the client read: keep the direct path idle
                    if len(frame.encoded()) == target:
                        break
            assert {len(f.encoded()) for f in sent} >= set(BOUNDARIES)
            got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in sent]
            assert [g.encode() for g in got] == [f.encoded() for f in sent]
            assert conn.direct_writes == len(sent)
