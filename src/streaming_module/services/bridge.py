"""WebSocketBridgeService: the services' streams in, broker frames out.

Subscribes to the global token, event and progress streams when built (so nothing published
after that is missed), converts every update with
:func:`~streaming_module.protocol.updates.frame_from_update` (the table of what becomes which
frame is there) and publishes it to the broker synchronously, in order. A final status also ends
the execution in the broker (its log is then kept ``retention_after_end_ms``). Updates without an
``execution_id`` cannot be routed and are dropped (logged at debug).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from reactivex import Observable
from reactivex.abc import DisposableBase

from streaming_module.broker.base import Broker
from streaming_module.protocol.frames import Frame
from streaming_module.protocol.updates import frame_from_update
from streaming_module.types import StreamUpdate

logger = logging.getLogger("streaming_module.bridge")


class _TokenSource(Protocol):
    def get_global_token_stream(self) -> Observable[Any]: ...


class _EventSource(Protocol):
    def get_event_stream(self) -> Observable[Any]: ...


class _ProgressSource(Protocol):
    def get_progress_stream(self) -> Observable[Any]: ...


class WebSocketBridgeService:
    """Forwards the services' updates to the broker, hence to WebSocket subscribers."""

    def __init__(
        self,
        token_streaming: _TokenSource | None,
        event_processor: _EventSource | None,
        progress_tracking: _ProgressSource | None,
        broker: Broker,
    ) -> None:
        self.broker = broker
        self.forwarded = 0
        self._subscriptions: list[DisposableBase] = []
        sources: list[Observable[Any]] = []
        if token_streaming is not None:
            sources.append(token_streaming.get_global_token_stream())
        if event_processor is not None:
            sources.append(event_processor.get_event_stream())
        if progress_tracking is not None:
            sources.append(progress_tracking.get_progress_stream())
        for source in sources:
            self._subscriptions.append(source.subscribe(on_next=self._on_next))

    def close(self) -> None:
        """Stop forwarding (idempotent)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.dispose()

    def _on_next(self, update: StreamUpdate[Any]) -> None:
        try:
            self.forward(update)
        except Exception:
            logger.exception("could not forward %r to WebSocket subscribers", update.type)

    def forward(self, update: StreamUpdate[Any]) -> Frame | None:
        """Publish one update as a frame of its execution; returns the frame (None when the
        update names no execution)."""
        fields = frame_from_update(update)
        if fields is None:
            logger.debug("dropping a %s update without execution_id", update.type)
            return None
        frame = self.broker.publish(
            fields.execution_id, fields.type, fields.payload, replayable=fields.replayable
        )
        if fields.ends_execution:
            self.broker.end_execution(fields.execution_id)
        self.forwarded += 1
        return frame


__all__ = ["WebSocketBridgeService"]
