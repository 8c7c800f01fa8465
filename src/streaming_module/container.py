"""StreamingContainer: what is built from what. Providers only; no logic lives here.

Every provider is a Singleton unless said otherwise. ``options`` and ``config`` get their values
from :meth:`StreamingModule.for_root <streaming_module.module.StreamingModule.for_root>` as
provider *defaults*, so ``container.reset_override()`` in a test never erases them.
"""

from __future__ import annotations

from types import TracebackType

from dependency_injector import containers, providers

from streaming_module.broker import create_broker
from streaming_module.config import StreamingModuleOptions
from streaming_module.core.clock import SystemClock
from streaming_module.gateway.gateway import StreamingWebSocketGateway
from streaming_module.gateway.server import serve
from streaming_module.services.bridge import WebSocketBridgeService
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService


class StreamingContainerInstance(containers.DynamicContainer):
    """What ``StreamingContainer()`` returns: a container that is also an async context manager.

    ``async with container:`` runs ``init_resources()`` on entry and ``shutdown_resources()`` on
    exit, awaiting them when they are asynchronous.
    """

    async def __aenter__(self) -> StreamingContainerInstance:
        pending = self.init_resources()
        if pending is not None:
            await pending
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pending = self.shutdown_resources()
        if pending is not None:
            await pending


class StreamingContainer(containers.DeclarativeContainer):
    """The module's providers, mirroring NestJS's ``StreamingModule.forRoot(options)``."""

    instance_type = StreamingContainerInstance

    options: providers.Dependency[StreamingModuleOptions] = providers.Dependency(
        instance_of=StreamingModuleOptions
    )
    config = providers.Configuration()
    clock = providers.Singleton(SystemClock)

    broker = providers.Singleton(create_broker, options=options.provided.broker, clock=clock)
    token_streaming = providers.Singleton(TokenStreamingService, options=options, clock=clock)
    event_processor = providers.Singleton(EventStreamProcessorService, options=options, clock=clock)
    progress_tracking = providers.Singleton(ProgressTrackingService, options=options, clock=clock)
    bridge = providers.Singleton(
        WebSocketBridgeService,
        token_streaming=token_streaming,
        event_processor=event_processor,
        progress_tracking=progress_tracking,
        broker=broker,
    )
    gateway = providers.Singleton(
        StreamingWebSocketGateway, options=options, broker=broker, clock=clock
    )
    server = providers.Resource(
        serve,
        gateway=gateway,
        bridge=bridge,
        token_streaming=token_streaming,
        event_processor=event_processor,
        progress_tracking=progress_tracking,
        broker=broker,
        options=options,
    )


__all__ = ["StreamingContainer", "StreamingContainerInstance"]
