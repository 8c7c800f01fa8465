"""StreamingModule.for_root and the container, as a user of the manual would use them."""

from __future__ import annotations

import asyncio
import os
import sys
import types
from typing import Any

import pytest
from dependency_injector.wiring import Provide, inject

from streaming_module import (
    EventStreamProcessorService,
    ProgressTrackingService,
    StreamingConfigError,
    StreamingContainer,
    StreamingModule,
    StreamingModuleOptions,
    StreamUpdate,
    TokenStreamingError,
    TokenStreamingService,
)
from streaming_module.broker.base import Frame
from streaming_module.protocol.close_codes import CloseCode

BASIC = {
    "websocket": {"enabled": True, "port": 8080},
    "defaultBufferSize": 50,
    "gateway": {
        "enabled": True,
        "cors": {
            "origin": ["http://localhost:3000", "https://app.example.com"],
            "credentials": True,
        },
        "authentication": {"enabled": False},
    },
}

ADVANCED = {
    "websocket": {"enabled": True, "port": 8080},
    "defaultBufferSize": 100,
    "gateway": {
        "enabled": True,
        "cors": True,
        "authentication": {
            "enabled": True,
            "strategy": "jwt",
            "secretKey": os.environ.get("JWT_SECRET"),
            "expiresIn": "1h",
        },
        "rateLimit": {"windowMs": 60000, "maxConnections": 100, "maxRequestsPerConnection": 1000},
        "compression": {"enabled": True, "algorithm": "gzip", "threshold": 1024},
        "heartbeat": {"enabled": True, "interval": 30000, "timeout": 5000},
    },
}

QUICK_START = {
    "websocket": {"enabled": True, "port": 8080},
    "defaultBufferSize": 50,
    "gateway": {
        "enabled": True,
        "cors": True,
        "authentication": {"enabled": True, "strategy": "jwt"},
        "rateLimit": {"windowMs": 60000, "maxConnections": 100},
    },
}


@pytest.mark.parametrize(
    "options", [BASIC, ADVANCED, QUICK_START], ids=["basic", "advanced", "quick"]
)
def test_the_manuals_configuration_dicts_validate_unchanged(options: dict[str, Any]) -> None:
    container = StreamingModule.for_root(options)
    opts = container.options()
    assert isinstance(opts, StreamingModuleOptions)
    assert opts.websocket.port == 8080
    assert opts.default_buffer_size == options["defaultBufferSize"]


def test_advanced_configuration_values_land_where_the_manual_says() -> None:
    opts = StreamingModule.for_root(ADVANCED).options()
    gw = opts.gateway
    assert gw.rate_limit is not None and gw.rate_limit.max_requests_per_connection == 1000
    assert gw.compression.enabled and gw.compression.threshold == 1024
    assert gw.heartbeat.interval == 30000 and gw.heartbeat.timeout == 5000
    assert gw.authentication.expires_in_seconds == 3600


def test_invalid_options_name_every_bad_field() -> None:
    with pytest.raises(StreamingConfigError) as info:
        StreamingModule.for_root(
            {"websocket": {"port": 70000, "enabeld": True}, "defaultBufferSize": 0}
        )
    paths = {path for path, _ in info.value.errors}
    assert paths == {"websocket.port", "websocket.enabeld", "defaultBufferSize"}
    message = str(info.value)
    assert "unknown option 'enabeld'" in message
    assert "greater than or equal to 1" in message


def test_keyword_arguments_and_snake_case_work_like_the_dict() -> None:
    container = StreamingModule.for_root(websocket={"enabled": False}, default_buffer_size=10)
    assert container.options().default_buffer_size == 10
    merged = StreamingModule.for_root({"defaultBufferSize": 5}, websocket={"enabled": False})
    assert merged.options().default_buffer_size == 5
    assert StreamingModule.forRoot().options().default_buffer_size == 50


