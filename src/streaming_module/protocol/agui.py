"""AG-UI over SSE, Sans-I/O: our frames in, AG-UI events (the ``ag-ui-protocol`` package's models
and ``EventEncoder``) out, each with an ``id:`` derived from the frame's sequence.

Mapping (one frame may yield several events):

================================= ===========================================================
frame                             AG-UI events
================================= ===========================================================
the run's first frame             ``RUN_STARTED`` (``threadId``, ``runId`` = execution id) first
a node's first frame              ``STEP_STARTED`` (``stepName`` = node id)
``token``                         ``TEXT_MESSAGE_START`` on a node's first token (role
                                  ``assistant``), then ``TEXT_MESSAGE_CONTENT`` (``delta``)
``event`` ``tool_start``          ``TOOL_CALL_START`` (``toolCallName`` = the tool),
                                  ``TOOL_CALL_ARGS`` (its input as JSON), ``TOOL_CALL_END``;
                                  then ``CUSTOM``
``event`` ``tool_complete``       ``TOOL_CALL_RESULT`` (the tool's output); then ``CUSTOM``
``event`` ``node_complete``,      ``TEXT_MESSAGE_END`` of the node's message, ``STEP_FINISHED``;
``error``, ``updates``, a node's  then ``CUSTOM``
own ``tool_complete``
other ``event``                   ``CUSTOM`` ``name: "event"``, ``value``: the frame's payload
``progress``                      ``CUSTOM`` ``name: "progress"``, ``value``: the payload
                                  (``progress`` percent, ``eta`` seconds, ``nodeId``, ...)
``gap``, ``workflow_update``      ``CUSTOM`` named after the frame type
final ``status``                  ``TEXT_MESSAGE_END`` / ``STEP_FINISHED`` for whatever is still
                                  open; completed: ``STATE_SNAPSHOT`` (the final state, when
                                  known) + ``RUN_FINISHED``; failed: ``RUN_ERROR``; cancelled:
                                  ``RUN_FINISHED`` with outcome ``cancelled``
================================= ===========================================================

Event ids. The events of the frame with sequence ``42`` get the ids ``42``, ``42.1``, ``42.2``
...: unique and ordered within the run. The encoder is a state machine over the run's frames
from the first (is a message open? a step?), and every id it gives is a function of those frames
alone, so any instance replaying the same log gives the same ids. Resuming "right after
``42.1``" (:func:`parse_event_id`) therefore replays the run's frames from the first through a
fresh encoder and drops every event up to and including ``42.1``: a message that was started
before the cut is continued, never re-opened. Message ids (``<runId>:<node>:<sequence>``) and
tool call ids are derived the same way.

Cost. Building and dumping an AG-UI pydantic model costs ~30 µs; a token would pay that per
frame. So ``TEXT_MESSAGE_CONTENT`` is encoded once per message by the package's model and
encoder with a placeholder delta, and each token's delta (JSON-escaped by orjson) is spliced
into those bytes: the same bytes the encoder gives (``tests/unit/test_protocol_agui.py`` checks
it), for ~1 µs a token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    StateSnapshotEvent,
    StepFinishedEvent,
    StepStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from ag_ui.core import RunAgentInput as RunAgentInput
from ag_ui.core.version import PROTOCOL_VERSION
from ag_ui.encoder import EventEncoder

from streaming_module.protocol.sse import FrameLike, ResumeError, ends_node_text, is_final_status

RUN_NODE = "run"
"""The message key of tokens that name no node."""

_PLACEHOLDER = "\x00delta\x00"
_ENCODER = EventEncoder()


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """``"42"`` → ``(42, 0)``, ``"42.1"`` → ``(42, 1)``; None for none. Raises
    :class:`~streaming_module.protocol.sse.ResumeError` for anything else."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    head, dot, tail = text.partition(".")
    if len(text) > 64 or not head.isdigit() or (dot and not tail.isdigit()):
        raise ResumeError(f"Last-Event-ID must be an AG-UI event id like 42 or 42.1, got {value!r}")
    return int(head), int(tail) if dot else 0


def event_id(sequence: int, index: int) -> str:
    """The id of the ``index``-th event of the frame ``sequence``."""
    return str(sequence) if index == 0 else f"{sequence}.{index}"


def encode_event(event: BaseEvent, id: str | None = None) -> bytes:
    """One AG-UI event as SSE bytes, through the package's ``EventEncoder``."""
    data = _ENCODER.encode(event).encode()
    return b"id: " + id.encode() + b"\n" + data if id is not None else data


