"""RedisBroker under faults: a reader that falls behind the log bound, a Redis restarted without
persistence, a Redis too slow for the local queue, and what ``/health`` says meanwhile.

Faults are injected on private ``redis-server`` processes (``private_redis``); the lagging reader
runs against the shared Redis with another *process* publishing (``tests/redis_publisher.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("redis")

import aiohttp

from redis_support import Collector, Publisher, RedisServer, assert_contiguous
from streaming_module.broker.base import GAP
from streaming_module.broker.redis import RedisBroker
from streaming_module.config import BrokerOptions, StreamingModuleOptions
from streaming_module.errors import BrokerError
from streaming_module.gateway.gateway import StreamingWebSocketGateway

pytestmark = pytest.mark.redis

BrokerFactory = Callable[..., RedisBroker]


def _options(url: str, prefix: str = "smfault", **extra: Any) -> BrokerOptions:
    return BrokerOptions(backend="redis", redis_url=url, key_prefix=prefix, **extra)


@contextlib.asynccontextmanager
async def _producer_and_watcher(
    options: BrokerOptions, execution_id: str, frames: int
) -> AsyncIterator[tuple[RedisBroker, RedisBroker, Collector]]:
    """Two processes on ``options``: the watcher subscribed live to the execution, which the
    producer has already written ``frames`` frames to (``{"i": n}``) and the watcher has got."""
    producer = RedisBroker(options, flush_timeout=30)
    watcher = RedisBroker(options, flush_timeout=30)
    try:
        live = Collector()
        await watcher.subscribe(execution_id, live)
        for i in range(frames):
            producer.publish(execution_id, "token", {"i": i})
        await producer.flush()
        await live.until(frames)
        yield producer, watcher, live
    finally:
        await producer.aclose()
        await watcher.aclose()


async def test_a_reader_whose_loop_is_busy_gets_a_gap_not_a_silent_skip(
    make_broker: BrokerFactory, redis_url: str, prefix: str
) -> None:
    """Another process publishes 6,000 frames into a log of 1,000 while this process's loop is
    blocked: the subscriber gets what it could read, a gap for what was trimmed meanwhile, then
    the retained frames — every sequence accounted for, in order."""
    watcher = make_broker(options={"replay_max_frames": 1000})
    seen = Collector()
    await watcher.subscribe("lag", seen)
    publisher = Publisher(redis_url, prefix, "lag", 6000, "--max-frames", "1000", "--every", "50")
    try:
        last = publisher.published()  # blocks this loop until the other process is done
    finally:
        publisher.close()
    assert last == 6000
    deadline = time.monotonic() + 10
    while not seen.frames or seen.frames[-1].sequence < 6000:
        assert time.monotonic() < deadline, f"got up to {seen.frames[-1:]}"
        await asyncio.sleep(0.02)
    gaps = [f for f in seen.frames if f.type == GAP]
    assert len(gaps) == 1, [g.payload for g in gaps]
    gap = gaps[0]
    index = seen.frames.index(gap)
    before, after = seen.frames[:index], seen.frames[index + 1 :]
    assert_contiguous(before, 1)
    # The log keeps the last 1,000 frames, in whole written calls: a few older ones may remain.
    assert gap.payload["from"] == len(before) + 1 and 4500 < gap.payload["to"] <= 5000
    assert_contiguous(after, gap.payload["to"] + 1)
    assert [f.payload["i"] for f in after] == list(range(gap.payload["to"], 6000))


async def test_this_process_never_trims_frames_its_own_subscribers_have_yet_to_read(
    make_broker: BrokerFactory, redis_url: str, prefix: str
) -> None:
    """Right after the other process's 3,000 frames (log of 1,000), this process writes 500 of
    its own before its subscriber could read the other's: its write keeps them (the log may
    then hold up to twice the bound), so the only gap is the one the other process made."""
    local = make_broker(options={"replay_max_frames": 1000}, block_ms=60_000)
    seen = Collector()
    await local.subscribe("own", seen)
    await asyncio.sleep(0.3)  # the reader is blocked in XREAD: the first frames wake it
    publisher = Publisher(redis_url, prefix, "own", 3000, "--max-frames", "1000", "--every", "50")
    try:
        assert publisher.published() == 3000  # blocks this loop meanwhile
        for i in range(500):  # queued before this process reads anything
            local.publish("own", "token", {"mine": i})
    finally:
        publisher.close()
    await local.flush()
    deadline = time.monotonic() + 10
    while not seen.frames or seen.frames[-1].sequence < 3500:
        assert time.monotonic() < deadline, f"got up to {seen.frames[-1:]}"
        await asyncio.sleep(0.02)
    (gap,) = [f for f in seen.frames if f.type == GAP]
    index = seen.frames.index(gap)
    assert_contiguous(seen.frames[:index], 1)
    # All the other process left (its last 1,000 frames, in whole calls) is still there.
    assert gap.payload["from"] == index + 1 and 1500 < gap.payload["to"] <= 2000
    after = seen.frames[index + 1 :]
    assert_contiguous(after, gap.payload["to"] + 1)
    assert [f.payload.get("mine") for f in after[-500:]] == list(range(500))


async def test_a_redis_restarted_without_persistence_continues_the_numbering(
    private_redis: RedisServer,
) -> None:
    """Redis loses every key (restart, no persistence) mid-run: the producer numbers its next
    frames after the last sequence it knows, a live watcher continues without a gap, and a
    client resuming from an earlier point is told what is gone."""
    options = _options(private_redis.url)
    async with _producer_and_watcher(options, "restart", 10) as (producer, _, live):
        private_redis.restart()
        for i in range(10, 15):
            producer.publish("restart", "token", {"i": i})
        await producer.flush()
        await live.until(15, within=20)
        assert_contiguous(live.frames, 1)
        assert [f.payload["i"] for f in live.frames] == list(range(15))
        late = RedisBroker(options)
        try:
            resumed = Collector()
            await late.subscribe("restart", resumed, last_sequence=4)
            assert resumed.frames[0].type == GAP
            assert resumed.frames[0].payload == {"from": 5, "to": 10}
            assert_contiguous(resumed.frames[1:], 11)
            assert await late.fetch_last_sequence("restart") == 15
        finally:
            await late.aclose()


async def test_a_slow_redis_fills_the_local_queue_then_publish_refuses_and_leaves_a_gap(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that stops answering: ``publish`` accepts up to ``max_pending_frames`` frames,
    then raises BrokerError (never blocks, never grows without bound); a status frame is still
    accepted; once Redis answers everything accepted arrives in order and the refused frame's
    place is a gap for every subscriber, live or resuming."""
    options = _options(private_redis.url, "smslow", max_pending_frames=100)
    async with _producer_and_watcher(options, "slow", 5) as (producer, watcher, live):
        private_redis.pause()
        try:
            for i in range(5, 105):
                producer.publish("slow", "token", {"i": i})
            assert producer.pending == 100
            started = time.monotonic()
            with pytest.raises(BrokerError) as refused:
                producer.publish("slow", "token", {"i": "refused"})
            assert time.monotonic() - started < 0.5  # refused at once, not blocked
            assert "max_pending_frames" in refused.value.message
            assert private_redis.url in refused.value.message
            final = producer.publish("slow", "status", {"status": "completed"})
            assert producer.pending == 101
            await asyncio.sleep(0.5)
        finally:
            private_redis.resume()
        await producer.flush()
        assert final.sequence == 107
        frames = await live.until(5 + 100 + 2, within=20)  # frames, the gap, the status
        assert_contiguous(frames[:105], 1)
        assert [f.payload["i"] for f in frames[:105]] == list(range(105))
        assert (frames[105].type, frames[105].payload) == (GAP, {"from": 106, "to": 106})
        assert (frames[106].type, frames[106].sequence) == ("status", 107)
        replay = Collector()
        await watcher.subscribe("slow", replay, last_sequence=100)
        assert [(f.type, f.sequence) for f in replay.frames] == [
            *(("token", s) for s in range(101, 106)),
            (GAP, 106),
            ("status", 107),
        ]
        assert "refusing frames" in caplog.text


async def test_health_reports_a_redis_that_does_not_answer(private_redis: RedisServer) -> None:
    broker = RedisBroker(_options(private_redis.url))
    gateway = StreamingWebSocketGateway(StreamingModuleOptions(), broker=broker)
    await gateway.start(port=0)
    try:
        async with aiohttp.ClientSession() as session:

            async def health() -> tuple[int, dict[str, Any]]:
                async with session.get(f"{gateway.url}/health") as response:
                    return response.status, await response.json()

            status, body = await health()
            assert status == 200 and body["status"] == "ok"
            assert body["broker"]["backend"] == "redis" and body["broker"]["status"] == "ok"
            (server,) = body["broker"]["servers"]
            assert server["url"] == private_redis.url and server["status"] == "ok"
            private_redis.pause()
            try:
                started = time.monotonic()
                status, body = await health()
                assert time.monotonic() - started < 5
            finally:
                private_redis.resume()
            assert status == 200 and body["status"] == "degraded"
            (server,) = body["broker"]["servers"]
            assert server["status"] == "unreachable" and "error" in server
            status, body = await health()
            assert body["status"] == "ok"
    finally:
        await gateway.stop()
        await broker.aclose()
