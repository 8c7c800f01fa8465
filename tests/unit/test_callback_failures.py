"""A user callback that fails — a token ``processor``, an event ``transformer``, a progress
``calculator`` — costs only the items it failed on: its stream reports it by one ``error`` update
(code ``callback_failed``), it is logged once, and the stream, the caller and everything else go
on. Each service on its own, with a fake clock (no sleeping), then a workflow run."""

from __future__ import annotations

import logging
import random
from typing import Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from streaming_module.config import StreamingModuleOptions, StreamProgressOptions
from streaming_module.core.clock import FakeClock
from streaming_module.errors import EventStreamingError, ProgressTrackingError
from streaming_module.protocol.updates import frame_from_update
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.types import StreamEventType, StreamMetadata, StreamUpdate
from streaming_module.workflow import (
    DeclarativeWorkflowBase,
    node,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)

ET = StreamEventType
E, N = "run-1", "write"


def collect(observable: Any) -> list[Any]:
    items: list[Any] = []
    observable.subscribe(on_next=items.append)
    return items


def errors_in(updates: list[Any]) -> list[Any]:
    return [u for u in updates if u.type is ET.ERROR]


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ============================================================================ token processor


@pytest.fixture
def tokens(clock: FakeClock) -> TokenStreamingService:
    return TokenStreamingService(
        StreamingModuleOptions(websocket={"enabled": False}, default_buffer_size=10),
        clock=clock,
        rng=random.Random(7),
    )


def shout_except_x(token: str, metadata: dict[str, Any] | None) -> str:
    if token == "x":
        raise ValueError("no x please")
    return token.upper()


async def test_a_raising_processor_drops_that_token_and_the_stream_says_so_once(
    tokens: TokenStreamingService, caplog: pytest.LogCaptureFixture
) -> None:
    await tokens.initialize_token_stream(
        execution_id=E, node_id=N, config={"processor": shout_except_x}
    )
    node, execution, everything = (
        collect(tokens.get_token_stream(E, N)),
        collect(tokens.get_token_stream(E)),
        collect(tokens.get_global_token_stream()),
    )
    with caplog.at_level(logging.DEBUG, logger="streaming_module.tokens"):
        for token in ["a", "b", "x", "c", "x", "d"]:
            tokens.stream_token(E, N, token)  # never raises for the processor's failure
        await tokens.flush_tokens(E, N)

    # What was buffered before the failure leaves first, then the error, then the rest: the
    # text before the error is exactly the text up to the failure.
    assert [(u.type, u.data.content if u.type is ET.TOKEN else None) for u in node] == [
        (ET.TOKEN, "AB"),
        (ET.ERROR, None),
        (ET.TOKEN, "CD"),
    ]
    assert node == execution == everything
    (error,) = errors_in(node)
    assert error.data == {
        "code": "callback_failed",
        "message": "the token processor of node 'write' failed (ValueError: no x please); "
        "the tokens it fails on are dropped",
        "callback": "processor",
        "node": N,
        "error": "no x please",
        "error_type": "ValueError",
    }
    meta = error.metadata
    assert (meta.execution_id, meta.node_id, meta.priority) == (E, N, "high")
    assert [u.metadata.sequence_number for u in node] == [1, 2, 3]  # numbered like the rest
    # The stream stays open; counters add up: both x are counted as dropped.
    (info,) = tokens.get_active_token_streams()
    assert (info.tokens_in, info.tokens_dropped, info.tokens_out, info.buffered) == (6, 2, 4, 0)
    # Logged once with its traceback; the second failure only at debug level.
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].levelname == "ERROR" and "run-1:write" in errors[0].getMessage()
    assert sum("failed again" in r.getMessage() for r in caplog.records) == 1


