"""The hub every service publishes through, and what the three services now share: the meaning
of ``sequence_number``, the reserved metadata keys and the error codes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import reactivex

from streaming_module.core.clock import FakeClock
from streaming_module.errors import (
    INVALID_ID,
    SERVICE_CLOSED,
    EventStreamingError,
    ProgressTrackingError,
    StreamingError,
    TokenStreamingError,
)
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.hub import Hub
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.types import RESERVED_METADATA_KEYS, StreamEventType, StreamMetadata

T0 = datetime(2026, 1, 1, tzinfo=UTC)
logger = logging.getLogger("streaming_module.tests.hub")


class Recorder:
    """Subscribes to an Observable and keeps what it sees."""

    def __init__(self, observable: reactivex.Observable[Any]) -> None:
        self.items: list[Any] = []
        self.completed = False
        self.subscription = observable.subscribe(on_next=self.items.append, on_completed=self._done)

    def _done(self) -> None:
        self.completed = True


@pytest.fixture
def hub() -> Hub[str]:
    return Hub("test stream", logger)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0, wall=T0)


# ============================================================================ the hub


def test_streams_exist_only_while_someone_listens(hub: Hub[str]) -> None:
    for i in range(1000):
        execution = hub.stream(f"run-{i}").subscribe(lambda _: None)
        node = hub.stream(f"run-{i}", "llm").subscribe(lambda _: None)
        hub.publish(f"run-{i}", "llm", "token")
        execution.dispose()
        node.dispose()
        hub.publish(f"other-{i}", "llm", "nobody listens")
    assert hub.channel_count == 0
    assert hub.executions() == set()


def test_an_update_reaches_its_node_then_its_execution_then_everyone(hub: Hub[str]) -> None:
    order: list[str] = []
    hub.stream().subscribe(lambda u: order.append(f"global {u}"))
    hub.stream("e").subscribe(lambda u: order.append(f"execution {u}"))
    hub.stream("e", "n").subscribe(lambda u: order.append(f"node {u}"))
    hub.stream("e", "other").subscribe(lambda u: order.append(f"other node {u}"))
    hub.stream("f").subscribe(lambda u: order.append(f"other execution {u}"))
    hub.publish("e", "n", "x")
    hub.publish("e", None, "y")
    assert order == ["node x", "execution x", "global x", "execution y", "global y"]


def test_a_raising_subscriber_is_logged_and_neither_starves_others_nor_the_publisher(
    hub: Hub[str], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(update: str) -> None:
        raise RuntimeError(f"subscriber bug on {update}")

    def broken_on_completion() -> None:
        raise RuntimeError("completion bug")

    hub.stream("e").subscribe(on_next=broken, on_completed=broken_on_completion)
    healthy = Recorder(hub.stream("e"))
    everyone = Recorder(hub.stream())
    with caplog.at_level(logging.ERROR, logger=logger.name):
        hub.publish("e", None, "a")
        hub.publish("e", None, "b")
        hub.complete_execution("e")
    assert healthy.items == ["a", "b"] and healthy.completed
    assert everyone.items == ["a", "b"] and not everyone.completed
    assert "subscriber bug on a" in caplog.text and "subscriber bug on b" in caplog.text
    assert "completion bug" in caplog.text
    assert "the test stream of e" in caplog.text


def test_what_a_subscriber_publishes_from_its_callback_comes_after_the_current_update(
    hub: Hub[str],
) -> None:
    def echo(update: str) -> None:
        if update == "question":
            hub.publish("e", None, "answer")
            hub.complete_execution("e")

    hub.stream("e").subscribe(echo)
    second = Recorder(hub.stream("e"))
    everyone = Recorder(hub.stream())
    hub.publish("e", None, "question")
    # Without the queue, ``second`` would see the answer before the question.
    assert second.items == ["question", "answer"] and second.completed
    assert everyone.items == ["question", "answer"]


def test_publishing_several_updates_as_one_step(hub: Hub[str]) -> None:
    def interject(update: str) -> None:
        if update == "1":
            hub.publish("e", None, "interjection")

    hub.stream("e").subscribe(interject)
    seen = Recorder(hub.stream("e"))
    hub.enqueue("e", None, "1")
    hub.enqueue("e", None, "2")
    assert seen.items == []
    hub.deliver()
    assert seen.items == ["1", "2", "interjection"]


def test_completing_an_execution_ends_its_streams_only_and_restarts_its_numbering(
    hub: Hub[str],
) -> None:
    node = Recorder(hub.stream("e", "n"))
    execution = Recorder(hub.stream("e"))
    other = Recorder(hub.stream("f", "n"))
    everyone = Recorder(hub.stream())
    assert [hub.next_sequence("e"), hub.next_sequence("e"), hub.next_sequence("f")] == [1, 2, 1]
    hub.complete_node("e", "n")
    assert node.completed and not execution.completed
    node_again = Recorder(hub.stream("e", "n"))
    hub.complete_execution("e")
    hub.complete_execution("e")  # idempotent
    assert execution.completed and node_again.completed
    assert not other.completed and not everyone.completed
    assert hub.next_sequence("e") == 1
    assert hub.next_sequence("f") == 2


def test_numbering_continues_after_an_update_numbered_elsewhere(hub: Hub[str]) -> None:
    hub.note_sequence("e", 7)
    assert hub.next_sequence("e") == 8
    hub.note_sequence("e", 3)  # never goes back
    assert hub.next_sequence("e") == 9
    hub.release_sequence("e")
    assert hub.next_sequence("e") == 1


def test_an_observable_of_a_completed_stream_completes_at_once_a_new_one_waits(
    hub: Hub[str],
) -> None:
    stream = hub.stream("e")
    first = Recorder(stream)
    hub.complete_execution("e")
    assert first.completed
    late = Recorder(stream)  # the same Observable, after its stream ended
    assert late.completed and late.items == []
    fresh = Recorder(hub.stream("e"))  # asked again: the next stream with these ids
    hub.publish("e", None, "next run")
    assert fresh.items == ["next run"] and not fresh.completed


def test_close_completes_every_stream_then_runs_then_and_refuses_new_subscribers(
    hub: Hub[str],
) -> None:
    order: list[str] = []
    hub.stream("e", "n").subscribe(on_completed=lambda: order.append("node"))
    hub.stream("e").subscribe(on_completed=lambda: order.append("execution"))
    hub.stream().subscribe(on_completed=lambda: order.append("global"))
    hub.next_sequence("e")
    hub.close(then=lambda: order.append("then"))
    hub.close()  # idempotent
    assert order == ["node", "execution", "global", "then"]
    assert hub.channel_count == 0 and hub.executions() == set()
    for late in (Recorder(hub.stream()), Recorder(hub.stream("e")), Recorder(hub.stream("g", "n"))):
        assert late.completed
    assert hub.channel_count == 0


# ============================================================================ sequence_number


async def test_sequence_number_counts_the_executions_updates_in_every_service(
    clock: FakeClock,
) -> None:
    """One meaning everywhere: the update's position among its service's updates of its
    execution, all nodes together; an execution's stream sees 1, 2, 3 ..."""
    tokens = TokenStreamingService(clock=clock)
    run = Recorder(tokens.get_token_stream("run"))
    writer = Recorder(tokens.get_token_stream("run", "writer"))
    for node in ("planner", "writer"):
        await tokens.initialize_token_stream(
            execution_id="run", node_id=node, config={"bufferSize": 1}
        )
    for token in ["a", "b", "c"]:
        tokens.stream_token("run", "planner", token)
        tokens.stream_token("run", "writer", token.upper())
    assert [u.metadata.sequence_number for u in run.items] == [1, 2, 3, 4, 5, 6]
    assert [u.metadata.sequence_number for u in writer.items] == [2, 4, 6]
    tokens.close_token_stream("run", "planner")  # a node ends: the execution goes on
    tokens.stream_token("run", "writer", "D")
    assert run.items[-1].metadata.sequence_number == 7
    tokens.close_execution_token_streams("run")
    await tokens.initialize_token_stream(execution_id="run", node_id="writer")
    again = Recorder(tokens.get_token_stream("run"))
    tokens.stream_token("run", "writer", "E")
    await tokens.flush_tokens("run", "writer")
    assert [u.metadata.sequence_number for u in again.items] == [1]

    events = EventStreamProcessorService(clock=clock)
    seen = Recorder(events.get_event_stream("run"))
    events.emit_event("run", StreamEventType.NODE_START, node_id="planner")
    events.emit_event("run", StreamEventType.NODE_START, node_id="writer")
    events.emit_event("run", StreamEventType.NODE_COMPLETE, node_id="planner")
    assert [u.metadata.sequence_number for u in seen.items] == [1, 2, 3]

    progress = ProgressTrackingService(clock=clock)
    reports = Recorder(progress.get_progress_stream("run"))
    planner = progress.create_tracker("run", "planner", {"interval": 0})
    writer_progress = progress.create_tracker("run", "writer", {"interval": 0})
    await planner.update(1, 2)
    await writer_progress.update(1, 4)
    await planner.update(2, 2)
    assert [u.metadata.sequence_number for u in reports.items] == [1, 2, 3]
    progress.close_execution("run")
    restarted = Recorder(progress.get_progress_stream("run"))
    await progress.create_tracker("run", "planner", {"interval": 0}).update(1, 2)
    assert [u.metadata.sequence_number for u in restarted.items] == [1]


