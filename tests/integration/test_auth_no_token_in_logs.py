"""No part of a JWT reaches a log on any refusal path of a real server, including the ones
aiohttp handles before our code runs: a request line or header over its 8 KiB limit is refused
with 400 and logged as "Error handling request" with the first 100 bytes of the offending line,
which is exactly where a token travels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import jwt
import pytest
from gateway_support import Running, running_gateway

SECRET = "logs-secret-that-is-long-enough-for-hs256!!!"


@pytest.fixture
async def server() -> AsyncIterator[Running]:
    async with running_gateway(
        gateway={"authentication": {"enabled": True, "secret_key": SECRET}}
    ) as running:
        yield running


def _token(pad: int = 0, secret: str = SECRET, exp: int = 10**11) -> str:
    claims = {"sub": "someone", "exp": exp, **({"pad": "p" * pad} if pad else {})}
    return jwt.encode(claims, secret, algorithm="HS256")


async def _raw_request(port: int, request: str) -> bytes:
    """Send ``request`` as is and return what the server answers (up to 4 KiB)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def _upgrade(path: str, *headers: str) -> str:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *headers,
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def _upgrade_carrying(token: str, where: str) -> str:
    """An upgrade request with ``token`` in an ``Authorization`` header or the query string."""
    if where == "header":
        return _upgrade("/ws", f"Authorization: Bearer {token}")
    return _upgrade(f"/ws?token={token}")


def _assert_clean(token: str, caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records)
    for start in range(0, len(token) - 10):
        fragment = token[start : start + 10]
        assert fragment not in text, f"token fragment {fragment!r} in the log:\n{text[:3000]}"


@pytest.mark.parametrize("where", ["header", "query"])
async def test_an_oversized_token_is_refused_and_not_logged(
    server: Running, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = _token(pad=9000)  # past aiohttp's 8,190-byte line limit
    with caplog.at_level(logging.DEBUG):
        answer = await _raw_request(server.gateway.port or 0, _upgrade_carrying(token, where))
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    # aiohttp did log the refusal (with its traceback) ...
    assert "Error handling request" in caplog.text
    assert "LineTooLong" in caplog.text or "Got more than" in caplog.text
    # ... with the token redacted.
    assert "[redacted]" in caplog.text
    _assert_clean(token, caplog)


@pytest.mark.parametrize(
    "token",
    [
        _token(secret="a-different-secret-that-is-also-long-enough"),
        _token(exp=1),
        # Long, but under aiohttp's 8,190-byte line limit (our own 8 KiB token limit cannot be
        # passed through it: the line refusal above comes first).
        _token(pad=5000, secret="a-different-secret-that-is-also-long-enough"),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "eyJhbGciOiJIUzI1NiJ9.garbage.garbage",
    ],
    ids=["wrong key", "expired", "long", "alg none", "malformed"],
)
@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_refused_upgrade_logs_the_reason_and_no_token(
    server: Running, token: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = await _raw_request(server.gateway.port or 0, _upgrade_carrying(token, where))
    assert b" 401 " in answer.split(b"\r\n")[0]
    assert "refused a request from 127.0.0.1 to /ws" in caplog.text
    _assert_clean(token, caplog)
