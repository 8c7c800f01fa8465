"""Server-sent events for our native frames, Sans-I/O: frames in, ``text/event-stream`` bytes out.

One frame is one SSE event::

    id: 42
    event: token
    data: {"type":"token","executionId":"exec-1","sequence":42,...}

``id:`` is the frame's sequence, ``event:`` its type, ``data:`` the frame's JSON exactly as the
WebSocket sends it (``Frame.encoded()``, shared, never re-encoded). Lines end with ``\\n`` only:
some SSE parsers (AG-UI's) split events on ``\\n\\n`` and nothing else.

Resume rules (``GET /executions/{id}/events``):

- no ``Last-Event-ID`` and no ``?lastSequence=``: from the execution's first retained frame, as a
  WebSocket subscribe with ``lastSequence: 0`` (an HTTP GET of a run's events means all of them);
- ``Last-Event-ID: N`` (or ``?lastSequence=N``; the header wins, as a browser's ``EventSource``
  sends it when it reconnects): every retained frame after ``N``, preceded by a ``gap`` frame for
  what the log no longer holds, then live frames — the WebSocket's replay and ``gap`` rules;
- the stream ends after the run's final ``status`` frame. A resume whose point *is* that final
  frame has nothing left to send: :func:`stream_is_complete` says so from the one frame the
  broker replays when asked for everything after ``N - 1``, and the endpoint answers 204, which
  tells an ``EventSource`` to stop reconnecting.

Every function here is pure and allocation-light: one bytes concatenation per frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from streaming_module.errors import CALLBACK_FAILED
from streaming_module.types import FINAL_STATUSES

CONTENT_TYPE = "text/event-stream"
HEADERS: dict[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    # nginx and similar proxies buffer responses unless told not to.
    "X-Accel-Buffering": "no",
}
"""Response headers of every SSE endpoint."""

HEARTBEAT = b": keep-alive\n\n"
"""A comment line: keeps idle connections (and proxies) open; every SSE parser ignores it."""

MAX_EVENT_ID_LENGTH = 64
"""Longer ``Last-Event-ID`` values are refused before parsing (ours are a few digits)."""


class FrameLike(Protocol):
    """What the encoders read of a frame (``streaming_module``'s ``Frame`` has all of it)."""

    execution_id: str
    sequence: int
    type: str
    timestamp: str
    payload: Any

    def encoded(self) -> bytes: ...


class ResumeError(ValueError):
    """A ``Last-Event-ID`` or ``lastSequence`` that is not one of ours (HTTP 400)."""


def event(data: bytes, *, id: str | None = None, event: str | None = None) -> bytes:
    """One SSE event. ``data`` may hold newlines: each line gets its own ``data:`` field, as
    the SSE grammar requires (JSON from our encoders has none)."""
    head = b""
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    if b"\n" in data or b"\r" in data:
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return head + b"data: " + data + b"\n\n"


def retry(milliseconds: int) -> bytes:
    """The ``retry:`` field: how long an ``EventSource`` waits before it reconnects."""
    return b"retry: " + str(int(milliseconds)).encode() + b"\n\n"


def comment(text: str = "keep-alive") -> bytes:
    """A comment (``: text``), ignored by every client; single line only."""
    return b": " + text.replace("\n", " ").replace("\r", " ").encode() + b"\n\n"


def encode_frame(frame: FrameLike) -> bytes:
    """A native frame as one SSE event: ``id:`` sequence, ``event:`` type, ``data:`` the frame's
    JSON bytes as on the WebSocket."""
    return (
        b"id: "
        + str(frame.sequence).encode()
        + b"\nevent: "
        + frame.type.encode()
        + b"\ndata: "
        + frame.encoded()
        + b"\n\n"
    )


def encode_frames(frames: Iterable[FrameLike]) -> bytes:
    """Several frames in one write."""
    return b"".join(encode_frame(f) for f in frames)


def is_final_status(frame: FrameLike) -> bool:
    """True for the run's last frame: a ``status`` frame with a final status."""
    if frame.type != "status":
        return False
    payload = frame.payload
    return isinstance(payload, dict) and payload.get("status") in FINAL_STATUSES


_NODE_ENDING_EVENTS = frozenset({"node_complete", "error", "updates"})


def ends_node_text(payload: Any) -> bool:
    """Whether an ``event`` frame's payload closes its node's text (an AG-UI message, an AI SDK
    text part): the node completed, failed or returned its update. An ``error`` event that only
    says a user callback failed (``callback_failed``: the node goes on streaming) does not."""
    if not isinstance(payload, dict) or payload.get("eventType") not in _NODE_ENDING_EVENTS:
        return False
    data = payload.get("data")
    return not (isinstance(data, dict) and data.get("code") == CALLBACK_FAILED)


def parse_sequence(value: str | None, *, what: str = "Last-Event-ID") -> int | None:
    """A native resume point: ``None`` for none, else a sequence ``>= 0``. Raises
    :class:`ResumeError` for anything else."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_EVENT_ID_LENGTH or not text.isdigit():
        raise ResumeError(
            f"{what} must be a frame sequence number (an integer >= 0), got {value!r}"
        )
    return int(text)


def resume_point(last_event_id: str | None, last_sequence: str | None) -> int:
    """Where a native SSE stream starts: the frames after the returned sequence.

    ``Last-Event-ID`` wins over ``?lastSequence=`` (a reconnecting ``EventSource`` sends the
    header while its URL still carries the query of its first request); neither means ``0``,
    every retained frame.
    """
    header = parse_sequence(last_event_id)
    if header is not None:
        return header
    query = parse_sequence(last_sequence, what="lastSequence")
    return query if query is not None else 0


def stream_is_complete(after: int, first_replayed: FrameLike | None) -> bool:
    """Whether a stream resuming after ``after`` has nothing left to send.

    The endpoint subscribes from ``after - 1`` so that the broker replays the frame ``after``
    itself first; when that frame is the run's final status, the client has already seen the
    whole run."""
    return (
        after > 0
        and first_replayed is not None
        and first_replayed.sequence == after
        and is_final_status(first_replayed)
    )


__all__ = [
    "CONTENT_TYPE",
    "HEADERS",
    "HEARTBEAT",
    "FrameLike",
    "ResumeError",
    "comment",
    "encode_frame",
    "encode_frames",
    "ends_node_text",
    "event",
    "is_final_status",
    "parse_sequence",
    "resume_point",
    "retry",
    "stream_is_complete",
]
