"""What a service's :class:`~streaming_module.types.StreamUpdate` becomes on the wire. No I/O.

=========== ========== ====================================================================
update      frame type payload
=========== ========== ====================================================================
TOKEN       token      ``content``, ``nodeId``, ``index``, ``totalTokens`` (+ ``tokens``,
                       ``role``)
PROGRESS    progress   ``progress``, ``current``, ``total``, ``eta``, ``rate``, ``milestone``,
                       ``text``, ``nodeId`` (+ ``metrics``)
STATUS      status     ``status`` (+ ``error`` when failed); a final status ends the execution
other       event      ``eventType``, ``data``, ``nodeId``, ``priority``
=========== ========== ====================================================================

An update whose metadata says ``delivery: 'at-most-once'`` is not replayable (delivered live
only). An update without an ``execution_id`` cannot be routed: :func:`frame_from_update` returns
``None`` for it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from streaming_module.protocol.frames import EVENT, PROGRESS, STATUS, TOKEN
from streaming_module.types import (
    FINAL_STATUSES,
    ProgressData,
    StreamEventType,
    StreamUpdate,
    TokenData,
)


class FrameFields(NamedTuple):
    """What a broker needs to publish one frame (it adds the sequence and the timestamp)."""

    execution_id: str
    type: str
    payload: dict[str, Any]
    replayable: bool

    @property
    def ends_execution(self) -> bool:
        """A final status (``completed``, ``failed``, ``cancelled``): the run's last frame."""
        return self.type == STATUS and self.payload.get("status") in FINAL_STATUSES


def frame_from_update(update: StreamUpdate[Any]) -> FrameFields | None:
    """The frame ``update`` is published as (see the module docstring), or ``None`` when its
    metadata names no execution."""
    metadata = update.metadata
    execution_id = metadata.execution_id if metadata is not None else None
    if not execution_id:
        return None
    node_id = metadata.node_id if metadata is not None else None
    replayable = metadata is None or metadata.get("delivery") != "at-most-once"
    kind = update.type
    data = update.data
    if kind is StreamEventType.TOKEN:
        return FrameFields(execution_id, TOKEN, _token_payload(data, node_id), replayable)
    if kind is StreamEventType.PROGRESS and isinstance(data, (ProgressData, dict)):
        return FrameFields(execution_id, PROGRESS, _progress_payload(data, node_id), replayable)
    if kind is StreamEventType.STATUS:
        status = str(_field(data, "status", ""))
        payload: dict[str, Any] = {"status": status}
        error = _field(data, "error")
        if status == "failed" or error is not None:
            payload["error"] = error
        return FrameFields(execution_id, STATUS, payload, replayable)
    payload = {
        "eventType": kind.value if isinstance(kind, StreamEventType) else str(kind),
        "data": data,
        "nodeId": node_id,
        "priority": metadata.get("priority") if metadata is not None else None,
    }
    return FrameFields(execution_id, EVENT, payload, replayable)


def _field(data: Any, name: str, default: Any = None) -> Any:
    if isinstance(data, dict):
        return data.get(name, default)
    return getattr(data, name, default)


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


def _progress_payload(data: ProgressData | dict[str, Any], node_id: str | None) -> dict[str, Any]:
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


__all__ = ["FrameFields", "frame_from_update"]
