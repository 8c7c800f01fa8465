"""Producers that die: a process running a run holds a lease in Redis; when it is killed, exactly
one process announces ``status: failed`` ``{"code": "producer_lost"}`` — sequenced, replayable,
seen by every watcher — and the run record says failed. A producer that lives, or ends its run,
is never announced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

redis = pytest.importorskip("redis")

from redis_support import Collector, Publisher, assert_contiguous  # noqa: E402
from streaming_module.broker.base import Frame, RunRecord  # noqa: E402
from streaming_module.broker.redis import PRODUCER_LOST, RedisBroker  # noqa: E402

pytestmark = pytest.mark.redis

BrokerFactory = Callable[..., RedisBroker]

LEASE_MS = 600


def _final(frames: list[Frame]) -> bool:
    last = frames[-1] if frames else None
    return last is not None and last.type == "status" and last.payload["status"] != "started"


async def _until_final(seen: Collector, within: float) -> Frame:
    deadline = time.monotonic() + within
    while not _final(seen.frames):
        assert time.monotonic() < deadline, f"no final status in {within} s: {seen.frames[-3:]}"
        await asyncio.sleep(0.02)
    return seen.frames[-1]


async def test_a_killed_producer_is_announced_exactly_once_to_every_watcher(
    make_broker: BrokerFactory, redis_url: str, prefix: str
) -> None:
    options = {"producer_lease_ms": LEASE_MS}
    watchers = [make_broker(options=options) for _ in range(3)]  # three other processes
    seen = [Collector() for _ in watchers]
    for watcher, collector in zip(watchers, seen, strict=True):
        await watcher.ping()
        await watcher.subscribe("doomed", collector)
    producer = Publisher(
        redis_url, prefix, "doomed", 40, "--started", "--hold", "--lease-ms", str(LEASE_MS),
        "--record", "writer",
    )  # fmt: skip
    try:
        assert producer.published() == 41
        for collector in seen:
            await collector.until(41)
        record = await watchers[0].load_run("doomed")
        assert record is not None and record.status == "started"
        producer.kill()
        killed = time.monotonic()
        finals = [await _until_final(collector, within=10) for collector in seen]
    finally:
        producer.close()
    # Within the lease plus one look (a third of it) plus slack for a loaded machine.
    assert time.monotonic() - killed < LEASE_MS / 1000 * 1.4 + 3
    for collector, final in zip(seen, finals, strict=True):
        assert_contiguous(collector.frames, 1)
        assert final.sequence == 42
        assert final.payload["status"] == "failed"
        assert final.payload["error"]["code"] == PRODUCER_LOST
        assert [f.payload.get("status") for f in collector.frames if f.type == "status"] == [
            "started",
            "failed",
        ]
    assert sum(w.producers_lost for w in watchers) == 1  # one process published it
    # Sequenced and replayable: a resume replays it, and it stays the last frame.
    await asyncio.sleep(LEASE_MS / 1000)
    late = make_broker(options=options)
    replay = Collector()
    await late.subscribe("doomed", replay, last_sequence=0)
    assert [f.sequence for f in replay.frames] == list(range(1, 43))
    assert replay.frames[-1].payload["error"]["code"] == PRODUCER_LOST
    record = await late.load_run("doomed")
    assert record is not None
    assert (record.status, record.workflow) == ("failed", "writer")
    assert record.error["code"] == PRODUCER_LOST and record.updated
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert not await client.exists(late.lease_key("doomed"))
        assert not await client.zscore(f"{prefix}:leases", "doomed")
        assert 0 < await client.pttl(late.stream_key("doomed")) <= 60_000  # ended: retention
    finally:
        await client.aclose()


async def test_a_live_producer_keeps_its_lease_and_its_final_status_releases_it(
    make_broker: BrokerFactory, redis_url: str, prefix: str
) -> None:
    options = {"producer_lease_ms": LEASE_MS}
    producer, watcher = make_broker(options=options), make_broker(options=options)
    await watcher.ping()
    seen = Collector()
    await watcher.subscribe("alive", seen)
    producer.publish("alive", "status", {"status": "started"})
    await producer.flush()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        lease_key = producer.lease_key("alive")
        assert 0 < await client.pttl(lease_key) <= LEASE_MS
        for i in range(8):  # four leases long, frames now and then
            producer.publish("alive", "token", {"i": i})
            await asyncio.sleep(LEASE_MS / 2000)
        await producer.flush()
        assert await client.get(lease_key) is not None  # renewed
        assert all(f.type != "status" or f.payload["status"] == "started" for f in seen.frames)
        producer.publish("alive", "status", {"status": "completed"})
        producer.end_execution("alive")
        await producer.flush()
        assert not await client.exists(lease_key)
        assert await client.zscore(f"{prefix}:leases", "alive") is None
        await asyncio.sleep(LEASE_MS / 1000 * 3)  # nobody announces a run that ended
    finally:
        await client.aclose()
    frames = await seen.until(10)
    assert_contiguous(frames, 1)
    assert [f.payload.get("status") for f in frames if f.type == "status"] == [
        "started",
        "completed",
    ]
    assert producer.producers_lost == watcher.producers_lost == 0


async def test_a_stalled_producer_takes_its_lease_back_when_nobody_announced_it(
    make_broker: BrokerFactory, redis_url: str
) -> None:
    """The producer's loop stalls past its lease while no other process looks: when it runs
    again it renews the lapsed lease instead of being announced lost by itself."""
    producer = make_broker(options={"producer_lease_ms": LEASE_MS})
    producer.publish("stall", "status", {"status": "started"})
    await producer.flush()
    time.sleep(LEASE_MS / 1000 * 1.5)  # noqa: ASYNC251 - a blocked loop: the lease expires
    client = redis.Redis.from_url(redis_url)  # sync: asks before the loop runs again
    try:
        assert not client.exists(producer.lease_key("stall"))
        await asyncio.sleep(LEASE_MS / 1000)  # the lease task runs: renews, then looks
        assert client.get(producer.lease_key("stall")) is not None
    finally:
        client.close()
    assert producer.producers_lost == 0
    assert await producer.fetch_last_sequence("stall") == 1


async def test_run_records_live_in_redis_with_the_stream(
    make_broker: BrokerFactory, redis_url: str
) -> None:
    a, b = make_broker(options={"retention_after_end_ms": 5000}), make_broker()
    assert await b.load_run("nothing") is None
    await a.save_run(RunRecord("rec", "pending", workflow="wf", updated="2024-01-01T00:00:00Z"))
    loaded = await b.load_run("rec")
    assert loaded == RunRecord("rec", "pending", workflow="wf", updated="2024-01-01T00:00:00Z")
    a.publish("rec", "status", {"status": "started"})
    await a.flush()
    result = {"content": "done", "tokens": ["done"], "n": 1.5}
    await a.save_run(RunRecord("rec", "completed", "wf", result, None, "2024-01-01T00:00:01Z"))
    a.publish("rec", "status", {"status": "completed"})
    a.end_execution("rec")
    await a.flush()
    loaded = await b.load_run("rec")
    assert loaded is not None and (loaded.status, loaded.result) == ("completed", result)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        stream_ttl = await client.pttl(a.stream_key("rec"))
        run_ttl = await client.pttl(a.run_key("rec"))
        assert 0 < stream_ttl <= 5000 and abs(run_ttl - stream_ttl) < 1000
    finally:
        await client.aclose()
    await a.save_run(RunRecord("failed-run", "failed", error={"code": "boom", "message": "x"}))
    failed = await b.load_run("failed-run")
    assert failed is not None and failed.error == {"code": "boom", "message": "x"}