async def test_token_numbering_of_an_execution_without_streams_ends_after_the_idle_timeout(
    clock: FakeClock,
) -> None:
    tokens = TokenStreamingService({"stream_idle_timeout_ms": 1000}, clock=clock)
    seen = Recorder(tokens.get_global_token_stream())

    async def one_token(execution_id: str, node_id: str) -> int:
        await tokens.initialize_token_stream(
            execution_id=execution_id, node_id=node_id, config={"bufferSize": 1}
        )
        tokens.stream_token(execution_id, node_id, "x")
        tokens.close_token_stream(execution_id, node_id)
        number: int = seen.items[-1].metadata.sequence_number
        return number

    assert await one_token("run", "a") == 1
    clock.advance(0.9)
    assert await one_token("run", "b") == 2  # within the timeout: the same run goes on
    clock.advance(1.1)
    assert await one_token("other", "a") == 1  # opening a stream forgets "run"'s numbering
    assert "run" not in tokens._hub.executions()
    assert await one_token("run", "c") == 1
    assert clock.pending_timers == 0


# ============================================================================ metadata keys


async def test_no_service_lets_a_callers_metadata_overwrite_the_metadata_fields(
    clock: FakeClock,
) -> None:
    forged = {key: "forged" for key in RESERVED_METADATA_KEYS} | {"source": "caller"}

    tokens = TokenStreamingService(clock=clock)
    token_updates = Recorder(tokens.get_global_token_stream())
    await tokens.initialize_token_stream(
        execution_id="e", node_id="n", config={"bufferSize": 1, "includeMetadata": True}
    )
    tokens.stream_token("e", "n", "x", forged)

    events = EventStreamProcessorService(clock=clock)
    event = events.emit_event("e", StreamEventType.VALUES, node_id="n", metadata=forged)

    progress = ProgressTrackingService(clock=clock)
    reports = Recorder(progress.get_progress_stream())
    await progress.create_tracker("e", "n").update(1, 2, forged)

    for update in (token_updates.items[0], event, reports.items[0]):
        metadata: StreamMetadata = update.metadata
        assert (metadata.timestamp, metadata.sequence_number) == (T0, 1)
        assert (metadata.execution_id, metadata.node_id) == ("e", "n")
        assert metadata.extra["source"] == "caller"
        assert RESERVED_METADATA_KEYS.isdisjoint(metadata.extra)
    # Events and progress take agent_type from the caller (their documented behaviour).
    assert token_updates.items[0].metadata.agent_type is None
    assert event.metadata is not None and event.metadata.agent_type == "forged"
    assert reports.items[0].metadata.agent_type == "forged"


