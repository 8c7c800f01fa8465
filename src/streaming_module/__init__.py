"""streaming_module: real-time streaming for LangGraph workflows.

Tokens, workflow events and progress with ETA, streamed to browsers and services over WebSockets,
wired with dependency-injector the way NestJS wires ``StreamingModule.forRoot(options)``.
Everything public is importable from here.
"""

from streaming_module.broker import Broker, Frame, InMemoryBroker, create_broker
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
from streaming_module.container import StreamingContainer
from streaming_module.core.clock import Clock, FakeClock, SystemClock
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
from streaming_module.services.bridge import WebSocketBridgeService
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTracker, ProgressTrackingService
from streaming_module.services.token_streaming import (
    TokenStatistics,
    TokenStreamInfo,
    TokenStreamingService,
)
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

# The manual's interface names.
StreamTokenDecoratorMetadata = StreamTokenOptions
FilterCriteria = EventFilterCriteria
WebSocketGatewayConfig = GatewayOptions

__version__ = "0.1.0"

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
    "CompressionOptions",
    "CorsOptions",
    "DeclarativeWorkflowBase",
    "EventFilterCriteria",
    "EventStreamProcessorService",
    "EventStreamingError",
    "FakeClock",
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
