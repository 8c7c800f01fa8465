"""RedisBroker against a real Redis: the Broker contract across processes (several brokers on the
same Redis stand for several gateway processes).

Redis: the ``redis_url`` fixture of ``conftest.py`` (the machine's Redis, else a private
``redis-server``). Each test uses its own ``key_prefix`` and deletes its keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from redis_support import Collector, eventually, free_port  # noqa: E402
from streaming_module import StreamingModule  # noqa: E402
from streaming_module.broker import create_broker  # noqa: E402
from streaming_module.broker.base import GAP, Frame  # noqa: E402
from streaming_module.broker.redis import RedisBroker, mask_url  # noqa: E402
from streaming_module.config import BrokerOptions  # noqa: E402
from streaming_module.errors import BrokerError  # noqa: E402

pytestmark = pytest.mark.redis

WAIT = 5.0

BrokerFactory = Callable[..., RedisBroker]


# --------------------------------------------------------------------------- order and replay


async def test_frames_reach_a_subscriber_in_order_with_sequences_from_one(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    seen = Collector()
    await broker.subscribe("run-1", seen)
    published = [broker.publish("run-1", "token", {"content": f"t{i}"}) for i in range(200)]
    published.append(broker.publish("run-1", "status", {"status": "completed"}))
    assert all(f.sequence == 0 for f in published)  # assigned by Redis, asynchronously
    await broker.flush()
    assert [f.sequence for f in published] == list(range(1, 202))
    frames = await seen.until(201)
    assert [f.sequence for f in frames] == list(range(1, 202))
    assert [f.payload for f in frames[:-1]] == [{"content": f"t{i}"} for i in range(200)]
    assert frames[-1].type == "status" and frames[-1].payload == {"status": "completed"}
    assert json.loads(frames[5].encoded()) == {
        "type": "token",
        "executionId": "run-1",
        "sequence": 6,
        "timestamp": published[5].timestamp,
        "payload": {"content": "t5"},
    }
    assert broker.last_sequence("run-1") == 201
    assert await broker.fetch_last_sequence("run-1") == 201


async def test_a_subscriber_before_the_first_frame_gets_everything(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    live, from_zero = Collector(), Collector()
    await broker.subscribe("early", live)
    await broker.subscribe("early", from_zero, last_sequence=0)
    for i in range(20):
        broker.publish("early", "event", {"i": i})
    await broker.flush()
    assert [f.sequence for f in await live.until(20)] == list(range(1, 21))
    assert [f.sequence for f in await from_zero.until(20)] == list(range(1, 21))
    assert not any(f.type == GAP for f in from_zero.frames)


async def test_resume_from_last_sequence_while_publishing_has_no_gap_and_no_duplicate(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    first = Collector()
    await broker.subscribe("busy", first)
    total = 3000

    async def produce() -> None:
        for i in range(total):
            broker.publish("busy", "token", {"i": i})
            if i % 50 == 0:
                await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    await first.until(400)
    resume_at = first.frames[-1].sequence
    resumed = Collector()
    await broker.subscribe("busy", resumed, last_sequence=resume_at)  # while frames keep coming
    await producer
    await broker.flush()
    await first.until(total)
    await resumed.until(total - resume_at)
    await asyncio.sleep(0.1)
    assert first.sequences == list(range(1, total + 1))
    assert resumed.sequences == list(range(resume_at + 1, total + 1))


async def test_a_resume_after_trimming_starts_with_a_gap(make_broker: BrokerFactory) -> None:
    broker = make_broker(options={"replay_max_frames": 10})
    for i in range(25):
        broker.publish("long", "token", {"i": i})
    await broker.flush()
    seen = Collector()
    await broker.subscribe("long", seen, last_sequence=3)
    gap, *rest = seen.frames
    assert gap.type == GAP and gap.payload == {"from": 4, "to": 15}
    assert [f.sequence for f in rest] == list(range(16, 26))
    # Resuming inside what is still held: no gap.
    inside = Collector()
    await broker.subscribe("long", inside, last_sequence=20)
    assert [f.sequence for f in inside.frames] == [21, 22, 23, 24, 25]


async def test_frames_older_than_replay_max_age_are_a_gap(make_broker: BrokerFactory) -> None:
    broker = make_broker(options={"replay_max_age_ms": 400})
    for i in range(3):
        broker.publish("aging", "token", {"i": i})
    await broker.flush()
    await asyncio.sleep(0.25)
    broker.publish("aging", "token", {"i": 3})
    await broker.flush()
    await asyncio.sleep(0.2)  # the first three are now older than 400 ms, the fourth is not
    seen = Collector()
    await broker.subscribe("aging", seen, last_sequence=0)
    assert [(f.type, f.sequence) for f in seen.frames] == [(GAP, 3), ("token", 4)]
    assert seen.frames[0].payload == {"from": 1, "to": 3}


async def test_at_most_once_frames_are_delivered_live_but_never_replayed(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    live = Collector()
    await broker.subscribe("mixed", live)
    broker.publish("mixed", "event", {"n": 1})
    broker.publish("mixed", "event", {"n": 2, "debug": True}, replayable=False)
    broker.publish("mixed", "status", {"status": "completed"})
    await broker.flush()
    frames = await live.until(3)
    assert [(f.sequence, f.replayable) for f in frames] == [(1, True), (2, False), (3, True)]
    resumed = Collector()
    await broker.subscribe("mixed", resumed, last_sequence=0)
    assert [f.sequence for f in resumed.frames] == [1, 3]  # skipped, not a gap


# --------------------------------------------------------------------------- retention


async def test_an_ended_execution_expires_after_its_retention_and_numbering_continues(
    make_broker: BrokerFactory, redis_url: str
) -> None:
    broker = make_broker(options={"retention_after_end_ms": 300})
    for i in range(3):
        broker.publish("done", "token", {"i": i})
    broker.publish("done", "status", {"status": "completed"})
    broker.end_execution("done")
    await broker.flush()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        stream = broker.stream_key("done")
        assert 0 < await client.pttl(stream) <= 300
        await eventually(lambda: _gone(client, stream), within=3)
        assert await client.exists(broker.meta_key("done"))  # tombstone keeps the numbering
    finally:
        await client.aclose()
    seen = Collector()
    await broker.subscribe("done", seen, last_sequence=0)
    assert [(f.type, f.payload) for f in seen.frames] == [(GAP, {"from": 1, "to": 4})]
    late = broker.publish("done", "workflow_update", {"late": True})
    await broker.flush()
    assert late.sequence == 5


async def _gone(client: Any, key: str) -> bool:
    return not await client.exists(key)


async def test_an_idle_execution_expires_after_replay_max_age(
    make_broker: BrokerFactory, redis_url: str
) -> None:
    broker = make_broker(options={"replay_max_age_ms": 1500, "retention_after_end_ms": 60000})
    broker.publish("idle", "token", {"i": 0})
    await broker.flush()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert 0 < await client.pttl(broker.stream_key("idle")) <= 1500
        # The meta hash outlives the stream by replay_max_age_ms (tombstone).
        assert 1500 < await client.pttl(broker.meta_key("idle")) <= 3000
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- several processes


async def test_two_brokers_share_one_numbering_and_subscribers_see_identical_frames(
    make_broker: BrokerFactory,
) -> None:
    a, b = make_broker(), make_broker()
    seen_a, seen_b = Collector(), Collector()
    await a.subscribe("shared", seen_a)
    await b.subscribe("shared", seen_b)
    per_broker = 1000

    async def produce(broker: RedisBroker, name: str) -> list[Frame]:
        out = []
        for i in range(per_broker):
            out.append(broker.publish("shared", "token", {"from": name, "i": i}))
            if i % 25 == 0:
                await asyncio.sleep(0)
        return out

    frames_a, frames_b = await asyncio.gather(produce(a, "a"), produce(b, "b"))
    await asyncio.gather(a.flush(), b.flush())
    sequences = sorted(f.sequence for f in frames_a + frames_b)
    assert sequences == list(range(1, 2 * per_broker + 1))  # unique and contiguous
    got_a, got_b = await seen_a.until(2 * per_broker), await seen_b.until(2 * per_broker)
    assert [f.encoded() for f in got_a] == [f.encoded() for f in got_b]
    assert [f.sequence for f in got_a] == list(range(1, 2 * per_broker + 1))
    for name in ("a", "b"):  # each process's frames keep their order
        mine = [f.payload["i"] for f in got_a if f.payload["from"] == name]
        assert mine == list(range(per_broker))
    # A third process resuming from the middle sees the same frames.
    c = make_broker()
    resumed = Collector()
    await c.subscribe("shared", resumed, last_sequence=1500)
    assert [f.encoded() for f in resumed.frames] == [f.encoded() for f in got_a[1500:]]


async def test_a_final_status_stays_the_last_frame(make_broker: BrokerFactory) -> None:
    broker = make_broker()
    for i in range(300):
        broker.publish("final", "token", {"i": i})
    broker.publish("final", "status", {"status": "completed"})
    broker.end_execution("final")
    await broker.flush()
    seen = Collector()
    await broker.subscribe("final", seen, last_sequence=0)
    assert seen.frames[-1].type == "status"
    assert seen.frames[-1].sequence == 301 == max(f.sequence for f in seen.frames)


# --------------------------------------------------------------------------- failures


async def test_an_unreachable_redis_is_a_broker_error_naming_the_masked_url(
    make_broker: BrokerFactory,
) -> None:
    port = free_port()
    broker = make_broker(f"redis://:hunter2@127.0.0.1:{port}/0", flush_timeout=0.5)
    with pytest.raises(BrokerError) as caught:
        await broker.subscribe("x", Collector())
    message = caught.value.message
    assert f"redis://:***@127.0.0.1:{port}/0" in message and "hunter2" not in message
    assert "check that redis-server is running" in message
    with pytest.raises(BrokerError):
        await broker.ping()
    broker.publish("x", "token", {"content": "lost?"})
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot reach Redis"):
        await broker.flush()
    assert time.monotonic() - started < 3


async def test_a_dropped_connection_is_reconnected_without_losing_or_repeating_frames(
    make_broker: BrokerFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker()
    seen = Collector()
    await broker.subscribe("drop", seen)
    for i in range(50):
        broker.publish("drop", "token", {"i": i})
    await broker.flush()
    await seen.until(50)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        name = f"streaming_module:{broker._id}"
        for entry in await client.client_list():
            if entry.get("name") == name:
                await client.client_kill_filter(_id=entry["id"])
    finally:
        await client.aclose()
    for i in range(50, 100):
        broker.publish("drop", "token", {"i": i})
    await broker.flush()
    await seen.until(100)
    await asyncio.sleep(0.1)
    assert seen.sequences == list(range(1, 101))
    assert [f.payload["i"] for f in seen.frames] == list(range(100))


def test_the_password_is_masked_in_urls() -> None:
    assert (
        mask_url("redis://user:s3cret@redis.example:6380/2")
        == "redis://user:***@redis.example:6380/2"
    )
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("rediss://:pw@h/0") == "rediss://:***@h/0"


async def test_create_broker_builds_the_redis_broker(redis_url: str, prefix: str) -> None:
    broker = create_broker(BrokerOptions(backend="redis", redis_url=redis_url, key_prefix=prefix))
    try:
        assert isinstance(broker, RedisBroker)
    finally:
        await broker.aclose()


async def test_aclose_leaves_no_task_running(make_broker: BrokerFactory) -> None:
    before = asyncio.all_tasks()
    broker = make_broker()
    seen = Collector()
    await broker.subscribe("closing", seen)
    broker.publish("closing", "token", {"content": "x"})
    await broker.flush()
    await seen.until(1)
    await broker.aclose()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    with pytest.raises(BrokerError):
        broker.publish("closing", "token", {"content": "after close"})
    with contextlib.suppress(Exception):
        await broker.aclose()  # idempotent


# --------------------------------------------------------------------------- end to end


async def test_a_websocket_client_resumes_on_another_gateway_sharing_redis(
    redis_url: str, prefix: str
) -> None:
    """Two gateways (containers built by for_root) on one Redis: a client reads from the first,
    drops, and resumes on the second with lastSequence — no gap, no duplicate."""
    import aiohttp

    broker = {"backend": "redis", "redis_url": redis_url, "key_prefix": prefix}
    first = StreamingModule.for_root(websocket={"enabled": True, "port": 0}, broker=broker)
    second = StreamingModule.for_root(websocket={"enabled": True, "port": 0}, broker=broker)
    async with first, second, aiohttp.ClientSession() as session:
        publisher, other = first.gateway(), second.gateway()
        assert isinstance(first.broker(), RedisBroker)

        async def frames(ws: Any, count: int) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            while len(out) < count:
                message = json.loads((await ws.receive(timeout=WAIT)).data)
                if message["type"] not in ("subscribed", "pong"):
                    out.append(message)
            return out

        async with session.ws_connect(f"http://127.0.0.1:{publisher.port}/ws") as ws:
            await ws.send_json({"type": "subscribe_execution", "payload": {"executionId": "e2e"}})
            assert json.loads((await ws.receive(timeout=WAIT)).data)["type"] == "subscribed"
            for i in range(5):
                await publisher.broadcast_to_execution("e2e", {"step": i})
            seen = await frames(ws, 5)
        assert [m["sequence"] for m in seen] == [1, 2, 3, 4, 5]
        assert [m["payload"] for m in seen] == [{"step": i} for i in range(5)]
        for i in range(5, 10):  # published while the client is away
            await publisher.broadcast_to_execution("e2e", {"step": i})
        await first.broker().flush()
        async with session.ws_connect(f"http://127.0.0.1:{other.port}/") as ws:
            await ws.send_json(
                {
                    "type": "subscribe_execution",
                    "payload": {"executionId": "e2e", "lastSequence": 5},
                }
            )
            assert json.loads((await ws.receive(timeout=WAIT)).data)["type"] == "subscribed"
            replayed = await frames(ws, 5)
            await publisher.broadcast_to_execution("e2e", {"step": 10})  # live, via Redis
            live = await frames(ws, 1)
        resumed = replayed + live
        assert [m["sequence"] for m in resumed] == list(range(6, 12))
        assert [m["payload"] for m in resumed] == [{"step": i} for i in range(5, 11)]
        assert all(m["type"] == "workflow_update" and m["executionId"] == "e2e" for m in resumed)


async def test_a_wrong_redis_url_fails_at_start_up_not_at_the_first_subscribe() -> None:
    """The server resource pings the broker before listening, so `demo --redis-url` with a
    wrong URL fails at once with a message saying what to check."""
    container = StreamingModule.for_root(
        websocket={"enabled": True, "port": 0},
        broker={"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"},
    )
    with pytest.raises(BrokerError, match=r"127\.0\.0\.1:1"):
        await container.init_resources()
    pending = container.shutdown_resources()
    if pending is not None:
        await pending


# --------------------------------------------------------------------------- the fast path


async def test_local_subscribers_get_the_published_frames_without_reading_them_back(
    make_broker: BrokerFactory,
) -> None:
    """This process's frames reach its own subscribers when Redis answers the write: the very
    frame objects ``publish`` returned, numbered; another process gets the stored bytes."""
    producer, other = make_broker(), make_broker()
    local, remote = Collector(), Collector()
    await producer.subscribe("fast", local)
    await other.subscribe("fast", remote)
    published = [producer.publish("fast", "token", {"i": i}) for i in range(1500)]
    await producer.flush()
    await local.until(1500)
    assert all(a is b for a, b in zip(local.frames, published, strict=True))
    frames = await remote.until(1500)
    assert [f.encoded() for f in frames] == [f.encoded() for f in published]
    assert [f.sequence for f in frames] == list(range(1, 1501))


async def test_frames_read_from_redis_are_decoded_only_when_read(
    make_broker: BrokerFactory,
) -> None:
    producer, other = make_broker(), make_broker()
    seen = Collector()
    await other.subscribe("lazy", seen)
    sent = producer.publish("lazy", "event", {"text": 'quote " and \\ and ünïcode', "n": [1, 2]})
    await producer.flush()
    (frame,) = await seen.until(1)
    assert frame.encoded() == sent.encoded()
    assert frame.type == "event" and frame.replayable
    assert frame.payload == {"text": 'quote " and \\ and ünïcode', "n": [1, 2]}
    assert frame.timestamp == sent.timestamp and frame.sequence == 1
    assert frame.to_dict() == json.loads(sent.encoded())


async def test_a_write_is_one_short_script_call_per_execution_per_batch(
    private_redis: Any,
) -> None:
    """2,000 frames of one execution and 1,000 of another, published at once: each script call
    carries at most 512 frames and concerns one execution."""
    options = BrokerOptions(backend="redis", redis_url=private_redis.url, key_prefix="batch")
    broker = RedisBroker(options)
    client = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        await broker.ping()
        await client.config_resetstat()  # a private server: nobody else's statistics
        for i in range(3000):
            broker.publish("a" if i % 3 else "b", "token", {"i": i})
        await broker.flush()
        calls = (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]
        assert calls == 4 + 2  # per execution, ceil(frames / 512) calls (one round trip here)
        assert await broker.fetch_last_sequence("a") == 2000
        assert await broker.fetch_last_sequence("b") == 1000
    finally:
        await client.aclose()
        await broker.aclose()


async def test_last_sequence_answers_from_redis_for_an_execution_this_process_never_saw(
    make_broker: BrokerFactory,
) -> None:
    producer, other = make_broker(), make_broker()
    for i in range(7):
        producer.publish("seen-elsewhere", "token", {"i": i})
    await producer.flush()
    assert producer.last_sequence("seen-elsewhere") == 7  # written here
    assert other.last_sequence("seen-elsewhere") == 7  # asked from Redis
    assert await other.fetch_last_sequence("seen-elsewhere") == 7
    assert other.last_sequence("never-published") == 0


async def test_numbering_never_falls_behind_the_stream(
    make_broker: BrokerFactory, redis_url: str
) -> None:
    """An execution's counter lost (evicted) or behind its stream: the next frames still come
    after the stream's last entry, never clash with it."""
    broker = make_broker()
    for i in range(5):
        broker.publish("counter", "token", {"i": i})
    await broker.flush()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.delete(broker.meta_key("counter"))
        other = make_broker()  # knows nothing of the execution
        sixth = other.publish("counter", "token", {"i": 5})
        await other.flush()
        assert sixth.sequence == 6
        await client.hset(broker.meta_key("counter"), "seq", 2)
        seventh = other.publish("counter", "token", {"i": 6})
        await other.flush()
        assert seventh.sequence == 7
    finally:
        await client.aclose()
    seen = Collector()
    await broker.subscribe("counter", seen, last_sequence=0)
    assert [f.payload["i"] for f in seen.frames] == list(range(7))


async def test_a_writer_that_dies_of_a_bug_is_restarted_and_loses_nothing(
    make_broker: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker()
    write = broker._write
    failures = [RuntimeError("a bug")]

    async def flaky(shard: Any, calls: Any) -> Any:
        if failures:
            raise failures.pop()
        return await write(shard, calls)

    broker._write = flaky  # type: ignore[method-assign]
    seen = Collector()
    await broker.subscribe("bug", seen)
    for i in range(10):
        broker.publish("bug", "token", {"i": i})
    await broker.flush()
    assert [f.payload["i"] for f in await seen.until(10)] == list(range(10))
    assert "redis-broker-writer-0 stopped: RuntimeError('a bug')" in caplog.text
