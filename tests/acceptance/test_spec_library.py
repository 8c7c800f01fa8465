"""Acceptance: SPEC.md "Naming rule", "The module and its container", "Services", "Errors".

Each test quotes the sentence of ``../shared/SPEC.md`` (or of the manual) it checks and asserts on
what a user of the package would see. Time is a :class:`FakeClock`; nothing sleeps for a timer.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import reactivex
from dependency_injector import containers

import streaming_module
from streaming_module import (
    EventStreamProcessorService,
    FakeClock,
    ProgressTrackingService,
    StreamEventType,
    StreamingConfigError,
    StreamingContainer,
    StreamingError,
    StreamingModule,
    StreamingModuleOptions,
    StreamMetadata,
    StreamUpdate,
    TokenData,
    TokenStreamingError,
    TokenStreamingService,
    WebSocketError,
)

ET = StreamEventType


# --------------------------------------------------------------------------- naming rule


SPEC_CLASS_NAMES = [
    "StreamingModule",
    "TokenStreamingService",
    "EventStreamProcessorService",
    "ProgressTrackingService",
    "StreamingWebSocketGateway",
    "WebSocketBridgeService",
    "StreamEventType",
    "StreamUpdate",
    "StreamMetadata",
    "TokenData",
    "StreamingError",
    "TokenStreamingError",
    "WebSocketError",
    "StreamingModuleOptions",
    "StreamingContainer",
    "StreamingConfigError",
    "DeclarativeWorkflowBase",
]
SPEC_DECORATORS = {
    "stream_token": "StreamToken",
    "stream_event": "StreamEvent",
    "stream_progress": "StreamProgress",
    "workflow": "Workflow",
    "node": "Node",
}


@pytest.mark.parametrize("name", SPEC_CLASS_NAMES)
def test_every_public_class_is_importable_from_the_package_root(name: str) -> None:
    """ "Classes keep their names: `StreamingModule`, `TokenStreamingService`, ... Everything
    public is importable from the package root: `from streaming_module import ...`."""
    namespace: dict[str, Any] = {}
    exec(f"from streaming_module import {name}", namespace)
    assert namespace[name].__name__ == name
    assert name in streaming_module.__all__


@pytest.mark.parametrize(("snake", "camel"), sorted(SPEC_DECORATORS.items()))
def test_decorators_are_snake_case_with_camel_case_aliases_at_the_root(
    snake: str, camel: str
) -> None:
    """ "Decorators are snake_case functions: `@stream_token(...)` ...; the manual's CamelCase
    names (`StreamToken`, `StreamEvent`, `StreamProgress`, `Workflow`, `Node`) are exported as
    aliases."""
    assert getattr(streaming_module, camel) is getattr(streaming_module, snake)
    assert {snake, camel} <= set(streaming_module.__all__)


def test_service_methods_are_the_manuals_names_in_snake_case() -> None:
    """ "Method names and option keys become snake_case: `streamToken` → `stream_token`,
    `getTokenStream` → `get_token_stream`"; "Services (every method in the manual, in
    snake_case)"."""
    token = TokenStreamingService()
    for name in (
        "initialize_token_stream",
        "stream_token",
        "flush_tokens",
        "get_token_stream",
        "get_global_token_stream",
        "get_token_stats",
        "close_token_stream",
        "close_execution_token_streams",
        "get_active_token_streams",
        "iter_token_stream",
    ):
        assert callable(getattr(token, name)), name
    events = EventStreamProcessorService()
    for name in (
        "process_batch",
        "group_events_by_type",
        "aggregate_by_execution",
        "filter_events",
        "transform_events",
        "emit_event",
        "get_event_stream",
    ):
        assert callable(getattr(events, name)), name


def test_option_keys_are_snake_case_and_the_manuals_camel_case_keys_validate() -> None:
    """ "`bufferSize` → `buffer_size`, `flushInterval` → `flush_interval`, `includeETA` →
    `include_eta`, `windowMs` → `window_ms`. Options are pydantic models that also accept the
    manual's camelCase keys (aliases)."""
    from streaming_module import RateLimitOptions, StreamProgressOptions, StreamTokenOptions

    camel = StreamTokenOptions.model_validate({"bufferSize": 7, "flushInterval": 9})
    snake = StreamTokenOptions.model_validate({"buffer_size": 7, "flush_interval": 9})
    assert (camel.buffer_size, camel.flush_interval) == (snake.buffer_size, snake.flush_interval)
    assert StreamProgressOptions.model_validate({"includeETA": False}).include_eta is False
    assert StreamProgressOptions.model_validate({"include_eta": False}).include_eta is False
    assert RateLimitOptions.model_validate({"windowMs": 5}).window_ms == 5
    assert RateLimitOptions.model_validate({"window_ms": 5}).window_ms == 5


@pytest.mark.parametrize(
    ("options", "bad_key"),
    [
        ({"defaultBufferSise": 10}, "defaultBufferSise"),
        ({"websocket": {"enabled": False, "prot": 1}}, "prot"),
        ({"gateway": {"rateLimit": {"windowMS": 1}}}, "windowMS"),
    ],
)
def test_unknown_keys_are_an_error_that_names_the_key(
    options: dict[str, Any], bad_key: str
) -> None:
    """ "Unknown keys are an error that names the key." """
    with pytest.raises(StreamingConfigError) as info:
        StreamingModule.for_root(options)
    assert bad_key in str(info.value)
    assert isinstance(info.value, StreamingError)


