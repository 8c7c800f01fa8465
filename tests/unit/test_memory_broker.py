"""The in-memory broker: sequence numbers, replay without gap or duplicate, and its bounds."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import orjson
import pytest

from streaming_module.broker import Frame, InMemoryBroker, create_broker
from streaming_module.config import BrokerOptions
from streaming_module.core.clock import FakeClock
from streaming_module.errors import BrokerError


def _broker(clock: FakeClock | None = None, **options: int) -> InMemoryBroker:
    return InMemoryBroker(BrokerOptions(**options), clock or FakeClock())


def _seqs(frames: list[Frame]) -> list[int]:
    return [f.sequence for f in frames]


async def test_sequence_rises_by_one_over_every_frame() -> None:
    broker = _broker()
    got: list[Frame] = []
    await broker.subscribe("e", got.append)
    broker.publish("e", "token", {"content": "a"})
    broker.publish("e", "event", {"eventType": "x"}, replayable=False)
    broker.publish("e", "status", {"status": "completed"})
    broker.publish("other", "token", {"content": "b"})
    assert _seqs(got) == [1, 2, 3]
    assert [f.type for f in got] == ["token", "event", "status"]
    assert broker.last_sequence("e") == 3
    assert broker.last_sequence("other") == 1
    assert broker.last_sequence("unknown") == 0


async def test_frame_encodes_once_to_the_wire_shape() -> None:
    broker = _broker()
    frame = broker.publish("e", "token", {"content": "Hi", "nodeId": "n"})
    data = frame.encoded()
    assert frame.encoded() is data
    decoded = orjson.loads(data)
    assert decoded["type"] == "token"
    assert decoded["executionId"] == "e"
    assert decoded["sequence"] == 1
    assert decoded["timestamp"].startswith("2026-01-01T00:00:00")
    assert decoded["payload"] == {"content": "Hi", "nodeId": "n"}
    assert frame.to_dict() == decoded


async def test_subscribe_before_the_execution_exists_gets_every_frame() -> None:
    broker = _broker()
    got: list[Frame] = []
    await broker.subscribe("later", got.append, last_sequence=0)
    for i in range(3):
        broker.publish("later", "token", {"content": str(i)})
    assert _seqs(got) == [1, 2, 3]


async def test_resume_replays_then_goes_live_without_gap_or_duplicate() -> None:
    broker = _broker()
    for i in range(10):
        broker.publish("e", "token", {"content": str(i)})
    got: list[Frame] = []
    sub = await broker.subscribe("e", got.append, last_sequence=6)
    broker.publish("e", "token", {"content": "live"})
    assert _seqs(got) == [7, 8, 9, 10, 11]
    sub.close()
    assert sub.closed
    broker.publish("e", "token", {"content": "after close"})
    assert _seqs(got) == [7, 8, 9, 10, 11]
    sub.close()  # idempotent


async def test_live_subscription_skips_history() -> None:
    broker = _broker()
    broker.publish("e", "token", {})
    got: list[Frame] = []
    await broker.subscribe("e", got.append)
    broker.publish("e", "token", {})
    assert _seqs(got) == [2]


async def test_at_most_once_frames_are_not_replayed_and_are_no_gap() -> None:
    broker = _broker()
    broker.publish("e", "event", {"n": 1})
    broker.publish("e", "event", {"n": 2}, replayable=False)
    broker.publish("e", "event", {"n": 3})
    got: list[Frame] = []
    await broker.subscribe("e", got.append, last_sequence=0)
    assert _seqs(got) == [1, 3]


async def test_evicted_frames_are_announced_by_a_gap_frame() -> None:
    broker = _broker(replay_max_frames=3)
    for _ in range(8):
        broker.publish("e", "token", {})
    got: list[Frame] = []
    await broker.subscribe("e", got.append, last_sequence=2)
    assert got[0].type == "gap"
    assert got[0].payload == {"from": 3, "to": 5}
    assert got[0].sequence == 5
    assert orjson.loads(got[0].encoded())["payload"] == {"from": 3, "to": 5}
    assert _seqs(got[1:]) == [6, 7, 8]
    assert broker.retained("e") == 3


async def test_old_frames_expire_by_age() -> None:
    clock = FakeClock()
    broker = _broker(clock, replay_max_age_ms=1000)
    broker.publish("e", "token", {})
    clock.advance(2.0)
    broker.publish("e", "token", {})
    got: list[Frame] = []
    await broker.subscribe("e", got.append, last_sequence=0)
    assert [f.type for f in got] == ["gap", "token"]
    assert got[0].payload == {"from": 1, "to": 1}


async def test_ended_execution_is_kept_for_retention_then_evicted() -> None:
    clock = FakeClock()
    broker = _broker(clock, retention_after_end_ms=5000)
    broker.publish("e", "status", {"status": "completed"})
    broker.end_execution("e")
    broker.end_execution("e")  # idempotent
    clock.advance(4.9)
    assert broker.retained("e") == 1
    clock.advance(0.2)
    assert broker.retained("e") == 0
    assert broker.execution_count == 0
    broker.end_execution("never-existed")


async def test_execution_count_is_bounded_oldest_ended_first() -> None:
    broker = _broker(max_executions=3)
    for name in ("a", "b", "c"):
        broker.publish(name, "token", {})
    broker.end_execution("b")
    broker.publish("d", "token", {})
    assert broker.retained("b") == 0
    assert {broker.retained(n) for n in ("a", "c", "d")} == {1}
    # nothing ended: the oldest without subscribers goes ("c" is watched)
    await broker.subscribe("a", lambda f: None)
    broker.publish("e", "token", {})
    assert broker.retained("c") == 0 and broker.retained("a") == 1
    assert broker.execution_count == 3


async def test_a_failing_listener_does_not_stop_others() -> None:
    broker = _broker()

    def bad(frame: Frame) -> None:
        raise RuntimeError("boom")

    got: list[Frame] = []
    await broker.subscribe("e", bad)
    await broker.subscribe("e", got.append)
    broker.publish("e", "token", {})
    assert _seqs(got) == [1]


async def test_concurrent_publishes_during_subscribe_are_neither_lost_nor_doubled() -> None:
    broker = _broker()

    async def producer() -> None:
        for _ in range(2000):
            broker.publish("e", "token", {})
            await asyncio.sleep(0)

    task = asyncio.create_task(producer())
    results: list[list[Frame]] = []
    for last in (0, 5, 50):
        while broker.last_sequence("e") < last + 3:  # noqa: ASYNC110 - yield to the producer
            await asyncio.sleep(0)
        got: list[Frame] = []
        results.append(got)
        await broker.subscribe("e", got.append, last_sequence=last)
    await task
    for last, got in zip((0, 5, 50), results, strict=True):
        assert _seqs(got) == list(range(last + 1, 2001))


async def test_aclose_stops_timers_and_subscriptions() -> None:
    clock = FakeClock()
    broker = _broker(clock)
    sub = await broker.subscribe("e", lambda f: None)
    broker.publish("e", "status", {})
    broker.end_execution("e")
    await broker.flush()
    await broker.aclose()
    assert sub.closed
    assert clock.pending_timers == 0
    assert broker.execution_count == 0


def test_create_broker_picks_the_backend() -> None:
    assert isinstance(create_broker(BrokerOptions()), InMemoryBroker)
    assert isinstance(create_broker(), InMemoryBroker)


def test_redis_backend_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "streaming_module.broker.redis", None)
    with pytest.raises(BrokerError, match="redis"):
        create_broker(BrokerOptions(backend="redis", redis_url="redis://127.0.0.1:6379/0"))


async def test_an_evicted_execution_keeps_its_numbering_and_reports_a_gap() -> None:
    clock = FakeClock()
    broker = _broker(clock, retention_after_end_ms=1000, max_executions=2)
    for _ in range(4):
        broker.publish("e", "token", {})
    broker.end_execution("e")
    clock.advance(1.5)
    assert broker.execution_count == 0 and broker.last_sequence("e") == 4
    got: list[Frame] = []
    await broker.subscribe("e", got.append, last_sequence=1)
    broker.publish("e", "token", {})
    assert [(f.type, f.sequence) for f in got] == [("gap", 4), ("token", 5)]
    assert got[0].payload == {"from": 2, "to": 4}
    # Tombstones are bounded by max_executions too.
    for name in ("a", "b", "c", "d"):
        broker.publish(name, "token", {})
        broker.end_execution(name)
        clock.advance(1.5)
    assert broker.last_sequence("a") == 0 and broker.last_sequence("d") == 1


class _NoScan(OrderedDict):  # type: ignore[type-arg]
    """The broker's table of executions, failing any walk over it."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the broker walked over every execution")

    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the broker walked over every execution")

    def values(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the broker walked over every execution")


async def test_max_executions_is_a_hard_bound_kept_without_walking_the_executions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = _broker(max_executions=50)
    for i in range(50):
        broker.publish(f"watched-{i}", "token", {})
        await broker.subscribe(f"watched-{i}", lambda f: None)
    broker._executions = _NoScan(broker._executions)
    with caplog.at_level("WARNING", logger="streaming_module.gateway"):
        for i in range(200):  # a subscription storm against a full broker
            with pytest.raises(BrokerError) as refused:
                await broker.subscribe(f"storm-{i}", lambda f: None)
            assert refused.value.code == "too_many_executions"
        with pytest.raises(BrokerError):
            broker.publish("new-run", "token", {})
    assert broker.execution_count == 50
    assert len([r for r in caplog.records if "max_executions" in r.getMessage()]) == 1


async def test_subscriptions_waiting_for_runs_leave_a_tenth_of_the_room_to_runs() -> None:
    broker = _broker(max_executions=20)
    waiting = [await broker.subscribe(f"waiting-{i}", lambda f: None) for i in range(18)]
    with pytest.raises(BrokerError) as refused:  # a subscription storm stops at 18 of 20
        await broker.subscribe("waiting-18", lambda f: None)
    assert refused.value.code == "too_many_executions"
    for run in ("run-1", "run-2"):  # runs that publish still find room, evicting nobody
        broker.publish(run, "token", {})
        await broker.subscribe(run, lambda f: None)
    assert broker.execution_count == 20 and not any(sub.closed for sub in waiting)
    with pytest.raises(BrokerError):  # now everything is watched: a hard bound
        broker.publish("run-3", "token", {})
    waiting[0].close()  # unwatched: it makes room again
    broker.publish("run-3", "token", {})
    assert broker.retained("run-3") == 1 and broker.execution_count == 20


async def test_the_longest_unwatched_execution_goes_first() -> None:
    broker = _broker(max_executions=3)
    subs = {}
    for name in ("a", "b", "c"):
        subs[name] = await broker.subscribe(name, lambda f: None)
        broker.publish(name, "token", {})
    subs["b"].close()  # unwatched first
    subs["a"].close()
    broker.publish("d", "token", {})
    assert broker.retained("b") == 0 and broker.retained("a") == 1
    await broker.subscribe("a", lambda f: None)  # watched again: not a candidate any more
    subs["c"].close()  # unwatched after "d" (never watched since it was created)
    broker.publish("e", "token", {})
    assert broker.retained("d") == 0
    assert broker.retained("a") == 1 and broker.retained("c") == 1
