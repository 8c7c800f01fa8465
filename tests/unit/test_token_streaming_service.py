"""TokenStreamingService, as a user of the manual sees it: streams opened, tokens in, buffered
and batched updates out, with a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex.subject import Subject

from streaming_module import StreamOverflowError
from streaming_module.config import StreamingModuleOptions, StreamTokenOptions
from streaming_module.core.clock import FakeClock
from streaming_module.errors import StreamingConfigError, StreamingError, TokenStreamingError
from streaming_module.services._streams import observable_to_async_iter
from streaming_module.services.token_streaming import (
    TokenStatistics,
    TokenStreamingService,
)
from streaming_module.types import StreamEventType, StreamUpdate, TokenData

E, N = "exec-1", "llm"


@dataclass
class Collected:
    items: list[Any] = field(default_factory=list)
    completed: bool = False

    @property
    def contents(self) -> list[str]:
        return [u.data.content for u in self.items]

    @property
    def text(self) -> str:
        return "".join(self.contents)


def collect(observable: Observable[Any]) -> Collected:
    out = Collected()

    def done() -> None:
        out.completed = True

    observable.subscribe(on_next=out.items.append, on_completed=done)
    return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(clock: FakeClock) -> TokenStreamingService:
    return TokenStreamingService(
        StreamingModuleOptions(websocket={"enabled": False}, default_buffer_size=10),
        clock=clock,
        rng=random.Random(7),  # the flush-timer jitter, repeatable
    )


async def open_stream(service: TokenStreamingService, **config: Any) -> None:
    await service.initialize_token_stream(execution_id=E, node_id=N, config=config)


# ============================================================================ the manual's test


class TestManualUnitTesting:
    """The manual's 'Unit Testing' section, translated to Python."""

    @pytest.fixture
    def service(self) -> TokenStreamingService:
        return TokenStreamingService(
            StreamingModuleOptions(websocket={"enabled": False}, default_buffer_size=10)
        )

    async def test_should_initialize_token_stream(self, service: TokenStreamingService) -> None:
        config = {"enabled": True, "bufferSize": 50, "methodName": "testMethod"}

        await service.initialize_token_stream(
            execution_id="test-exec", node_id="test-node", config=config
        )

        streams = service.get_active_token_streams()
        assert len(streams) == 1
        assert streams[0].config.buffer_size == 50

    async def test_should_stream_tokens_with_buffering(
        self, service: TokenStreamingService
    ) -> None:
        await service.initialize_token_stream(
            execution_id="test-exec",
            node_id="test-node",
            config={"enabled": True, "bufferSize": 3, "methodName": "test"},
        )

        token_stream = service.get_token_stream("test-exec", "test-node")
        tokens: list[Any] = []

        token_stream.subscribe(lambda token: tokens.append(token))

        service.stream_token("test-exec", "test-node", "Hello")
        service.stream_token("test-exec", "test-node", "World")

        await service.flush_tokens("test-exec", "test-node")

        assert len(tokens) > 0
        await service.aclose()


# ============================================================================ when buffers flush


async def test_buffer_flushes_when_it_reaches_buffer_size(service: TokenStreamingService) -> None:
    await open_stream(service, buffer_size=3, flush_interval=0)
    got = collect(service.get_token_stream(E, N))
    for token in ["a", "b"]:
        service.stream_token(E, N, token)
    assert got.items == []
    service.stream_token(E, N, "c")
    assert got.contents == ["abc"]


async def test_buffer_size_none_uses_the_module_default(service: TokenStreamingService) -> None:
    await open_stream(service, flush_interval=0)
    got = collect(service.get_token_stream(E))
    for i in range(25):
        service.stream_token(E, N, str(i % 10))
    assert got.contents == ["0123456789", "0123456789"]
    assert service.get_active_token_streams()[0].config.buffer_size == 10


async def test_flush_interval_fires_by_itself_without_more_tokens(
    service: TokenStreamingService, clock: FakeClock
) -> None:
    await open_stream(service, buffer_size=100, flush_interval=100)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "Hel")
    clock.advance(0.05)
    service.stream_token(E, N, "lo")
    # The timer runs up to FLUSH_JITTER (10%) early, never late: 90-100 ms after "Hel".
    clock.advance(0.0399)
    assert got.items == []
    clock.advance(0.0102)  # 100 ms after the first buffered token (float slack)
    assert got.contents == ["Hello"]
    clock.advance(10)
    assert len(got.items) == 1  # nothing buffered: no empty update
    assert clock.pending_timers == 1  # only the idle sweep is left