def test_invalid_options_list_every_bad_field() -> None:
    """ "Invalid options raise `StreamingConfigError` (a `StreamingError`) listing every bad
    field." """
    with pytest.raises(StreamingConfigError) as info:
        StreamingModule.for_root(
            {"defaultBufferSize": 0, "websocket": {"port": "eighty"}, "bogus": 1}
        )
    message = str(info.value)
    for field in ("defaultBufferSize", "port", "bogus"):
        assert field in message
    assert len(info.value.errors) == 3


# --------------------------------------------------------------------------- for_root


def test_for_root_takes_a_model_a_camel_dict_a_snake_dict_or_keywords() -> None:
    """ "`StreamingModule.for_root(options=None, /, **kwargs) -> StreamingContainer`. `options` is
    a `StreamingModuleOptions`, a dict (snake_case or camelCase), or keyword arguments." """
    forms = [
        StreamingModule.for_root(StreamingModuleOptions(default_buffer_size=7)),
        StreamingModule.for_root({"defaultBufferSize": 7}),
        StreamingModule.for_root({"default_buffer_size": 7}),
        StreamingModule.for_root(default_buffer_size=7),
        StreamingModule.for_root(defaultBufferSize=7),
    ]
    for container in forms:
        # dependency-injector: instantiating a DeclarativeContainer gives a DynamicContainer
        # whose declarative_parent is the class.
        assert container.declarative_parent is StreamingContainer
        assert container.options().default_buffer_size == 7
        assert container.token_streaming().options.default_buffer_size == 7
    assert StreamingModule.for_root().options() == StreamingModuleOptions()


def test_keyword_arguments_are_merged_over_the_options_argument() -> None:
    """ "`for_root(options=None, /, **kwargs)`": keywords merge over ``options``, whichever
    spelling either uses, and the later (keyword) value wins."""
    container = StreamingModule.for_root(
        {"defaultBufferSize": 5, "websocket": {"enabled": False}}, default_buffer_size=9
    )
    assert container.options().default_buffer_size == 9
    assert container.options().websocket.enabled is False
    container = StreamingModule.for_root(
        StreamingModuleOptions(default_buffer_size=5), defaultBufferSize=11
    )
    assert container.options().default_buffer_size == 11
    container = StreamingModule.for_root({"default_buffer_size": 5}, defaultBufferSize=12)
    assert container.options().default_buffer_size == 12
    # Nested options merge key by key (SPEC is silent; a user expects "merged" to keep the rest).
    container = StreamingModule.for_root(
        {"websocket": {"enabled": True, "port": 9000}, "gateway": {"rateLimit": {"windowMs": 5}}},
        websocket={"port": 0},
        gateway={"rate_limit": {"max_connections": 7}},
    )
    opts = container.options()
    assert (opts.websocket.enabled, opts.websocket.port) == (True, 0)
    assert opts.gateway.rate_limit is not None
    assert (opts.gateway.rate_limit.window_ms, opts.gateway.rate_limit.max_connections) == (5, 7)
    with pytest.raises(StreamingConfigError, match="bogus"):
        StreamingModule.for_root({"defaultBufferSize": 5}, bogus=1)


def test_the_container_is_a_declarative_container_with_the_spec_providers() -> None:
    """ "`StreamingContainer` is a `dependency_injector.containers.DeclarativeContainer` with these
    providers (singletons unless said): `options`, `config`, `broker`, `token_streaming`,
    `event_processor`, `progress_tracking`, `gateway`, `bridge`, and `server` (a `Resource`)." """
    from dependency_injector import providers

    assert issubclass(StreamingContainer, containers.DeclarativeContainer)
    container = StreamingModule.for_root(websocket={"enabled": False})
    for name in ("broker", "token_streaming", "event_processor", "progress_tracking", "gateway",
                 "bridge"):  # fmt: skip
        provider = getattr(container, name)
        assert isinstance(provider, providers.Singleton), name
        assert provider() is provider(), name
    assert isinstance(container.server, providers.Resource)
    assert isinstance(container.config, providers.Configuration)
    assert isinstance(container.options(), StreamingModuleOptions)
    assert container.config.default_buffer_size() == 50
    assert container.config.websocket.enabled() is False


def test_manual_testing_module_works_as_written() -> None:
    """ "the manual's test (`for_root(websocket={"enabled": False}, default_buffer_size=10)` then
    fetch the service) works as written, in Python." """
    container = StreamingModule.for_root(websocket={"enabled": False}, default_buffer_size=10)
    service = container.token_streaming()
    assert isinstance(service, TokenStreamingService)
    assert service.options.default_buffer_size == 10


def test_override_and_reset_singletons_the_dependency_injector_way() -> None:
    """ "Tests override providers the dependency-injector way (`container.token_streaming.override(
    ...)`, `with container.gateway.override(fake): ...`, `container.reset_singletons()`)." """
    container = StreamingModule.for_root(websocket={"enabled": False})
    fake = TokenStreamingService()
    container.token_streaming.override(fake)
    assert container.token_streaming() is fake
    container.token_streaming.reset_override()
    real = container.token_streaming()
    assert real is not fake and isinstance(real, TokenStreamingService)

    sentinel = object()
    with container.gateway.override(sentinel):
        assert container.gateway() is sentinel
    assert container.gateway() is not sentinel

    before = container.event_processor()
    container.reset_singletons()
    after = container.event_processor()
    assert after is not before and isinstance(after, EventStreamProcessorService)
    # Options survive: reset_singletons never erases what for_root validated.
    assert container.options().default_buffer_size == 50