async def test_a_processor_returning_no_text_is_a_failure_too(
    tokens: TokenStreamingService,
) -> None:
    await tokens.initialize_token_stream(
        execution_id=E, node_id=N, config={"processor": lambda token, meta: len(token)}
    )
    got = collect(tokens.get_token_stream(E, N))
    tokens.stream_token(E, N, "hello")
    (error,) = errors_in(got)
    assert error.data["error_type"] == "TypeError"
    assert "must return a str, got int" in error.data["error"]


async def test_each_node_and_each_run_reports_its_own_processor_failure(
    tokens: TokenStreamingService,
) -> None:
    def boom(token: str, meta: Any) -> str:
        raise RuntimeError("boom")

    got = collect(tokens.get_global_token_stream())
    for node_id in ("plan", "write"):
        await tokens.initialize_token_stream(
            execution_id=E, node_id=node_id, config={"processor": boom}
        )
        tokens.stream_token(E, node_id, "t")
        tokens.stream_token(E, node_id, "t")
    await tokens.initialize_token_stream(execution_id="run-2", node_id=N, config={})
    tokens.stream_token("run-2", N, "fine")  # another run of the same service: untouched
    await tokens.flush_tokens("run-2", N)
    # A stream closed and opened again in the same run does not report twice ...
    tokens.close_token_stream(E, "write")
    await tokens.initialize_token_stream(
        execution_id=E, node_id="write", config={"processor": boom}
    )
    tokens.stream_token(E, "write", "t")
    # ... a new run with the same id, after the execution was closed, does.
    tokens.close_execution_token_streams(E)
    await tokens.initialize_token_stream(
        execution_id=E, node_id="write", config={"processor": boom}
    )
    tokens.stream_token(E, "write", "t")
    assert [(u.execution_id, u.node_id, u.type) for u in got] == [
        (E, "plan", ET.ERROR),
        (E, "write", ET.ERROR),
        ("run-2", N, ET.TOKEN),
        (E, "write", ET.ERROR),
    ]
    assert got[2].data.content == "fine"
    assert [u.metadata.sequence_number for u in got] == [1, 2, 1, 1]


async def test_the_processor_error_reaches_clients_as_an_error_event(
    tokens: TokenStreamingService,
) -> None:
    await tokens.initialize_token_stream(
        execution_id=E, node_id=N, config={"processor": shout_except_x}
    )
    got = collect(tokens.get_token_stream(E, N))
    tokens.stream_token(E, N, "x")
    (error,) = got
    fields = frame_from_update(error)
    assert fields is not None and fields.type == "event"
    assert fields.payload["eventType"] == "error" and fields.payload["nodeId"] == N
    assert fields.payload["data"]["code"] == "callback_failed"
    assert fields.payload["priority"] == "high"


# ============================================================================ progress calculator


@pytest.fixture
def progress(clock: FakeClock) -> ProgressTrackingService:
    return ProgressTrackingService(clock=clock)


def divide_by_current(current: float, total: float, metadata: Any) -> float:
    return 100.0 * (1 / (current - 2)) if current != 3 else 75.0  # fails at current == 2


async def test_a_raising_calculator_drops_that_report_and_the_stream_says_so_once(
    progress: ProgressTrackingService, caplog: pytest.LogCaptureFixture
) -> None:
    got = collect(progress.get_progress_stream(E))
    tracker = progress.create_tracker(E, N, {"interval": 0, "calculator": divide_by_current})
    with caplog.at_level(logging.WARNING, logger="streaming_module.progress"):
        await tracker.start(total=4)  # 1 / -2: clamped to 0 %
        assert await tracker.update(2, 4) is None  # 1 / 0: dropped, reported
        assert await tracker.update(2, 4) is None  # again: dropped, not reported again
        assert (await tracker.update(3, 4)) is not None  # works again: reported
    assert [(u.type, getattr(u.data, "progress", None)) for u in got] == [
        (ET.PROGRESS, 0.0),
        (ET.ERROR, None),
        (ET.PROGRESS, 75.0),
    ]
    (error,) = errors_in(got)
    assert error.data == {
        "code": "callback_failed",
        "message": "the progress calculator of node 'write' failed (ZeroDivisionError: "
        "float division by zero); the progress reports it fails on are dropped",
        "callback": "calculator",
        "node": N,
        "error": "float division by zero",
        "error_type": "ZeroDivisionError",  # the calculator's own error, not ours
    }
    assert (error.node_id, error.metadata.priority) == (N, "high")
    assert [u.metadata.sequence_number for u in got] == [1, 2, 3]
    assert not tracker.closed and tracker.last is not None and tracker.last.progress == 75.0
    assert len(failures_logged(caplog)) == 1