async def test_streams_opened_together_flush_within_their_interval_but_not_together(
    clock: FakeClock,
) -> None:
    # 100 streams opened and fed together (a lock-step round-robin load): each one still
    # flushes within its flush_interval, but their timers no longer fire in the same instant.
    service = TokenStreamingService(
        {"stream_idle_timeout_ms": 0}, clock=clock, rng=random.Random(1)
    )
    flushed_at: dict[str, float] = {}
    for i in range(100):
        node = f"n{i}"
        await service.initialize_token_stream(
            execution_id=E, node_id=node, config={"buffer_size": 100, "flush_interval": 50}
        )
        service.get_token_stream(E, node).subscribe(
            lambda u, node=node: flushed_at.setdefault(node, clock.monotonic())
        )
    start = clock.monotonic()
    for i in range(100):
        service.stream_token(E, f"n{i}", "t")
    for _ in range(60):
        clock.advance(0.001)
    assert len(flushed_at) == 100
    delays = [at - start for at in flushed_at.values()]
    assert all(0.045 - 1e-9 <= d <= 0.050 + 1e-9 for d in delays)  # the promise: <= 50 ms
    assert len(set(delays)) > 50  # spread out, not one burst


async def test_the_flush_jitter_is_drawn_once_per_stream_from_the_given_rng() -> None:
    async def deadlines(seed: int) -> list[float]:
        clock = FakeClock()
        service = TokenStreamingService(
            {"stream_idle_timeout_ms": 0}, clock=clock, rng=random.Random(seed)
        )
        got: list[float] = []
        for i in range(5):
            await service.initialize_token_stream(execution_id=E, node_id=f"n{i}")
            service.get_token_stream(E, f"n{i}").subscribe(lambda u: got.append(clock.monotonic()))
        for _ in range(2):  # two rounds: the same stream keeps its delay
            for i in range(5):
                service.stream_token(E, f"n{i}", "t")
            for _ in range(100):
                clock.advance(0.001)
        return got

    first = await deadlines(3)
    assert first == await deadlines(3)  # seedable: tests and benchmarks can repeat a draw
    assert first != await deadlines(4)
    first_round = [t - 1000.0 for t in first[:5]]
    second_round = [t - 1000.1 for t in first[5:]]
    assert first_round == pytest.approx(second_round, abs=1.5e-3)


async def test_flush_interval_0_disables_the_timer(
    service: TokenStreamingService, clock: FakeClock
) -> None:
    await open_stream(service, buffer_size=100, flush_interval=0)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "x")
    clock.advance(60)
    assert got.items == []
    await service.flush_tokens(E, N)
    assert got.contents == ["x"]


async def test_streams_without_flush_interval_use_the_module_default(clock: FakeClock) -> None:
    service = TokenStreamingService({"default_flush_interval": 250}, clock=clock)
    await open_stream(service, buffer_size=100)
    assert service.get_active_token_streams()[0].config.flush_interval == 250
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "x")
    clock.advance(0.224)  # the timer may run up to 10% early: not before 225 ms
    assert got.items == []
    clock.advance(0.0261)  # at most 250 ms (float slack)
    assert got.contents == ["x"]


async def test_flush_tokens_delivers_before_it_returns(service: TokenStreamingService) -> None:
    await open_stream(service, buffer_size=100)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "Hi")
    await service.flush_tokens(E, N)
    assert got.contents == ["Hi"]
    await service.flush_tokens(E, N)  # nothing buffered: nothing emitted
    assert len(got.items) == 1


async def test_close_token_stream_flushes_then_completes(service: TokenStreamingService) -> None:
    await open_stream(service, buffer_size=100)
    node = collect(service.get_token_stream(E, N))
    execution = collect(service.get_token_stream(E))
    service.stream_token(E, N, "bye")
    service.close_token_stream(E, N)
    assert node.contents == ["bye"] and node.completed
    assert execution.contents == ["bye"] and not execution.completed
    assert not service.has_token_stream(E, N)