async def test_async_with_starts_and_stops_leaving_nothing_running() -> None:
    """ "`await container.init_resources()` starts what is enabled; `await
    container.shutdown_resources()` closes every stream, connection and task, with nothing left
    running. An `async with` form that does both is expected too." """
    before = set(asyncio.all_tasks())
    container = StreamingModule.for_root(websocket={"enabled": True, "port": 0})
    async with container as running:
        assert running is container
        tokens = container.token_streaming()
        await tokens.initialize_token_stream(execution_id="e", node_id="n", config={})
        seen: list[Any] = []
        done: list[bool] = []
        tokens.get_token_stream("e", "n").subscribe(
            on_next=seen.append, on_completed=lambda: done.append(True)
        )
        tokens.stream_token("e", "n", "hi")
    assert done == [True]  # the stream was closed ...
    assert [u.data.content for u in seen] == ["hi"]  # ... after what it buffered was delivered
    assert tokens.get_active_token_streams() == []
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == [asyncio.current_task()] or leftover == []


# --------------------------------------------------------------------------- errors


def test_errors_have_a_code_and_a_context_and_share_a_base() -> None:
    """ "`StreamingError` (base, with `code` and `context`), `TokenStreamingError`,
    `WebSocketError`, `StreamingConfigError`" — the manual's ``instanceof`` chain works."""
    for cls in (TokenStreamingError, WebSocketError, StreamingConfigError):
        assert issubclass(cls, StreamingError)
        err = cls("what failed; how to fix it")
        assert isinstance(err.code, str) and err.code
        assert isinstance(err.context, dict)
    assert TokenStreamingError("x").code != WebSocketError("x").code


async def test_manual_error_handling_catches_token_errors_first() -> None:
    """Manual "Error Handling": ``if error instanceof TokenStreamingError: ... return null``."""

    async def safe_stream_operation(operation: Any) -> Any:
        try:
            return await operation()
        except TokenStreamingError:
            return None
        except WebSocketError:
            return None
        except StreamingError as exc:
            raise RuntimeError("Streaming temporarily unavailable") from exc

    service = TokenStreamingService()

    async def op() -> None:
        service.stream_token("nope", "node", "x")

    assert await safe_stream_operation(op) is None


# --------------------------------------------------------------------------- token streaming


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> TokenStreamingService:
    return TokenStreamingService({"defaultBufferSize": 10}, clock=clock)


def _collect(observable: Any) -> tuple[list[Any], list[bool]]:
    items: list[Any] = []
    done: list[bool] = []
    observable.subscribe(on_next=items.append, on_completed=lambda: done.append(True))
    return items, done


def _text(updates: list[StreamUpdate[TokenData]]) -> str:
    return "".join(u.data.content for u in updates)


async def test_manual_unit_test_initialize_token_stream(tokens: TokenStreamingService) -> None:
    """Manual "Unit Testing": ``expect(streams).toHaveLength(1);
    expect(streams[0].config.bufferSize).toBe(50)``."""
    config = {"enabled": True, "bufferSize": 50, "methodName": "testMethod"}
    await tokens.initialize_token_stream(
        execution_id="test-exec", node_id="test-node", config=config
    )
    streams = tokens.get_active_token_streams()
    assert isinstance(streams, list) and len(streams) == 1
    assert streams[0].config.buffer_size == 50
    assert streams[0].config.method_name == "testMethod"


async def test_manual_unit_test_stream_tokens_with_buffering(tokens: TokenStreamingService) -> None:
    """Manual "Unit Testing": two tokens in a buffer of 3, ``await flushTokens``, then
    ``expect(tokens.length).toBeGreaterThan(0)``."""
    await tokens.initialize_token_stream(
        execution_id="test-exec",
        node_id="test-node",
        config={"enabled": True, "bufferSize": 3, "methodName": "test"},
    )
    received, _ = _collect(tokens.get_token_stream("test-exec", "test-node"))
    tokens.stream_token("test-exec", "test-node", "Hello")
    tokens.stream_token("test-exec", "test-node", "World")
    assert received == []  # still buffered
    await tokens.flush_tokens("test-exec", "test-node")
    assert len(received) > 0
    assert _text(received) == "HelloWorld"


