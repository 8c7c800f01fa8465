"""A client's send queue is bounded in bytes as well as in entries, on the queued and the direct
paths, replies included: a client that stops reading costs the process at most
``send_queue_bytes`` (plus one frame), whatever the frame sizes.

Driven over a fake aiohttp WebSocket whose writer can be held mid-send (a client that stopped
reading) and whose transport's unsent bytes can be set exactly."""

from __future__ import annotations

import asyncio

from fake_ws import FakeWebSocket
from streaming_module.core.clock import FakeClock
from streaming_module.gateway.connection import ClientConnection
from streaming_module.protocol.close_codes import CloseCode
from streaming_module.protocol.frames import Frame, encode_reply

KIB = 1024


def _frame(seq: int, size: int = 10, execution_id: str = "e") -> Frame:
    content = f"{seq:08d}".ljust(size, "x")
    return Frame(
        execution_id, seq, "token", "2026-01-01T00:00:00Z", {"content": content, "nodeId": "n"}
    )


async def _stalled(**options: object) -> tuple[FakeWebSocket, ClientConnection]:
    """A connection whose writer is stuck in its first send, as with a client that stopped
    reading once the kernel's and the transport's buffers filled."""
    ws = FakeWebSocket(compress=15)  # no direct path: everything goes through the queue
    ws.hold = asyncio.Event()
    conn = ClientConnection("c1", ws, clock=FakeClock(), **options)  # type: ignore[arg-type]
    conn.start()
    conn.send(b'{"type":"pong","payload":{}}')
    for _ in range(10):
        await asyncio.sleep(0)
    assert conn.queued == 0 and ws.out  # the writer holds the first entry in its send
    return ws, conn


async def _closed_with(conn: ClientConnection) -> int | None:
    for _ in range(20):
        await asyncio.sleep(0)
    return conn.close_code


async def test_large_frames_hit_the_byte_bound_long_before_the_frame_bound() -> None:
    ws, conn = await _stalled(send_queue_size=4096, send_queue_bytes=256 * KIB)
    frame_size = len(_frame(1, 20 * KIB).encoded())
    high_water = 0
    for seq in range(1, 200):
        conn.deliver(_frame(seq, 20 * KIB))
        high_water = max(high_water, conn.queued_bytes)
        if conn.closing:
            break
    assert await _closed_with(conn) == CloseCode.SLOW_CONSUMER
    assert high_water <= 256 * KIB
    assert high_water > 256 * KIB - frame_size  # it filled up to the bound, no earlier
    assert seq < 20, "closed after ~12 frames of 20 KiB, not 4,096"
    ws.hold.set()  # type: ignore[union-attr]
    await conn.aclose()


async def test_replies_a_client_provokes_count_against_its_bound() -> None:
    ws, conn = await _stalled(send_queue_bytes=128 * KIB)
    pong = encode_reply("pong", {"echo": "p" * (16 * KIB)})
    sent = 0
    for _ in range(1000):  # a client sending 16 KiB pings and never reading
        conn.send(pong)
        if conn.closing:
            break
        sent += 1
    assert await _closed_with(conn) == CloseCode.SLOW_CONSUMER
    assert sent == (128 * KIB) // len(pong)
    ws.hold.set()  # type: ignore[union-attr]
    await conn.aclose()


async def test_what_the_transport_holds_unsent_counts_too() -> None:
    ws, conn = await _stalled(send_queue_bytes=128 * KIB)
    ws._writer.transport.buffered = 100 * KIB  # aiohttp's writer wrote this much, unsent
    conn.deliver(_frame(1, 10 * KIB))
    conn.deliver(_frame(2, 10 * KIB))
    assert not conn.closing
    assert conn.owed_bytes > 120 * KIB
    conn.deliver(_frame(3, 10 * KIB))  # 100 + 3 x 10 KiB > 128 KiB
    assert await _closed_with(conn) == CloseCode.SLOW_CONSUMER
    ws.hold.set()  # type: ignore[union-attr]
    await conn.aclose()


async def test_the_direct_path_stops_at_the_byte_bound_and_the_queue_takes_over() -> None:
    ws = FakeWebSocket()  # uncompressed: frames go straight to the transport while it is idle
    conn = ClientConnection("c1", ws, clock=FakeClock(), send_queue_bytes=8 * KIB)  # type: ignore[arg-type]
    conn.start()
    await asyncio.sleep(0)
    transport = ws._writer.transport
    conn.deliver(_frame(1, 100))
    assert ws.out[-1][0] == "direct"
    transport.buffered = 8 * KIB  # the client stopped reading: the transport holds the bound
    conn.deliver(_frame(2, 100))  # the first entry is always taken
    assert conn.queued == 1 and not conn.closing
    ws.hold = asyncio.Event()
    conn.deliver(_frame(3, 100))  # queue + transport over 8 KiB
    assert await _closed_with(conn) == CloseCode.SLOW_CONSUMER
    ws.hold.set()
    await conn.aclose()