async def test_close_execution_flushes_every_node_then_completes_everything(
    service: TokenStreamingService,
) -> None:
    await service.initialize_token_stream(execution_id=E, node_id="a", config={"bufferSize": 99})
    await service.initialize_token_stream(execution_id=E, node_id="b", config={"bufferSize": 99})
    await service.initialize_token_stream(execution_id="other", node_id="a")
    execution = collect(service.get_token_stream(E))
    node_b = collect(service.get_token_stream(E, "b"))
    glob = collect(service.get_global_token_stream())
    service.stream_token(E, "a", "1")
    service.stream_token(E, "b", "2")
    service.close_execution_token_streams(E)
    assert execution.contents == ["1", "2"] and execution.completed
    assert node_b.contents == ["2"] and node_b.completed
    assert glob.contents == ["1", "2"] and not glob.completed
    assert [s.stream_key for s in service.get_active_token_streams()] == ["other:a"]


# ============================================================================ batching and format


async def test_batch_size_groups_tokens_per_update(service: TokenStreamingService) -> None:
    await open_stream(service, buffer_size=100, batch_size=10)
    got = collect(service.get_token_stream(E, N))
    for i in range(25):
        service.stream_token(E, N, f"{i},")
    await service.flush_tokens(E, N)
    assert [u.data.total_tokens - u.data.index for u in got.items] == [10, 10, 5]
    assert [u.data.index for u in got.items] == [0, 10, 20]
    assert [u.metadata.sequence_number for u in got.items] == [1, 2, 3]
    assert got.text == "".join(f"{i}," for i in range(25))


async def test_every_update_carries_time_sequence_and_ids(
    service: TokenStreamingService, clock: FakeClock
) -> None:
    await open_stream(service, buffer_size=2)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "a")
    service.stream_token(E, N, "b")
    clock.advance(5)
    service.stream_token(E, N, "c")
    service.stream_token(E, N, "d")
    first, second = got.items
    assert isinstance(first, StreamUpdate) and first.type is StreamEventType.TOKEN
    assert isinstance(first.data, TokenData)
    assert first.metadata.timestamp == clock.now() - timedelta(seconds=5)
    assert second.metadata.timestamp == clock.now()
    assert second.metadata.timestamp.tzinfo is not None
    assert [u.metadata.sequence_number for u in got.items] == [1, 2]
    assert (first.metadata.execution_id, first.metadata.node_id) == (E, N)
    assert first.metadata.agent_type is None
    assert (first.data.content, first.data.index, first.data.total_tokens) == ("ab", 0, 2)


async def test_formats_shape_the_payload_and_content_is_always_the_text(
    service: TokenStreamingService,
) -> None:
    for fmt in ["text", "json", "structured"]:
        await service.initialize_token_stream(
            execution_id=E, node_id=fmt, config={"format": fmt, "bufferSize": 2}
        )
    got = collect(service.get_token_stream(E))
    for fmt in ["text", "json", "structured"]:
        service.stream_token(E, fmt, "Hi", {"logprob": -0.5})
        service.stream_token(E, fmt, "!")
    text, json_, structured = got.items
    assert [u.data.content for u in got.items] == ["Hi!"] * 3
    assert text.data.tokens is None and text.data.role is None
    assert json_.data.tokens == ["Hi", "!"] and json_.data.role is None
    assert structured.data.tokens == ["Hi", "!"] and structured.data.role == "assistant"
    assert structured.metadata.token_metadata == [{"logprob": -0.5}, {}]
    assert "token_metadata" not in text.metadata.to_dict()


async def test_include_metadata_merges_token_metadata_into_update_metadata(
    service: TokenStreamingService,
) -> None:
    await open_stream(service, includeMetadata=True, bufferSize=2)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "a", {"model": "fake", "step": 1})
    service.stream_token(E, N, "b", {"step": 2, "execution_id": "spoofed"})
    (update,) = got.items
    assert update.metadata.model == "fake" and update.metadata["step"] == 2
    assert update.metadata.execution_id == E


