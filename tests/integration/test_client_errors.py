"""The Python client says why: a refused connection raises with the server's own code and message
(expired, bad signature, scope, rate limit), 401/403/404 are not retried, a token provider renews
an expired token and the stream resumes with nothing lost, and a client that cannot connect
leaves no aiohttp session behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from gateway_support import publish_run, running_gateway

from streaming_module import client as client_module
from streaming_module.client import ReconnectFailedError, StreamingClient
from streaming_module.errors import AuthenticationError, ForbiddenError, WebSocketError
from streaming_module.protocol.close_codes import CloseCode

SECRET = "client-errors-secret-" + "s" * 40
FAST: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_reconnect_attempts": 3}


def _token(secret: str = SECRET, **claims: Any) -> str:
    body = {"sub": "tester", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


def _auth(**extra: Any) -> dict[str, Any]:
    return {"gateway": {"authentication": {"enabled": True, "secretKey": SECRET}, **extra}}


class _Sessions:
    """Every aiohttp session the client makes, to check none is left open."""

    def __init__(self) -> None:
        self.made: list[aiohttp.ClientSession] = []
        self._make = aiohttp.ClientSession

    def __call__(self, *args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = self._make(*args, **kwargs)
        self.made.append(session)
        return session


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> _Sessions:
    made = _Sessions()
    monkeypatch.setattr(client_module.aiohttp, "ClientSession", made)
    return made


@pytest.mark.parametrize(
    ("token", "reason", "said"),
    [
        (lambda: _token(exp=int(time.time()) - 30), "expired", "expired"),
        (lambda: _token(secret="another-secret-" + "x" * 40), "bad_signature", "signature"),
        (lambda: "not.a.jwt", "malformed", "well-formed"),
        (lambda: None, "missing", "authentication is required"),
    ],
)
async def test_a_refused_token_raises_the_servers_reason_after_one_attempt(
    token: Any, reason: str, said: str, sessions: _Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(**_auth()) as server:
        with (
            caplog.at_level("INFO", logger="streaming_module.gateway"),
            pytest.raises(AuthenticationError) as refused,
        ):
            async with StreamingClient(server.ws_url, token=token(), **FAST):
                pass
    attempts = [r for r in caplog.records if "refused a WebSocket upgrade" in r.getMessage()]
    assert len(attempts) == 1, "401 is not retried"
    assert refused.value.context["status"] == 401
    assert refused.value.context["reason"] == reason
    assert said in refused.value.message
    assert refused.value.code == "unauthorized"
    assert sessions.made and all(s.closed for s in sessions.made)


async def test_a_disabled_or_missing_endpoint_is_not_retried(sessions: _Sessions) -> None:
    async with running_gateway(gateway={"enabled": False}) as server:
        started = time.monotonic()
        with pytest.raises(WebSocketError) as refused:
            async with StreamingClient(server.ws_url, max_reconnect_attempts=5):
                pass
    assert time.monotonic() - started < 1.0  # no backoff: 404 is final
    assert refused.value.code == "gateway_disabled"
    assert refused.value.context["status"] == 404
    assert not isinstance(refused.value, ReconnectFailedError)
    assert all(s.closed for s in sessions.made)


async def test_rate_limited_is_retried_then_raised_with_the_servers_code(
    sessions: _Sessions,
) -> None:
    limits = {"rateLimit": {"windowMs": 60000, "maxConnections": 1}}
    async with running_gateway(gateway=limits) as server:
        async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url):
            client = StreamingClient(server.ws_url, max_reconnect_attempts=1, backoff_initial=0.01)
            client_module.RETRY_AFTER_CAP = 0.05  # the server says 60 s; do not wait that here
            try:
                with pytest.raises(ReconnectFailedError) as refused:
                    await client.connect()
            finally:
                client_module.RETRY_AFTER_CAP = 60.0
    assert refused.value.code == "rate_limited"
    assert "too many new connections" in refused.value.message
    assert refused.value.context["status"] == 429
    assert refused.value.context["attempts"] == 2
    assert all(s.closed for s in sessions.made)


async def test_an_unreachable_server_leaves_no_session_open(sessions: _Sessions) -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(ReconnectFailedError):
        async with StreamingClient(f"ws://127.0.0.1:{port}/ws", **FAST):
            pass
    assert len(sessions.made) == 1 and sessions.made[0].closed


async def test_a_forbidden_scope_says_so() -> None:
    async with running_gateway(**_auth()) as server:
        token = _token(executions=["mine"])
        async with StreamingClient(server.ws_url, token=token, **FAST) as client:
            with pytest.raises(ForbiddenError, match="not-mine"):
                await client.subscribe("not-mine")


# ------------------------------------------------------------------ tokens that expire


class _ExpiringServer:
    """Speaks the protocol; closes a connection with 4401 'token expired' after it sent
    ``frames_per_token`` frames on it; records the token of every upgrade."""

    def __init__(self, frames: list[dict[str, Any]], frames_per_token: int) -> None:
        self.frames = frames
        self.frames_per_token = frames_per_token
        self.tokens: list[str] = []
        self.url = ""

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.tokens.append(request.headers.get("Authorization", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            payload = msg.json()["payload"]
            await ws.send_json({"type": "subscribed", "payload": payload})
            start = payload.get("lastSequence") or 0
            for frame in self.frames[start : start + self.frames_per_token]:
                await ws.send_json(frame)
            if start + self.frames_per_token < len(self.frames):
                await ws.close(code=CloseCode.UNAUTHORIZED, message=b"token expired")
        return ws


@pytest.fixture
async def expiring() -> AsyncIterator[_ExpiringServer]:
    words = [f"w{i} " for i in range(25)]
    frames = [
        {"type": "token", "executionId": "e", "sequence": i + 1, "payload": {"content": w}}
        for i, w in enumerate(words)
    ]
    frames.append(
        {"type": "status", "executionId": "e", "sequence": 26, "payload": {"status": "completed"}}
    )
    server = _ExpiringServer(frames, frames_per_token=7)
    app = web.Application()
    app.router.add_get("/ws", server.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_token_provider_renews_the_token_and_the_stream_resumes_whole(
    expiring: _ExpiringServer, asynchronous: bool
) -> None:
    issued = 0

    def fresh() -> str:
        nonlocal issued
        issued += 1
        return f"token-{issued}"

    async def fresh_async() -> str:
        return fresh()

    provider = fresh_async if asynchronous else fresh
    async with StreamingClient(expiring.url, token=provider, **FAST) as client:
        text = await asyncio.wait_for(client.collect_text("e"), 10)
    assert text == "".join(f"w{i} " for i in range(25))
    assert expiring.tokens == [f"Bearer token-{i}" for i in range(1, 5)]  # one per connection
    assert client.reconnects == 3


async def test_without_a_provider_an_expired_token_raises_with_the_servers_reason(
    expiring: _ExpiringServer,
) -> None:
    async with StreamingClient(expiring.url, token="static", **FAST) as client:
        with pytest.raises(AuthenticationError, match="token expired") as closed:
            await asyncio.wait_for(client.collect_text("e"), 10)
    assert closed.value.context["close_code"] == CloseCode.UNAUTHORIZED


async def test_a_provider_whose_fresh_token_is_refused_too_stops_after_one_more_try(
    sessions: _Sessions,
) -> None:
    async with running_gateway(**_auth()) as server:
        calls = 0

        def stale() -> str:
            nonlocal calls
            calls += 1
            return _token(exp=int(time.time()) - 60)

        with pytest.raises(AuthenticationError, match="expired"):
            async with StreamingClient(server.ws_url, token=stale, **FAST):
                pass
    assert calls == 2  # the first token, then one fresh try
    assert all(s.closed for s in sessions.made)


async def test_a_valid_provider_token_streams_from_the_real_gateway() -> None:
    async with running_gateway(**_auth()) as server:
        async with StreamingClient(server.ws_url, token=lambda: _token(), **FAST) as client:
            sub = await client.subscribe("real", last_sequence=0)
            publish_run(server.broker, "real", ["a ", "b ", "c"])
            text = "".join([f.content async for f in sub])
    assert text == "a b c"
