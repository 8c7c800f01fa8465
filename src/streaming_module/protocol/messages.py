"""Client → server messages: their models, their decoding, and the builders a client encodes
them with. No I/O.

Client frames are validated at the edge into pydantic models (:func:`decode_client_message`);
anything wrong raises :class:`~streaming_module.errors.ProtocolError` whose ``code`` says what
(``too_deep``, ``invalid_json``, ``invalid_message``, ``unknown_type``, ``invalid_payload``) and
whose ``message`` says how to fix it — whatever the input, no other exception escapes. Nesting
is limited (:data:`MAX_MESSAGE_DEPTH`) before the text is parsed, and execution ids are checked
whole (:data:`EXECUTION_ID`). The ``encode_*`` builders write the same messages, as the Python
client sends them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from streaming_module.errors import ProtocolError, describe_validation_error, shorten
from streaming_module.protocol.frames import FILTERABLE_KINDS
from streaming_module.protocol.json import JSONDecodeError, dumps, loads, nesting_exceeds

EventKind = Literal["token", "event", "progress", "status"]
"""Frame kinds a subscription may select with ``events``."""

ALL_EVENTS: Final = ("token", "event", "progress", "status")
"""Every selectable kind, in the order the manual lists them."""

SUBSCRIBE_EXECUTION: Final = "subscribe_execution"
UNSUBSCRIBE_EXECUTION: Final = "unsubscribe_execution"
PING: Final = "ping"
ACK: Final = "ack"
CLIENT_MESSAGE_TYPES: Final = (SUBSCRIBE_EXECUTION, UNSUBSCRIBE_EXECUTION, PING, ACK)

MAX_EXECUTION_ID_LENGTH: Final = 256

EXECUTION_ID: Final = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,256}")
"""What an execution id is: 1 to 256 characters, none of them a control character (no newline,
tab or NUL: ids end up in logs and replies). Always matched whole (``fullmatch``)."""

MAX_MESSAGE_DEPTH: Final = 32
"""How deeply a client message may nest arrays and objects (the protocol's own messages nest 3
levels; a ``ping`` payload a few more). Deeper text is refused with ``too_deep`` before parsing."""

MAX_REPORTED_PROBLEMS: Final = 5
"""Validation problems named in one ``invalid_payload`` error."""


class _WireModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


RESERVED_ID_PREFIX: Final = "@"
"""Ids beginning with it name the server's own channels and records (the runs API's cancel
channel, chat and thread records): no client may subscribe to, read or watch them."""


def _whole_id(value: str) -> str:
    if EXECUTION_ID.fullmatch(value) is None:
        raise ValueError("an execution id may not contain control characters (newline, tab, NUL)")
    if value.startswith(RESERVED_ID_PREFIX):
        raise ValueError(f"execution ids beginning with {RESERVED_ID_PREFIX!r} are reserved")
    return value


def is_execution_id(value: object) -> bool:
    """Whether ``value`` is a valid execution id (a string :data:`EXECUTION_ID` matches whole,
    not beginning with :data:`RESERVED_ID_PREFIX`)."""
    return (
        isinstance(value, str)
        and EXECUTION_ID.fullmatch(value) is not None
        and not value.startswith(RESERVED_ID_PREFIX)
    )


ExecutionId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_EXECUTION_ID_LENGTH, strict=True),
    AfterValidator(_whole_id),
]


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
    SUBSCRIBE_EXECUTION: TypeAdapter(SubscribeExecution),
    UNSUBSCRIBE_EXECUTION: TypeAdapter(UnsubscribeExecution),
    PING: TypeAdapter(Ping),
    ACK: TypeAdapter(Ack),
}


# --------------------------------------------------------------------------- decoding


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Parse and validate one client text frame.

    Raises :class:`ProtocolError` with code ``too_deep`` (nested deeper than
    :data:`MAX_MESSAGE_DEPTH`, refused before parsing), ``invalid_json`` (not JSON, or not UTF-8),
    ``invalid_message`` (not an object, or no string ``type``), ``unknown_type`` or
    ``invalid_payload`` (missing or mistyped fields; the message names them). Nothing else.
    """
    if nesting_exceeds(data, MAX_MESSAGE_DEPTH):
        raise ProtocolError(
            f"the message nests arrays or objects deeper than {MAX_MESSAGE_DEPTH} levels; "
            "protocol messages need 3",
            code="too_deep",
        )
    try:
        raw = loads(data)
    except JSONDecodeError as exc:
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
        shown = shorten(kind, 40)
        raise ProtocolError(
            f"unknown message type {shown!r}; expected one of " + ", ".join(CLIENT_MESSAGE_TYPES),
            code="unknown_type",
            context={"type": shown},
        )
    try:
        message: ClientMessage = adapter.validate_python(raw)
    except ValidationError as exc:
        problems = describe_validation_error(
            exc, root="(message)", limit=MAX_REPORTED_PROBLEMS, show_input=False
        )
        raise ProtocolError(
            f"invalid {kind!r} message: " + "; ".join(f"{loc}: {msg}" for loc, msg in problems),
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


# --------------------------------------------------------------------------- builders
# They write plain dicts (no validation): what the server answers to a bad value is the
# client's error to report, as it would be for any other client.


def encode_subscribe(
    execution_id: str, events: Iterable[str] | None = None, last_sequence: int | None = None
) -> str:
    """``subscribe_execution`` as JSON text; ``events`` None lists every kind explicitly."""
    payload: dict[str, Any] = {
        "executionId": execution_id,
        "events": list(events) if events is not None else list(ALL_EVENTS),
    }
    if last_sequence is not None:
        payload["lastSequence"] = last_sequence
    return _text({"type": SUBSCRIBE_EXECUTION, "payload": payload})


def encode_unsubscribe(execution_id: str) -> str:
    """``unsubscribe_execution`` as JSON text."""
    return _text({"type": UNSUBSCRIBE_EXECUTION, "payload": {"executionId": execution_id}})


def encode_ping(payload: dict[str, Any] | None = None) -> str:
    """``ping`` as JSON text (the server echoes ``payload`` in its ``pong``)."""
    return _text({"type": PING, "payload": payload if payload is not None else {}})


def encode_ack(execution_id: str, sequence: int) -> str:
    """``ack`` as JSON text: every frame of the execution up to ``sequence`` was processed."""
    return _text({"type": ACK, "payload": {"executionId": execution_id, "sequence": sequence}})


def _text(message: dict[str, Any]) -> str:
    return dumps(message).decode()


__all__ = [
    "ACK",
    "ALL_EVENTS",
    "CLIENT_MESSAGE_TYPES",
    "EXECUTION_ID",
    "MAX_EXECUTION_ID_LENGTH",
    "MAX_MESSAGE_DEPTH",
    "PING",
    "RESERVED_ID_PREFIX",
    "SUBSCRIBE_EXECUTION",
    "UNSUBSCRIBE_EXECUTION",
    "Ack",
    "AckPayload",
    "ClientMessage",
    "EventKind",
    "ExecutionPayload",
    "Ping",
    "SubscribeExecution",
    "SubscribePayload",
    "UnsubscribeExecution",
    "decode_client_message",
    "encode_ack",
    "encode_ping",
    "encode_subscribe",
    "encode_unsubscribe",
    "is_execution_id",
]
