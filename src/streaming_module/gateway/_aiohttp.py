"""Everything the gateway does below aiohttp's public API, in one place.

aiohttp's ``send_frame`` builds the WebSocket header per client (~10 µs per frame and client),
which bounded the gateway's fan-out to ~0.9x a plain aiohttp send loop; and on a deflate
connection it compresses every frame, however small. So the gateway reaches into
``WebSocketResponse._writer`` (aiohttp 3.9-3.14's ``WebSocketWriter``: ``transport``,
``protocol.writing_paused``, ``use_mask``, ``compress``) for these things:

- :func:`ws_frame`: a broadcast frame as one complete WebSocket text frame, built once and cached
  in the frame's ``transport_cache`` when it is small (server frames are unmasked, so the bytes
  are the same for every client) — :func:`ws_text_frame` builds it;
- :func:`direct_transport`: the transport those bytes can be written to directly, and the
  protocol whose ``writing_paused`` says when not to;
- :func:`send_text` with ``compress=False``: one uncompressed frame on a deflate connection;
- :func:`ws_transport`: how many bytes a connection's transport holds unsent;
- :class:`ConnectionCap`: caps the TCP connections the server holds open, overall and per client
  address, by wrapping the low-level ``web.Server``'s ``connection_made``/``connection_lost``
  (every connection, before any byte of HTTP is parsed);
- :func:`read_body_once`: reads a request's whole body (for checks before any handler) and puts
  it back as the request's ``content`` stream, for handlers that read the stream;
- :class:`GatewayWebSocketResponse`: refuses unmasked client frames (RFC 6455 5.1 says a server
  MUST; aiohttp's reader accepts them) by looking at each frame header before aiohttp's reader
  parses it, through the request handler's ``_payload_parser`` and ``_message_tail``.

Each checks that the internals look as expected and otherwise falls back to the public API.
``tests/integration/test_aiohttp_internals.py`` checks every one of them against the installed
aiohttp, and that it is within the range ``pyproject.toml`` declares: widening that range means
running it against the new versions.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Protocol

from aiohttp import StreamReader, WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from streaming_module.gateway.limits import LogThrottle
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


FRAME_CACHE_LIMIT = 8 * 1024
"""Frames up to this many bytes of JSON are framed once per broadcast and the result cached on
the frame; larger ones are framed per write (one copy, no longer kept than the write needs)."""


def ws_frame(frame: Frame) -> bytes:
    """``frame.encoded()`` as one unmasked, uncompressed WebSocket text frame (header +
    payload). Up to :data:`FRAME_CACHE_LIMIT` bytes it is cached in ``frame.transport_cache``:
    a broadcast of small frames (tokens) frames each once instead of once per client, at the
    cost of holding those bytes twice for as long as the frame lives (the replay log). A larger
    frame is framed again for each client and not kept, so that what a client's queue holds is
    what its byte bound counts."""
    data = frame.transport_cache
    if data is None:
        encoded = frame.encoded()
        data = ws_text_frame(encoded)
        if len(encoded) <= FRAME_CACHE_LIMIT:
            frame.transport_cache = data
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


_log = logging.getLogger("streaming_module.gateway")

UNMASKED_FRAME = "client frames must be masked (RFC 6455, section 5.1)"


class _MaskCheck:
    """Stands between aiohttp's request handler and its WebSocket reader: reads each client frame
    header (2-14 bytes; the payload is skipped, not copied) and fails the connection with
    ``PROTOCOL_ERROR`` at the first one without the MASK bit, before the reader sees it. Costs a
    few Python operations per frame header."""

    __slots__ = ("_header", "_inner", "_queue", "_skip", "failed")

    def __init__(self, inner: Any, queue: Any) -> None:
        self._inner = inner
        self._queue = queue
        self._header = bytearray()
        self._skip = 0  # payload bytes of the current frame still to come
        self.failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.failed:
            return True, b""
        if not self._all_masked(data):
            self.failed = True
            self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED_FRAME))
            return True, b""
        result: tuple[bool, bytes] = self._inner.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def _all_masked(self, data: bytes) -> bool:
        pos, end = 0, len(data)
        header = self._header
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            need = 2
            if len(header) >= 2:
                if not header[1] & 0x80:
                    return False
                length7 = header[1] & 0x7F
                need = 6 + (2 if length7 == 126 else 8 if length7 == 127 else 0)
            if len(header) < need:
                taken = min(need - len(header), end - pos)
                header += data[pos : pos + taken]
                pos += taken
                if len(header) < need or need == 2:
                    continue  # (with 2 bytes, the MASK bit and length decide what else is needed)
            length7 = header[1] & 0x7F
            if length7 == 126:
                self._skip = int.from_bytes(header[2:4], "big")
            elif length7 == 127:
                self._skip = int.from_bytes(header[2:10], "big")
            else:
                self._skip = length7
            header.clear()
        if len(header) >= 2 and not header[1] & 0x80:
            return False
        return True


class GatewayWebSocketResponse(web.WebSocketResponse):
    """aiohttp's ``WebSocketResponse``, refusing unmasked client frames with ``PROTOCOL_ERROR`` (see
    :class:`_MaskCheck`). Where aiohttp's internals do not look as expected it behaves exactly
    like its base class; :attr:`mask_checked` says which."""

    mask_checked = False

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        handler = request.protocol
        tail = getattr(handler, "_message_tail", None)
        hooked = isinstance(tail, bytes) and hasattr(handler, "_payload_parser")
        if hooked:
            handler._message_tail = b""  # fed below, through the check
        super()._post_start(request, protocol, writer)
        if not hooked:
            _log.debug("aiohttp internals differ: unmasked client frames are not refused")
            return
        check = _MaskCheck(handler._payload_parser, self._reader)
        handler._payload_parser = check
        self.mask_checked = True
        if tail:
            eof, _ = check.feed_data(tail)
            if eof:
                handler.close()


async def read_body_once(request: web.Request) -> bytes:
    """The request's whole body (at most its ``client_max_size``, else aiohttp's 413), read now
    and still readable afterwards both ways: ``request.read()``/``json()`` answer from aiohttp's
    cache, and ``request.content`` is replaced by a stream holding the same bytes (the original
    one is drained). Costs one copy of the body for as long as the request lives."""
    body = await request.read()
    drained = getattr(request, "_payload", None)
    cache = getattr(request, "_cache", None)
    if isinstance(drained, StreamReader) and drained.at_eof() and isinstance(cache, dict):
        stream = StreamReader(
            request.protocol, max(2**16, len(body)), loop=asyncio.get_running_loop()
        )
        if body:
            stream.feed_data(body)
        stream.feed_eof()
        request._payload = stream
        cache.pop("content", None)  # `content` is a cached property of `_payload`
    return body


_BUSY_BODY = (
    b'{"code":"too_many_connections","message":"this server holds as many connections as it '
    b'may (from your address or in all); retry in a few seconds"}'
)
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)
"""What a connection over a :class:`ConnectionCap` gets before it is closed: no request of it is
read, so this is the whole exchange."""


class ConnectionCap:
    """Caps the TCP connections an aiohttp server holds open: at most ``max_total`` in all and
    ``max_per_address`` from one client address (``None``: no cap). A connection over a cap
    gets :data:`BUSY_RESPONSE` (HTTP 503, ``Retry-After: 5``) and is closed at once, before any
    of its bytes is parsed, so it costs its file descriptor for a moment only. Refusals are
    logged at most once per ``log_throttle`` interval, with how many there were.

    Counts every connection: idle keep-alive ones, requests in progress, upgraded WebSockets.
    Cost: a dict lookup per connection opened and closed; memory: one entry per address with an
    open connection."""

    def __init__(
        self,
        max_total: int | None,
        max_per_address: int | None = None,
        *,
        log_throttle: LogThrottle | None = None,
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.open = 0
        self.refused = 0
        """Connections refused since this cap was made."""
        self._by_address: dict[str, int] = {}
        self._address_of: dict[Any, str] = {}
        self._log_throttle = log_throttle if log_throttle is not None else LogThrottle()

    def open_from(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def install(self, server: web.Server) -> None:
        """Wrap ``server``'s connection hooks (``runner.server`` after ``runner.setup()``)."""
        made = server.connection_made
        lost = server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            if self._admit(handler, transport):
                made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            address = self._address_of.pop(handler, None)
            if address is not None:
                self.open -= 1
                left = self._by_address[address] - 1
                if left:
                    self._by_address[address] = left
                else:
                    del self._by_address[address]
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def _admit(self, handler: Any, transport: asyncio.Transport) -> bool:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if self.max_total is not None and self.open >= self.max_total:
            self._refuse(transport, "in all", self.max_total)
            return False
        held = self._by_address.get(address, 0)
        if self.max_per_address is not None and held >= self.max_per_address:
            self._refuse(transport, f"from {address}", self.max_per_address)
            return False
        self.open += 1
        self._by_address[address] = held + 1
        self._address_of[handler] = address
        return True

    def _refuse(self, transport: asyncio.Transport, scope: str, cap: int) -> None:
        self.refused += 1
        try:
            transport.write(BUSY_RESPONSE)
        finally:
            transport.close()
        quiet = self._log_throttle.allow(scope)
        if quiet is not None:
            _log.warning(
                "refusing connections: %d open %s (the cap); %d more refused since the last line",
                cap,
                scope,
                quiet,
            )


__all__ = [
    "BUSY_RESPONSE",
    "FRAME_CACHE_LIMIT",
    "UNMASKED_FRAME",
    "ConnectionCap",
    "GatewayWebSocketResponse",
    "Transport",
    "WriterProtocol",
    "direct_transport",
    "read_body_once",
    "send_text",
    "ws_frame",
    "ws_text_frame",
    "ws_transport",
]