async def test_a_calculator_failing_at_start_and_end_leaves_the_tracker_usable(
    progress: ProgressTrackingService,
) -> None:
    def never(current: float, total: float, metadata: Any) -> float:
        return float("nan")

    got = collect(progress.get_progress_stream())
    tracker = progress.create_tracker(E, None, {"interval": 0, "calculator": never})
    assert await tracker.start() is None
    assert await tracker.complete() is None
    (error,) = got  # one error, for the execution-level tracker
    assert error.data["node"] is None and error.node_id is None
    assert error.data["error_type"] == "ProgressTrackingError"
    assert "must return a finite number" in error.data["error"]
    tracker.close()


async def test_bad_figures_are_still_the_callers_error(progress: ProgressTrackingService) -> None:
    tracker = progress.create_tracker(E, N, {"calculator": lambda c, t, m: 50.0})
    with pytest.raises(ProgressTrackingError):
        await tracker.update(5, -1)


async def test_a_disabled_tracker_reports_nothing_not_even_its_calculator(
    progress: ProgressTrackingService,
) -> None:
    got = collect(progress.get_progress_stream())
    tracker = progress.create_tracker(
        E, N, StreamProgressOptions(enabled=False, calculator=divide_by_current)
    )
    assert await tracker.update(2, 4) is None
    assert got == []


async def test_a_calculator_failure_is_reported_again_in_a_later_run(
    progress: ProgressTrackingService,
) -> None:
    got = collect(progress.get_progress_stream())
    for _ in range(2):
        tracker = progress.create_tracker(E, N, {"calculator": divide_by_current})
        await tracker.update(2, 4)
        await tracker.update(2, 4)
        progress.close_execution(E)
    assert [u.type for u in got] == [ET.ERROR, ET.ERROR]


# ============================================================================ event transformer


@pytest.fixture
def events(clock: FakeClock) -> EventStreamProcessorService:
    return EventStreamProcessorService(clock=clock)


def enrich_except_debug(event: StreamUpdate[Any]) -> Any:
    if event.type is ET.DEBUG:
        raise KeyError("debug")
    return {**event, "enriched": True}


async def test_a_raising_transformer_drops_that_event_and_the_stream_says_so_once(
    events: EventStreamProcessorService, caplog: pytest.LogCaptureFixture
) -> None:
    got = collect(events.get_event_stream(E))
    with caplog.at_level(logging.WARNING, logger="streaming_module.events"):
        published = [
            events.emit_event(E, kind, {"n": i}, node_id=N, transformer=enrich_except_debug)
            for i, kind in enumerate([ET.NODE_START, ET.DEBUG, ET.DEBUG, ET.NODE_COMPLETE])
        ]
    assert published[1] is None and published[2] is None  # dropped
    assert [(u.type, u.data) for u in got] == [
        (ET.NODE_START, {"n": 0}),
        (ET.ERROR, got[1].data),
        (ET.NODE_COMPLETE, {"n": 3}),
    ]
    assert published[0] is got[0] and published[3] is got[2]
    assert got[0].metadata.enriched is True and got[2].metadata.enriched is True
    assert got[1].data == {
        "code": "callback_failed",
        "message": "the event transformer of node 'write' failed (KeyError: 'debug'); "
        "the events it fails on are dropped",
        "callback": "transformer",
        "node": N,
        "error": "'debug'",
        "error_type": "KeyError",
    }
    # The error is not passed through the transformer; numbers have no hole for dropped events.
    assert "enriched" not in got[1].metadata.extra
    assert got[1].metadata.priority == "high"
    assert [u.metadata.sequence_number for u in got] == [1, 2, 3]
    assert len(failures_logged(caplog)) == 1


