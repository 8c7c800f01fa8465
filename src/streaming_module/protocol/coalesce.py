"""Token-frame coalescing: consecutive token frames of one execution and node merged into one.

A slow client's queue can be compacted this way (``slow_client_policy='coalesce'``): the client
receives the same text in fewer frames, under the last merged frame's sequence, with
``"coalesced": N`` in the payload. No I/O.
"""

from __future__ import annotations

from typing import Any, Final

from streaming_module.protocol.frames import TOKEN, Frame, encode_frame

COALESCE_MAX_CHARS: Final = 65536
"""Longest content a coalesced token frame may reach."""


class CoalescedTokens(Frame):
    """Consecutive token frames of one execution and node merged into one, under the last
    frame's sequence. Parts are joined only when the frame is encoded, so merging is O(1);
    merging more in drops what was encoded or cached. Not replayable: it exists only in one
    client's queue."""

    __slots__ = ("chars", "count", "parts", "token_list")

    def __init__(self, first: Frame) -> None:
        payload = dict(first.payload)
        super().__init__(first.execution_id, first.sequence, TOKEN, first.timestamp, payload, False)
        content = payload.get("content", "")
        self.parts: list[str] = [content]
        self.chars = len(content)
        self.count = 1
        tokens = payload.get("tokens")
        self.token_list: list[Any] | None = list(tokens) if isinstance(tokens, list) else None

    def add(self, frame: Frame) -> None:
        payload = frame.payload
        if isinstance(frame, CoalescedTokens):
            self.parts.extend(frame.parts)
            self.chars += frame.chars
            self.count += frame.count
            tokens = frame.token_list
        else:
            content = payload["content"]
            self.parts.append(content)
            self.chars += len(content)
            self.count += 1
            tokens = payload.get("tokens")
        self.sequence = frame.sequence
        self.timestamp = frame.timestamp
        if payload.get("totalTokens") is not None:
            self.payload["totalTokens"] = payload["totalTokens"]
        if self.token_list is not None and isinstance(tokens, list):
            self.token_list.extend(tokens)
        else:
            self.token_list = None
        self._encoded = None
        self.transport_cache = None

    def encoded(self) -> bytes:
        data = self._encoded
        if data is None:
            payload = dict(self.payload)
            payload["content"] = "".join(self.parts)
            payload["coalesced"] = self.count
            if self.token_list is not None:
                payload["tokens"] = self.token_list
            data = self._encoded = encode_frame(
                self.type, self.execution_id, self.sequence, self.timestamp, payload
            )
        return data


def mergeable(a: Frame, b: Frame) -> bool:
    """Whether ``b`` may be merged after ``a``: both token frames of the same execution and
    node with string content, together at most :data:`COALESCE_MAX_CHARS` characters."""
    if a.type != TOKEN or b.type != TOKEN or a.execution_id != b.execution_id:
        return False
    pa, pb = a.payload, b.payload
    if not isinstance(pa, dict) or not isinstance(pb, dict):
        return False
    if pa.get("nodeId") != pb.get("nodeId"):
        return False
    size_a, size_b = _chars(a, pa), _chars(b, pb)
    return size_a is not None and size_b is not None and size_a + size_b <= COALESCE_MAX_CHARS


def _chars(frame: Frame, payload: dict[str, Any]) -> int | None:
    """Characters of a token frame's content; None when it is not text."""
    if isinstance(frame, CoalescedTokens):
        return frame.chars
    content = payload.get("content")
    return len(content) if isinstance(content, str) else None


def merge(a: Frame, b: Frame) -> Frame:
    """``a`` then ``b`` as one token frame (``b``'s sequence); reuses ``a`` if it already is a
    merge (``a`` and ``b`` must be :func:`mergeable`). Never changes a frame it did not make."""
    merged = a if isinstance(a, CoalescedTokens) else CoalescedTokens(a)
    merged.add(b)
    return merged


__all__ = ["COALESCE_MAX_CHARS", "CoalescedTokens", "merge", "mergeable"]
