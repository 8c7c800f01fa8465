"""Every error the library raises, each with a stable ``code`` and a ``context`` dict.

Messages say what failed and how to fix it. Catch :class:`StreamingError` to catch them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streaming_module.protocol.close_codes import CloseCode

if TYPE_CHECKING:
    from pydantic import ValidationError


class StreamingError(Exception):
    """Base of every streaming_module error.

    ``code`` is a short machine-readable string (also sent to WebSocket clients where relevant);
    ``context`` holds the values that explain the failure (ids, limits, option names).
    """

    default_code = "streaming_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.context: dict[str, Any] = dict(context or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


SERVICE_CLOSED = "service_closed"
"""``code`` of the error a service raises when it is used after ``aclose()``."""

CALLBACK_FAILED = "callback_failed"
"""``data["code"]`` of the ``error`` event a stream publishes when a user callback of it (a token
``processor``, an event ``transformer``, a progress ``calculator``) raised: that item is dropped,
the node and the run go on."""

INVALID_ID = "invalid_id"
"""``code`` of the error a service raises for an execution or node id that is not a non-blank
string (``context`` names the argument)."""


class StreamingConfigError(StreamingError, ValueError):
    """Options did not validate. ``errors`` lists every bad field as ``(path, message)``."""

    default_code = "invalid_config"

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[tuple[str, str]] = (),
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, context=context)
        self.errors: list[tuple[str, str]] = list(errors)


class TokenStreamingError(StreamingError):
    """A token stream operation failed (unknown or closed stream, bad token, bad config)."""

    default_code = "token_stream_error"


class EventStreamingError(StreamingError):
    """Publishing or processing workflow events failed."""

    default_code = "event_stream_error"


class ProgressTrackingError(StreamingError):
    """A progress tracker was used wrongly (unknown tracker, bad current/total)."""

    default_code = "progress_error"


class StreamOverflowError(StreamingError):
    """An async iterator's consumer fell more than ``max_queue`` items behind its stream."""

    default_code = "stream_overflow"


class WorkflowError(StreamingError):
    """A declarative workflow is malformed (bad node, edge or routing) or was misused."""

    default_code = "workflow_error"


class BrokerError(StreamingError):
    """The broker that keeps and fans out frames failed (e.g. Redis unreachable)."""

    default_code = "broker_error"


class WebSocketError(StreamingError):
    """A WebSocket gateway operation failed.

    ``close_code`` is the WebSocket close code used when the error ends a connection.
    """

    default_code = "websocket_error"
    default_close_code: CloseCode | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        context: Mapping[str, Any] | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message, code=code, context=context)
        self.close_code: int | None = (
            close_code if close_code is not None else self.default_close_code
        )


class AuthenticationError(WebSocketError):
    """The JWT was missing, expired, forged or used a refused algorithm."""

    default_code = "unauthorized"
    default_close_code = CloseCode.UNAUTHORIZED


class ForbiddenError(WebSocketError):
    """The client is authenticated but may not do this (e.g. subscribe to that execution)."""

    default_code = "forbidden"
    default_close_code = CloseCode.FORBIDDEN


class RateLimitError(WebSocketError):
    """A connection or request rate limit was exceeded."""

    default_code = "rate_limited"
    default_close_code = CloseCode.RATE_LIMITED


class ProtocolError(WebSocketError):
    """A client frame was not valid protocol (bad JSON, unknown type, missing field)."""

    default_code = "bad_request"


class ClientNotFoundError(WebSocketError):
    """``send_to_client`` named a client id that is not connected."""

    default_code = "client_not_found"


INPUT_SHOWN_CHARS = 60
"""Longest ``repr`` of a bad input quoted in a validation problem."""


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when cut: how a message
    quotes a value it was given (an id, a type, an input) without repeating all of it."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(
    exc: ValidationError,
    *,
    root: str = "(root)",
    limit: int | None = None,
    show_input: bool = True,
    show: Callable[[Any], Any] | None = None,
) -> list[tuple[str, str]]:
    """Every problem pydantic found, as ``(path, message)``: the path dotted (``root`` when the
    problem is the whole value), pydantic's message followed by ``(got <input>)`` when
    ``show_input`` (at most :data:`INPUT_SHOWN_CHARS` characters; never for a missing field),
    and an unknown key of an ``extra="forbid"`` model named with what to do. At most ``limit``
    problems. ``show`` turns a rejected input into what may be shown (options mask the
    passwords of URLs). Options errors and protocol errors are both worded by it."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False)[:limit]:
        path = ".".join(str(p) for p in err["loc"]) or root
        if err["type"] == "extra_forbidden":
            msg = f"unknown option {err['loc'][-1]!r}; check the spelling or remove it"
        else:
            msg = err["msg"]
            if show_input and "input" in err and err["type"] != "missing":
                shown = shorten(
                    repr(err["input"] if show is None else show(err["input"])), INPUT_SHOWN_CHARS
                )
                msg = f"{msg} (got {shown})"
        out.append((path, msg))
    return out


__all__ = [
    "CALLBACK_FAILED",
    "INVALID_ID",
    "SERVICE_CLOSED",
    "AuthenticationError",
    "BrokerError",
    "ClientNotFoundError",
    "EventStreamingError",
    "ForbiddenError",
    "ProgressTrackingError",
    "ProtocolError",
    "RateLimitError",
    "StreamOverflowError",
    "StreamingConfigError",
    "StreamingError",
    "TokenStreamingError",
    "WebSocketError",
    "WorkflowError",
    "describe_validation_error",
    "shorten",
]