async def test_token_metadata_is_copied_so_callers_may_reuse_their_dict(
    service: TokenStreamingService,
) -> None:
    await open_stream(service, format="structured", bufferSize=2)
    got = collect(service.get_token_stream(E, N))
    meta = {"i": 0}
    service.stream_token(E, N, "a", meta)
    meta["i"] = 1
    service.stream_token(E, N, "b", meta)
    assert got.items[0].metadata.token_metadata == [{"i": 0}, {"i": 1}]


# ============================================================================ filter, processor


async def test_filter_sees_raw_tokens_and_processor_only_those_that_passed(
    service: TokenStreamingService,
) -> None:
    seen: list[tuple[str, Any]] = []

    def processor(token: str, metadata: dict[str, Any] | None) -> str:
        seen.append((token, metadata))
        return token.upper()

    await open_stream(
        service,
        buffer_size=100,
        processor=processor,
        filter={"minLength": 2, "maxLength": 5, "excludeWhitespace": True, "pattern": "^[a-z ]+$"},
    )
    got = collect(service.get_token_stream(E, N))
    for token in ["hello", " ", "a", "toolong", "Caps", "ok", "  "]:
        service.stream_token(E, N, token, {"t": token})
    await service.flush_tokens(E, N)
    assert got.text == "HELLOOK"
    assert seen == [("hello", {"t": "hello"}), ("ok", {"t": "ok"})]
    (info,) = service.get_active_token_streams()
    assert (info.tokens_in, info.tokens_dropped, info.tokens_out) == (7, 5, 2)


async def test_disabled_stream_drops_its_tokens(service: TokenStreamingService) -> None:
    await open_stream(service, enabled=False)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "x")
    await service.flush_tokens(E, N)
    assert got.items == []
    assert service.get_active_token_streams()[0].tokens_dropped == 1


# ============================================================================ errors


async def test_stream_token_on_a_stream_never_initialised_says_what_to_do(
    service: TokenStreamingService,
) -> None:
    with pytest.raises(TokenStreamingError) as info:
        service.stream_token(E, N, "x")
    assert "exec-1:llm" in str(info.value)
    assert "initialize_token_stream" in str(info.value)
    assert info.value.code == "stream_not_found"


async def test_flush_tokens_on_a_stream_never_initialised_raises_the_same_error(
    service: TokenStreamingService,
) -> None:
    with pytest.raises(TokenStreamingError) as streaming:
        service.stream_token(E, N, "x")
    with pytest.raises(TokenStreamingError) as flushing:
        await service.flush_tokens(E, N)
    assert "exec-1:llm" in str(flushing.value)
    assert "initialize_token_stream" in str(flushing.value)
    assert flushing.value.code == streaming.value.code == "stream_not_found"
    assert flushing.value.message == streaming.value.message
    assert flushing.value.context["stream_key"] == "exec-1:llm"
    await open_stream(service)
    service.close_token_stream(E, N)
    with pytest.raises(TokenStreamingError, match="exec-1:llm"):
        await service.flush_tokens(E, N)  # closed: not open either


async def test_stream_token_after_close_raises_too(service: TokenStreamingService) -> None:
    await open_stream(service)
    service.close_token_stream(E, N)
    with pytest.raises(TokenStreamingError, match="initialize_token_stream"):
        service.stream_token(E, N, "x")


@pytest.mark.parametrize(
    ("token", "match"),
    [(42, "must be a str, got int"), (None, "must be a str"), ("x" * 101, "max_token_length")],
)
async def test_bad_tokens_raise_helpful_errors(clock: FakeClock, token: Any, match: str) -> None:
    service = TokenStreamingService({"max_token_length": 100}, clock=clock)
    await open_stream(service)
    with pytest.raises(TokenStreamingError, match=match):
        service.stream_token(E, N, token)


