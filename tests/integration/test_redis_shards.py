"""Several Redis servers: ``redis_url`` as a list spreads executions over three private
``redis-server`` processes by a stable hash of the execution id; every key of an execution lives
on its one server, under a ``{id}`` hash tag; live delivery, resume, failover to another process
and the loss of one server behave as with one Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

redis = pytest.importorskip("redis")

from redis_support import Collector, RedisServer, assert_contiguous, delete_prefix  # noqa: E402
from streaming_module.broker.base import GAP  # noqa: E402
from streaming_module.broker.redis import RedisBroker, shard_index  # noqa: E402
from streaming_module.config import BrokerOptions  # noqa: E402

pytestmark = pytest.mark.redis

IDS = [f"run-{i}" for i in range(60)]


def test_the_shard_of_an_execution_is_stable_and_balanced() -> None:
    mapping = [shard_index(e, 3) for e in IDS]
    assert all(0 <= s < 3 for s in mapping)
    assert min(mapping.count(s) for s in range(3)) >= 10  # a fair share of 60 each
    # Stable across processes, whatever Python's own (randomised) str hash does.
    code = (
        "from streaming_module.broker.redis import shard_index; "
        f"print([shard_index(e, 3) for e in {IDS!r}])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True, text=True, check=True, timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout  # fmt: skip
        assert out.strip() == str(mapping)
    # A fourth server takes about a quarter of the executions and moves nothing else.
    grown = [shard_index(e, 4) for e in IDS]
    moved = [(a, b) for a, b in zip(mapping, grown, strict=True) if a != b]
    assert all(b == 3 for _, b in moved)
    assert 5 <= len(moved) <= 25
    assert shard_index("anything", 1) == 0


@pytest.fixture
def shard_prefix(three_redis: list[RedisServer]) -> Iterator[str]:
    key_prefix = f"smshard:{uuid.uuid4().hex[:8]}"
    yield key_prefix
    for server in three_redis:
        delete_prefix(server.url, key_prefix)


@pytest.fixture
async def brokers(
    three_redis: list[RedisServer], shard_prefix: str
) -> AsyncIterator[list[RedisBroker]]:
    urls = [server.url for server in three_redis]
    options = BrokerOptions(backend="redis", redis_url=urls, key_prefix=shard_prefix)
    made = [RedisBroker(options, flush_timeout=20) for _ in range(3)]
    yield made
    for broker in made:
        await broker.aclose()


async def test_executions_spread_over_the_servers_and_stream_across_processes(
    three_redis: list[RedisServer], brokers: list[RedisBroker], shard_prefix: str
) -> None:
    producer, watcher, late = brokers
    executions = IDS[:30]
    seen = {e: Collector() for e in executions}
    for e in executions:
        await watcher.subscribe(e, seen[e])
    for i in range(20):
        for e in executions:
            producer.publish(e, "token", {"e": e, "i": i})
    for e in executions:
        producer.publish(e, "status", {"status": "completed"})
        producer.end_execution(e)
    await producer.flush()
    for e in executions:
        frames = await seen[e].until(21)
        assert_contiguous(frames, 1)
        assert [f.payload.get("i") for f in frames[:20]] == list(range(20))
    # Each execution's keys live on its own server only, under its hash tag.
    clients = [redis.Redis.from_url(server.url) for server in three_redis]
    try:
        keys = [{k.decode() for k in c.scan_iter(match=f"{shard_prefix}:exec:*")} for c in clients]
        for e in executions:
            home = producer.shard_for(e)
            assert home == shard_index(e, 3)
            mine = {f"{shard_prefix}:exec:{{{e}}}", f"{shard_prefix}:exec:{{{e}}}:meta"}
            assert mine <= keys[home]
            assert not any(f"{{{e}}}" in k for i, ks in enumerate(keys) if i != home for k in ks)
        assert all(len(ks) >= 10 for ks in keys)  # every server holds executions
    finally:
        for c in clients:
            c.close()
    # Another process resumes from the middle of each: the same frames, byte for byte.
    for e in executions[:6]:
        resumed = Collector()
        await late.subscribe(e, resumed, last_sequence=10)
        assert [f.encoded() for f in resumed.frames] == [f.encoded() for f in seen[e].frames[10:]]
        assert await late.fetch_last_sequence(e) == 21
        assert late.last_sequence(e) == 21


async def test_losing_one_server_stops_only_its_executions_and_health_says_which(
    three_redis: list[RedisServer], brokers: list[RedisBroker]
) -> None:
    producer, watcher, failover = brokers
    by_shard = {s: next(e for e in IDS if shard_index(e, 3) == s) for s in range(3)}
    seen = {e: Collector() for e in by_shard.values()}
    for e in by_shard.values():
        await watcher.subscribe(e, seen[e])
        for i in range(5):
            producer.publish(e, "token", {"i": i})
    await producer.flush()
    for e in by_shard.values():
        await seen[e].until(5)
    lost = by_shard[1]
    three_redis[1].stop()
    try:
        health = await watcher.health()
        assert health["status"] == "degraded"
        assert [s["status"] for s in health["servers"]] == ["ok", "unreachable", "ok"]
        assert health["servers"][1]["url"] == three_redis[1].url
        for e in (by_shard[0], by_shard[2]):  # the others keep streaming
            for i in range(5, 10):
                producer.publish(e, "token", {"i": i})
        for i in range(5, 10):
            producer.publish(lost, "token", {"i": i})  # waits in the queue
        for e in (by_shard[0], by_shard[2]):
            frames = await seen[e].until(10)
            assert_contiguous(frames, 1)
        assert len(seen[lost].frames) == 5
    finally:
        three_redis[1].start(three_redis[1].port)  # back, empty (no persistence)
    await producer.flush()
    frames = await seen[lost].until(10, within=20)
    assert_contiguous(frames, 1)  # numbering continued after what the producer knew
    assert (await watcher.health())["status"] == "ok"
    # A watcher's process dies: its client resumes on another one, on every server alike.
    await watcher.aclose()
    for e in by_shard.values():
        resumed = Collector()
        if e == lost:  # 1-5 went with the old server's data: a resume from 3 is told so
            await failover.subscribe(e, resumed, last_sequence=3)
            gap = resumed.frames[0]
            assert gap.type == GAP and gap.payload == {"from": 4, "to": 5}
            assert [f.sequence for f in resumed.frames[1:]] == [6, 7, 8, 9, 10]
        else:
            await failover.subscribe(e, resumed, last_sequence=3)
            assert [f.sequence for f in resumed.frames] == [4, 5, 6, 7, 8, 9, 10]
        count = len(resumed.frames)
        producer.publish(e, "status", {"status": "completed"})
        await producer.flush()
        await resumed.until(count + 1)
        assert resumed.frames[-1].type == "status" and resumed.frames[-1].sequence == 11