def test_reserved_keys_are_exactly_the_metadata_fields() -> None:
    metadata = StreamMetadata(T0, 1, "e", "n", "agent", extra_key=1)
    assert set(metadata.to_dict()) - {"extra_key"} == RESERVED_METADATA_KEYS
    assert {key: metadata[key] for key in RESERVED_METADATA_KEYS} == {
        "timestamp": T0,
        "sequence_number": 1,
        "execution_id": "e",
        "node_id": "n",
        "agent_type": "agent",
    }


# ============================================================================ error codes


def _services(clock: FakeClock) -> list[Any]:
    return [
        TokenStreamingService(clock=clock),
        EventStreamProcessorService(clock=clock),
        ProgressTrackingService(clock=clock),
    ]


async def test_every_service_says_service_closed_after_aclose(clock: FakeClock) -> None:
    tokens, events, progress = _services(clock)
    for service in (tokens, events, progress):
        await service.aclose()
        assert service.closed
    attempts: list[tuple[type[StreamingError], Any]] = [
        (TokenStreamingError, lambda: tokens.stream_token("e", "n", "x")),
        (TokenStreamingError, lambda: tokens.get_token_stream("e")),
        (EventStreamingError, lambda: events.emit_event("e", "values")),
        (EventStreamingError, lambda: events.get_event_stream()),
        (ProgressTrackingError, lambda: progress.create_tracker("e")),
        (ProgressTrackingError, lambda: progress.get_progress_stream()),
    ]
    for error, attempt in attempts:
        with pytest.raises(error, match="closed") as info:
            attempt()
        assert info.value.code == SERVICE_CLOSED
    with pytest.raises(TokenStreamingError) as opening:
        await tokens.initialize_token_stream(execution_id="e", node_id="n")
    assert opening.value.code == SERVICE_CLOSED


@pytest.mark.parametrize("bad", ["", "   ", 42, None])
async def test_every_service_says_invalid_id_for_a_bad_id(clock: FakeClock, bad: Any) -> None:
    tokens, events, progress = _services(clock)
    attempts: list[tuple[type[StreamingError], str, Any]] = [
        (TokenStreamingError, "execution_id", lambda: tokens.get_token_stream(bad)),
        (TokenStreamingError, "node_id", lambda: tokens.stream_token("e", bad, "x")),
        (EventStreamingError, "execution_id", lambda: events.emit_event(bad, "values")),
        (ProgressTrackingError, "execution_id", lambda: progress.create_tracker(bad)),
    ]
    if bad is not None:  # None is "no node" for these
        attempts += [
            (TokenStreamingError, "node_id", lambda: tokens.get_token_stream("e", bad)),
            (ProgressTrackingError, "node_id", lambda: progress.create_tracker("e", bad)),
            (ProgressTrackingError, "node_id", lambda: progress.get_progress_stream("e", bad)),
        ]
    for error, what, attempt in attempts:
        with pytest.raises(error, match=what) as info:
            attempt()
        assert info.value.code == INVALID_ID
        assert what in info.value.context
    with pytest.raises(TokenStreamingError) as opening:
        await tokens.initialize_token_stream(execution_id="e", node_id=bad)
    assert opening.value.code == INVALID_ID