async def test_bad_ids_metadata_and_config_raise_streaming_errors(
    service: TokenStreamingService,
) -> None:
    with pytest.raises(TokenStreamingError, match="execution_id must be a non-empty"):
        await service.initialize_token_stream(execution_id="", node_id=N)
    with pytest.raises(TokenStreamingError, match="node_id must be a str"):
        await service.initialize_token_stream(execution_id=E, node_id=3)  # type: ignore[arg-type]
    with pytest.raises(StreamingConfigError, match="bufferSise") as info:
        await service.initialize_token_stream(execution_id=E, node_id=N, config={"bufferSise": 3})
    assert isinstance(info.value, StreamingError)
    with pytest.raises(StreamingConfigError, match=r"bufferSize.*greater than or equal to 1"):
        await service.initialize_token_stream(execution_id=E, node_id=N, config={"bufferSize": 0})
    with pytest.raises(TokenStreamingError, match="execution_id must be a str"):
        service.stream_token(["unhashable"], N, "x")  # type: ignore[arg-type]
    await open_stream(service)
    with pytest.raises(TokenStreamingError, match="metadata"):
        service.stream_token(E, N, "x", ["not", "a", "mapping"])  # type: ignore[arg-type]


async def test_ids_containing_colons_do_not_collide(service: TokenStreamingService) -> None:
    await service.initialize_token_stream(execution_id="a:b", node_id="c", config={"bufferSize": 1})
    await service.initialize_token_stream(execution_id="a", node_id="b:c", config={"bufferSize": 1})
    first = collect(service.get_token_stream("a:b", "c"))
    second = collect(service.get_token_stream("a", "b:c"))
    service.stream_token("a:b", "c", "1")
    service.stream_token("a", "b:c", "2")
    assert first.contents == ["1"] and second.contents == ["2"]
    assert sorted(s.stream_key for s in service.get_active_token_streams()) == ["a:b:c", "a:b:c"]
    assert service.has_token_stream("a:b", "c") and not service.has_token_stream("a:b:c", "")


# ============================================================================ subscribers


async def test_clients_can_subscribe_before_the_stream_exists(
    service: TokenStreamingService,
) -> None:
    execution = collect(service.get_token_stream(E))
    node = collect(service.get_token_stream(E, N))
    await open_stream(service, bufferSize=1)
    service.stream_token(E, N, "first")
    assert execution.contents == ["first"] and node.contents == ["first"]


async def test_subjects_do_not_outlive_their_subscribers(service: TokenStreamingService) -> None:
    for i in range(100):
        execution_id = f"run-{i}"
        await service.initialize_token_stream(execution_id=execution_id, node_id=N)
        service.get_token_stream(execution_id).subscribe(lambda u: None)
        service.get_token_stream(execution_id, N).subscribe(lambda u: None)
        service.stream_token(execution_id, N, "x")
        service.close_execution_token_streams(execution_id)
    disposable = service.get_token_stream("never-run").subscribe(lambda u: None)
    disposable.dispose()
    assert service._hub.channel_count == 0 and service._hub.executions() == set()
    assert service._streams == {} and service._by_execution == {}


async def test_a_raising_subscriber_is_logged_and_others_still_receive(
    service: TokenStreamingService, caplog: pytest.LogCaptureFixture
) -> None:
    await open_stream(service, bufferSize=1)
    calls: list[str] = []

    def broken(update: StreamUpdate[TokenData]) -> None:
        calls.append(update.data.content)
        raise ValueError("subscriber bug")

    service.get_token_stream(E, N).subscribe(broken)
    healthy = collect(service.get_token_stream(E, N))
    with caplog.at_level(logging.ERROR, logger="streaming_module.tokens"):
        service.stream_token(E, N, "a")
        service.stream_token(E, N, "b")
    assert calls == ["a", "b"]  # still subscribed
    assert healthy.contents == ["a", "b"]
    assert "subscriber bug" in caplog.text


async def test_global_stream_sees_every_stream(service: TokenStreamingService) -> None:
    everything = collect(service.get_global_token_stream())
    await service.initialize_token_stream(execution_id="x", node_id="n", config={"bufferSize": 1})
    await service.initialize_token_stream(execution_id="y", node_id="n", config={"bufferSize": 1})
    service.stream_token("x", "n", "1")
    service.stream_token("y", "n", "2")
    assert [(u.execution_id, u.data.content) for u in everything.items] == [("x", "1"), ("y", "2")]