async def test_a_single_frame_larger_than_the_bound_still_goes_out() -> None:
    ws = FakeWebSocket(compress=15)
    conn = ClientConnection("c1", ws, clock=FakeClock(), send_queue_bytes=4 * KIB)  # type: ignore[arg-type]
    conn.start()
    conn.deliver(_frame(1, 64 * KIB))
    assert await conn.drained(1.0)
    assert not conn.closing
    assert [len(data) for _, data in ws.out] == [len(_frame(1, 64 * KIB).encoded())]
    assert conn.queued_bytes == 0
    await conn.aclose()


async def test_a_reader_that_keeps_up_never_hits_the_bound() -> None:
    ws = FakeWebSocket(compress=15)
    conn = ClientConnection("c1", ws, clock=FakeClock(), send_queue_bytes=64 * KIB)  # type: ignore[arg-type]
    conn.start()
    for seq in range(1, 2001):
        conn.deliver(_frame(seq, 1000))
        if seq % 8 == 0:
            await asyncio.sleep(0)  # the writer gets its turn, as on a live loop
    assert await conn.drained(1.0)
    assert not conn.closing
    assert len(ws.out) == 2000 and conn.queued_bytes == 0


async def test_a_resume_may_go_over_the_bounds_once_but_a_second_one_may_not() -> None:
    ws, conn = await _stalled(send_queue_size=64, send_queue_bytes=32 * KIB)
    conn.begin_replay()
    for seq in range(1, 201):  # 200 frames, ~240 KiB: far over both bounds
        conn.deliver(_frame(seq, 1000))
    conn.end_replay()
    assert not conn.closing
    assert conn.queued == 200
    conn.deliver(_frame(201, 1000))  # live frames after the replay are let through
    conn.send(encode_reply("pong", {}))
    assert not conn.closing

    conn.begin_replay()  # re-subscribing before the first replay drained
    for seq in range(1, 201):
        conn.deliver(_frame(seq, 1000, execution_id="other"))
        if conn.closing:
            break
    conn.end_replay()
    assert await _closed_with(conn) == CloseCode.SLOW_CONSUMER
    assert seq < 200
    ws.hold.set()  # type: ignore[union-attr]
    await conn.aclose()


async def test_the_replay_allowance_shrinks_as_the_writer_sends() -> None:
    ws = FakeWebSocket(compress=15)
    conn = ClientConnection(
        "c1", ws, clock=FakeClock(), send_queue_size=16, send_queue_bytes=16 * KIB
    )  # type: ignore[arg-type]
    conn.start()
    conn.begin_replay()
    for seq in range(1, 101):
        conn.deliver(_frame(seq, 1000))
    conn.end_replay()
    assert await conn.drained(1.0)
    assert conn.queued_bytes == 0
    # Drained: the bounds are the configured ones again.
    ws.hold = asyncio.Event()
    conn.deliver(_frame(101, 1000))
    for _ in range(10):
        await asyncio.sleep(0)
    for seq in range(102, 200):
        conn.deliver(_frame(seq, 1000))
        if conn.closing:
            break
    assert await _closed_with(conn) == CloseCode.SLOW_CONSUMER
    assert seq <= 120
    ws.hold.set()
    await conn.aclose()


async def test_coalescing_helps_with_the_frame_bound_not_the_byte_bound() -> None:
    ws, conn = await _stalled(
        send_queue_size=16, send_queue_bytes=1024 * KIB, slow_client_policy="coalesce"
    )
    for seq in range(1, 401):  # small frames: the entry bound is hit, merging makes room
        conn.deliver(_frame(seq, 50))
    assert not conn.closing
    assert conn.coalesced > 0 and conn.queued <= 16

    ws2, big = await _stalled(
        send_queue_size=16, send_queue_bytes=64 * KIB, slow_client_policy="coalesce"
    )
    for seq in range(1, 401):  # 4 KiB frames: the byte bound is hit first
        big.deliver(_frame(seq, 4 * KIB))
        if big.closing:
            break
    assert await _closed_with(big) == CloseCode.SLOW_CONSUMER
    assert big.queued_bytes <= 64 * KIB
    for w in (ws, ws2):
        w.hold.set()  # type: ignore[union-attr]
    await conn.aclose()
    await big.aclose()
