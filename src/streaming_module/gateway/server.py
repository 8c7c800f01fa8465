"""The container's ``server`` resource: start the gateway, and shut everything down in order.

Shutdown order matters for "no token lost": buffered tokens are flushed first (through the
bridge and broker to the clients' queues), then the other services close, client writers get a
bounded moment to drain, clients are closed with ``GOING_AWAY``, the server stops, the bridge
unsubscribes and the broker closes. Nothing is left running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from streaming_module.broker.base import Broker
from streaming_module.config import StreamingModuleOptions
from streaming_module.gateway.gateway import SHUTDOWN_DRAIN_TIMEOUT, StreamingWebSocketGateway
from streaming_module.protocol.close_codes import CloseCode
from streaming_module.services.bridge import WebSocketBridgeService

logger = logging.getLogger("streaming_module.gateway")


class _Closable(Protocol):
    async def aclose(self) -> None: ...


async def _aclose(name: str, service: Any) -> None:
    if service is None:
        return
    try:
        await service.aclose()
    except Exception:
        logger.exception("closing %s failed", name)


async def serve(
    *,
    gateway: StreamingWebSocketGateway,
    bridge: WebSocketBridgeService,
    token_streaming: _Closable | None,
    event_processor: _Closable | None,
    progress_tracking: _Closable | None,
    broker: Broker,
    options: StreamingModuleOptions,
    enabled: bool | None = None,
    host: str | None = None,
    port: int | None = None,
) -> AsyncIterator[StreamingWebSocketGateway]:
    """Serve ``gateway`` and yield it; on exit shut everything down in order (see the module
    docstring).

    ``bridge`` is resolved when the resource starts, so it forwards the services the container
    provides at that moment (overrides made before start included). The server listens when
    ``enabled`` (default ``options.websocket.enabled``) on ``host``:``port`` (default the
    options' ``websocket.host``/``port``; 0 picks a free port, read it from ``gateway.port``).
    Give these to the provider to serve elsewhere without touching the options:
    ``container.server.add_kwargs(enabled=True, port=0)`` before start.
    """
    started = False
    # A misconfigured backend (a wrong Redis URL) fails here, before clients are accepted, and
    # not at the first subscribe.
    await broker.ping()
    if options.websocket.enabled if enabled is None else enabled:
        await gateway.start(host, port)
        started = True
    try:
        yield gateway
    finally:
        # 0. runs the gateway started over HTTP are cancelled while the services still run, so
        #    each publishes its final status
        await gateway.cancel_runs()
        # 1. tokens still buffered reach the bridge -> broker -> client queues
        await _aclose("token streaming", token_streaming)
        await _aclose("progress tracking", progress_tracking)
        await _aclose("event processor", event_processor)
        try:
            await broker.flush()
        except Exception:
            logger.exception("flushing the broker failed")
        # 2. clients drain (bounded), then close with GOING_AWAY; 3. the server stops
        if started:
            await gateway.close_all(CloseCode.GOING_AWAY, "server shutting down")
            await gateway.stop()
        # 4. nothing forwards any more; the broker lets go of logs and timers
        bridge.close()
        await _aclose("broker", broker)
        await asyncio.sleep(0)


__all__ = ["SHUTDOWN_DRAIN_TIMEOUT", "serve"]
