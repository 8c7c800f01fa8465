"""A fake of what :class:`~streaming_module.gateway.connection.ClientConnection` uses of aiohttp's
``WebSocketResponse``, so a transport's state (paused, full, closing) can be set exactly."""

from __future__ import annotations

import asyncio
from typing import Any


class FakeTransport:
    def __init__(self, out: list[tuple[str, bytes]]) -> None:
        self.out = out
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(("direct", data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeProtocol:
    def __init__(self) -> None:
        self.writing_paused = False


class FakeWriter:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.protocol = FakeProtocol()
        self.use_mask = False
        self.compress = 0


class FakeWebSocket:
    """What ClientConnection uses of ``aiohttp.web.WebSocketResponse``."""

    def __init__(self, compress: int = 0) -> None:
        self.out: list[tuple[str, bytes]] = []
        self.compress = compress
        self.closed = False
        self._writer = FakeWriter(FakeTransport(self.out))
        self.hold: asyncio.Event | None = None  # set: send_frame waits for it

    async def send_frame(self, data: bytes, opcode: Any, compress: int | None = None) -> None:
        self.out.append(("queued", bytes(data)))
        if self.hold is not None:
            await self.hold.wait()

    async def close(self, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True

    async def ping(self) -> None:
        return None