async def test_buffer_flushes_at_buffer_size_on_the_interval_on_flush_and_on_close(
    tokens: TokenStreamingService, clock: FakeClock
) -> None:
    """ "a buffer flushes when it reaches `buffer_size`, when `flush_interval` ms pass, on
    `flush_tokens`, and on close ... No token is lost or reordered on any of these paths." """
    await tokens.initialize_token_stream(
        execution_id="e", node_id="n", config={"bufferSize": 3, "flushInterval": 100}
    )
    received, done = _collect(tokens.get_token_stream("e", "n"))
    for t in "abc":  # size
        tokens.stream_token("e", "n", t)
    assert [u.data.content for u in received] == ["abc"]
    tokens.stream_token("e", "n", "d")  # interval, on its own
    clock.advance(0.089)  # the timer runs up to 10% early (FLUSH_JITTER), never late
    assert len(received) == 1
    clock.advance(0.0111)  # within flush_interval (100 ms) of "d", float slack
    assert [u.data.content for u in received] == ["abc", "d"]
    tokens.stream_token("e", "n", "e")  # explicit flush
    await tokens.flush_tokens("e", "n")
    assert received[-1].data.content == "e"
    tokens.stream_token("e", "n", "f")  # close
    tokens.close_token_stream("e", "n")
    assert _text(received) == "abcdef"
    assert done == [True]
    seqs = [u.metadata.sequence_number for u in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert clock.pending_timers == 0


async def test_close_execution_token_streams_delivers_then_completes(
    tokens: TokenStreamingService,
) -> None:
    """ "`close_token_stream` and `close_execution_token_streams` are plain calls, as in the
    manual: what was buffered reaches subscribers before they return, then the stream
    completes." """
    for node in ("a", "b"):
        await tokens.initialize_token_stream(execution_id="e", node_id=node, config={})
    per_exec, exec_done = _collect(tokens.get_token_stream("e"))
    per_node, node_done = _collect(tokens.get_token_stream("e", "b"))
    tokens.stream_token("e", "a", "1")
    tokens.stream_token("e", "b", "2")
    result = tokens.close_execution_token_streams("e")
    assert result is None
    assert sorted(_text([u]) for u in per_exec) == ["1", "2"]
    assert _text(per_node) == "2"
    assert exec_done == [True] and node_done == [True]
    assert tokens.get_active_token_streams() == []


async def test_batch_size_groups_tokens_per_update(tokens: TokenStreamingService) -> None:
    """ "`batch_size` groups tokens per emitted update" (manual: ``batchSize: 10 // Tokens per
    batch``)."""
    await tokens.initialize_token_stream(
        execution_id="e", node_id="n", config={"bufferSize": 100, "batchSize": 10}
    )
    received, _ = _collect(tokens.get_token_stream("e", "n"))
    for i in range(25):
        tokens.stream_token("e", "n", f"{i % 10}")
    await tokens.flush_tokens("e", "n")
    assert [len(u.data.content) for u in received] == [10, 10, 5]
    assert [u.data.index for u in received] == [0, 10, 20]


async def test_filter_sees_raw_tokens_and_processor_runs_only_on_survivors(
    tokens: TokenStreamingService,
) -> None:
    """ "`filter` (`min_length`, `max_length`, `exclude_whitespace`, `pattern`) drops tokens
    before buffering; `processor` rewrites each token ... The `filter` sees each token as it
    arrived; `processor` runs only on the tokens that passed it." """
    seen_by_processor: list[str] = []

    def processor(token: str, metadata: Any) -> str:
        seen_by_processor.append(token)
        return f"[{token}]"

    await tokens.initialize_token_stream(
        execution_id="e",
        node_id="n",
        config={
            "bufferSize": 100,
            "processor": processor,
            "filter": {
                "minLength": 2,
                "maxLength": 5,
                "excludeWhitespace": True,
                "pattern": re.compile(r"^[a-zA-Z0-9\s]+$"),
            },
        },
    )
    received, _ = _collect(tokens.get_token_stream("e", "n"))
    for t in ["ok", "a", "toolong", "   ", "no!", "yes"]:
        tokens.stream_token("e", "n", t)
    await tokens.flush_tokens("e", "n")
    assert seen_by_processor == ["ok", "yes"]
    assert _text(received) == "[ok][yes]"
    stats = tokens.token_statistics()
    assert stats.tokens_dropped == 4


async def test_the_manuals_processor_signature_and_snake_case_filter(
    tokens: TokenStreamingService,
) -> None:
    """Manual: ``processor: (token, metadata) => `[${new Date().toISOString()}] ${token}```, a
    ``pattern`` given as a string in a snake_case dict."""
    await tokens.initialize_token_stream(
        execution_id="e",
        node_id="n",
        config={
            "processor": lambda token, metadata: f"{metadata['when']} {token}",
            "filter": {"min_length": 1, "pattern": r"^[a-z]+$"},
        },
    )
    received, _ = _collect(tokens.get_token_stream("e", "n"))
    tokens.stream_token("e", "n", "hi", {"when": "now"})
    tokens.stream_token("e", "n", "HI", {"when": "now"})
    await tokens.flush_tokens("e", "n")
    assert _text(received) == "now hi"


@pytest.mark.parametrize("fmt", ["text", "json", "structured"])
async def test_format_shapes_the_payload_and_include_metadata_adds_it(
    tokens: TokenStreamingService, fmt: str
) -> None:
    """ "`format` `text|json|structured` shapes the payload; `include_metadata` adds it." A token
    update's ``data`` is a ``TokenData(content, role=None, index=None, total_tokens=None)``."""
    await tokens.initialize_token_stream(
        execution_id="e", node_id="n", config={"format": fmt, "includeMetadata": True}
    )
    received, _ = _collect(tokens.get_token_stream("e", "n"))
    tokens.stream_token("e", "n", "Hel", {"model": "fake"})
    tokens.stream_token("e", "n", "lo", {"model": "fake"})
    await tokens.flush_tokens("e", "n")
    [update] = received
    assert update.type is ET.TOKEN
    assert isinstance(update.data, TokenData)
    assert update.data.content == "Hello"
    assert update.data.total_tokens == 2
    assert update.metadata.model == "fake"  # include_metadata
    assert update.metadata["model"] == "fake"
    if fmt == "text":
        assert update.data.role is None
    if fmt in ("json", "structured"):
        assert update.data.tokens == ["Hel", "lo"]
    if fmt == "structured":
        assert update.data.role == "assistant"


async def test_without_include_metadata_token_metadata_stays_out(
    tokens: TokenStreamingService,
) -> None:
    """ "`include_metadata` adds it" — and so, without it, the update carries none of it."""
    await tokens.initialize_token_stream(execution_id="e", node_id="n", config={})
    received, _ = _collect(tokens.get_token_stream("e", "n"))
    tokens.stream_token("e", "n", "x", {"model": "fake"})
    await tokens.flush_tokens("e", "n")
    assert "model" not in received[0].metadata.to_dict()


async def test_flush_tokens_returns_after_subscribers_got_everything(
    tokens: TokenStreamingService,
) -> None:
    """ "When `await flush_tokens(...)` returns, what was buffered has reached the subscribers."
    Async-iterator twin included ("Every Observable also has an async-iterator twin")."""
    await tokens.initialize_token_stream(execution_id="e", node_id="n", config={"bufferSize": 50})
    iterator = tokens.iter_token_stream("e", "n")
    global_seen, _ = _collect(tokens.get_global_token_stream())
    execution_seen, _ = _collect(tokens.get_token_stream("e"))
    for t in ["a", "b", "c"]:
        tokens.stream_token("e", "n", t)
    await tokens.flush_tokens("e", "n")
    assert _text(global_seen) == _text(execution_seen) == "abc"
    tokens.close_token_stream("e", "n")
    assert _text([u async for u in iterator]) == "abc"


async def test_stream_token_on_an_uninitialised_stream_names_the_stream(
    tokens: TokenStreamingService,
) -> None:
    """ "`stream_token` on a stream that was never initialised raises `TokenStreamingError`
    naming `execution_id:node_id`." """
    with pytest.raises(TokenStreamingError) as info:
        tokens.stream_token("exec-1", "node-1", "hi")
    assert "exec-1:node-1" in str(info.value)
    await tokens.initialize_token_stream(execution_id="exec-1", node_id="node-1", config={})
    tokens.close_token_stream("exec-1", "node-1")
    with pytest.raises(TokenStreamingError, match="exec-1:node-1"):
        tokens.stream_token("exec-1", "node-1", "after close")


def test_stream_token_is_synchronous() -> None:
    """ "`stream_token(execution_id, node_id, token, metadata=None)` (sync, never blocks the
    loop)"; `initialize_token_stream` and `flush_tokens` are async."""
    assert not asyncio.iscoroutinefunction(TokenStreamingService.stream_token)
    assert asyncio.iscoroutinefunction(TokenStreamingService.initialize_token_stream)
    assert asyncio.iscoroutinefunction(TokenStreamingService.flush_tokens)
    assert not asyncio.iscoroutinefunction(TokenStreamingService.close_token_stream)
    assert not asyncio.iscoroutinefunction(TokenStreamingService.close_execution_token_streams)


async def test_token_stats_emit_on_subscription_then_as_they_change(
    tokens: TokenStreamingService,
) -> None:
    """ "`get_token_stats()` emits the current statistics on subscription, then again as they
    change." """
    stats, _ = _collect(tokens.get_token_stats())
    assert len(stats) == 1 and stats[0].active_streams == 0
    await tokens.initialize_token_stream(execution_id="e", node_id="n", config={})
    assert stats[-1].active_streams == 1
    tokens.stream_token("e", "n", "x")
    await tokens.flush_tokens("e", "n")
    assert stats[-1].tokens_out == 1
    tokens.close_token_stream("e", "n")
    assert stats[-1].active_streams == 0


async def test_active_token_streams_fit_the_manuals_maintenance_snippet(
    tokens: TokenStreamingService, clock: FakeClock
) -> None:
    """Manual "Memory Usage from Streaming": ``stream.lastFlush.getTime()``,
    ``stream.streamKey.split(':')``, ``closeTokenStream(executionId, nodeId)``. SPEC: "each with
    `config`, `stream_key` = `"execution_id:node_id"`, `last_flush` as an aware datetime,
    counters"."""
    await tokens.initialize_token_stream(execution_id="old", node_id="gen", config={})
    tokens.stream_token("old", "gen", "x")
    await tokens.flush_tokens("old", "gen")
    clock.advance(301)
    await tokens.initialize_token_stream(execution_id="new", node_id="gen", config={})
    await tokens.flush_tokens("new", "gen")

    def perform_streaming_maintenance() -> None:
        now = clock.now()
        for stream in tokens.get_active_token_streams():
            if now - stream.last_flush > timedelta(minutes=5):
                execution_id, node_id = stream.stream_key.split(":")
                tokens.close_token_stream(execution_id, node_id)

    streams = tokens.get_active_token_streams()
    assert isinstance(streams, list)
    for stream in streams:
        assert stream.last_flush.tzinfo is not None
        assert stream.last_flush.utcoffset() == timedelta(0)
        assert stream.tokens_in >= 0 and stream.tokens_out >= 0
    assert streams[0].stream_key == "old:gen"
    assert streams[0].tokens_out == 1
    perform_streaming_maintenance()
    assert [s.stream_key for s in tokens.get_active_token_streams()] == ["new:gen"]


async def test_last_flush_is_aware_with_the_real_clock() -> None:
    """ "`last_flush` as an aware datetime" with the default (system) clock: comparable to
    ``datetime.now(UTC)``."""
    service = TokenStreamingService()
    await service.initialize_token_stream(execution_id="e", node_id="n", config={})
    [info] = service.get_active_token_streams()
    assert datetime.now(UTC) - info.last_flush < timedelta(seconds=60)
    await service.aclose()


async def test_every_token_update_carries_execution_and_node_ids(
    tokens: TokenStreamingService,
) -> None:
    """ "Every update's `metadata` carries its `execution_id`, and its `node_id` whenever it comes
    from a node (tokens, ...)." """
    await tokens.initialize_token_stream(execution_id="e:1", node_id="n:2", config={})
    received, _ = _collect(tokens.get_token_stream("e:1", "n:2"))
    tokens.stream_token("e:1", "n:2", "x")
    await tokens.flush_tokens("e:1", "n:2")
    meta = received[0].metadata
    assert isinstance(meta, StreamMetadata)
    assert (meta.execution_id, meta.node_id) == ("e:1", "n:2")
    assert meta.timestamp.tzinfo is not None


async def test_a_streams_config_rejects_unknown_keys_naming_them(
    tokens: TokenStreamingService,
) -> None:
    """ "Everywhere an options object is taken (..., a stream's `config`), a plain dict with the
    same keys works too" and "Unknown keys are an error that names the key"."""
    with pytest.raises(StreamingConfigError, match="bufferSise"):
        await tokens.initialize_token_stream(
            execution_id="e", node_id="n", config={"bufferSise": 3}
        )
    with pytest.raises(StreamingConfigError, match="minLenght"):
        await tokens.initialize_token_stream(
            execution_id="e", node_id="n", config={"filter": {"minLenght": 3}}
        )


# --------------------------------------------------------------------------- events


def _event(
    kind: StreamEventType,
    seq: int,
    *,
    execution_id: str = "e",
    node_id: str | None = "n",
    when: datetime | None = None,
    **extra: Any,
) -> StreamUpdate[Any]:
    return StreamUpdate(
        kind,
        {"i": seq},
        StreamMetadata(
            when or datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seq),
            seq,
            execution_id,
            node_id,
            **extra,
        ),
    )


