"""Tokens expire for real on the gateway: a connection is closed with 4401 "token expired" at its
JWT's exp (plus leeway), measured on the injected clock (no sleeping); a token past its exp
cannot subscribe on the connection it opened; ``POST /auth/refresh`` trades a valid token for a
fresh one within a bounded session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from gateway_support import make_options, recv, running_gateway, subscribe, wait_for

from streaming_module.broker.memory import InMemoryBroker
from streaming_module.core.clock import FakeClock
from streaming_module.gateway.connection import ClientConnection
from streaming_module.gateway.gateway import StreamingWebSocketGateway
from streaming_module.protocol.close_codes import CloseCode

SECRET = "expiry-test-secret-" + "e" * 40


def _auth(leeway: float = 0) -> dict[str, Any]:
    return {"gateway": {"authentication": {"enabled": True, "secretKey": SECRET, "leeway": leeway}}}


def _token(clock: FakeClock, lifetime: float, **claims: Any) -> str:
    now = clock.now().timestamp()
    body = {"sub": "watcher", "iat": int(now), "exp": int(now + lifetime), **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


async def _closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    for _ in range(50):
        msg = await ws.receive(timeout=5)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return msg.data, msg.extra
    raise AssertionError("no close")


@pytest.mark.parametrize("leeway", [0, 5])
async def test_a_connection_is_closed_at_its_tokens_exp_plus_leeway(leeway: float) -> None:
    clock = FakeClock()
    async with (
        running_gateway(clock=clock, **_auth(leeway)) as server,
        aiohttp.ClientSession() as session,
    ):
        ws = await session.ws_connect(f"{server.ws_url}?token={_token(clock, 60)}")
        await subscribe(ws, "e")
        server.broker.publish("e", "token", {"content": "before", "nodeId": "n"})
        assert (await recv(ws))["payload"]["content"] == "before"
        clock.advance(60 + leeway - 0.5)  # not yet
        await ws.send_json({"type": "ping"})
        assert (await recv(ws))["type"] == "pong"
        clock.advance(0.5)  # exp + leeway
        code, reason = await _closed(ws)
        assert code == CloseCode.UNAUTHORIZED
        assert "expired" in reason
        await wait_for(lambda: server.gateway.connection_count == 0)


async def test_other_connections_keep_streaming_when_one_token_expires() -> None:
    clock = FakeClock()
    async with (
        running_gateway(clock=clock, **_auth()) as server,
        aiohttp.ClientSession() as session,
    ):
        short = await session.ws_connect(f"{server.ws_url}?token={_token(clock, 10)}")
        long = await session.ws_connect(f"{server.ws_url}?token={_token(clock, 3600)}")
        await subscribe(short, "e")
        await subscribe(long, "e")
        clock.advance(10)
        code, _ = await _closed(short)
        assert code == CloseCode.UNAUTHORIZED
        server.broker.publish("e", "token", {"content": "still here", "nodeId": "n"})
        assert (await recv(long))["payload"]["content"] == "still here"
        await long.close()


async def test_an_expired_token_cannot_subscribe_on_its_open_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The close at exp is one line of defence; the check at subscribe is the other. Switch off
    # the first to see the second.
    monkeypatch.setattr(ClientConnection, "expire_in", lambda self, seconds: None)
    clock = FakeClock()
    async with (
        running_gateway(clock=clock, **_auth()) as server,
        aiohttp.ClientSession() as session,
    ):
        ws = await session.ws_connect(f"{server.ws_url}?token={_token(clock, 30)}")
        await subscribe(ws, "before-exp")
        clock.advance(31)
        await ws.send_json({"type": "subscribe_execution", "payload": {"executionId": "after"}})
        error = await recv(ws)
        assert error["type"] == "error" and error["payload"]["code"] == "unauthorized"
        assert "expired" in error["payload"]["message"]
        code, reason = await _closed(ws)
        assert code == CloseCode.UNAUTHORIZED and "expired" in reason
        assert server.broker.subscriber_count("after") == 0


async def test_a_token_without_exp_is_never_closed_for_expiry_when_allowed() -> None:
    clock = FakeClock()
    options = _auth()
    options["gateway"]["authentication"]["requireExp"] = False
    async with (
        running_gateway(clock=clock, **options) as server,
        aiohttp.ClientSession() as session,
    ):
        token = jwt.encode({"sub": "forever"}, SECRET, algorithm="HS256")
        ws = await session.ws_connect(f"{server.ws_url}?token={token}")
        await subscribe(ws, "e")
        clock.advance(10 * 365 * 86400)
        await ws.send_json({"type": "ping"})
        assert (await recv(ws))["type"] == "pong"
        await ws.close()


# ------------------------------------------------------------------ POST /auth/refresh


async def _refresh(session: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with session.post(
        f"{url}/auth/refresh", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        return response.status, await response.json()


async def test_refresh_trades_a_valid_token_for_a_fresh_one_with_the_same_rights() -> None:
    clock = FakeClock(wall=datetime.now(UTC))  # tokens this test decodes with PyJWT's clock
    options = make_options(**_auth())
    gateway = StreamingWebSocketGateway(options, InMemoryBroker(options.broker), clock)
    gateway.enable_token_refresh(max_session=3600)
    await gateway.start(port=0)
    url = f"http://127.0.0.1:{gateway.port}"
    try:
        async with aiohttp.ClientSession() as session:
            first = _token(clock, 60, executions=["mine"], role="viewer")
            status, body = await _refresh(session, url, first)
            assert status == 200, body
            fresh = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
            assert fresh["sub"] == "watcher" and fresh["executions"] == ["mine"]
            assert fresh["role"] == "viewer"  # other claims carried over
            assert body["expiresAt"] == fresh["exp"] > clock.now().timestamp() + 60
            original = jwt.decode(first, SECRET, algorithms=["HS256"])
            assert fresh["auth_time"] == original["iat"]  # the session's start is kept

            clock.advance(3000)
            status, body = await _refresh(session, url, body["token"])
            assert status == 200
            clock.advance(700)  # 3,700 s after the first token: the session is over
            status, refused = await _refresh(session, url, body["token"])
            assert status == 401 and "session" in refused["message"]

            expired = _token(clock, -10)
            status, refused = await _refresh(session, url, expired)
            assert status == 401 and "expired" in refused["message"]
            async with session.post(f"{url}/auth/refresh") as response:
                assert response.status == 401
    finally:
        await gateway.stop()
        await gateway.broker.aclose()


async def test_refresh_is_off_unless_enabled() -> None:
    async with running_gateway(**_auth()) as server, aiohttp.ClientSession() as session:
        async with session.post(f"{server.http_url}/auth/refresh") as response:
            assert response.status == 404