async def test_order_holds_when_a_subscriber_streams_and_flushes_from_its_callback(
    service: TokenStreamingService,
) -> None:
    await open_stream(service, buffer_size=2, batch_size=1)
    seen: list[int] = []

    def reenter(update: StreamUpdate[TokenData]) -> None:
        seen.append(update.metadata.sequence_number)
        if update.data.content == "a":
            service.stream_token(E, N, "c")
            service.stream_token(E, N, "d")  # a nested size flush

    service.get_token_stream(E, N).subscribe(reenter)
    after = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "a")
    service.stream_token(E, N, "b")
    assert seen == [1, 2, 3, 4]
    assert after.contents == ["a", "b", "c", "d"]


async def test_timer_and_explicit_flush_meeting_keep_order_and_lose_nothing(
    service: TokenStreamingService, clock: FakeClock
) -> None:
    await open_stream(service, buffer_size=100, flush_interval=100)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "a")
    clock.advance(0.1)  # timer flush
    service.stream_token(E, N, "b")
    await service.flush_tokens(E, N)  # explicit flush before the new timer
    clock.advance(0.1)  # that timer was cancelled: no empty update
    service.stream_token(E, N, "c")
    clock.advance(0.05)
    service.close_token_stream(E, N)
    assert got.contents == ["a", "b", "c"]
    assert [u.metadata.sequence_number for u in got.items] == [1, 2, 3]


async def test_reinitialising_flushes_under_the_old_config_then_applies_the_new(
    service: TokenStreamingService,
) -> None:
    await open_stream(service, buffer_size=100, format="text")
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "old")
    await open_stream(service, buffer_size=1, format="json")
    assert got.contents == ["old"] and got.items[0].data.tokens is None
    service.stream_token(E, N, "new")
    assert got.items[1].data.tokens == ["new"]
    assert got.items[1].metadata.sequence_number == 2
    (info,) = service.get_active_token_streams()
    assert info.config.format == "json" and info.tokens_in == 2


# ============================================================================ introspection


async def test_active_streams_report_config_key_last_flush_and_counters(
    service: TokenStreamingService, clock: FakeClock
) -> None:
    await open_stream(service, buffer_size=2, filter={"excludeWhitespace": True})
    (info,) = service.get_active_token_streams()
    assert info.stream_key == "exec-1:llm"
    assert isinstance(info.config, StreamTokenOptions)
    assert info.last_flush == clock.now() and info.last_flush.tzinfo is not None
    clock.advance(3)
    for token in ["a", " ", "b", "c"]:
        service.stream_token(E, N, token)
    (info,) = service.get_active_token_streams()
    assert info.last_flush == clock.now()
    assert (info.tokens_in, info.tokens_out, info.tokens_dropped) == (4, 2, 1)
    assert info.updates_emitted == 1 and info.buffered == 1
    assert isinstance(service.get_active_token_streams(), list)


async def test_token_stats_emit_on_subscription_then_on_change_with_a_current_rate(
    service: TokenStreamingService, clock: FakeClock
) -> None:
    stats = collect(service.get_token_stats())
    assert len(stats.items) == 1 and stats.items[0].active_streams == 0
    await open_stream(service, buffer_size=10, filter={"excludeWhitespace": True})
    assert stats.items[-1].active_streams == 1
    for _ in range(5):
        for token in [" ", *["w"] * 10]:
            service.stream_token(E, N, token)
        clock.advance(0.1)
    last: TokenStatistics = stats.items[-1]
    assert (last.tokens_in, last.tokens_out, last.tokens_dropped) == (55, 50, 5)
    assert last.updates_emitted == 5
    assert last.tokens_per_second == pytest.approx(50 / 0.4, rel=0.3)
    clock.advance(5)
    assert service.token_statistics().tokens_per_second == 0.0  # current, not lifetime
    service.close_token_stream(E, N)
    assert stats.items[-1].active_streams == 0 and stats.items[-1].tokens_out == 50


# ============================================================================ stale streams, aclose


async def test_close_stale_streams_closes_only_idle_streams(clock: FakeClock) -> None:
    service = TokenStreamingService({"stream_idle_timeout_ms": 1000}, clock=clock)
    await service.initialize_token_stream(execution_id=E, node_id="idle")
    await service.initialize_token_stream(
        execution_id=E, node_id="busy", config={"bufferSize": 100, "flushInterval": 0}
    )
    idle = collect(service.get_token_stream(E, "idle"))
    service.stream_token(E, "idle", "left behind")
    clock.advance(0.2)  # the flush timer emits it
    for _ in range(12):
        clock.advance(0.1)
        service.stream_token(E, "busy", ".")  # never flushed, but alive
    assert service.close_stale_streams() == 1
    assert idle.contents == ["left behind"] and idle.completed
    assert [s.node_id for s in service.get_active_token_streams()] == ["busy"]