def test_process_batch_emits_every_event_exactly_once_in_order_then_completes() -> None:
    """ "`process_batch(events, batch_size=, debounce_ms=)`" — issue 2: "emits every event exactly
    once, in order, in batches of at most `batch_size` and completes"."""
    service = EventStreamProcessorService(clock=FakeClock())
    events = [_event(ET.VALUES, i) for i in range(1, 24)]
    batches, done = _collect(service.process_batch(events, batch_size=5, debounce_ms=0))
    assert done == [True]
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert [e for b in batches for e in b] == events


def test_process_batch_debounce_flushes_a_partial_batch_on_the_clock() -> None:
    """ "`process_batch(events, batch_size=, debounce_ms=)`": a partial batch leaves after
    ``debounce_ms`` without a new event."""
    clock = FakeClock()
    service = EventStreamProcessorService(clock=clock)
    source: reactivex.subject.Subject[StreamUpdate[Any]] = reactivex.subject.Subject()
    batches, done = _collect(service.process_batch(source, batch_size=10, debounce_ms=50))
    source.on_next(_event(ET.VALUES, 1))
    source.on_next(_event(ET.VALUES, 2))
    clock.advance(0.049)
    assert batches == []
    clock.advance(0.002)
    assert [[e.metadata.sequence_number for e in b] for b in batches] == [[1, 2]]
    source.on_completed()
    assert done == [True]


