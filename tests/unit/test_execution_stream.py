"""gateway/sse.py's ExecutionStream on an in-memory broker, and the run records it relies on:
resume points, the slow-client bound, the end after the final status."""

from __future__ import annotations

from typing import Any

from streaming_module.broker.base import RUN_RECORDS_KEPT, Broker, RunRecord
from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import BrokerOptions
from streaming_module.gateway.sse import ExecutionStream
from streaming_module.protocol import sse


def run(broker: InMemoryBroker, execution_id: str, tokens: int, final: bool = True) -> None:
    broker.publish(execution_id, "status", {"status": "started"})
    for i in range(tokens):
        broker.publish(execution_id, "token", {"content": f"t{i} "})
    if final:
        broker.publish(execution_id, "status", {"status": "completed"})


async def collect(stream: ExecutionStream, **kw: Any) -> bytes:
    return b"".join([chunk async for chunk in stream.sse(sse.encode_frame, tick=0.01, **kw)])


async def test_from_the_start_through_the_final_status_then_the_end() -> None:
    broker = InMemoryBroker()
    run(broker, "a", 3)
    stream = await ExecutionStream.open(broker, "a")
    assert not stream.complete and stream.replayed_final
    data = await collect(stream, prelude=b"retry: 5\n\n", epilogue=b"data: [DONE]\n\n")
    assert data.startswith(b"retry: 5\n\nid: 1\n") and data.endswith(b"data: [DONE]\n\n")
    assert data.count(b"\nevent: ") == 5 and stream.closed
    assert broker.subscriber_count("a") == 0


async def test_a_resume_point_skips_what_the_client_has_and_the_final_one_is_complete() -> None:
    broker = InMemoryBroker()
    run(broker, "a", 3)
    rest = await collect(await ExecutionStream.open(broker, "a", after=3))
    assert [line for line in rest.split(b"\n") if line.startswith(b"id: ")] == [b"id: 4", b"id: 5"]
    done = await ExecutionStream.open(broker, "a", after=5)
    assert done.complete
    done.close()


async def test_a_client_that_falls_too_far_behind_live_is_ended_to_resume() -> None:
    broker = InMemoryBroker(BrokerOptions(replay_max_frames=100))
    run(broker, "a", 50, final=False)  # replayed frames do not count against the bound
    stream = await ExecutionStream.open(broker, "a", max_queue=10)
    for i in range(10):
        broker.publish("a", "token", {"content": str(i)})
    assert not stream.overflowed
    broker.publish("a", "token", {"content": "one too many"})
    assert stream.overflowed
    assert await collect(stream) == b""


async def test_run_records_replace_and_are_bounded() -> None:
    broker = InMemoryBroker(BrokerOptions(max_executions=10))
    for i in range(12):
        await broker.save_run(RunRecord(f"r{i}", "started"))
    await broker.save_run(RunRecord("r5", "completed", "w", {"content": "x"}))
    assert await broker.load_run("r0") is None and await broker.load_run("r1") is None
    record = await broker.load_run("r5")
    assert record is not None and (record.status, record.result) == ("completed", {"content": "x"})

    class Bare(InMemoryBroker):
        save_run = Broker.save_run  # the contract's default, for brokers that keep none
        load_run = Broker.load_run

    bare = Bare()
    for i in range(RUN_RECORDS_KEPT + 1):
        await bare.save_run(RunRecord(f"r{i}", "pending"))
    assert await bare.load_run("r0") is None and await bare.load_run("r1") is not None