async def test_stale_streams_close_by_themselves_on_the_clock(clock: FakeClock) -> None:
    service = TokenStreamingService({"stream_idle_timeout_ms": 1000}, clock=clock)
    await open_stream(service, buffer_size=100, flush_interval=0)
    got = collect(service.get_token_stream(E, N))
    service.stream_token(E, N, "x")
    clock.advance(1.0)
    assert service.has_token_stream(E, N)
    clock.advance(1.0)
    assert not service.has_token_stream(E, N)
    assert got.contents == ["x"] and got.completed
    assert clock.pending_timers == 0  # no streams: no sweeping


async def test_idle_timeout_0_keeps_streams(clock: FakeClock) -> None:
    service = TokenStreamingService({"stream_idle_timeout_ms": 0}, clock=clock)
    await open_stream(service)
    clock.advance(3600)
    assert service.close_stale_streams() == 0 and service.has_token_stream(E, N)


async def test_aclose_flushes_completes_cancels_timers_and_refuses_further_use(
    service: TokenStreamingService, clock: FakeClock
) -> None:
    await open_stream(service, buffer_size=100)
    node = collect(service.get_token_stream(E, N))
    glob = collect(service.get_global_token_stream())
    stats = collect(service.get_token_stats())
    service.stream_token(E, N, "last words")
    await service.aclose()
    assert node.contents == ["last words"] and node.completed
    assert glob.completed and stats.completed
    assert clock.pending_timers == 0
    with pytest.raises(TokenStreamingError, match="closed"):
        service.stream_token(E, N, "x")
    with pytest.raises(TokenStreamingError, match="closed"):
        await open_stream(service)
    with pytest.raises(TokenStreamingError, match="closed"):
        service.get_token_stream(E)
    service.close_token_stream(E, N)  # no-ops
    await service.flush_tokens(E, N)
    await service.aclose()


# ============================================================================ async iteration


async def test_iter_token_stream_yields_updates_until_the_stream_closes(
    service: TokenStreamingService,
) -> None:
    updates = service.iter_token_stream(E)  # subscribed before the run starts
    await open_stream(service, bufferSize=2)

    async def run() -> None:
        for token in ["a", "b", "c"]:
            service.stream_token(E, N, token)
            await asyncio.sleep(0)
        service.close_execution_token_streams(E)

    task = asyncio.create_task(run())
    received = [u.data.content async for u in updates]
    await task
    assert received == ["ab", "c"]


async def test_breaking_out_of_async_for_unsubscribes(service: TokenStreamingService) -> None:
    await open_stream(service, bufferSize=1)
    service.stream_token(E, N, "warm-up")

    async def first_update() -> str:
        async for update in service.iter_token_stream(E, N):
            return update.data.content
        return ""

    task = asyncio.create_task(first_update())
    await asyncio.sleep(0)
    service.stream_token(E, N, "x")
    assert await task == "x"
    gc.collect()
    assert service._hub.channel_count == 0


async def test_iter_global_and_stats_twins(service: TokenStreamingService) -> None:
    glob = service.iter_global_token_stream()
    stats = service.iter_token_stats()
    await open_stream(service, bufferSize=1)
    service.stream_token(E, N, "x")
    assert (await anext(glob)).data.content == "x"
    assert (await anext(stats)).active_streams == 0
    await glob.aclose()
    await stats.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(glob)


async def test_async_iterator_overflow_error_policy_loses_nothing_silently() -> None:
    subject: Subject[int] = Subject()
    iterator = observable_to_async_iter(subject, max_queue=3, name="numbers")
    for i in range(5):
        subject.on_next(i)
    assert not iterator.subscribed
    assert [await anext(iterator) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(StreamOverflowError, match="numbers"):
        await anext(iterator)
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)


