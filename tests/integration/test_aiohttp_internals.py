"""What ``streaming_module.gateway._aiohttp`` relies on below aiohttp's public API, checked
against the installed aiohttp, on real connections over 127.0.0.1.

The gateway supports the aiohttp range ``pyproject.toml`` declares; every internal used there is
exercised here, so running this file against a new aiohttp is what widening that range takes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from packaging.requirements import Requirement
from packaging.version import Version

from streaming_module.gateway._aiohttp import direct_transport, send_text, ws_frame, ws_text_frame
from streaming_module.protocol.frames import Frame

TIMEOUT = 5.0
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_aiohttp_is_within_the_declared_range() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [requirement] = [Requirement(d) for d in dependencies if Requirement(d).name == "aiohttp"]
    upper = [s for s in requirement.specifier if s.operator in ("<", "<=")]
    assert upper, f"{requirement}: declare an upper bound (aiohttp is used below its public API)"
    installed = Version(aiohttp.__version__)
    assert requirement.specifier.contains(installed), (
        f"aiohttp {installed} is outside {requirement.specifier}: run this file against it, "
        "then widen the range"
    )


# ---------------------------------------------------------------------- a server that exposes ws


@dataclass
class Server:
    port: int
    sockets: asyncio.Queue[web.WebSocketResponse]

    async def accepted(self) -> web.WebSocketResponse:
        return await asyncio.wait_for(self.sockets.get(), TIMEOUT)


@contextlib.asynccontextmanager
async def serving(*, compress: bool = False) -> AsyncIterator[Server]:
    """An aiohttp server whose handler hands each prepared WebSocketResponse to the test, then
    reads until the client closes."""
    sockets: asyncio.Queue[web.WebSocketResponse] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=compress)
        await ws.prepare(request)
        sockets.put_nowait(ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Server(int(runner.addresses[0][1]), sockets)
    finally:
        await runner.cleanup()


async def raw_upgrade(
    port: int, *, deflate: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A WebSocket handshake by hand, so the test sees the server's frames byte for byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer, head.decode()


async def read_raw_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (first header byte, payload)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    assert not second & 0x80, "server frames are unmasked"
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first, await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


# ---------------------------------------------------------------------- ws_text_frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_ws_text_frame_is_a_valid_unmasked_text_frame_for_every_length_encoding(
    length: int,
) -> None:
    # The websockets package's own frame parser (the client side: frames must be unmasked).
    from websockets.frames import Frame as WsFrame
    from websockets.frames import Opcode
    from websockets.streams import StreamReader

    payload = ("é" * (length // 2) + "x" * (length % 2)).encode()
    assert len(payload) == length
    data = ws_text_frame(payload)
    header = 2 if length < 126 else 4 if length < 65536 else 10
    assert len(data) == header + length
    reader = StreamReader()
    reader.feed_data(data)
    parser = WsFrame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert bytes(frame.data) == payload
    assert not reader.buffer  # the frame ends exactly where its length says


def test_ws_frame_is_built_once_per_frame_and_kept_in_its_transport_cache() -> None:
    frame = Frame("e", 1, "token", "2026-01-01T00:00:00+00:00", {"content": "hi"})
    assert frame.transport_cache is None
    data = ws_frame(frame)
    assert data == ws_text_frame(frame.encoded())
    assert frame.transport_cache is data and ws_frame(frame) is data


# ---------------------------------------------------------------------- direct_transport


async def test_direct_transport_writes_frames_aiohttps_own_client_reads() -> None:
    """The transport found on a real, uncompressed connection takes pre-framed bytes of every
    length encoding, and aiohttp's client reader decodes them."""
    lengths = (0, 125, 126, 65535, 65536, 200_000)
    async with serving() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{server.port}/", max_msg_size=0) as ws:
            server_ws = await server.accepted()
            found = direct_transport(server_ws)
            assert found is not None
            transport, protocol = found
            assert protocol.writing_paused is False
            for length in lengths:
                transport.write(ws_text_frame(b"x" * length))
            for length in lengths:
                msg = await ws.receive(timeout=TIMEOUT)
                assert msg.type is aiohttp.WSMsgType.TEXT
                assert msg.data == "x" * length


async def test_direct_transport_is_refused_on_a_deflate_connection() -> None:
    async with serving(compress=True) as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{server.port}/", compress=15):
            server_ws = await server.accepted()
            assert server_ws.compress
            assert direct_transport(server_ws) is None


async def test_writing_paused_turns_true_when_a_client_stops_reading() -> None:
    async with serving() as server:
        _reader, writer, _ = await raw_upgrade(server.port)  # and never read
        try:
            server_ws = await server.accepted()
            found = direct_transport(server_ws)
            assert found is not None
            transport, protocol = found
            chunk = ws_text_frame(b"y" * 262_144)
            for _ in range(256):  # at most 64 MiB; the kernel buffers a few MiB at most
                if protocol.writing_paused:
                    break
                transport.write(chunk)
                await asyncio.sleep(0)
            assert protocol.writing_paused, "the client never read, yet writing never paused"
            assert transport.get_write_buffer_size() > 0
            assert not transport.is_closing()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# ---------------------------------------------------------------------- send_text(compress=False)


async def test_send_text_without_compression_sends_a_plain_frame_on_a_deflate_connection() -> None:
    data = b'{"type":"token","payload":{"content":"hello hello hello"}}'
    async with serving(compress=True) as server:
        reader, writer, head = await raw_upgrade(server.port, deflate=True)
        try:
            assert "permessage-deflate" in head.lower()
            server_ws = await server.accepted()
            assert server_ws.compress
            await send_text(server_ws, data, compress=False)
            await send_text(server_ws, data)
            first, payload = await read_raw_frame(reader)
            assert first == 0x81, "FIN + text, RSV1 clear: not compressed"
            assert payload == data
            first, payload = await read_raw_frame(reader)
            assert first == 0xC1, "FIN + RSV1 + text: the connection still compresses by default"
            assert payload != data
            await send_text(server_ws, data, compress=False)  # the toggle was restored each time
            first, payload = await read_raw_frame(reader)
            assert (first, payload) == (0x81, data)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
