"""Each security option of the gateway, against a real server on 127.0.0.1 and real clients
(aiohttp's and the ``websockets`` package's): it blocks what it should and lets through what it
should."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import StreamingModuleOptions
from streaming_module.gateway.gateway import StreamingWebSocketGateway

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

SECRET = "integration-secret-that-is-long-enough-for-hs256"
RECEIVE_TIMEOUT = 5.0


class Server:
    def __init__(self, gateway: StreamingWebSocketGateway, broker: InMemoryBroker, port: int):
        self.gateway = gateway
        self.broker = broker
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.http = f"http://127.0.0.1:{port}"


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    started: list[Server] = []

    async def start(**gateway: Any) -> Server:
        options = StreamingModuleOptions.model_validate(
            {"websocket": {"enabled": True, "port": 0, "host": "127.0.0.1"}, "gateway": gateway}
        )
        broker = InMemoryBroker(options.broker)
        gw = StreamingWebSocketGateway(options, broker)
        await gw.start(port=0)
        assert gw.port is not None
        server = Server(gw, broker, gw.port)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.gateway.stop()
        await server.broker.aclose()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _auth_options(**extra: Any) -> dict[str, Any]:
    return {"authentication": {"enabled": True, "secretKey": SECRET, **extra}}


def _token(**claims: Any) -> str:
    payload = {"sub": "tester", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), RECEIVE_TIMEOUT)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    data: dict[str, Any] = json.loads(message.data)
    return data


async def _receive_type(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        frame = await _receive(ws)
        if frame["type"] == kind:
            return frame


async def _ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str(json.dumps({"type": "ping"}))
    assert (await _receive_type(ws, "pong"))["type"] == "pong"


async def _subscribe(ws: aiohttp.ClientWebSocketResponse, execution_id: str) -> dict[str, Any]:
    await ws.send_str(
        json.dumps({"type": "subscribe_execution", "payload": {"executionId": execution_id}})
    )
    frame = await _receive(ws)
    assert frame["type"] in {"subscribed", "error"}, frame
    return frame


async def _upgrade_status(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> int:
    """The HTTP status of a refused upgrade (101 when it succeeds)."""
    try:
        async with session.ws_connect(url, headers=headers) as ws:
            await ws.close()
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


# ------------------------------------------------------------------ authentication


def _expired() -> str:
    return jwt.encode({"sub": "t", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")


def _forged() -> str:
    return jwt.encode({"sub": "t", "exp": int(time.time()) + 600}, "x" * 48, algorithm="HS256")


def _alg_none() -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 't', 'exp': 2**31})}."


def _no_exp() -> str:
    return jwt.encode({"sub": "t"}, SECRET, algorithm="HS256")


BAD_TOKENS: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "expired": _expired,
    "forged": _forged,
    "alg-none": _alg_none,
    "no-exp": _no_exp,
    "garbage": lambda: "not-a-jwt",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_tokens_get_401_before_any_frame(
    start_server: StartServer, session: aiohttp.ClientSession, kind: str
) -> None:
    server = await start_server(**_auth_options())
    token = BAD_TOKENS[kind]()
    url = server.url if token is None else f"{server.url}?token={token}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc_info:
        async with session.ws_connect(url):
            pytest.fail("the upgrade should have been refused")
    assert exc_info.value.status == 401
    # Same through the header, and with the other client library.
    if token is not None:
        headers = {"Authorization": f"Bearer {token}"}
        assert await _upgrade_status(session, server.url, headers) == 401
    with pytest.raises(InvalidStatus) as ws_exc:
        async with ws_connect(url, proxy=None):
            pytest.fail("the upgrade should have been refused")
    assert ws_exc.value.response.status_code == 401
    body = json.loads(ws_exc.value.response.body or b"{}")
    assert body.get("code") == "unauthorized"
    assert token is None or token not in body.get("message", "")


async def test_the_websocket_at_root_is_guarded_too(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(**_auth_options())
    root = f"ws://127.0.0.1:{server.port}/"
    assert await _upgrade_status(session, root) == 401
    assert await _upgrade_status(session, f"{root}?token={_expired()}") == 401
    assert await _upgrade_status(session, f"{root}?token={_token()}") == 101


async def test_malformed_authorization_header_gets_401(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(**_auth_options())
    assert await _upgrade_status(session, server.url, {"Authorization": "Basic dTpw"}) == 401


async def test_valid_token_in_query_parameter_connects(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(**_auth_options())
    async with session.ws_connect(f"{server.url}?token={_token()}") as ws:
        await _ping(ws)


async def test_valid_token_in_bearer_header_connects(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(**_auth_options())
    headers = {"Authorization": f"Bearer {_token()}"}
    async with session.ws_connect(server.url, headers=headers) as ws:
        await _ping(ws)
    async with ws_connect(server.url, additional_headers=headers, proxy=None) as client:
        await client.send(json.dumps({"type": "ping"}))
        reply = json.loads(await asyncio.wait_for(client.recv(), RECEIVE_TIMEOUT))
        assert reply["type"] == "pong"


async def test_executions_claim_forbids_other_executions_and_keeps_the_connection(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(**_auth_options())
    token = _token(executions=["exec-mine"])
    async with session.ws_connect(f"{server.url}?token={token}") as ws:
        refused = await _subscribe(ws, "exec-other")
        assert refused["type"] == "error"
        assert refused["payload"]["code"] == "forbidden"
        assert "exec-other" in refused["payload"]["message"]
        # Still usable: the allowed execution streams.
        assert (await _subscribe(ws, "exec-mine"))["type"] == "subscribed"
        await server.gateway.broadcast_to_execution("exec-mine", {"hello": "world"})
        frame = await _receive_type(ws, "workflow_update")
        assert frame["executionId"] == "exec-mine"
        await _ping(ws)


async def test_token_without_executions_claim_may_subscribe_to_any(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(**_auth_options())
    async with session.ws_connect(f"{server.url}?token={_token()}") as ws:
        assert (await _subscribe(ws, "exec-1"))["type"] == "subscribed"
        assert (await _subscribe(ws, "exec-2"))["type"] == "subscribed"


async def test_a_secret_from_the_environment_is_used(
    start_server: StartServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    server = await start_server(authentication={"enabled": True})
    assert await _upgrade_status(session, server.url) == 401
    assert await _upgrade_status(session, f"{server.url}?token={_token()}") == 101


async def test_enabled_authentication_without_a_secret_refuses_to_start(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streaming_module.errors import StreamingConfigError

    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(StreamingConfigError, match="JWT_SECRET"):
        await start_server(authentication={"enabled": True})


async def test_without_authentication_anyone_connects(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with session.ws_connect(server.url) as ws:
        await _ping(ws)


# ------------------------------------------------------------------ origins


async def test_disallowed_origin_is_refused_and_allowed_or_absent_origin_accepted(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(cors={"origin": ["http://app.example"], "credentials": True})
    assert await _upgrade_status(session, server.url, {"Origin": "http://evil.example"}) == 403
    assert await _upgrade_status(session, server.url, {"Origin": "http://app.example"}) == 101
    assert await _upgrade_status(session, server.url) == 101
    with pytest.raises(InvalidStatus) as exc_info:
        async with ws_connect(server.url, origin=Origin("http://evil.example"), proxy=None):
            pytest.fail("the upgrade should have been refused")
    assert exc_info.value.response.status_code == 403
    async with ws_connect(server.url, origin=Origin("http://app.example"), proxy=None) as client:
        await client.send(json.dumps({"type": "ping"}))
        assert json.loads(await client.recv())["type"] == "pong"


async def test_cors_off_allows_same_origin_and_non_browser_clients_only(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(cors=False)
    same = {"Origin": f"http://127.0.0.1:{server.port}"}
    assert await _upgrade_status(session, server.url, same) == 101
    assert await _upgrade_status(session, server.url) == 101
    assert await _upgrade_status(session, server.url, {"Origin": "http://evil.example"}) == 403


async def test_cors_true_allows_any_origin(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(cors=True)
    assert await _upgrade_status(session, server.url, {"Origin": "http://any.example"}) == 101


async def test_http_endpoints_apply_the_origin_check(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(cors={"origin": ["http://app.example"], "credentials": True})
    async with session.get(f"{server.http}/health", headers={"Origin": "http://app.example"}) as r:
        assert r.status == 200
        assert r.headers.get("Access-Control-Allow-Origin") == "http://app.example"
        assert r.headers.get("Access-Control-Allow-Credentials") == "true"
    async with session.get(f"{server.http}/health", headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "forbidden"


# ------------------------------------------------------------------ rate limits


async def test_connections_past_max_connections_in_a_window_get_429(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(rate_limit={"windowMs": 60_000, "maxConnections": 2})
    first = await session.ws_connect(server.url)
    second = await session.ws_connect(server.url)
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc_info:
            async with session.ws_connect(server.url):
                pytest.fail("the third connection in the window should be refused")
        assert exc_info.value.status == 429
        assert exc_info.value.headers is not None
        assert 0 < int(exc_info.value.headers["Retry-After"]) <= 60
        # The connections already open are unaffected.
        await _ping(first)
        await _ping(second)
    finally:
        await first.close()
        await second.close()


async def test_connection_limit_recovers_after_the_window(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(rate_limit={"windowMs": 300, "maxConnections": 1})
    assert await _upgrade_status(session, server.url) == 101
    assert await _upgrade_status(session, server.url) == 429
    await asyncio.sleep(0.35)  # a real server, so a real window
    assert await _upgrade_status(session, server.url) == 101


async def test_a_flooding_client_is_closed_with_4429_while_another_keeps_streaming(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(
        rate_limit={"windowMs": 60_000, "maxConnections": 10, "maxRequestsPerConnection": 20}
    )
    async with (
        session.ws_connect(server.url) as flooder,
        session.ws_connect(server.url) as watcher,
    ):
        assert (await _subscribe(watcher, "exec-1"))["type"] == "subscribed"
        for _ in range(100):
            if flooder.closed:
                break
            await flooder.send_str(json.dumps({"type": "ping"}))
        while True:
            message = await asyncio.wait_for(flooder.receive(), RECEIVE_TIMEOUT)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert flooder.close_code == 4429
        for n in range(5):
            await server.gateway.broadcast_to_execution("exec-1", {"n": n})
        for n in range(5):
            frame = await _receive_type(watcher, "workflow_update")
            assert frame["payload"] == {"n": n} or frame["payload"].get("n") == n
        await _ping(watcher)


async def test_websockets_client_sees_close_code_4429(start_server: StartServer) -> None:
    server = await start_server(rate_limit={"maxRequestsPerConnection": 5})
    async with ws_connect(server.url, proxy=None) as client:
        with pytest.raises(websockets.ConnectionClosed) as exc_info:
            for _ in range(50):
                await client.send(json.dumps({"type": "ping"}))
            while True:
                await asyncio.wait_for(client.recv(), RECEIVE_TIMEOUT)
        assert exc_info.value.rcvd is not None
        assert exc_info.value.rcvd.code == 4429
