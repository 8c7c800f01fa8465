"""EventStreamProcessorService, as a user of the manual would use it."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import reactivex
from reactivex import GroupedObservable
from reactivex import operators as ops
from reactivex.subject import Subject

from streaming_module.config import EventFilterCriteria
from streaming_module.core.clock import FakeClock
from streaming_module.errors import EventStreamingError, StreamingConfigError
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.types import StatusData, StreamEventType, StreamUpdate

E = StreamEventType
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    """Subscribes to an Observable and keeps what it sees."""

    def __init__(self, observable: reactivex.Observable[Any]) -> None:
        self.items: list[Any] = []
        self.errors: list[Exception] = []
        self.completed = False
        self.subscription = observable.subscribe(
            on_next=self.items.append, on_error=self.errors.append, on_completed=self._done
        )

    def _done(self) -> None:
        self.completed = True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0, wall=T0)


@pytest.fixture
def service(clock: FakeClock) -> EventStreamProcessorService:
    return EventStreamProcessorService(clock=clock)


# --------------------------------------------------------------------------- publishing


def test_a_subscriber_of_an_execution_sees_its_events_in_order(
    service: EventStreamProcessorService, clock: FakeClock
) -> None:
    seen = Recorder(service.get_event_stream("exec-1"))  # before any event of exec-1
    service.emit_event("exec-1", E.NODE_START, {"node": "generate"}, node_id="generate")
    clock.advance(1.5)
    service.emit_event("exec-2", "node_start", node_id="other")
    service.emit_event("exec-1", "node_complete", {"ok": True}, node_id="generate")

    assert [(u.type, u.data) for u in seen.items] == [
        (E.NODE_START, {"node": "generate"}),
        (E.NODE_COMPLETE, {"ok": True}),
    ]
    first, second = (u.metadata for u in seen.items)
    assert (first.sequence_number, second.sequence_number) == (1, 2)
    assert first.execution_id == "exec-1"
    assert first.node_id == "generate"
    assert first.timestamp == T0
    assert second.timestamp == T0 + timedelta(seconds=1.5)


def test_emit_event_delivers_before_it_returns_and_returns_the_update(
    service: EventStreamProcessorService,
) -> None:
    seen = Recorder(service.get_event_stream())
    update = service.emit_event("exec-1", E.TOOL_START, {"tool": "search"})
    assert seen.items == [update]
    assert isinstance(update, StreamUpdate)
    assert update.execution_id == "exec-1"


def test_priority_defaults_by_type_and_can_be_given(service: EventStreamProcessorService) -> None:
    assert service.emit_event("e", E.ERROR, "boom").metadata.priority == "high"  # type: ignore[union-attr]
    assert service.emit_event("e", E.DEBUG).metadata.priority == "low"  # type: ignore[union-attr]
    assert service.emit_event("e", E.VALUES).metadata.priority == "medium"  # type: ignore[union-attr]
    explicit = service.emit_event("e", E.VALUES, priority="critical")
    assert explicit.metadata is not None
    assert explicit.metadata.priority == "critical"
    from_meta = service.emit_event("e", E.VALUES, metadata={"priority": "low"})
    assert from_meta.metadata is not None
    assert from_meta.metadata["priority"] == "low"
    with pytest.raises(EventStreamingError, match="unknown priority 'urgent'"):
        service.emit_event("e", E.VALUES, priority="urgent")  # type: ignore[arg-type]


def test_metadata_extras_travel_with_the_event(service: EventStreamProcessorService) -> None:
    update = service.emit_event(
        "e",
        E.TOOL_COMPLETE,
        metadata={
            "delivery": "at-least-once",
            "agent_type": "researcher",
            "node_id": "tools",
            "sequence_number": 99,  # the service's own: ignored
        },
    )
    meta = update.metadata
    assert meta is not None
    assert meta.delivery == "at-least-once"
    assert meta.agent_type == "researcher"
    assert meta.node_id == "tools"
    assert meta.sequence_number == 1


def test_bad_input_is_refused_with_a_helpful_message(
    service: EventStreamProcessorService,
) -> None:
    with pytest.raises(EventStreamingError, match="execution_id must be a non-empty string"):
        service.emit_event("", E.VALUES)
    with pytest.raises(EventStreamingError, match="unknown event type 'nodestart'"):
        service.emit_event("e", "nodestart")
    with pytest.raises(EventStreamingError, match="unknown event type"):
        service.get_event_stream("e", types=["tokenz"])
    with pytest.raises(EventStreamingError, match="unknown run status 'done'"):
        service.emit_status("e", "done")  # type: ignore[arg-type]


def test_a_subscriber_can_ask_for_some_types_only(service: EventStreamProcessorService) -> None:
    errors = Recorder(service.get_event_stream("e", types=["error", E.STATUS]))
    service.emit_event("e", E.NODE_START)
    service.emit_event("e", E.ERROR, "boom")
    service.emit_status("e", "failed", error="boom")
    assert [u.type for u in errors.items] == [E.ERROR, E.STATUS]
    assert errors.completed


def test_the_global_stream_sees_every_execution(service: EventStreamProcessorService) -> None:
    everything = Recorder(service.get_event_stream())
    service.emit_event("a", E.VALUES)
    service.emit_event("b", E.VALUES)
    service.emit_status("a", "completed")
    assert [u.execution_id for u in everything.items] == ["a", "b", "a"]
    assert not everything.completed  # only aclose ends the global stream


def test_a_failing_subscriber_does_not_stop_the_others(
    service: EventStreamProcessorService, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("subscriber bug")

    service.get_event_stream("e").subscribe(on_next=broken)
    healthy = Recorder(service.get_event_stream("e"))
    everything = Recorder(service.get_event_stream())
    with caplog.at_level(logging.ERROR, logger="streaming_module.events"):
        service.emit_event("e", E.VALUES, 1)
        service.emit_event("e", E.VALUES, 2)
    assert [u.data for u in healthy.items] == [1, 2]
    assert len(everything.items) == 2
    assert "subscriber raised" in caplog.text
    assert "subscriber bug" in caplog.text


# --------------------------------------------------------------------------- status, completion


def test_a_final_status_completes_the_execution_and_frees_it(
    service: EventStreamProcessorService,
) -> None:
    stream = service.get_event_stream("e")
    seen = Recorder(stream)
    service.emit_status("e", "started")
    service.emit_event("e", E.NODE_START)
    assert not seen.completed
    done = service.emit_status("e", "completed", result={"content": "hi"})

    assert isinstance(done.data, StatusData)
    assert done.data.status == "completed"
    assert done.data.result == {"content": "hi"}
    assert [u.type for u in seen.items] == [E.STATUS, E.NODE_START, E.STATUS]
    assert seen.items[-1].metadata.sequence_number == 3
    assert seen.completed
    assert service.active_executions == []
    late = Recorder(stream)  # the same Observable, subscribed after the end
    assert late.completed
    assert late.items == []


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_failed_and_cancelled_are_final_too(
    service: EventStreamProcessorService, status: Any
) -> None:
    seen = Recorder(service.get_event_stream("e"))
    update = service.emit_status("e", status, error="it broke" if status == "failed" else None)
    assert seen.completed
    assert update.data.error == ("it broke" if status == "failed" else None)
    assert service.active_executions == []


def test_complete_execution_ends_streams_and_restarts_numbering(
    service: EventStreamProcessorService,
) -> None:
    seen = Recorder(service.get_event_stream("e"))
    service.emit_event("e", E.VALUES)
    service.complete_execution("e")
    service.complete_execution("e")  # idempotent
    assert seen.completed
    assert service.active_executions == []
    again = service.emit_event("e", E.VALUES)
    assert again.metadata is not None
    assert again.metadata.sequence_number == 1
    service.complete_execution("e")
    assert service.active_executions == []


def test_emit_update_publishes_a_built_update_and_numbering_continues(
    service: EventStreamProcessorService,
) -> None:
    seen = Recorder(service.get_event_stream("e"))
    built = service.emit_event("other", E.VALUES)
    built.metadata.execution_id = "e"  # type: ignore[union-attr]
    built.metadata.sequence_number = 7  # type: ignore[union-attr]
    service.emit_update(built)
    after = service.emit_event("e", E.VALUES)
    assert seen.items == [built, after]
    assert after.metadata is not None
    assert after.metadata.sequence_number == 8
    with pytest.raises(EventStreamingError, match="metadata carrying its execution_id"):
        service.emit_update(StreamUpdate(E.VALUES, None))
    with pytest.raises(EventStreamingError, match="takes a StreamUpdate"):
        service.emit_update({"type": "values"})  # type: ignore[arg-type]


async def test_aclose_completes_every_stream_and_refuses_further_use(
    service: EventStreamProcessorService,
) -> None:
    one = Recorder(service.get_event_stream("e"))
    everything = Recorder(service.get_event_stream())
    await service.aclose()
    await service.aclose()
    assert one.completed
    assert everything.completed
    assert service.active_executions == []
    with pytest.raises(EventStreamingError, match="closed"):
        service.emit_event("e", E.VALUES)
    with pytest.raises(EventStreamingError, match="closed"):
        service.get_event_stream()


async def test_iter_event_stream_works_with_async_for(
    service: EventStreamProcessorService,
) -> None:
    events = service.iter_event_stream("e", types=["node_start", "status"])

    async def run() -> None:
        service.emit_status("e", "started")
        await asyncio.sleep(0)
        service.emit_event("e", E.NODE_START, node_id="n")
        service.emit_event("e", E.DEBUG)
        service.emit_status("e", "completed")

    task = asyncio.create_task(run())
    seen = [u.type async for u in events]
    await task
    assert seen == [E.STATUS, E.NODE_START, E.STATUS]


# --------------------------------------------------------------------------- process_batch


def _events(n: int, execution_id: str = "e") -> list[StreamUpdate[Any]]:
    svc = EventStreamProcessorService(clock=FakeClock())
    return [svc.emit_event(execution_id, E.VALUES, i) for i in range(n)]


def test_process_batch_gives_every_event_once_in_batches(
    service: EventStreamProcessorService,
) -> None:
    events = _events(23)
    batches = Recorder(service.process_batch(events, batch_size=10))
    assert [len(b) for b in batches.items] == [10, 10, 3]
    assert [e.data for b in batches.items for e in b] == list(range(23))
    assert batches.completed
    assert Recorder(service.process_batch([], batch_size=3)).items == []


def test_process_batch_debounce_flushes_a_partial_batch_after_quiet(
    service: EventStreamProcessorService, clock: FakeClock
) -> None:
    source: Subject[StreamUpdate[Any]] = Subject()
    events = _events(7)
    batches = Recorder(service.process_batch(source, batch_size=3, debounce_ms=100))
    for e in events[:4]:
        source.on_next(e)
    assert [len(b) for b in batches.items] == [3]
    clock.advance(0.05)
    source.on_next(events[4])  # restarts the quiet period
    clock.advance(0.09)
    assert [len(b) for b in batches.items] == [3]
    clock.advance(0.02)
    assert [len(b) for b in batches.items] == [3, 2]
    source.on_next(events[5])
    source.on_next(events[6])
    source.on_completed()
    assert [e.data for b in batches.items for e in b] == list(range(7))
    assert batches.completed
    assert clock.pending_timers == 0


def test_process_batch_without_debounce_waits_for_size_or_completion(
    service: EventStreamProcessorService, clock: FakeClock
) -> None:
    source: Subject[StreamUpdate[Any]] = Subject()
    batches = Recorder(service.process_batch(source, batch_size=5))
    source.on_next(_events(1)[0])
    clock.advance(60)
    assert batches.items == []
    source.on_completed()
    assert [len(b) for b in batches.items] == [1]


def test_process_batch_emits_the_held_events_before_an_error(
    service: EventStreamProcessorService,
) -> None:
    source: Subject[StreamUpdate[Any]] = Subject()
    batches = Recorder(service.process_batch(source, batch_size=5))
    for e in _events(2):
        source.on_next(e)
    source.on_error(RuntimeError("source failed"))
    assert [len(b) for b in batches.items] == [2]
    assert [str(e) for e in batches.errors] == ["source failed"]


def test_disposing_a_batch_subscription_cancels_its_timer(
    service: EventStreamProcessorService, clock: FakeClock
) -> None:
    source: Subject[StreamUpdate[Any]] = Subject()
    batches = Recorder(service.process_batch(source, batch_size=5, debounce_ms=10))
    source.on_next(_events(1)[0])
    assert clock.pending_timers == 1
    batches.subscription.dispose()
    assert clock.pending_timers == 0
    assert not source.observers


def test_process_batch_of_a_live_event_stream(
    service: EventStreamProcessorService,
) -> None:
    batches = Recorder(service.process_batch(service.get_event_stream("e"), batch_size=2))
    for i in range(3):
        service.emit_event("e", E.VALUES, i)
    service.emit_status("e", "completed")
    assert [[u.data for u in b] for b in batches.items][:1] == [[0, 1]]
    assert [len(b) for b in batches.items] == [2, 2]
    assert batches.completed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a whole number of at least 1"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"debounce_ms": -1}, "debounce_ms must be 0 or more"),
        ({"debounce_ms": "10"}, "debounce_ms must be a number"),
    ],
)
def test_process_batch_refuses_bad_arguments(
    service: EventStreamProcessorService, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(EventStreamingError, match=message):
        service.process_batch([], **kwargs)


def test_process_batch_refuses_something_that_is_not_events(
    service: EventStreamProcessorService,
) -> None:
    with pytest.raises(EventStreamingError, match="expected an Observable or an iterable"):
        service.process_batch(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- grouping, aggregating


def test_group_events_by_type_gives_one_completed_stream_per_type(
    service: EventStreamProcessorService,
) -> None:
    events = [
        service.emit_event("e", E.TOKEN, "a"),
        service.emit_event("e", E.ERROR, "x"),
        service.emit_event("e", E.TOKEN, "b"),
    ]
    groups: dict[StreamEventType, Recorder] = {}

    def on_group(group: GroupedObservable[StreamEventType, StreamUpdate[Any]]) -> None:
        groups[group.key] = Recorder(group)

    outer = Recorder(service.group_events_by_type(events).pipe(ops.do_action(on_group)))
    assert list(groups) == [E.TOKEN, E.ERROR]
    assert [u.data for u in groups[E.TOKEN].items] == ["a", "b"]
    assert [u.data for u in groups[E.ERROR].items] == ["x"]
    assert all(r.completed for r in groups.values())
    assert outer.completed


def test_groups_of_a_live_stream_end_with_the_execution(
    service: EventStreamProcessorService,
) -> None:
    groups: list[tuple[StreamEventType, Recorder]] = []
    service.group_events_by_type(service.get_event_stream("e")).subscribe(
        on_next=lambda g: groups.append((g.key, Recorder(g)))
    )
    service.emit_event("e", E.NODE_START)
    service.emit_event("e", E.NODE_START)
    assert [(k, len(r.items), r.completed) for k, r in groups] == [(E.NODE_START, 2, False)]
    service.emit_status("e", "completed")
    assert [k for k, _ in groups] == [E.NODE_START, E.STATUS]
    assert all(r.completed for _, r in groups)


def test_groups_error_with_their_source(service: EventStreamProcessorService) -> None:
    source: Subject[StreamUpdate[Any]] = Subject()
    groups: list[Recorder] = []

    def on_group(group: GroupedObservable[StreamEventType, StreamUpdate[Any]]) -> None:
        groups.append(Recorder(group))

    outer = Recorder(service.group_events_by_type(source).pipe(ops.do_action(on_group)))
    source.on_next(_events(1)[0])
    source.on_error(ValueError("bad"))
    assert [str(e) for r in groups for e in r.errors] == ["bad"]
    assert [str(e) for e in outer.errors] == ["bad"]


def test_aggregate_by_execution_maps_types_to_that_executions_events(
    service: EventStreamProcessorService,
) -> None:
    events = [
        service.emit_event("x", E.NODE_START),
        service.emit_event("y", E.NODE_START),
        service.emit_event("x", E.TOKEN, "hi"),
        service.emit_event("x", E.NODE_START),
    ]
    out = service.aggregate_by_execution("x", events)
    assert list(out) == [E.NODE_START, E.TOKEN]
    assert out[E.NODE_START] == [events[0], events[3]]
    assert out[E.TOKEN] == [events[2]]
    with pytest.raises(EventStreamingError):
        service.aggregate_by_execution("", events)


# --------------------------------------------------------------------------- filter, transform


def test_filter_events_with_the_manuals_criteria(service: EventStreamProcessorService) -> None:
    events = [
        service.emit_event("e", E.PROGRESS, 1),
        service.emit_event("e", E.DEBUG, "noise"),
        service.emit_event("e", E.PROGRESS, 2, priority="low"),
        service.emit_event("e", E.TOOL_START),
    ]
    manual = {
        "eventTypes": [E.PROGRESS],
        "minPriority": "medium",
        "includeDebug": False,
        "excludeTypes": [E.DEBUG],
    }
    assert service.filter_events(events, manual) == [events[0]]
    model = EventFilterCriteria(event_types=[E.TOOL_START, E.DEBUG], include_debug=True)
    assert service.filter_events(events, model) == [events[1], events[3]]


def test_filter_events_by_node_and_time(
    service: EventStreamProcessorService, clock: FakeClock
) -> None:
    early = service.emit_event("e", E.VALUES, node_id="a")
    clock.advance(10)
    late = service.emit_event("e", E.VALUES, node_id="b")
    assert service.filter_events([early, late], {"node_ids": ["b"]}) == [late]
    since = (T0 + timedelta(seconds=5)).isoformat()
    assert service.filter_events([early, late], {"startTime": since}) == [late]
    assert service.filter_events([early, late], {"end_time": T0}) == [early]
    assert service.filter_events([early, late], {"execution_ids": ["zzz"]}) == []


def test_bad_filter_criteria_name_the_bad_key(service: EventStreamProcessorService) -> None:
    with pytest.raises(StreamingConfigError, match="minPriorty"):
        service.filter_events([], {"minPriorty": "high"})
    with pytest.raises(StreamingConfigError, match="event_types"):
        service.filter_events([], {"event_types": ["nope"]})


def test_transform_events_in_the_manuals_spread_style(
    service: EventStreamProcessorService, clock: FakeClock
) -> None:
    events = [service.emit_event("e", E.TOOL_START, {"tool": "search"})]
    stamp = clock.now().isoformat()
    out = service.transform_events(
        events, lambda event: {**event, "timestamp": stamp, "enriched": True}
    )
    assert len(out) == 1
    assert out[0].data == {"tool": "search"}
    assert out[0].metadata is not None
    assert out[0].metadata.enriched is True
    assert out[0].metadata.timestamp == clock.now()
    assert "enriched" not in events[0].metadata.extra  # type: ignore[union-attr]


def test_transform_events_may_return_updates(service: EventStreamProcessorService) -> None:
    events = [service.emit_event("e", E.TOKEN, "a")]
    out = service.transform_events(events, lambda e: StreamUpdate(e.type, "A", e.metadata))
    assert out[0].data == "A"
    with pytest.raises(EventStreamingError, match="must be callable"):
        service.transform_events(events, "upper")  # type: ignore[arg-type]
    # Not an update: that event is left out and an error update stands in its place (see
    # tests/unit/test_callback_failures.py).
    (error,) = service.transform_events(events, lambda e: 1)
    assert error.type is E.ERROR and "StreamUpdate or a dict, got int" in error.data["error"]


def test_options_may_be_a_dict(clock: FakeClock) -> None:
    svc = EventStreamProcessorService({"defaultBufferSize": 10}, clock=clock)
    assert svc.options.default_buffer_size == 10
    with pytest.raises(StreamingConfigError, match="bufferSizee"):
        EventStreamProcessorService({"bufferSizee": 10})
