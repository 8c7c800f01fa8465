"""ProgressTrackingService, as a user of the manual would use it. Time comes from a FakeClock."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import reactivex

from streaming_module.config import StreamProgressOptions
from streaming_module.core.clock import FakeClock
from streaming_module.errors import ProgressTrackingError, StreamingConfigError
from streaming_module.services.progress_tracking import ProgressTracker, ProgressTrackingService
from streaming_module.types import ProgressData, StreamEventType, StreamUpdate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    def __init__(self, observable: reactivex.Observable[Any]) -> None:
        self.items: list[Any] = []
        self.completed = False
        observable.subscribe(on_next=self.items.append, on_completed=self._done)

    def _done(self) -> None:
        self.completed = True

    @property
    def percents(self) -> list[float]:
        return [u.data.progress for u in self.items]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0, wall=T0)


@pytest.fixture
def service(clock: FakeClock) -> ProgressTrackingService:
    return ProgressTrackingService(clock=clock)


# --------------------------------------------------------------------------- the manual's story


async def test_processing_a_dataset_streams_progress_with_eta(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    """@stream_progress(interval=1000, granularity='fine', include_eta=True, milestones=...)."""
    seen = Recorder(service.get_progress_stream("exec-1"))
    tracker = service.create_tracker(
        "exec-1",
        "process_large_dataset",
        {
            "interval": 1000,
            "granularity": "fine",
            "includeETA": True,
            "includeMetrics": True,
            "milestones": [25, 50, 75, 90, 95],
            "format": {"showCurrent": True, "showTotal": True, "showRate": True, "precision": 1},
        },
    )
    reported = []
    for i in range(20):
        clock.advance(0.25)  # 4 items per second
        reported.append(await tracker.update(i + 1, 20, {"complexity": 1}))

    assert reported[0] is not None  # the first
    assert reported[-1] is not None  # the last
    assert seen.items[0].data.current == 1
    assert seen.items[-1].data.progress == 100
    assert seen.items[-1].data.eta == 0
    assert [u.data.milestone for u in seen.items if u.data.milestone is not None] == [
        25,
        50,
        75,
        90,
        95,
    ]
    # first, then once a second, plus every milestone (which restarts the interval), plus last
    assert [u.data.current for u in seen.items] == [1, 5, 9, 10, 14, 15, 18, 19, 20]
    middle = seen.items[4].data  # 14 of 20 at t=3.5 s
    assert middle.rate == pytest.approx(4.0)
    assert middle.eta == pytest.approx(1.5)  # 6 items left at 4/s
    assert middle.text == "70.0% (14/20) 4.0/s"
    assert middle.metrics is not None
    assert middle.metrics["elapsed"] == pytest.approx(3.5)
    assert middle.metrics["items_done"] == 14

    update = seen.items[0]
    assert isinstance(update, StreamUpdate)
    assert update.type is StreamEventType.PROGRESS
    assert isinstance(update.data, ProgressData)
    assert update.metadata is not None
    assert update.metadata.execution_id == "exec-1"
    assert update.metadata.node_id == "process_large_dataset"
    assert update.metadata.complexity == 1
    assert update.metadata.timestamp == T0 + timedelta(seconds=0.25)
    assert [u.metadata.sequence_number for u in seen.items] == list(range(1, len(seen.items) + 1))
    assert tracker.last is seen.items[-1].data


async def test_interval_zero_reports_every_update(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    seen = Recorder(service.get_progress_stream())
    tracker = service.create_tracker("e", None, {"interval": 0, "granularity": "detailed"})
    for i in range(1, 6):
        clock.advance(1)
        assert await tracker.update(i, 5) is not None
    assert seen.percents == [20, 40, 60, 80, 100]


async def test_the_interval_holds_updates_back_but_never_the_first_or_last(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    seen = Recorder(service.get_progress_stream("e", "n"))
    tracker = service.create_tracker("e", "n", {"interval": 500, "granularity": "detailed"})
    results = []
    for i in range(1, 11):
        clock.advance(0.1)
        results.append(tracker.update_nowait(i, 10))
    assert [r is not None for r in results] == [
        True,  # first, t=0.1
        False,
        False,
        False,
        False,
        True,  # t=0.6: 500 ms after the first
        False,
        False,
        False,
        True,  # the last
    ]
    assert seen.percents == [10, 60, 100]


async def test_coarse_granularity_reports_only_ten_percent_steps(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    seen = Recorder(service.get_progress_stream("e"))
    tracker = service.create_tracker("e", "n", {"interval": 0, "granularity": "coarse"})
    for i in range(1, 101):
        clock.advance(0.01)
        await tracker.update(i, 100)
    assert seen.percents == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


async def test_fine_granularity_reports_when_the_shown_percent_changes(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    seen = Recorder(service.get_progress_stream("e"))
    tracker = service.create_tracker(
        "e", "n", {"interval": 0, "granularity": "fine", "format": {"precision": 0}}
    )
    for i in range(1, 1001):
        clock.advance(0.001)
        await tracker.update(i, 1000)
    # each whole percent once, as shown with precision 0, then the last (100 %) always
    assert [round(p) for p in seen.percents[:-1]] == list(range(101))
    assert seen.percents[-1] == 100


async def test_a_calculator_drives_the_percent(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    def calculator(current: float, total: float, metadata: dict[str, Any] | None) -> float:
        complexity = float((metadata or {}).get("complexity", 1))
        return min(current / total * 100 * complexity, 100.0)

    tracker = service.create_tracker(
        "e", "n", StreamProgressOptions(interval=0, calculator=calculator)
    )
    data = await tracker.update(10, 100, {"complexity": 3})
    assert data is not None
    assert data.progress == 30
    clock.advance(1)
    done = await tracker.update(50, 100, {"complexity": 2})  # calculator says 100 %: the last
    assert done is not None
    assert done.progress == 100
    assert done.eta == 0


async def test_eta_can_be_left_out(service: ProgressTrackingService, clock: FakeClock) -> None:
    tracker = service.create_tracker("e", "n", {"interval": 0, "include_eta": False})
    await tracker.update(1, 10)
    clock.advance(1)
    data = await tracker.update(2, 10)
    assert data is not None
    assert data.rate == 1
    assert data.eta is None


# --------------------------------------------------------------------------- start, complete


async def test_start_reports_zero_and_complete_reports_one_hundred(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    seen = Recorder(service.get_progress_stream("e", "n"))
    tracker = service.create_tracker("e", "n", {"interval": 60_000, "milestones": [50, 100]})
    clock.advance(5)
    started = await tracker.start(total=40)
    assert (started.progress, started.current, started.total) == (0, 0, 40)
    clock.advance(1)
    assert await tracker.update(10, 40) is None  # within the minute
    clock.advance(1)
    done = await tracker.complete({"phase": "end"})
    assert (done.progress, done.current, done.total, done.eta) == (100, 40, 40, 0)
    assert done.milestone == 100
    assert seen.percents == [0, 100]
    assert seen.items[-1].metadata.phase == "end"
    again = await tracker.complete()  # always emitted
    assert again.milestone is None
    assert len(seen.items) == 3


async def test_complete_without_updates_reports_one_hundred_of_one_hundred(
    service: ProgressTrackingService,
) -> None:
    done = await service.create_tracker("e").complete()
    assert (done.progress, done.current, done.total) == (100, 100, 100)


async def test_start_restarts_timing_and_milestones(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    tracker = service.create_tracker(
        "e", "n", {"interval": 0, "milestones": [50], "include_metrics": True}
    )
    await tracker.update(60, 100)
    clock.advance(10)
    await tracker.start(100)
    clock.advance(2)
    data = await tracker.update(60, 100)
    assert data is not None
    assert data.milestone == 50
    assert data.metrics is not None
    assert data.metrics["elapsed"] == 2


async def test_a_disabled_tracker_publishes_nothing(service: ProgressTrackingService) -> None:
    seen = Recorder(service.get_progress_stream())
    tracker = service.create_tracker("e", "n", {"enabled": False})
    assert await tracker.update(1, 2) is None
    assert (await tracker.start()).progress == 0
    assert (await tracker.complete()).progress == 100
    assert seen.items == []


# --------------------------------------------------------------------------- trackers


def test_create_tracker_returns_the_open_one_and_get_tracker_finds_it(
    service: ProgressTrackingService,
) -> None:
    tracker = service.create_tracker("e", "n", {"interval": 0})
    assert isinstance(tracker, ProgressTracker)
    assert service.create_tracker("e", "n", {"interval": 5}) is tracker
    assert tracker.options.interval == 0
    assert service.get_tracker("e", "n") is tracker
    other = service.create_tracker("e")
    assert service.get_active_trackers() == [tracker, other]
    assert (tracker.execution_id, tracker.node_id) == ("e", "n")
    assert "e:n" in repr(tracker)


def test_an_unknown_tracker_is_an_error_that_says_what_to_do(
    service: ProgressTrackingService,
) -> None:
    with pytest.raises(ProgressTrackingError, match=r"no open progress tracker for 'e:n'") as info:
        service.get_tracker("e", "n")
    assert "create_tracker('e', 'n')" in info.value.message
    assert info.value.code == "unknown_tracker"


async def test_update_progress_goes_through_the_services_tracker(
    service: ProgressTrackingService,
) -> None:
    with pytest.raises(ProgressTrackingError, match="create_tracker"):
        await service.update_progress("e", "n", 1, 10)
    service.create_tracker("e", "n", {"interval": 0})
    data = await service.update_progress("e", "n", 3, 10, {"step": "x"})
    assert data is not None
    assert data.progress == 30


@pytest.mark.parametrize(
    ("current", "total", "message"),
    [
        (1, 0, "total must be greater than 0"),
        (-1, 10, "current must be 0 or more"),
        (math.nan, 10, "finite"),
        ("1", 10, "must be a number"),
        (1, None, "must be a number"),
    ],
)
async def test_bad_numbers_are_refused_with_a_helpful_message(
    service: ProgressTrackingService, current: Any, total: Any, message: str
) -> None:
    tracker = service.create_tracker("e", "n")
    with pytest.raises(ProgressTrackingError, match=message) as info:
        await tracker.update(current, total)
    assert info.value.context["execution_id"] == "e"
    assert info.value.context["node_id"] == "n"
    assert tracker.last is None


def test_bad_options_and_ids_are_refused(service: ProgressTrackingService) -> None:
    with pytest.raises(StreamingConfigError, match="granularity"):
        service.create_tracker("e", "n", {"granularity": "medium"})
    with pytest.raises(StreamingConfigError, match="intervall"):
        service.create_tracker("e", "n", {"intervall": 5})
    with pytest.raises(ProgressTrackingError, match="execution_id must be a non-empty string"):
        service.create_tracker("", "n")
    with pytest.raises(ProgressTrackingError, match="execution_id"):
        service.get_progress_stream("")


async def test_a_failing_subscriber_does_not_stop_the_others(
    service: ProgressTrackingService, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("subscriber bug")

    service.get_progress_stream("e").subscribe(on_next=broken)
    healthy = Recorder(service.get_progress_stream("e"))
    tracker = service.create_tracker("e", "n", {"interval": 0})
    with caplog.at_level(logging.ERROR, logger="streaming_module.progress"):
        assert await tracker.update(1, 2) is not None
    assert healthy.percents == [50]
    assert "subscriber bug" in caplog.text


# --------------------------------------------------------------------------- streams, closing


async def test_streams_by_execution_node_or_everything(
    service: ProgressTrackingService,
) -> None:
    everything = Recorder(service.get_progress_stream())
    exec_a = Recorder(service.get_progress_stream("a"))
    node_x = Recorder(service.get_progress_stream("a", "x"))
    any_x = Recorder(service.get_progress_stream(node_id="x"))
    for execution_id, node_id in [("a", "x"), ("a", "y"), ("b", "x"), ("a", None)]:
        await service.create_tracker(execution_id, node_id, {"interval": 0}).update(1, 2)
    assert [(u.execution_id, u.node_id) for u in everything.items] == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("a", None),
    ]
    assert [u.node_id for u in exec_a.items] == ["x", "y", None]
    assert [u.execution_id for u in node_x.items] == ["a"]
    assert [u.execution_id for u in any_x.items] == ["a", "b"]
    assert [u.metadata.sequence_number for u in exec_a.items] == [1, 2, 3]


async def test_closing_a_tracker_ends_its_node_stream_only(
    service: ProgressTrackingService,
) -> None:
    node = Recorder(service.get_progress_stream("e", "n"))
    execution = Recorder(service.get_progress_stream("e"))
    tracker = service.create_tracker("e", "n")
    tracker.close()
    tracker.close()  # idempotent
    service.close_tracker("e", "n")  # idempotent too
    assert node.completed
    assert not execution.completed
    assert service.get_active_trackers() == []
    with pytest.raises(ProgressTrackingError, match="'e:n' is closed"):
        await tracker.update(1, 2)
    with pytest.raises(ProgressTrackingError, match="no open"):
        service.get_tracker("e", "n")
    assert service.create_tracker("e", "n") is not tracker


async def test_close_execution_closes_trackers_completes_streams_and_frees_memory(
    service: ProgressTrackingService,
) -> None:
    execution = Recorder(service.get_progress_stream("e"))
    node = Recorder(service.get_progress_stream("e", "later"))  # never had a tracker
    other = Recorder(service.get_progress_stream("f"))
    a = service.create_tracker("e", "a")
    service.create_tracker("e")
    kept = service.create_tracker("f", "a")
    await a.update(1, 2)
    service.close_execution("e")
    service.close_execution("e")
    assert execution.completed
    assert node.completed
    assert not other.completed
    assert a.closed
    assert service.get_active_trackers() == [kept]
    assert "e" not in service._hub.executions()  # no stream, no numbering


async def test_aclose_ends_everything(service: ProgressTrackingService) -> None:
    everything = Recorder(service.get_progress_stream())
    execution = Recorder(service.get_progress_stream("e"))
    tracker = service.create_tracker("e", "n")
    await service.aclose()
    await service.aclose()
    assert everything.completed
    assert execution.completed
    assert tracker.closed
    assert service.get_active_trackers() == []
    assert service._hub.channel_count == 0 and service._hub.executions() == set()
    with pytest.raises(ProgressTrackingError, match="closed"):
        service.create_tracker("e", "n")


async def test_iter_progress_stream_works_with_async_for(
    service: ProgressTrackingService, clock: FakeClock
) -> None:
    updates = service.iter_progress_stream("e", "n")
    tracker = service.create_tracker("e", "n", {"interval": 0})

    async def work() -> None:
        for i in range(1, 5):
            clock.advance(1)
            await tracker.update(i, 4)
            await asyncio.sleep(0)
        service.close_tracker("e", "n")

    task = asyncio.create_task(work())
    percents = [u.data.progress async for u in updates]
    await task
    assert percents == [25, 50, 75, 100]


def test_options_may_be_a_dict(clock: FakeClock) -> None:
    svc = ProgressTrackingService({"default_buffer_size": 5}, clock=clock)
    assert svc.options.default_buffer_size == 5