def test_filter_criteria_every_rule_as_a_camel_or_snake_dict_or_a_model() -> None:
    """ "Filter criteria: `event_types`, `exclude_types`, `min_priority`
    (`low|medium|high|critical`), `include_debug`, `node_ids`, time range. Everywhere an options
    object is taken (criteria, ...), a plain dict with the same keys works too." """
    from streaming_module import FilterCriteria

    service = EventStreamProcessorService()
    events = [
        _event(ET.NODE_START, 1, node_id="a"),
        _event(ET.DEBUG, 2, node_id="a"),
        _event(ET.ERROR, 3, node_id="b"),
        _event(ET.PROGRESS, 4, node_id="b", priority="low"),
        _event(ET.TOOL_START, 5, node_id="c", priority="critical"),
    ]

    def seqs(criteria: Any) -> list[int]:
        return [e.metadata.sequence_number for e in service.filter_events(events, criteria)]

    assert seqs({"eventTypes": [ET.DEBUG, ET.ERROR]}) == [2, 3]
    assert seqs({"event_types": ["debug", "error"]}) == [2, 3]
    assert seqs(FilterCriteria(event_types=[ET.ERROR])) == [3]
    assert seqs({"excludeTypes": [ET.DEBUG]}) == [1, 3, 4, 5]
    assert seqs({"includeDebug": False}) == [1, 3, 4, 5]
    assert seqs({"include_debug": False, "min_priority": "medium"}) == [1, 3, 5]
    assert seqs({"minPriority": "high"}) == [3, 5]
    assert seqs({"minPriority": "critical"}) == [5]
    assert seqs({"nodeIds": ["b"]}) == [3, 4]
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=2)
    end = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=4)
    assert seqs({"startTime": start, "endTime": end}) == [2, 3, 4]
    assert seqs({"start_time": start.isoformat()}) == [2, 3, 4, 5]
    with pytest.raises(StreamingConfigError, match="minPriorty"):
        service.filter_events(events, {"minPriorty": "high"})
    with pytest.raises(StreamingConfigError, match="min_priority"):
        service.filter_events(events, {"min_priority": "urgent"})


