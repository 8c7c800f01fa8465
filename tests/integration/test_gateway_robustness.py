"""The gateway under stress: bad frames, stalled clients, silent peers, compression, shutdown.
Real aiohttp server on 127.0.0.1, real clients; every loop bounded in count and time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

import aiohttp
import pytest
import websockets
from gateway_support import TIMEOUT, make_options, recv, recv_until, running_gateway, subscribe
from gateway_support import wait_for as wait_until

from streaming_module.broker.memory import InMemoryBroker
from streaming_module.core.clock import FakeClock
from streaming_module.gateway.gateway import StreamingWebSocketGateway
from streaming_module.gateway.server import serve
from streaming_module.protocol import coalesce as coalesce_module
from streaming_module.protocol.close_codes import CloseCode
from streaming_module.services.bridge import WebSocketBridgeService
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService


def _is_final(message: dict[str, Any]) -> bool:
    return message["type"] == "status" and message["payload"]["status"] != "started"


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["payload"]["content"] for m in messages if m["type"] == "token")


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("{not json", "invalid_json"),
    ("[1, 2, 3]", "invalid_message"),
    ('"just a string"', "invalid_message"),
    ("{}", "invalid_message"),
    ('{"type": "explode"}', "unknown_type"),
    ('{"type": "subscribe_execution"}', "invalid_payload"),
    ('{"type": "subscribe_execution", "payload": {"executionId": 42}}', "invalid_payload"),
    ('{"type": "ack", "payload": {"executionId": "s"}}', "invalid_payload"),
    (b"\x00\x01binary", "binary_not_supported"),
]


async def test_a_flood_of_bad_frames_gets_errors_while_others_keep_streaming() -> None:
    async with running_gateway(websocket={"maxMessageSize": 1024}) as server:
        async with aiohttp.ClientSession() as session:
            healthy = await session.ws_connect(server.ws_url)
            bad = await session.ws_connect(server.ws_url)
            await subscribe(healthy, "s")

            async def produce() -> None:
                server.broker.publish("s", "status", {"status": "started"})
                for i in range(300):
                    server.broker.publish("s", "token", {"content": f"{i} ", "nodeId": "n"})
                    if i % 10 == 0:
                        await asyncio.sleep(0)
                server.broker.publish("s", "status", {"status": "completed"})

            producer = asyncio.create_task(produce())
            for _ in range(5):
                for frame, code in BAD_FRAMES:
                    if isinstance(frame, bytes):
                        await bad.send_bytes(frame)
                    else:
                        await bad.send_str(frame)
                    reply = await recv(bad)
                    assert reply["type"] == "error", reply
                    assert reply["payload"]["code"] == code
                    assert reply["payload"]["message"]
            await bad.send_json({"type": "ping"})
            assert (await recv(bad))["type"] == "pong"  # still open and answering
            await bad.send_str("x" * 2000)  # over max_message_size
            closing = await bad.receive(timeout=TIMEOUT)
            assert closing.type is aiohttp.WSMsgType.CLOSE
            assert closing.data == CloseCode.MESSAGE_TOO_BIG
            await producer
            messages = await recv_until(healthy, _is_final)
            assert _text(messages) == "".join(f"{i} " for i in range(300))
            assert [m["sequence"] for m in messages] == list(range(1, 303))
            await healthy.close()
            await bad.close()


@pytest.mark.parametrize("policy", ["disconnect", "coalesce"])
async def test_a_stalled_client_stays_within_its_bound_and_never_delays_a_healthy_one(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coalesce_module, "COALESCE_MAX_CHARS", 1024 * 1024)  # < client limit
    queue_size = 64
    frames, size = 12000, 1000
    async with (
        running_gateway(
            # The frame bound is what this test is about: a byte bound the 12 MB it is owed
            # never reaches (test_memory_bound.py covers the byte bound).
            websocket={
                "sendQueueSize": queue_size,
                "sendQueueBytes": 64 * 1024 * 1024,
                "slowClientPolicy": policy,
            }
        ) as server,
        aiohttp.ClientSession() as session,
    ):
        stalled = await session.ws_connect(server.ws_url)
        await subscribe(stalled, "big")
        [stalled_info] = server.gateway.get_connections()
        stalled_conn = server.gateway.get_connection(stalled_info["clientId"])
        assert stalled_conn is not None
        healthy = await session.ws_connect(server.ws_url)
        await subscribe(healthy, "big")
        healthy_conn = next(
            server.gateway.get_connection(c["clientId"])
            for c in server.gateway.get_connections()
            if c["clientId"] != stalled_info["clientId"]
        )
        assert healthy_conn is not None
        healthy_reader = asyncio.create_task(recv_until(healthy, _is_final, within=30))

        high_water = 0
        server.broker.publish("big", "status", {"status": "started"})
        for i in range(frames):
            server.broker.publish(
                "big", "token", {"content": f"{i:08d}".ljust(size), "nodeId": "n"}
            )
            high_water = max(high_water, stalled_conn.queued)
            # a run produces over time: pace on the healthy client only (bounded wait)
            for _ in range(10_000):
                if healthy_conn.queued <= queue_size // 4:
                    break
                await asyncio.sleep(0.0005)
        server.broker.publish("big", "status", {"status": "completed"})
        expected = "".join(f"{i:08d}".ljust(size) for i in range(frames))

        healthy_messages = await asyncio.wait_for(healthy_reader, 30)
        assert _text(healthy_messages) == expected
        assert high_water <= queue_size

        # The stalled client reads again: what it gets, plus a resume, is the whole run.
        received: list[dict[str, Any]] = []
        close_code = None
        for _ in range(frames + 10):
            try:
                msg = await stalled.receive(timeout=15)
            except TimeoutError:
                raise AssertionError(
                    f"stalled client: {len(received)} frames, last "
                    f"{received[-1]['sequence'] if received else None}, {stalled_conn.info()}, "
                    f"closing={stalled_conn.closing}"
                ) from None
            if msg.type is aiohttp.WSMsgType.TEXT:
                received.append(json.loads(msg.data))
                if _is_final(received[-1]):
                    break
            else:
                close_code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else msg.type
                break
        if policy == "disconnect":
            assert close_code == CloseCode.SLOW_CONSUMER
            assert stalled_conn.close_code == CloseCode.SLOW_CONSUMER
            last = received[-1]["sequence"]
            async with session.ws_connect(server.ws_url) as again:
                await subscribe(again, "big", lastSequence=last)
                received += await recv_until(again, _is_final, within=30)
        else:
            assert stalled_conn.coalesced > 0
            assert close_code is None, "coalescing kept it connected"
            merged = [m for m in received if m["type"] == "token" and m["payload"].get("coalesced")]
            assert merged
        sequences = [m["sequence"] for m in received]
        assert sequences == sorted(set(sequences)), "rising, no duplicate"
        assert _text(received) == expected, "nothing lost"
        await healthy.close()
        await stalled.close()


async def test_heartbeat_closes_a_silent_peer_and_keeps_a_live_one() -> None:
    clock = FakeClock()
    heartbeat = {"enabled": True, "interval": 1000, "timeout": 500}
    async with running_gateway(clock=clock, gateway={"heartbeat": heartbeat}) as server:
        async with aiohttp.ClientSession() as session:
            silent = await session.ws_connect(server.ws_url, autoping=False)
            await wait_until(lambda: server.gateway.connection_count == 1)
            alive = await session.ws_connect(server.ws_url)  # aiohttp answers pings
            await wait_until(lambda: server.gateway.connection_count == 2)
            silent_id, alive_id = (c["clientId"] for c in server.gateway.get_connections())
            alive_conn = server.gateway.get_connection(alive_id)
            assert alive_conn is not None
            reader = asyncio.create_task(alive.receive(timeout=10))

            for round_ in range(3):
                heard = alive_conn.heard
                clock.advance(1.0 if round_ == 0 else 0.5)  # next ping is due
                await wait_until(lambda h=heard: alive_conn.heard > h)  # type: ignore[misc]
                clock.advance(0.5)  # pong deadline
                if round_ == 0:
                    ping = await silent.receive(timeout=TIMEOUT)
                    assert ping.type is aiohttp.WSMsgType.PING
                    closing = await silent.receive(timeout=TIMEOUT)
                    assert closing.type is aiohttp.WSMsgType.CLOSE
                    assert closing.data == CloseCode.HEARTBEAT_TIMEOUT
            await wait_until(lambda: server.gateway.connection_count == 1)
            assert server.gateway.get_connection(silent_id) is None
            assert not alive.closed
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await alive.close()


def _frame_flags(header: bytes) -> tuple[bool, int]:
    return bool(header[0] & 0x40), header[0] & 0x0F


async def _raw_deflate_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert b"101" in head.split(b"\r\n")[0]
    assert b"permessage-deflate" in head.lower()
    return reader, writer


async def _raw_read_frame(reader: asyncio.StreamReader) -> tuple[bool, bytes]:
    header = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    compressed, _ = _frame_flags(header)
    length = header[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return compressed, await reader.readexactly(length)


def _masked_text(data: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert len(data) < 126
    return bytes([0x81, 0x80 | len(data)]) + mask + body


async def test_compression_is_negotiated_and_small_frames_go_uncompressed() -> None:
    compression = {"enabled": True, "threshold": 400}
    async with running_gateway(gateway={"compression": compression}) as server:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.ws_url, compress=15) as ws,
        ):
            assert ws.compress == 15
            await subscribe(ws, "z")
            server.broker.publish("z", "token", {"content": "small", "nodeId": "n"})
            server.broker.publish("z", "token", {"content": "x" * 5000, "nodeId": "n"})
            assert (await recv(ws))["payload"]["content"] == "small"
            assert (await recv(ws))["payload"]["content"] == "x" * 5000
            assert server.gateway.get_connections()[0]["compressed"] is True

        async with websockets.connect(server.ws_url, proxy=None) as client:
            extensions = client.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions

        reader, writer = await _raw_deflate_client(server.gateway.port or 0)
        try:
            writer.write(
                _masked_text(b'{"type":"subscribe_execution","payload":{"executionId":"z2"}}')
            )
            compressed, _ = await _raw_read_frame(reader)  # 'subscribed', small
            assert not compressed
            server.broker.publish("z2", "token", {"content": "tiny", "nodeId": "n"})
            server.broker.publish("z2", "token", {"content": "y" * 5000, "nodeId": "n"})
            small_compressed, small = await _raw_read_frame(reader)
            big_compressed, big = await _raw_read_frame(reader)
            assert not small_compressed and json.loads(small)["payload"]["content"] == "tiny"
            assert big_compressed and len(big) < 1000
        finally:
            writer.close()

    async with running_gateway() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url, compress=15) as ws:
            assert ws.compress == 0  # off unless enabled


async def test_graceful_stop_closes_clients_with_1001_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    options = make_options()
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    await gateway.start(port=0)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"ws://127.0.0.1:{gateway.port}/ws")
        await subscribe(ws, "g")
        broker.publish("g", "token", {"content": "last words", "nodeId": "n"})
        stop = asyncio.create_task(gateway.stop())
        message = await recv(ws)
        assert message["payload"]["content"] == "last words"  # drained before closing
        closing = await ws.receive(timeout=TIMEOUT)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert closing.data == CloseCode.GOING_AWAY
        await stop
        await ws.close()
    await broker.aclose()
    assert gateway.connection_count == 0
    assert gateway.port is None
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not left, left


async def test_serve_flushes_buffered_tokens_before_closing_clients() -> None:
    before = asyncio.all_tasks()
    options = make_options()
    tokens = TokenStreamingService(options)
    events = EventStreamProcessorService(options)
    progress = ProgressTrackingService(options)
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    bridge = WebSocketBridgeService(tokens, events, progress, broker)
    resource = serve(
        gateway=gateway,
        bridge=bridge,
        token_streaming=tokens,
        event_processor=events,
        progress_tracking=progress,
        broker=broker,
        options=options,
    )
    served = await resource.__anext__()
    assert served is gateway and gateway.port
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"ws://127.0.0.1:{gateway.port}/")
        await subscribe(ws, "run")
        events.emit_status("run", "started")
        await tokens.initialize_token_stream(
            execution_id="run", node_id="llm", config={"bufferSize": 1000, "flushInterval": 0}
        )
        for word in ("still ", "in ", "the ", "buffer"):
            tokens.stream_token("run", "llm", word)
        tracker = progress.create_tracker("run", "llm", {"interval": 0})
        await tracker.update(1, 2)
        with pytest.raises(StopAsyncIteration):
            await resource.__anext__()  # shutdown
        messages: list[dict[str, Any]] = []
        for _ in range(20):
            msg = await ws.receive(timeout=TIMEOUT)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                assert msg.type is aiohttp.WSMsgType.CLOSE
                assert msg.data == CloseCode.GOING_AWAY
                break
            messages.append(json.loads(msg.data))
        await ws.close()
    assert messages[0]["payload"] == {"status": "started"}
    assert _text(messages) == "still in the buffer"
    assert "progress" in [m["type"] for m in messages]
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not left, left