def prompt_of(run_input: Any) -> str:
    """The text of a ``RunAgentInput``'s last user message ('' when there is none)."""
    for message in reversed(list(getattr(run_input, "messages", None) or [])):
        if getattr(message, "role", None) != "user":
            continue
        content = getattr(message, "content", "")
        if isinstance(content, str):
            return content
        parts = [getattr(p, "text", "") for p in content if getattr(p, "type", None) == "text"]
        return "".join(str(p) for p in parts)
    return ""


@dataclass(slots=True)
class _Message:
    message_id: str
    prefix: bytes  # TEXT_MESSAGE_CONTENT's JSON up to the delta
    tail: bytes  # ... after it, with the event's blank line
    head: bytes = field(init=False)  # the SSE event's bytes from after its id up to the delta

    def __post_init__(self) -> None:
        self.head = b"\ndata: " + self.prefix


@dataclass
class AguiEncoder:
    """The AG-UI events of one run, frame by frame (see the module docstring).

    ``resume_after`` (from :func:`parse_event_id`) drops every event up to and including that
    id; ``final_state`` is the ``STATE_SNAPSHOT`` sent when the run completes (None: none sent).
    """

    run_id: str
    thread_id: str
    resume_after: tuple[int, int] | None = None
    final_state: Any = None
    started: bool = False
    finished: bool = False
    _messages: dict[str, _Message] = field(default_factory=dict)
    _steps: dict[str, None] = field(default_factory=dict)
    _done_steps: set[str] = field(default_factory=set)
    _tools: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ encoding

    def encode(self, frame: FrameLike) -> bytes:
        """The SSE bytes of the frame's events (empty when all of them were already sent)."""
        sequence = frame.sequence
        resume = self.resume_after
        if frame.type == "token" and self.started and not self.finished:
            # The hot path: one token frame of a node whose message (and step) is open.
            payload = frame.payload
            node = payload.get("nodeId")
            message = self._messages.get(node or RUN_NODE)
            if message is not None and (node is None or node in self._steps):
                if resume is not None and (sequence, 0) <= resume:
                    return b""
                content = payload.get("content") or ""
                # One join: a chain of `+` copies the growing event once per piece.
                return b"".join(
                    (
                        b"id: ",
                        str(sequence).encode(),
                        message.head,
                        orjson.dumps(content),
                        message.tail,
                    )
                )
        out: list[bytes] = []
        for index, event in enumerate(self.events(frame)):
            if resume is not None and (sequence, index) <= resume:
                continue
            if isinstance(event, bytes):  # a spliced TEXT_MESSAGE_CONTENT
                out.append(b"id: " + event_id(sequence, index).encode() + b"\ndata: " + event)
            else:
                out.append(encode_event(event, event_id(sequence, index)))
        return b"".join(out)

    def events(self, frame: FrameLike) -> list[Any]:
        """The frame's AG-UI events, in order (a ``TEXT_MESSAGE_CONTENT`` as its encoded JSON
        line, the rest as models). Advances the encoder's state."""
        out: list[Any] = []
        if self.finished:
            return out
        if not self.started:
            self.started = True
            out.append(
                RunStartedEvent(
                    thread_id=self.thread_id, run_id=self.run_id, protocol_version=PROTOCOL_VERSION
                )
            )
        kind = frame.type
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        node = payload.get("nodeId")
        if is_final_status(frame):
            self._finish(frame, payload, out)
            return out
        if (
            node
            and node not in self._steps
            and (
                node not in self._done_steps
                or (kind == "event" and payload.get("eventType") == "node_start")
            )
        ):
            self._done_steps.discard(node)
            self._steps[node] = None
            out.append(StepStartedEvent(step_name=node))
        if kind == "token":
            self._token(frame, node or RUN_NODE, payload, out)
        elif kind == "event":
            self._event(frame, node, payload, out)
        elif kind == "progress":
            out.append(CustomEvent(name="progress", value=payload))
        elif kind != "status":
            out.append(CustomEvent(name=kind, value=frame.payload))
        return out

    # ------------------------------------------------------------------ pieces

    def _token(self, frame: FrameLike, node: str, payload: dict[str, Any], out: list[Any]) -> None:
        message = self._messages.get(node)
        if message is None:
            message_id = f"{self.run_id}:{node}:{frame.sequence}"
            template = _ENCODER.encode(
                TextMessageContentEvent(message_id=message_id, delta=_PLACEHOLDER)
            ).encode()
            placeholder = orjson.dumps(_PLACEHOLDER)
            prefix, found, suffix = template.removeprefix(b"data: ").partition(placeholder)
            if not found:  # pragma: no cover - the encoder changed its escaping
                raise RuntimeError("AG-UI encoder escaped the delta unexpectedly")
            message = _Message(message_id, prefix, suffix.removesuffix(b"\n\n") + b"\n\n")
            self._messages[node] = message
            out.append(TextMessageStartEvent(message_id=message_id, role="assistant"))
        content = payload.get("content") or ""
        out.append(message.prefix + orjson.dumps(content) + message.tail)

    def _event(
        self, frame: FrameLike, node: str | None, payload: dict[str, Any], out: list[Any]
    ) -> None:
        event_type = payload.get("eventType")
        raw = payload.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        closes = ends_node_text(payload)
        if event_type == "tool_start":
            key = str(data.get("run_id") or f"node:{data.get('tool') or node}")
            tool_call_id = f"{self.run_id}:tool:{frame.sequence}"
            self._tools[key] = tool_call_id
            parent = self._messages.get(node or RUN_NODE)
            out.append(
                ToolCallStartEvent(
                    tool_call_id=tool_call_id,
                    tool_call_name=str(data.get("tool") or node or "tool"),
                    parent_message_id=parent.message_id if parent is not None else None,
                )
            )
            arguments = data.get("input", {k: v for k, v in data.items() if k != "tool"})
            text = (
                arguments
                if isinstance(arguments, str)
                else orjson.dumps(arguments, default=str).decode()
            )
            out.append(ToolCallArgsEvent(tool_call_id=tool_call_id, delta=text))
            out.append(ToolCallEndEvent(tool_call_id=tool_call_id))
        elif event_type == "tool_complete":
            own = not data.get("run_id") and data.get("tool") == node
            key = str(data.get("run_id") or f"node:{data.get('tool') or node}")
            pending = self._tools.pop(key, None)
            if pending is not None:
                tool_call_id = pending
                output = data.get("output", {k: v for k, v in data.items() if k != "tool"})
                content = (
                    output
                    if isinstance(output, str)
                    else orjson.dumps(output, default=str).decode()
                )
                out.append(
                    ToolCallResultEvent(
                        message_id=f"{tool_call_id}:result",
                        tool_call_id=tool_call_id,
                        content=content,
                        role="tool",
                    )
                )
            closes = closes or own
        if closes and node:
            self._close_node(node, out)
        out.append(CustomEvent(name="event", value=payload))

    def _close_node(self, node: str, out: list[Any]) -> None:
        message = self._messages.pop(node, None)
        if message is not None:
            out.append(TextMessageEndEvent(message_id=message.message_id))
        if node in self._steps:
            del self._steps[node]
            self._done_steps.add(node)
            out.append(StepFinishedEvent(step_name=node))

    def _finish(self, frame: FrameLike, payload: dict[str, Any], out: list[Any]) -> None:
        for node in list(self._messages):
            message = self._messages.pop(node)
            out.append(TextMessageEndEvent(message_id=message.message_id))
        for node in list(self._steps):
            out.append(StepFinishedEvent(step_name=node))
        self._steps.clear()
        self.finished = True
        status = payload.get("status")
        if status == "completed":
            if self.final_state is not None:
                out.append(StateSnapshotEvent(snapshot=self.final_state))
            out.append(RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id))
        elif status == "cancelled":
            out.append(
                RunFinishedEvent(
                    thread_id=self.thread_id,
                    run_id=self.run_id,
                    outcome=RunFinishedCancelledOutcome(),
                )
            )
        else:
            error = payload.get("error")
            if isinstance(error, dict):
                text, code = str(error.get("message")), str(error.get("code") or "failed")
            else:
                text, code = str(error or "the run failed"), "workflow_failed"
            out.append(RunErrorEvent(message=text, code=code))


def encode_all(frames: Iterable[FrameLike], run_id: str, thread_id: str) -> bytes:
    """A whole run's frames as AG-UI SSE bytes (tests, benchmarks)."""
    encoder = AguiEncoder(run_id, thread_id)
    return b"".join(encoder.encode(f) for f in frames)


__all__ = [
    "RUN_NODE",
    "AguiEncoder",
    "RunAgentInput",
    "encode_all",
    "encode_event",
    "event_id",
    "parse_event_id",
    "prompt_of",
]