def test_group_aggregate_and_transform_behave_as_named() -> None:
    """ "`group_events_by_type(events)`, `aggregate_by_execution(execution_id, events)`,
    `transform_events(events, transformer)`" — the manual's ``{...event, enriched: true}``."""
    service = EventStreamProcessorService()
    events = [
        _event(ET.NODE_START, 1),
        _event(ET.TOKEN, 2, execution_id="other"),
        _event(ET.NODE_COMPLETE, 3),
        _event(ET.NODE_START, 4),
    ]
    groups: dict[Any, list[int]] = {}

    def on_group(group: Any) -> None:
        groups[group.key] = []
        group.subscribe(lambda e: groups[group.key].append(e.metadata.sequence_number))

    service.group_events_by_type(reactivex.from_iterable(events)).subscribe(on_group)
    assert groups == {ET.NODE_START: [1, 4], ET.TOKEN: [2], ET.NODE_COMPLETE: [3]}
    aggregated = service.aggregate_by_execution("e", events)
    assert {k: [e.metadata.sequence_number for e in v] for k, v in aggregated.items()} == {
        ET.NODE_START: [1, 4],
        ET.NODE_COMPLETE: [3],
    }
    transformed = service.transform_events(events, lambda e: {**e, "enriched": True})
    assert all(t.metadata.enriched is True for t in transformed)
    assert [t.type for t in transformed] == [e.type for e in events]
    assert not hasattr(events[0].metadata, "enriched")


def test_emit_event_reaches_the_executions_stream_only() -> None:
    """ "plus publishing events (`emit_event(...)`) and `get_event_stream(execution_id=None,
    types=None)`"; "Whatever the services publish for an execution ... reaches that execution's
    subscribers." """
    service = EventStreamProcessorService()
    mine, _ = _collect(service.get_event_stream("e1"))
    only_errors, _ = _collect(service.get_event_stream("e1", types=[ET.ERROR]))
    everything, _ = _collect(service.get_event_stream())
    service.emit_event("e1", ET.NODE_START, {"x": 1}, node_id="n")
    service.emit_event("e2", ET.NODE_START, {"x": 2}, node_id="n")
    service.emit_event("e1", "error", {"x": 3}, node_id="n")
    assert [u.data["x"] for u in mine] == [1, 3]
    assert [u.data["x"] for u in only_errors] == [3]
    assert [u.data["x"] for u in everything] == [1, 2, 3]
    assert all(u.metadata.execution_id == "e1" and u.metadata.node_id == "n" for u in mine)


# --------------------------------------------------------------------------- progress


@pytest.fixture
def progress(clock: FakeClock) -> ProgressTrackingService:
    return ProgressTrackingService(clock=clock)


async def test_progress_interval_first_last_eta_and_data_fields(
    progress: ProgressTrackingService, clock: FakeClock
) -> None:
    """ "reports at most every `interval` ms (0: every update), always the first and the last; ...
    ETA from the observed rate (smoothed, `None` until it can be known)"; "A progress update's
    `data` has `progress` (percent, 0-100), `current`, `total`, `eta` (seconds left, or `None`),
    `rate`, `milestone` (...), `text`." """
    tracker = progress.create_tracker("e", "n", {"interval": 1000, "includeETA": True})
    seen, _ = _collect(progress.get_progress_stream("e"))
    first = await tracker.update(0, 10)
    assert first is not None and first.eta is None and first.rate is None
    for i in range(1, 10):
        clock.advance(0.1)
        await tracker.update(i, 10)
    reported = [u.data.current for u in seen]
    assert reported[0] == 0
    assert len(reported) < 10  # the interval held some back
    clock.advance(0.1)
    await tracker.update(10, 10)
    last = seen[-1].data
    assert (last.current, last.progress, last.eta) == (10, 100, 0)
    for update in seen:
        data = update.data
        for field in ("progress", "current", "total", "eta", "rate", "milestone", "text"):
            assert hasattr(data, field), field
        assert 0 <= data.progress <= 100
        assert update.metadata.execution_id == "e" and update.metadata.node_id == "n"
    middle = [u.data for u in seen if u.data.rate is not None and u.data.current < 10]
    assert all(d.eta is not None and d.eta > 0 for d in middle)


async def test_progress_interval_zero_reports_every_update(
    progress: ProgressTrackingService, clock: FakeClock
) -> None:
    """ "reports at most every `interval` ms (0: every update)" """
    tracker = progress.create_tracker("e", "n", {"interval": 0, "granularity": "detailed"})
    seen, _ = _collect(progress.get_progress_stream("e", "n"))
    for i in range(1, 6):
        clock.advance(0.001)
        await tracker.update(i, 5)
    assert [u.data.current for u in seen] == [1, 2, 3, 4, 5]


async def test_milestones_once_calculator_format_text_and_metrics(
    progress: ProgressTrackingService, clock: FakeClock
) -> None:
    """ "`milestones` emitted exactly once each; `calculator`; `format` (`show_percentage`,
    `show_current`, `show_total`, `show_rate`, `precision`) gives a human-readable `text`;
    `include_metrics` adds rate, elapsed, items done." (The manual's @StreamProgress options,
    camelCase.)"""

    def calculator(current: float, total: float, metadata: Any) -> float:
        complexity = (metadata or {}).get("complexity", 1)
        return min(current / total * 100 * complexity, 100)

    tracker = progress.create_tracker(
        "e",
        "n",
        {
            "enabled": True,
            "interval": 1000,
            "granularity": "fine",
            "includeETA": True,
            "includeMetrics": True,
            "milestones": [25, 50, 75, 90, 95],
            "calculator": calculator,
            "format": {
                "showPercentage": True,
                "showCurrent": True,
                "showTotal": True,
                "showRate": True,
                "precision": 1,
            },
        },
    )
    seen, _ = _collect(progress.get_progress_stream("e", "n"))
    for i in range(1, 21):
        clock.advance(0.5)
        await tracker.update(i, 20, {"complexity": 1})
    clock.advance(0.5)
    await tracker.update(30, 20, {"complexity": 1})  # over: clamped, no milestone again
    milestones = [u.data.milestone for u in seen if u.data.milestone is not None]
    assert milestones == [25, 50, 75, 90, 95]
    # The calculator decides the percent.
    data = await tracker.update(1, 20, {"complexity": 50})
    assert data is None or data.progress == 100
    last = next(u.data for u in seen if u.data.current == 20)
    assert last.text.startswith("100.0%")
    assert "(20/20)" in last.text and "/s" in last.text
    assert last.metrics is not None
    for key in ("rate", "elapsed", "items_done"):
        assert key in last.metrics


