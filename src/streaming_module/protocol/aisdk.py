"""The AI SDK UI message stream (v1), Sans-I/O: our frames in, ``useChat``'s SSE parts out.

Mapping (one frame may yield several parts):

================================ =============================================================
frame                            UI message stream parts
================================ =============================================================
the run's first frame            ``start`` (``messageId`` = the execution id), ``start-step``
``token``                        ``text-start`` on a node's first token (``id`` =
                                 ``<node>-<sequence>``), then ``text-delta`` (``delta``)
``event``                        ``data-event`` (``data``: the frame's payload); a node's
                                 ``node_complete``, ``error`` or ``updates`` first ends its text
                                 (``text-end``)
``progress``                     ``data-progress`` with ``id`` ``progress-<node>`` (one part per
                                 node, updated in place by ``useChat``)
``gap``, ``workflow_update``     ``data-gap``, ``data-workflow-update``
final ``status``                 ``text-end`` for open text, ``finish-step``; completed:
                                 ``finish``; failed: ``error`` (``errorText``) + ``finish``
                                 (``finishReason: "error"``); cancelled: ``abort``; then
                                 ``data: [DONE]``
================================ =============================================================

One step spans the run: the AI SDK's ``finish-step`` ends every open text part, so steps per
node would break a run whose nodes stream in parallel. Resuming is what ``useChat({resume:
true})`` does: ``GET {api}/{chatId}/stream`` replays the active run from its ``start`` (the
client resets its message on ``start``), so the encoder always runs from the first frame.

The responses carry ``x-vercel-ai-ui-message-stream: v1`` (:data:`HEADERS`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streaming_module.protocol.sse import HEADERS as SSE_HEADERS
from streaming_module.protocol.sse import FrameLike, ends_node_text, is_final_status

HEADERS: dict[str, str] = {**SSE_HEADERS, "x-vercel-ai-ui-message-stream": "v1"}
DONE = b"data: [DONE]\n\n"
RUN_NODE = "run"


def part(value: dict[str, Any]) -> bytes:
    """One part as an SSE event (``data: {json}``)."""
    return b"data: " + orjson.dumps(value, default=str) + b"\n\n"


def prompt_of(messages: Any) -> str:
    """The text parts of the last user message of ``useChat``'s ``messages`` ('' when none).
    Also reads the older ``content`` string form."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        parts = message.get("parts")
        if isinstance(parts, list):
            return "".join(
                str(p.get("text", ""))
                for p in parts
                if isinstance(p, dict) and p.get("type") == "text"
            )
        content = message.get("content")
        return content if isinstance(content, str) else ""
    return ""


@dataclass
class UIMessageStreamEncoder:
    """The UI message stream parts of one run, frame by frame (see the module docstring)."""

    message_id: str
    started: bool = False
    finished: bool = False
    # node -> (text part id, the JSON of its text-delta part up to the delta)
    _text: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def encode(self, frame: FrameLike) -> bytes:
        """The SSE bytes of the frame's parts (with ``[DONE]`` after the final status)."""
        if frame.type == "token" and self.started and not self.finished:
            payload = frame.payload
            text = self._text.get(payload.get("nodeId") or RUN_NODE)
            if text is not None:  # the hot path: a token of a node whose text is open
                content = payload.get("content") or ""
                return b"data: " + text[1] + orjson.dumps(content) + b"}\n\n"
        return b"".join(part(p) if isinstance(p, dict) else p for p in self.parts(frame))

    def parts(self, frame: FrameLike) -> list[Any]:
        """The frame's parts, in order (dicts; ``[DONE]`` as bytes). Advances the state."""
        out: list[Any] = []
        if self.finished:
            return out
        if not self.started:
            self.started = True
            out.append({"type": "start", "messageId": self.message_id})
            out.append({"type": "start-step"})
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        kind = frame.type
        node = payload.get("nodeId")
        if is_final_status(frame):
            self._finish(payload, out)
            return out
        if kind == "token":
            key = node or RUN_NODE
            if key not in self._text:
                text_id = f"{key}-{frame.sequence}"
                out.append({"type": "text-start", "id": text_id})
                prefix = b'{"type":"text-delta","id":' + orjson.dumps(text_id) + b',"delta":'
                self._text[key] = (text_id, prefix)
            content = payload.get("content") or ""
            out.append({"type": "text-delta", "id": self._text[key][0], "delta": content})
        elif kind == "event":
            if ends_node_text(payload) and node:
                self._end_text(node, out)
            out.append({"type": "data-event", "data": payload})
        elif kind == "progress":
            out.append(
                {"type": "data-progress", "id": f"progress-{node or RUN_NODE}", "data": payload}
            )
        elif kind != "status":
            out.append({"type": "data-" + kind.replace("_", "-"), "data": frame.payload})
        return out

    def _end_text(self, key: str, out: list[Any]) -> None:
        text = self._text.pop(key, None)
        if text is not None:
            out.append({"type": "text-end", "id": text[0]})

    def _finish(self, payload: dict[str, Any], out: list[Any]) -> None:
        for key in list(self._text):
            self._end_text(key, out)
        out.append({"type": "finish-step"})
        status = payload.get("status")
        if status == "completed":
            out.append({"type": "finish", "finishReason": "stop"})
        elif status == "cancelled":
            out.append({"type": "abort", "reason": "cancelled"})
        else:
            error = payload.get("error")
            text = error.get("message") if isinstance(error, dict) else error
            out.append({"type": "error", "errorText": str(text or "the run failed")})
            out.append({"type": "finish", "finishReason": "error"})
        out.append(DONE)
        self.finished = True


def encode_all(frames: Iterable[FrameLike], message_id: str) -> bytes:
    """A whole run's frames as UI message stream bytes (tests, benchmarks)."""
    encoder = UIMessageStreamEncoder(message_id)
    return b"".join(encoder.encode(f) for f in frames)


__all__ = ["DONE", "HEADERS", "UIMessageStreamEncoder", "encode_all", "part", "prompt_of"]