def test_config_provider_mirrors_the_options() -> None:
    container = StreamingModule.for_root(default_buffer_size=7)
    assert container.config.default_buffer_size() == 7
    assert container.config.websocket.port() == 8080


# The manual's "Unit Testing" section, in Python.


@pytest.fixture
async def service() -> Any:
    container = StreamingModule.for_root(websocket={"enabled": False}, default_buffer_size=10)
    async with container:
        yield container.token_streaming()


async def test_should_initialize_token_stream(service: TokenStreamingService) -> None:
    config = {"enabled": True, "bufferSize": 50, "methodName": "testMethod"}
    await service.initialize_token_stream(
        execution_id="test-exec", node_id="test-node", config=config
    )
    streams = service.get_active_token_streams()
    assert len(streams) == 1
    assert streams[0].config.buffer_size == 50


async def test_should_stream_tokens_with_buffering(service: TokenStreamingService) -> None:
    await service.initialize_token_stream(
        execution_id="test-exec",
        node_id="test-node",
        config={"enabled": True, "bufferSize": 3, "methodName": "test"},
    )
    token_stream = service.get_token_stream("test-exec", "test-node")
    tokens: list[StreamUpdate[Any]] = []
    token_stream.subscribe(tokens.append)
    service.stream_token("test-exec", "test-node", "Hello")
    service.stream_token("test-exec", "test-node", "World")
    await service.flush_tokens("test-exec", "test-node")
    assert len(tokens) > 0
    assert "".join(t.data.content for t in tokens) == "HelloWorld"


def test_services_are_singletons_of_the_right_type() -> None:
    container = StreamingModule.for_root()
    assert isinstance(container.token_streaming(), TokenStreamingService)
    assert container.token_streaming() is container.token_streaming()
    assert isinstance(container.event_processor(), EventStreamProcessorService)
    assert isinstance(container.progress_tracking(), ProgressTrackingService)


# Overriding, the dependency-injector way.


class FakeTokens:
    def get_active_token_streams(self) -> list[Any]:
        return ["fake"]


def test_override_a_provider_in_a_test() -> None:
    container = StreamingModule.for_root()
    container.token_streaming.override(FakeTokens())
    assert container.token_streaming().get_active_token_streams() == ["fake"]
    container.token_streaming.reset_override()
    assert isinstance(container.token_streaming(), TokenStreamingService)


def test_override_as_a_context_manager_and_reset_override_keeps_options() -> None:
    container = StreamingModule.for_root(default_buffer_size=3)
    fake_gateway = object()
    with container.gateway.override(fake_gateway):
        assert container.gateway() is fake_gateway
    container.reset_override()
    container.reset_singletons()
    assert container.options().default_buffer_size == 3
    assert container.gateway() is not fake_gateway


def test_options_can_be_overridden_for_one_test() -> None:
    container = StreamingModule.for_root(default_buffer_size=3)
    with container.options.override(StreamingModuleOptions(default_buffer_size=9)):
        container.reset_singletons()
        assert container.options().default_buffer_size == 9
    container.reset_singletons()
    assert container.options().default_buffer_size == 3


# Wiring.


@pytest.fixture
def app_module() -> Any:
    module = types.ModuleType("streaming_test_app")

    @inject
    def current_buffer_size(
        tokens: TokenStreamingService = Provide[StreamingContainer.token_streaming],
        options: StreamingModuleOptions = Provide["options"],
    ) -> tuple[TokenStreamingService, int]:
        return tokens, options.default_buffer_size

    module.current_buffer_size = current_buffer_size  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_for_root_wires_the_listed_modules(app_module: Any) -> None:
    container = StreamingModule.for_root(default_buffer_size=4, wire=[app_module])
    try:
        tokens, size = app_module.current_buffer_size()
        assert tokens is container.token_streaming()
        assert size == 4
    finally:
        container.unwire()