async def test_progress_granularity_changes_what_is_reported(
    progress: ProgressTrackingService, clock: FakeClock
) -> None:
    """ "`granularity` `coarse|fine|detailed`" — coarse reports fewer updates than fine, fine
    fewer than detailed."""
    counts = {}
    for granularity in ("coarse", "fine", "detailed"):
        tracker = progress.create_tracker(
            granularity,
            "n",
            {"interval": 0, "granularity": granularity, "format": {"precision": 0}},
        )
        seen, _ = _collect(progress.get_progress_stream(granularity))
        for i in range(1, 1001):
            clock.advance(0.001)
            await tracker.update(i / 4, 250)
        counts[granularity] = len(seen)
    assert counts["coarse"] < counts["fine"] < counts["detailed"]
    assert counts["coarse"] <= 12


async def test_progress_options_reject_unknown_keys(progress: ProgressTrackingService) -> None:
    """ "Unknown keys are an error that names the key" (a tracker's options)."""
    with pytest.raises(StreamingConfigError, match="includeEta_"):
        progress.create_tracker("e", "n", {"includeEta_": True})


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_fields_and_extra_metadata() -> None:
    """ "`StreamUpdate(type, data, metadata)`; `StreamMetadata(timestamp, sequence_number,
    execution_id, node_id=None, agent_type=None, **extra)`; a token update's `data` is a
    `TokenData(content, role=None, index=None, total_tokens=None)`. `StreamEventType` is a `str`
    `Enum` with the manual's members and values." """
    from enum import Enum

    now = datetime.now(UTC)
    meta = StreamMetadata(now, 1, "e", priority="high", enriched=True)
    assert (meta.timestamp, meta.sequence_number, meta.execution_id) == (now, 1, "e")
    assert meta.node_id is None and meta.agent_type is None
    assert meta.priority == "high" and meta["enriched"] is True
    meta = StreamMetadata(
        timestamp=now, sequence_number=2, execution_id="e", node_id="n", agent_type="writer"
    )
    assert (meta.node_id, meta.agent_type) == ("n", "writer")
    data = TokenData("hi")
    assert (data.content, data.role, data.index, data.total_tokens) == ("hi", None, None, None)
    data = TokenData(content="hi", role="assistant", index=3, total_tokens=4)
    update = StreamUpdate(type=ET.TOKEN, data=data, metadata=meta)
    assert (update.type, update.data, update.metadata) == (ET.TOKEN, data, meta)
    assert StreamUpdate(ET.VALUES, {"a": 1}).metadata is None
    manual = {
        "TOKEN": "token", "VALUES": "values", "UPDATES": "updates", "EVENTS": "events",
        "PROGRESS": "progress", "NODE_START": "node_start", "NODE_COMPLETE": "node_complete",
        "TOOL_START": "tool_start", "TOOL_COMPLETE": "tool_complete", "ERROR": "error",
        "DEBUG": "debug",
    }  # fmt: skip
    assert issubclass(StreamEventType, str) and issubclass(StreamEventType, Enum)
    for name, value in manual.items():
        assert StreamEventType[name].value == value
        assert StreamEventType[name] == value
        assert StreamEventType(value) is StreamEventType[name]


async def test_process_batch_has_an_async_iterator_twin() -> None:
    """ "Every Observable also has an async-iterator twin (e.g. `iter_token_stream(...)`), because
    Python users consume streams with `async for`" — ``process_batch`` returns an Observable."""
    service = EventStreamProcessorService(clock=FakeClock())
    events = [_event(ET.VALUES, i) for i in range(1, 8)]
    batches = [b async for b in service.iter_process_batch(events, batch_size=3)]
    assert [[e.metadata.sequence_number for e in b] for b in batches] == [[1, 2, 3], [4, 5, 6], [7]]


def test_time_range_filter_works_with_naive_timestamps_as_utc() -> None:
    """ "Filter criteria: ... time range." Naive datetimes (``datetime(2026, 1, 1, 0, 0, 2)``, as
    a user writes them) mean UTC on both sides, as they do for the criteria: never a bare
    ``TypeError`` about offset-naive and offset-aware datetimes."""
    service = EventStreamProcessorService()
    naive = [
        StreamUpdate(ET.VALUES, {}, StreamMetadata(datetime(2026, 1, 1, 0, 0, i), i, "e"))
        for i in range(5)
    ]
    start = datetime(2026, 1, 1, 0, 0, 2)
    kept = service.filter_events(naive, {"startTime": start, "endTime": start.replace(second=3)})
    assert [e.metadata.sequence_number for e in kept] == [2, 3]
    aware_start = start.replace(tzinfo=UTC)
    assert len(service.filter_events(naive, {"start_time": aware_start})) == 3
