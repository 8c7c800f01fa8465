"""streaming_module: real-time streaming for LangGraph workflows.

Tokens, workflow events and progress with ETA, streamed to browsers and services over WebSockets,
wired with dependency-injector the way NestJS wires ``StreamingModule.forRoot(options)``.
Everything public is importable from here (``__all__``); test helpers live in
:mod:`streaming_module.testing`.

Each name is imported on first use (a module ``__getattr__``), so ``import streaming_module``
costs almost nothing and loads neither LangGraph nor aiohttp: ``from streaming_module import
StreamingModule`` loads what the module needs, LangGraph waits for the workflow names
(``DeclarativeWorkflowBase``, ``workflow``, ``node``, ``stream_token``, ...). Type checkers and
IDEs read the imports below.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming_module.broker import Broker, InMemoryBroker, create_broker
    from streaming_module.client import StreamingClient
    from streaming_module.config import (
        AuthenticationOptions,
        BrokerOptions,
        CompressionOptions,
        CorsOptions,
        EventFilterCriteria,
        GatewayOptions,
        HeartbeatOptions,
        ProgressFormatOptions,
        RateLimitOptions,
        StreamEventOptions,
        StreamingModuleOptions,
        StreamProgressOptions,
        StreamTokenOptions,
        TokenFilterOptions,
        WebSocketOptions,
    )

    # The manual's interface names.
    from streaming_module.config import EventFilterCriteria as FilterCriteria
    from streaming_module.config import GatewayOptions as WebSocketGatewayConfig
    from streaming_module.config import StreamTokenOptions as StreamTokenDecoratorMetadata
    from streaming_module.container import StreamingContainer
    from streaming_module.core.clock import Clock, SystemClock
    from streaming_module.errors import (
        AuthenticationError,
        BrokerError,
        ClientNotFoundError,
        EventStreamingError,
        ForbiddenError,
        ProgressTrackingError,
        ProtocolError,
        RateLimitError,
        StreamingConfigError,
        StreamingError,
        StreamOverflowError,
        TokenStreamingError,
        WebSocketError,
        WorkflowError,
    )
    from streaming_module.gateway.auth import Claims, JwtAuthenticator
    from streaming_module.gateway.gateway import StreamingWebSocketGateway
    from streaming_module.module import StreamingModule
    from streaming_module.protocol.close_codes import CloseCode
    from streaming_module.protocol.frames import Frame
    from streaming_module.services.bridge import WebSocketBridgeService
    from streaming_module.services.event_processor import EventStreamProcessorService
    from streaming_module.services.progress_tracking import ProgressTracker, ProgressTrackingService
    from streaming_module.services.token_streaming import (
        TokenStatistics,
        TokenStreamInfo,
        TokenStreamingService,
    )

    # Kept for code written before streaming_module.testing existed (not in __all__).
    from streaming_module.testing import FakeClock as FakeClock
    from streaming_module.types import (
        ProgressData,
        StatusData,
        StreamEventType,
        StreamMetadata,
        StreamUpdate,
        TokenData,
    )
    from streaming_module.workflow import (
        END,
        START,
        DeclarativeWorkflowBase,
        Node,
        NodeProgress,
        StreamAll,
        StreamEvent,
        StreamProgress,
        StreamToken,
        Workflow,
        node,
        stream_all,
        stream_event,
        stream_progress,
        stream_token,
        workflow,
    )

__version__ = "0.1.0"

# name -> (module, attribute), imported on first access by __getattr__ below.
_EXPORTS: dict[str, tuple[str, str]] = {
    name: (module, name)
    for module, names in {
        "streaming_module.broker": "Broker InMemoryBroker create_broker",
        "streaming_module.protocol.close_codes": "CloseCode",
        "streaming_module.protocol.frames": "Frame",
        "streaming_module.client": "StreamingClient",
        "streaming_module.config": (
            "AuthenticationOptions BrokerOptions CompressionOptions CorsOptions "
            "EventFilterCriteria GatewayOptions HeartbeatOptions ProgressFormatOptions "
            "RateLimitOptions StreamEventOptions StreamingModuleOptions StreamProgressOptions "
            "StreamTokenOptions TokenFilterOptions WebSocketOptions"
        ),
        "streaming_module.container": "StreamingContainer",
        "streaming_module.core.clock": "Clock SystemClock",
        "streaming_module.errors": (
            "AuthenticationError BrokerError ClientNotFoundError EventStreamingError "
            "ForbiddenError ProgressTrackingError ProtocolError RateLimitError "
            "StreamingConfigError StreamingError StreamOverflowError TokenStreamingError "
            "WebSocketError WorkflowError"
        ),
        "streaming_module.gateway.auth": "Claims JwtAuthenticator",
        "streaming_module.services.bridge": "WebSocketBridgeService",
        "streaming_module.gateway.gateway": "StreamingWebSocketGateway",
        "streaming_module.module": "StreamingModule",
        "streaming_module.services.event_processor": "EventStreamProcessorService",
        "streaming_module.services.progress_tracking": "ProgressTracker ProgressTrackingService",
        "streaming_module.services.token_streaming": (
            "TokenStatistics TokenStreamInfo TokenStreamingService"
        ),
        "streaming_module.types": (
            "ProgressData StatusData StreamEventType StreamMetadata StreamUpdate TokenData"
        ),
        "streaming_module.workflow": (
            "END START DeclarativeWorkflowBase Node NodeProgress StreamAll StreamEvent "
            "StreamProgress StreamToken Workflow node stream_all stream_event stream_progress "
            "stream_token workflow"
        ),
    }.items()
    for name in names.split()
}
_EXPORTS.update(
    {
        # The manual's interface names.
        "StreamTokenDecoratorMetadata": ("streaming_module.config", "StreamTokenOptions"),
        "FilterCriteria": ("streaming_module.config", "EventFilterCriteria"),
        "WebSocketGatewayConfig": ("streaming_module.config", "GatewayOptions"),
        # Kept for code written before streaming_module.testing existed (not in __all__).
        "FakeClock": ("streaming_module.testing", "FakeClock"),
    }
)


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """This package's module type. At the root, ``workflow`` is the ``@workflow`` decorator; when
    the ``streaming_module.workflow`` subpackage is first imported, the import system would set
    the root's ``workflow`` attribute to that subpackage. This keeps the decorator (the
    subpackage stays in ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "workflow" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "END",
    "START",
    "AuthenticationError",
    "AuthenticationOptions",
    "Broker",
    "BrokerError",
    "BrokerOptions",
    "Claims",
    "ClientNotFoundError",
    "Clock",
    "CloseCode",
    "CompressionOptions",
    "CorsOptions",
    "DeclarativeWorkflowBase",
    "EventFilterCriteria",
    "EventStreamProcessorService",
    "EventStreamingError",
    "FilterCriteria",
    "ForbiddenError",
    "Frame",
    "GatewayOptions",
    "HeartbeatOptions",
    "InMemoryBroker",
    "JwtAuthenticator",
    "Node",
    "NodeProgress",
    "ProgressData",
    "ProgressFormatOptions",
    "ProgressTracker",
    "ProgressTrackingError",
    "ProgressTrackingService",
    "ProtocolError",
    "RateLimitError",
    "RateLimitOptions",
    "StatusData",
    "StreamAll",
    "StreamEvent",
    "StreamEventOptions",
    "StreamEventType",
    "StreamMetadata",
    "StreamOverflowError",
    "StreamProgress",
    "StreamProgressOptions",
    "StreamToken",
    "StreamTokenDecoratorMetadata",
    "StreamTokenOptions",
    "StreamUpdate",
    "StreamingClient",
    "StreamingConfigError",
    "StreamingContainer",
    "StreamingError",
    "StreamingModule",
    "StreamingModuleOptions",
    "StreamingWebSocketGateway",
    "SystemClock",
    "TokenData",
    "TokenFilterOptions",
    "TokenStatistics",
    "TokenStreamInfo",
    "TokenStreamingError",
    "TokenStreamingService",
    "WebSocketBridgeService",
    "WebSocketError",
    "WebSocketGatewayConfig",
    "WebSocketOptions",
    "Workflow",
    "WorkflowError",
    "__version__",
    "create_broker",
    "node",
    "stream_all",
    "stream_event",
    "stream_progress",
    "stream_token",
    "workflow",
]