def test_wiring_by_dotted_name(app_module: Any) -> None:
    container = StreamingModule.for_root(wire=["streaming_test_app"])
    try:
        tokens, _ = app_module.current_buffer_size()
        assert tokens is container.token_streaming()
    finally:
        container.unwire()


def test_wiring_an_unknown_module_is_a_clear_error() -> None:
    with pytest.raises(StreamingConfigError, match="cannot wire 'no_such_module_xyz'"):
        StreamingModule.for_root(wire=["no_such_module_xyz"])


# Resources.


async def test_async_with_starts_the_server_and_stops_everything() -> None:
    before = asyncio.all_tasks()
    container = StreamingModule.for_root(websocket={"enabled": True, "port": 0})
    async with container:
        gateway = container.gateway()
        assert gateway.port not in (None, 0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    leftover.discard(asyncio.current_task())  # type: ignore[arg-type]
    assert leftover == set()


async def test_init_and_shutdown_resources_by_hand() -> None:
    container = StreamingModule.for_root(websocket={"enabled": True, "port": 0})
    await container.init_resources()
    port = container.gateway().port
    assert port
    await container.shutdown_resources()
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()


async def test_authentication_without_a_secret_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    container = StreamingModule.for_root(QUICK_START | {"websocket": {"enabled": True, "port": 0}})
    with pytest.raises(StreamingConfigError, match="secret"):
        await container.init_resources()
    await container.shutdown_resources()


async def test_start_and_stop_are_always_awaitable() -> None:
    container = StreamingModule.for_root(websocket={"enabled": False})
    await container.shutdown_resources()  # never started: nothing to stop, still awaitable
    await container.init_resources()
    assert container.server.initialized
    await container.shutdown_resources()
    assert not container.server.initialized


async def test_the_server_listens_where_the_resource_is_told_leaving_the_options_alone() -> None:
    """What the CLI does with --host/--port: no built gateway's options are rewritten."""
    container = StreamingModule.for_root(websocket={"enabled": False, "port": 8080})
    container.server.add_kwargs(enabled=True, host="127.0.0.1", port=0)
    async with container:
        port = container.gateway().port
        assert port not in (None, 0, 8080)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    websocket = container.options().websocket
    assert (websocket.enabled, websocket.port) == (False, 8080)


# Overriding before start: the bridge and the gateway are built when the server starts, so they
# use the replacement with no reset_singletons().


async def test_an_override_before_start_reaches_the_bridge() -> None:
    container = StreamingModule.for_root(websocket={"enabled": False})
    replacement = TokenStreamingService()
    container.token_streaming.override(replacement)
    frames: list[Frame] = []
    await container.broker().subscribe("exec-1", frames.append)
    async with container:
        await replacement.initialize_token_stream(
            execution_id="exec-1", node_id="llm", config={"bufferSize": 1}
        )
        replacement.stream_token("exec-1", "llm", "Hello")
        await replacement.flush_tokens("exec-1", "llm")
        assert [f.payload["content"] for f in frames if f.type == "token"] == ["Hello"]
    with pytest.raises(TokenStreamingError):  # the server resource closed what it was given
        replacement.get_token_stats()
    # The container's own service was never built, let alone forwarded.
    container.token_streaming.reset_override()
    assert container.token_streaming() is not replacement


class RecordingGateway:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        self.calls.append(("start", host, port))

    async def cancel_runs(self) -> None:
        self.calls.append(("cancel_runs",))

    async def close_all(self, code: int, reason: str) -> None:
        self.calls.append(("close_all", code))

    async def stop(self) -> None:
        self.calls.append(("stop",))


async def test_an_overridden_gateway_is_the_one_served() -> None:
    container = StreamingModule.for_root(websocket={"enabled": True, "port": 0})
    fake = RecordingGateway()
    container.gateway.override(fake)
    async with container:
        assert container.gateway() is fake
        assert fake.calls == [("start", None, None)]
    assert fake.calls[1:] == [("cancel_runs",), ("close_all", CloseCode.GOING_AWAY), ("stop",)]
