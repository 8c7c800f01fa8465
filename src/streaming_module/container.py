"""StreamingContainer: what is built from what, and the one copy of its start/stop.

Every provider is a Singleton unless said otherwise. ``options`` and ``config`` get their values
from :meth:`StreamingModule.for_root <streaming_module.module.StreamingModule.for_root>` as
provider *defaults*, so ``container.reset_override()`` in a test never erases them. Nothing is
built until used: the bridge and the gateway are built when the ``server`` resource starts
(unless used before), so overriding a provider before ``async with container:`` reaches them
with no ``reset_singletons()``. The container knows nothing global; it registers itself in
:mod:`streaming_module.services.registry` so workflows can find it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from streaming_module.broker import create_broker
from streaming_module.config import StreamingModuleOptions
from streaming_module.core.clock import SystemClock
from streaming_module.gateway.gateway import StreamingWebSocketGateway
from streaming_module.gateway.server import serve
from streaming_module.services import registry
from streaming_module.services.bridge import WebSocketBridgeService
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService


class StreamingContainerInstance(containers.DynamicContainer):
    """What ``StreamingContainer()`` returns: a container that is also an async context manager.

    ``init_resources()`` and ``shutdown_resources()`` always return an awaitable (plain
    dependency-injector returns ``None`` when nothing asynchronous is involved), so ``await
    container.init_resources()`` is always right. Starting makes the container *current* in the
    caller's context until it is shut down: a workflow created there without services takes this
    container's (see :mod:`streaming_module.services.registry`). ``async with container:`` does
    both, and shuts down what did start when starting fails.
    """

    def init_resources(
        self, resource_type: type[providers.BaseResource[Any]] = providers.BaseResource
    ) -> Awaitable[None]:
        # Made current before the resources start, so tasks they start see it too.
        registry.activate(self)
        return _completed(super().init_resources(resource_type))

    def shutdown_resources(
        self, resource_type: type[providers.BaseResource[Any]] = providers.BaseResource
    ) -> Awaitable[None]:
        pending = super().shutdown_resources(resource_type)
        registry.deactivate(self)
        registry.unregister(self)
        return _completed(pending)

    async def __aenter__(self) -> StreamingContainerInstance:
        try:
            await self.init_resources()
        except BaseException:
            await self.shutdown_resources()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown_resources()


async def _completed(pending: Awaitable[None] | None) -> None:
    if pending is not None:
        await pending


class StreamingContainer(containers.DeclarativeContainer):
    """The module's providers, mirroring NestJS's ``StreamingModule.forRoot(options)``.

    ``server`` (a Resource) pings the broker, builds the ``bridge`` (services -> broker), starts
    the ``gateway`` when ``websocket.enabled`` and, on shutdown, closes everything in order. It
    takes ``enabled``/``host``/``port`` to listen elsewhere than the options say
    (``container.server.add_kwargs(enabled=True, port=0)``, as the CLI does).
    """

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

    if TYPE_CHECKING:  # what instances (StreamingContainerInstance) add, for type checkers

        def init_resources(
            self, resource_type: type[providers.BaseResource[Any]] = providers.BaseResource
        ) -> Awaitable[None]: ...

        def shutdown_resources(
            self, resource_type: type[providers.BaseResource[Any]] = providers.BaseResource
        ) -> Awaitable[None]: ...

        async def __aenter__(self) -> StreamingContainer: ...

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None: ...


__all__ = ["StreamingContainer", "StreamingContainerInstance"]
