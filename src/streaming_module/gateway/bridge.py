"""WebSocketBridgeService: the services' streams in, broker frames out.

Subscribes to the global token, event and progress streams when built (so nothing published
after that is missed) and publishes every update to the broker synchronously, in order, as the
frame the protocol describes:

=========== ========== ====================================================================
update      frame type payload
=========== ========== ====================================================================
TOKEN       token      ``content``, ``nodeId``, ``index``, ``totalTokens`` (+ ``tokens``)
PROGRESS    progress   ``progress``, ``current``, ``total``, ``eta``, ``rate``, ``milestone``,
                       ``text``, ``nodeId`` (+ ``metrics``)
STATUS      status     ``status`` (+ ``error`` when failed); a final status ends the
                       execution in the broker (its log is kept ``retention_after_end_ms``)
other       event      ``eventType``, ``data``, ``nodeId``, ``priority``
=========== ========== ====================================================================

An update whose metadata says ``delivery: 'at-most-once'`` is published live only (not kept for
replay). Updates without an ``execution_id`` cannot be routed and are dropped (logged at debug).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from reactivex import Observable
from reactivex.abc import DisposableBase

from streaming_module.broker.base import Broker, Frame
from streaming_module.types import (
    FINAL_STATUSES,
    ProgressData,
    StreamEventType,
    StreamUpdate,
    TokenData,
)

logger = logging.getLogger("streaming_module.gateway")


class _TokenSource(Protocol):
    def get_global_token_stream(self) -> Observable[Any]: ...


class _EventSource(Protocol):
    def get_event_stream(self) -> Observable[Any]: ...


class _ProgressSource(Protocol):
    def get_progress_stream(self) -> Observable[Any]: ...


def _field(data: Any, name: str, default: Any = None) -> Any:
    if isinstance(data, dict):
        return data.get(name, default)
    return getattr(data, name, default)


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
        metadata = update.metadata
        execution_id = metadata.execution_id if metadata is not None else None
        if not execution_id:
            logger.debug("dropping a %s update without execution_id", update.type)
            return None
        node_id = metadata.node_id if metadata is not None else None
        replayable = metadata is None or metadata.get("delivery") != "at-most-once"
        kind = update.type
        data = update.data
        frame_type: str
        payload: dict[str, Any]
        if kind is StreamEventType.TOKEN:
            frame_type, payload = "token", self._token_payload(data, node_id)
        elif kind is StreamEventType.PROGRESS and isinstance(data, (ProgressData, dict)):
            frame_type, payload = "progress", self._progress_payload(data, node_id)
        elif kind is StreamEventType.STATUS:
            status = str(_field(data, "status", ""))
            payload = {"status": status}
            error = _field(data, "error")
            if status == "failed" or error is not None:
                payload["error"] = error
            frame = self.broker.publish(execution_id, "status", payload, replayable=replayable)
            if status in FINAL_STATUSES:
                self.broker.end_execution(execution_id)
            self.forwarded += 1
            return frame
        else:
            frame_type = "event"
            payload = {
                "eventType": kind.value if isinstance(kind, StreamEventType) else str(kind),
                "data": data,
                "nodeId": node_id,
                "priority": metadata.get("priority") if metadata is not None else None,
            }
        frame = self.broker.publish(execution_id, frame_type, payload, replayable=replayable)
        self.forwarded += 1
        return frame

    @staticmethod
    def _token_payload(data: Any, node_id: str | None) -> dict[str, Any]:
        if isinstance(data, TokenData):
            payload: dict[str, Any] = {
                "content": data.content,
                "nodeId": node_id,
                "index": data.index,
                "totalTokens": data.total_tokens,
            }
            if data.tokens is not None:
                payload["tokens"] = data.tokens
            if data.role is not None:
                payload["role"] = data.role
            return payload
        if isinstance(data, str):
            return {"content": data, "nodeId": node_id, "index": None, "totalTokens": None}
        payload = {
            "content": _field(data, "content", ""),
            "nodeId": node_id,
            "index": _field(data, "index"),
            "totalTokens": _field(data, "total_tokens", _field(data, "totalTokens")),
        }
        tokens = _field(data, "tokens")
        if tokens is not None:
            payload["tokens"] = tokens
        return payload

    @staticmethod
    def _progress_payload(
        data: ProgressData | dict[str, Any], node_id: str | None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "progress": _field(data, "progress"),
            "current": _field(data, "current"),
            "total": _field(data, "total"),
            "eta": _field(data, "eta"),
            "rate": _field(data, "rate"),
            "milestone": _field(data, "milestone"),
            "text": _field(data, "text", ""),
            "nodeId": node_id,
        }
        metrics = _field(data, "metrics")
        if metrics is not None:
            payload["metrics"] = metrics
        return payload


__all__ = ["WebSocketBridgeService"]