async def test_a_transformer_that_returns_none_drops_the_event_without_an_error(
    events: EventStreamProcessorService,
) -> None:
    got = collect(events.get_event_stream(E))
    assert events.emit_event(E, ET.NODE_START, node_id=N, transformer=lambda e: None) is None
    assert got == []


async def test_a_transformer_result_that_is_not_an_event_is_a_failure(
    events: EventStreamProcessorService,
) -> None:
    got = collect(events.get_event_stream(E))
    events.emit_event(E, ET.NODE_START, node_id=N, transformer=lambda e: 42)
    events.emit_event(E, ET.NODE_START, node_id="other", transformer=lambda e: {"priority": "?"})
    assert [(u.node_id, u.data["error_type"]) for u in got] == [
        (N, "EventStreamingError"),
        ("other", "EventStreamingError"),
    ]


async def test_what_the_transformer_sees_and_may_change(
    events: EventStreamProcessorService, clock: FakeClock
) -> None:
    seen: list[StreamUpdate[Any]] = []

    def retype(event: StreamUpdate[Any]) -> Any:
        seen.append(event)
        return {**event, "type": "error", "data": "now an error", "agent_type": "writer"}

    update = events.emit_event(
        E, ET.NODE_START, {"a": 1}, node_id=N, metadata={"source": "s"}, transformer=retype
    )
    (candidate,) = seen
    assert (candidate.type, candidate.data, candidate.metadata.sequence_number) == (
        ET.NODE_START,
        {"a": 1},
        0,  # no number until it is published
    )
    assert candidate.metadata.source == "s" and candidate.metadata.timestamp == clock.now()
    assert update is not None
    assert (update.type, update.data, update.metadata.agent_type) == (
        ET.ERROR,
        "now an error",
        "writer",
    )
    assert update.metadata.priority == "high"  # the default of the new type
    assert (update.execution_id, update.node_id, update.metadata.sequence_number) == (E, N, 1)


async def test_a_final_status_forgets_the_failure_so_a_later_run_reports_again(
    events: EventStreamProcessorService,
) -> None:
    got = collect(events.get_event_stream())
    for _ in range(2):
        events.emit_event(E, ET.DEBUG, node_id=N, transformer=enrich_except_debug)
        events.emit_event(E, ET.DEBUG, node_id=N, transformer=enrich_except_debug)
        events.emit_status(E, "completed")
    assert [u.type for u in got] == [ET.ERROR, ET.STATUS, ET.ERROR, ET.STATUS]


def event(kind: StreamEventType, execution_id: str, node_id: str, n: int) -> StreamUpdate[Any]:
    return StreamUpdate(kind, {"n": n}, StreamMetadata(FakeClock().now(), n, execution_id, node_id))


async def test_transform_events_puts_the_error_where_the_event_was(
    events: EventStreamProcessorService, caplog: pytest.LogCaptureFixture
) -> None:
    given = [
        event(ET.NODE_START, E, N, 1),
        event(ET.DEBUG, E, N, 2),
        event(ET.DEBUG, E, N, 3),
        event(ET.DEBUG, E, "other", 4),
        event(ET.DEBUG, "run-2", N, 5),
        event(ET.NODE_COMPLETE, E, N, 6),
    ]
    with caplog.at_level(logging.WARNING, logger="streaming_module.events"):
        out = events.transform_events(given, enrich_except_debug)
    assert [(u.type, u.execution_id, u.node_id, u.metadata.sequence_number) for u in out] == [
        (ET.NODE_START, E, N, 1),
        (ET.ERROR, E, N, 2),  # in place of the first event it failed on, per node and run
        (ET.ERROR, E, "other", 4),
        (ET.ERROR, "run-2", N, 5),
        (ET.NODE_COMPLETE, E, N, 6),
    ]
    assert out[1].data["code"] == "callback_failed" and out[1].metadata.priority == "high"
    assert out[1].metadata.timestamp == given[1].metadata.timestamp
    assert out[0].metadata.enriched is True and "enriched" not in given[0].metadata.extra
    assert len(failures_logged(caplog)) == 3
    # Nothing was published: the list is the stream here.
    assert events.active_executions == []


