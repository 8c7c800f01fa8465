"""Everything the gateway does below aiohttp's public API, in one place.

aiohttp's ``send_frame`` builds the WebSocket header per client (~10 µs per frame and client),
which bounded the gateway's fan-out to ~0.9x a plain aiohttp send loop; and on a deflate
connection it compresses every frame, however small. So the gateway reaches into
``WebSocketResponse._writer`` (aiohttp 3.9-3.14's ``WebSocketWriter``: ``transport``,
``protocol.writing_paused``, ``use_mask``, ``compress``) for three things:

- :func:`ws_frame`: a broadcast frame as one complete WebSocket text frame, built once and cached
  in the frame's ``transport_cache`` (server frames are unmasked, so the bytes are the same for
  every client) — :func:`ws_text_frame` builds it;
- :func:`direct_transport`: the transport those bytes can be written to directly, and the
  protocol whose ``writing_paused`` says when not to;
- :func:`send_text` with ``compress=False``: one uncompressed frame on a deflate connection.

Each checks that the internals look as expected and otherwise falls back to the public API.
``tests/integration/test_aiohttp_internals.py`` checks every one of them against the installed
aiohttp, and that it is within the range ``pyproject.toml`` declares: widening that range means
running it against the new versions.
"""

from __future__ import annotations

import struct
from typing import Protocol

from aiohttp import WSMsgType, web

from streaming_module.protocol.frames import Frame

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


def ws_frame(frame: Frame) -> bytes:
    """``frame.encoded()`` as one unmasked, uncompressed WebSocket text frame (header +
    payload), cached in ``frame.transport_cache``: a broadcast frames it once instead of once
    per client. Memory: a frame kept by the replay log holds its JSON twice once this was called
    (header: 2-10 bytes)."""
    data = frame.transport_cache
    if data is None:
        data = frame.transport_cache = ws_text_frame(frame.encoded())
    return data


class Transport(Protocol):
    """What the gateway uses of an asyncio transport."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


class WriterProtocol(Protocol):
    """What the gateway uses of aiohttp's protocol: ``writing_paused`` is True while the
    transport's buffer is over its high-water mark."""

    @property
    def writing_paused(self) -> bool: ...


def direct_transport(ws: web.WebSocketResponse) -> tuple[Transport, WriterProtocol] | None:
    """The transport and protocol a prepared, uncompressed server WebSocket writes to, or
    ``None`` when frames must go through aiohttp's ``send_frame`` (compression negotiated, a
    masking writer, or aiohttp internals that no longer look like 3.9-3.14's
    ``WebSocketWriter``: ``transport``, ``protocol``, ``use_mask``, ``compress``). Call it once
    per connection after ``prepare``: compression and the writer do not change afterwards."""
    if ws.compress:
        return None
    writer = getattr(ws, "_writer", None)
    if writer is None or getattr(writer, "use_mask", True) or getattr(writer, "compress", 1):
        return None
    transport = getattr(writer, "transport", None)
    protocol = getattr(writer, "protocol", None)
    if not all(
        callable(getattr(transport, name, None))
        for name in ("write", "is_closing", "get_write_buffer_size")
    ):
        return None
    if not isinstance(getattr(protocol, "writing_paused", None), bool):
        return None
    return transport, protocol  # type: ignore[return-value]


def ws_transport(ws: web.WebSocketResponse) -> Transport | None:
    """The transport a prepared server WebSocket writes to, compressed or not, for reading how
    many bytes it holds unsent (``get_write_buffer_size``); ``None`` when aiohttp's writer does
    not look as expected (then only the queue is counted)."""
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if not callable(getattr(transport, "get_write_buffer_size", None)):
        return None
    return transport


async def send_text(ws: web.WebSocketResponse, data: bytes, *, compress: bool = True) -> None:
    """Send ``data`` (UTF-8 JSON) as one text frame; with ``compress=False`` uncompressed even
    on a connection that negotiated permessage-deflate.

    aiohttp 3.14's ``send_frame(compress=0)`` still compresses on a deflate connection (0 is
    falsy, so the connection's setting wins): this switches the writer's flag off for this one
    write. The caller must be the connection's only sender of data frames, so that nothing else
    observes the switch. Without the expected writer it sends through ``send_frame`` as is."""
    if not compress and ws.compress:
        writer = getattr(ws, "_writer", None)
        if writer is not None and hasattr(writer, "compress"):
            saved = writer.compress
            writer.compress = 0
            try:
                await ws.send_frame(data, WSMsgType.TEXT)
            finally:
                writer.compress = saved
            return
    await ws.send_frame(data, WSMsgType.TEXT)


__all__ = [
    "Transport",
    "WriterProtocol",
    "direct_transport",
    "send_text",
    "ws_frame",
    "ws_text_frame",
    "ws_transport",
]
