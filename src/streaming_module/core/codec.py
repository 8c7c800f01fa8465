"""The wire codec: client messages in, server frames out. No I/O.

Client frames are validated at the edge into pydantic models (:func:`decode_client_message`);
anything wrong raises :class:`~streaming_module.errors.ProtocolError` whose ``code`` says what
(``invalid_json``, ``invalid_message``, ``unknown_type``, ``invalid_payload``) and whose
``message`` says how to fix it. The server side encodes each frame once, with orjson, into the
bytes every subscriber is sent (:func:`encode_frame`, :func:`encode_reply`);
:func:`json_default` makes values JSON can't hold (pydantic models such as LangChain messages,
dataclasses, datetimes, sets, bytes, enums) serialisable instead of failing a broadcast.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from streaming_module.errors import ProtocolError

# --------------------------------------------------------------------------- client → server

EventKind = Literal["token", "event", "progress", "status"]
"""Frame kinds a subscription may select with ``events``."""

FILTERABLE_KINDS: frozenset[str] = frozenset({"token", "event", "progress", "status"})
"""Frame types that ``events`` filters; every other frame type (``workflow_update``, ``gap``)
always reaches a subscriber."""

CLIENT_MESSAGE_TYPES = ("subscribe_execution", "unsubscribe_execution", "ping", "ack")

MAX_EXECUTION_ID_LENGTH = 256


class _WireModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


ExecutionId = Annotated[str, Field(min_length=1, max_length=MAX_EXECUTION_ID_LENGTH, strict=True)]


class SubscribePayload(_WireModel):
    execution_id: ExecutionId
    events: list[EventKind] | None = None
    last_sequence: Annotated[int, Field(ge=0, strict=True)] | None = None


class SubscribeExecution(_WireModel):
    """``{"type": "subscribe_execution", "payload": {"executionId", "events"?,
    "lastSequence"?}}``."""

    type: Literal["subscribe_execution"]
    payload: SubscribePayload

    @property
    def kinds(self) -> frozenset[str]:
        """The frame kinds selected (all four when ``events`` was not given)."""
        events = self.payload.events
        return FILTERABLE_KINDS if events is None else frozenset(events)


class ExecutionPayload(_WireModel):
    execution_id: ExecutionId


class UnsubscribeExecution(_WireModel):
    """``{"type": "unsubscribe_execution", "payload": {"executionId"}}``."""

    type: Literal["unsubscribe_execution"]
    payload: ExecutionPayload


class Ping(_WireModel):
    """``{"type": "ping", "payload"?: {...}}``; the payload, if any, is echoed in ``pong``."""

    type: Literal["ping"]
    payload: dict[str, Any] | None = None


class AckPayload(_WireModel):
    execution_id: ExecutionId
    sequence: Annotated[int, Field(ge=0, strict=True)]


class Ack(_WireModel):
    """``{"type": "ack", "payload": {"executionId", "sequence"}}``: the client has processed
    every frame of that execution up to ``sequence``."""

    type: Literal["ack"]
    payload: AckPayload


ClientMessage = SubscribeExecution | UnsubscribeExecution | Ping | Ack

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "subscribe_execution": TypeAdapter(SubscribeExecution),
    "unsubscribe_execution": TypeAdapter(UnsubscribeExecution),
    "ping": TypeAdapter(Ping),
    "ack": TypeAdapter(Ack),
}


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Parse and validate one client text frame.

    Raises :class:`ProtocolError` with code ``invalid_json`` (not JSON), ``invalid_message`` (not
    an object, or no string ``type``), ``unknown_type`` or ``invalid_payload`` (missing or mistyped
    fields; the message names them).
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(
            f"frame is not valid JSON ({exc.msg} at position {exc.pos}); send a JSON object "
            'like {"type": "ping"}',
            code="invalid_json",
        ) from None
    if not isinstance(raw, dict):
        raise ProtocolError(
            f"expected a JSON object with a 'type', got a JSON {_json_kind(raw)}",
            code="invalid_message",
        )
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            "missing or non-string 'type'; one of " + ", ".join(CLIENT_MESSAGE_TYPES),
            code="invalid_message",
        )
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        shown = kind if len(kind) <= 40 else kind[:37] + "..."
        raise ProtocolError(
            f"unknown message type {shown!r}; expected one of " + ", ".join(CLIENT_MESSAGE_TYPES),
            code="unknown_type",
            context={"type": shown},
        )
    try:
        message: ClientMessage = adapter.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError(
            f"invalid {kind!r} message: {_describe(exc)}",
            code="invalid_payload",
            context={"type": kind},
        ) from None
    return message


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null"


# --------------------------------------------------------------------------- server → client


def json_default(value: Any) -> Any:
    """orjson ``default``: turn a value JSON cannot hold into one it can.

    pydantic models (LangChain messages are) → ``model_dump(mode="json")``; objects with
    ``to_dict()`` → that; dataclasses → dict; sets → lists; bytes → text; enums → value;
    timedeltas → seconds; anything else → ``str(value)`` rather than failing the broadcast.
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """JSON bytes of ``value`` (see :func:`json_default` for non-JSON values)."""
    return orjson.dumps(value, default=json_default, option=_OPTIONS)


def encode_frame(
    frame_type: str, execution_id: str, sequence: int, timestamp: str, payload: Any
) -> bytes:
    """``{"type", "executionId", "sequence", "timestamp", "payload"}`` as UTF-8 JSON bytes."""
    return orjson.dumps(
        {
            "type": frame_type,
            "executionId": execution_id,
            "sequence": sequence,
            "timestamp": timestamp,
            "payload": payload,
        },
        default=json_default,
        option=_OPTIONS,
    )


def encode_reply(reply_type: str, payload: Any, *, execution_id: str | None = None) -> bytes:
    """A reply that is not part of an execution's sequence: ``subscribed``, ``unsubscribed``,
    ``pong``, ``error``. ``executionId`` is included when given."""
    message: dict[str, Any] = {"type": reply_type}
    if execution_id is not None:
        message["executionId"] = execution_id
    message["payload"] = payload
    return orjson.dumps(message, default=json_default, option=_OPTIONS)


def encode_error(code: str, message: str) -> bytes:
    """``{"type": "error", "payload": {"code", "message"}}``."""
    return encode_reply("error", {"code": code, "message": message})


_PACK_LEN2 = struct.Struct("!BBH").pack
_PACK_LEN3 = struct.Struct("!BBQ").pack


def ws_text_frame(data: bytes) -> bytes:
    """``data`` (UTF-8 JSON) as one complete, final, unmasked, uncompressed WebSocket text frame
    (RFC 6455 section 5.2): ``0x81``, then the payload length in 7 bits (< 126), as 126 + 16
    bits (< 65536) or as 127 + 64 bits, then the payload. Server-to-client frames are never
    masked, so these bytes are the same for every client of a broadcast. Costs one copy of
    ``data``."""
    length = len(data)
    if length < 126:
        return bytes((0x81, length)) + data
    if length < 65536:
        return _PACK_LEN2(0x81, 126, length) + data
    return _PACK_LEN3(0x81, 127, length) + data


__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "FILTERABLE_KINDS",
    "Ack",
    "ClientMessage",
    "EventKind",
    "Ping",
    "SubscribeExecution",
    "UnsubscribeExecution",
    "decode_client_message",
    "dumps",
    "encode_error",
    "encode_frame",
    "encode_reply",
    "json_default",
    "ws_text_frame",
]