async def test_transform_events_leaves_out_what_the_transformer_drops(
    events: EventStreamProcessorService,
) -> None:
    given = [event(ET.NODE_START, E, N, 1), event(ET.DEBUG, E, N, 2)]
    out = events.transform_events(given, lambda e: None if e.type is ET.DEBUG else e)
    assert out == [given[0]]


async def test_transform_events_still_refuses_a_transformer_that_is_not_callable(
    events: EventStreamProcessorService,
) -> None:
    with pytest.raises(EventStreamingError, match="must be callable"):
        events.transform_events([], "not callable")  # type: ignore[arg-type]


# ============================================================================ in a workflow run


class Draft(TypedDict, total=False):
    prompt: str
    content: str
    summary: str


def chat(*texts: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=t) for t in texts]))


def fails_once(token: str, metadata: Any) -> str:
    if token == "brown":
        raise RuntimeError("not this one")
    return token


@workflow(name="fails-once")
class FailsOnce(DeclarativeWorkflowBase[Draft]):
    def __init__(self, **services: Any) -> None:
        super().__init__(**services)
        self.llm = chat("the quick brown fox jumps", "all good here")

    @node(type="llm")
    @stream_token(buffer_size=2, flush_interval=0, processor=fails_once)
    @stream_event(events=["node_start", "node_complete"], transformer=lambda e: e)
    @stream_progress(interval=0, calculator=lambda c, t, m: 100.0 * c / t)
    async def write(self, state: Draft) -> Draft:
        reply = await self.llm.ainvoke(state["prompt"])
        return {"content": str(reply.content)}

    @node(type="llm")
    @stream_token(buffer_size=50, flush_interval=0)
    async def summarise(self, state: Draft) -> Draft:
        reply = await self.llm.ainvoke("sum up")
        return {"summary": str(reply.content)}


async def test_a_run_whose_processor_fails_once_completes_with_one_error_event(
    services: dict[str, Any],
) -> None:
    updates = [u async for u in FailsOnce(**services).stream({"prompt": "p"}, "run-x")]
    write = [u for u in updates if u.node_id == "write"]
    kinds = [u.type.value for u in write]
    assert kinds.count("error") == 1
    error = write[kinds.index("error")]
    assert (error.data["callback"], error.data["error"]) == ("processor", "not this one")
    # Tokens before the error are the text up to the failure; after it, the rest minus the
    # one token the processor failed on.
    before = "".join(u.data.content for u in write[: kinds.index("error")] if u.type is ET.TOKEN)
    after = "".join(u.data.content for u in write[kinds.index("error") :] if u.type is ET.TOKEN)
    assert (before, after) == ("the quick ", " fox jumps")
    assert kinds[0] == "progress" and kinds[1] == "node_start" and kinds[-1] == "node_complete"
    # The next node and the run carry on: the summary streams whole, completed is last.
    summary = "".join(u.data.content for u in updates if u.node_id == "summarise"
                      and u.type is ET.TOKEN)  # fmt: skip
    assert summary == "all good here"
    assert updates[-1].type is ET.STATUS and updates[-1].data.status == "completed"
    assert updates[-1].data.result == {
        "prompt": "p",
        "content": "the quick brown fox jumps",
        "summary": "all good here",
    }