async def test_async_iterator_drop_oldest_policy_keeps_the_latest() -> None:
    subject: Subject[int] = Subject()
    iterator = observable_to_async_iter(subject, max_queue=2, overflow="drop_oldest")
    for i in range(5):
        subject.on_next(i)
    subject.on_completed()
    assert [i async for i in iterator] == [3, 4]
    assert iterator.dropped == 3


async def test_async_iterator_raises_the_observables_error_after_queued_items() -> None:
    iterator = observable_to_async_iter(
        reactivex.concat(reactivex.of(1, 2), reactivex.throw(KeyError("gone")))
    )
    assert [await anext(iterator), await anext(iterator)] == [1, 2]
    with pytest.raises(KeyError):
        await anext(iterator)


async def test_async_iterator_wakes_up_for_items_pushed_from_another_thread() -> None:
    subject: Subject[str] = Subject()
    iterator = observable_to_async_iter(subject)
    loop = asyncio.get_running_loop()
    pending = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0)
    await loop.run_in_executor(None, subject.on_next, "from a thread")
    assert await asyncio.wait_for(pending, 5) == "from a thread"
    await iterator.aclose()


# ============================================================================ property


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("token"), st.sampled_from(["a", "bb", " ", "", "\n", "ccc", "d:e"])),
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("advance"), st.sampled_from([0.001, 0.03, 0.05, 0.1, 0.5])),
        st.tuples(st.just("close"), st.none()),
        st.tuples(st.just("close_execution"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    buffer_size=st.integers(1, 6),
    batch_size=st.one_of(st.none(), st.integers(1, 4)),
    flush_interval=st.sampled_from([0, 20, 100]),
    fmt=st.sampled_from(["text", "json", "structured"]),
    exclude_whitespace=st.booleans(),
)
def test_no_token_is_lost_duplicated_or_reordered(
    ops: list[tuple[str, Any]],
    buffer_size: int,
    batch_size: int | None,
    flush_interval: int,
    fmt: str,
    exclude_whitespace: bool,
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        service = TokenStreamingService({"stream_idle_timeout_ms": 0}, clock=clock)
        config = {
            "buffer_size": buffer_size,
            "batch_size": batch_size,
            "flush_interval": flush_interval,
            "format": fmt,
            "filter": {"exclude_whitespace": exclude_whitespace},
        }
        items: list[StreamUpdate[TokenData]] = []
        service.get_token_stream(E).subscribe(items.append)
        expected: list[str] = []
        # Positions in ``items`` where a new stream (token index from 0) and a new execution
        # numbering (sequence number from 1) begin.
        stream_starts = {0}
        numbering_starts = {0}

        async def ensure_open() -> None:
            if not service.has_token_stream(E, N):
                await open_stream(service, **config)

        for op, arg in ops:
            if op == "token":
                await ensure_open()
                service.stream_token(E, N, arg)
                if not (exclude_whitespace and not arg.strip()):
                    expected.append(arg)
            elif op == "flush":
                if service.has_token_stream(E, N):
                    await service.flush_tokens(E, N)
                else:
                    with pytest.raises(TokenStreamingError, match=f"{E}:{N}"):
                        await service.flush_tokens(E, N)
            elif op == "advance":
                clock.advance(arg)
            elif op == "close":
                service.close_token_stream(E, N)
                stream_starts.add(len(items))
            else:
                service.close_execution_token_streams(E)  # completes: subscribe again
                service.get_token_stream(E).subscribe(items.append)
                stream_starts.add(len(items))
                numbering_starts.add(len(items))
        await service.aclose()

        assert "".join(u.data.content for u in items) == "".join(expected)
        if fmt != "text":
            assert [t for u in items for t in u.data.tokens] == expected
        for update in items:
            count = update.data.total_tokens - update.data.index
            assert 1 <= count <= (batch_size or buffer_size)
        # Sequence numbers count the execution's updates, 1, 2, 3 ..., across close_token_stream
        # and up to close_execution_token_streams; token indices are contiguous per stream.
        sequence = index = 0
        for position, update in enumerate(items):
            if position in numbering_starts:
                sequence = 0
            if position in stream_starts:
                index = 0
            sequence += 1
            assert (update.metadata.sequence_number, update.data.index) == (sequence, index)
            index = update.data.total_tokens

    asyncio.run(scenario())
