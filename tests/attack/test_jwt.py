"""The JWT matrix, on the WebSocket and on every HTTP endpoint that needs a token: missing,
malformed, ``alg: none``, wrong key, algorithm confusion, expired, not yet valid, no ``exp``,
oversized, another execution's scope, and expiry mid-connection. Every bad token is refused
before any frame or body flows; no part of any token reaches the server's log; a client with a
valid token streams its exact text meanwhile. The server runs in its own process."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
from attack_support import AttackServer, Snapshot, attack_server, healthy_run, record

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "attack-jwt-secret-" + "j" * 46
OPTIONS: dict[str, Any] = {
    "gateway": {"authentication": {"enabled": True, "secretKey": SECRET}},
}


def _sign(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(claims)}."


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "attacker", "iat": now, "exp": now + 600, **extra}


def bad_tokens() -> dict[str, str | None]:
    """Every kind of token that must be refused with 401, by name."""
    now = int(time.time())
    valid = _sign(_claims())
    header, _, signature = valid.split(".")
    forged_payload = _unsigned(_claims(sub="admin")).split(".")[1]
    return {
        "missing": None,
        "malformed": "not-a-jwt",
        "three empty parts": "..",
        "garbage base64": "eyJ!!!.eyJ???.sig",
        "alg none": _unsigned(_claims()),
        "alg None, signature kept": _unsigned(_claims(), "None")[:-1] + "." + signature,
        "wrong key": _sign(_claims(), "another-secret-" + "k" * 49),
        "confusion: RS256 header, HMAC signature": _unsigned(_claims(), "RS256") + signature,
        "confusion: HS512 (not allowed)": _sign(_claims(), SECRET, "HS512"),
        "payload tampered": f"{header}.{forged_payload}.{signature}",
        "expired": _sign(_claims(exp=now - 60)),
        "not yet valid (nbf)": _sign(_claims(nbf=now + 3600)),
        "not yet valid (iat)": _sign(_claims(iat=now + 3600)),
        "no exp": _sign({"sub": "attacker", "iat": now}),
        "exp not a number": _sign(_claims(exp="tomorrow")),
        "executions not a list": _sign(_claims(executions="mine")),
        "audience not expected": _sign(_claims(aud="another-service")),
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> Any:
    async with attack_server(OPTIONS) as running:
        yield running


def _endpoints(execution_id: str) -> list[tuple[str, str, Any]]:
    """Every HTTP endpoint that needs a token: (method, path, JSON body)."""
    return [
        ("POST", "/executions", {"prompt": "p", "executionId": execution_id, "words": 5}),
        ("GET", f"/executions/{execution_id}", None),
        ("POST", f"/executions/{execution_id}/cancel", None),
        ("GET", f"/executions/{execution_id}/events", None),
        ("POST", "/agui", {"threadId": "t", "runId": execution_id, "messages": []}),
        ("GET", f"/agui/runs/{execution_id}/events", None),
        ("POST", "/api/chat", {"id": "c", "messages": []}),
        ("GET", "/api/chat/c/stream", None),
        ("POST", "/auth/refresh", None),
    ]


async def test_every_bad_token_is_refused_everywhere_and_never_logged(
    server: AttackServer,
) -> None:
    valid = _sign(_claims(sub="healthy"))
    before = await Snapshot.take(server)
    healthy = asyncio.create_task(healthy_run(server, "beside-jwt", words=500, token=valid))
    refused: Counter[str] = Counter()
    tokens = bad_tokens()
    async with aiohttp.ClientSession() as session:
        for name, token in tokens.items():
            for transport in ("header", "query"):
                headers = (
                    {"Authorization": f"Bearer {token}"} if token and transport == "header" else {}
                )
                query = f"?token={token}" if token and transport == "query" else ""
                # The WebSocket: refused with 401 before the upgrade.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
                    await session.ws_connect(server.ws_url + query, headers=headers)
                assert refusal.value.status == 401, (name, transport)
                reason = json.loads(refusal.value.headers["Streaming-Error"])
                assert reason["code"] == "unauthorized", (name, reason)
                refused["websocket"] += 1
                # Every HTTP endpoint: 401 before any 400, 404 or 204, and no body beyond it.
                for method, path, body in _endpoints("jwt-target"):
                    async with session.request(
                        method, server.url + path + query, json=body, headers=headers
                    ) as response:
                        assert response.status == 401, (name, transport, method, path)
                        answer = await response.json()
                        assert answer["code"] == "unauthorized", answer
                        refused["http"] += 1
    result = await healthy
    assert result.text == result.expected
    # Not one token, not a part of one, in the log.
    log = server.log()
    for token in tokens.values():
        for part in (token or "").split("."):
            if len(part) >= 12:
                assert part[:12] not in log, f"part of a token in the log: {part[:12]}"
    await before.assert_back(server)
    record(
        jwt_bad_token_kinds=len(tokens),
        jwt_refused_websocket=refused["websocket"],
        jwt_refused_http=refused["http"],
        jwt_http_endpoints=len(_endpoints("x")),
    )


async def test_oversized_tokens_are_refused_and_not_a_byte_of_them_logged(
    server: AttackServer,
) -> None:
    statuses: Counter[int] = Counter()
    big = _sign(_claims(padding="p" * 9000))
    async with aiohttp.ClientSession() as session:
        for url, headers in (
            (server.ws_url, {"Authorization": f"Bearer {big}"}),
            (f"{server.ws_url}?token={big}", {}),
            (f"{server.url}/executions/x", {"Authorization": f"Bearer {big}"}),
            (f"{server.url}/executions/x?token={big}", {}),
        ):
            async with session.get(url.replace("ws://", "http://"), headers=headers) as response:
                statuses[response.status] += 1
                assert response.status in (400, 401, 414, 431), (url[:60], response.status)
    log = server.log()
    for part in big.split("."):
        assert part[:12] not in log
    assert "eyJ" not in log
    record(jwt_oversized_refused=sum(statuses.values()))


async def test_a_token_for_other_executions_is_refused_what_it_does_not_list(
    server: AttackServer,
) -> None:
    scoped = _sign(_claims(executions=["theirs-ok"]))
    headers = {"Authorization": f"Bearer {scoped}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.ws_connect(server.ws_url) as ws:
            await ws.send_json(
                {"type": "subscribe_execution", "payload": {"executionId": "not-theirs"}}
            )
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["type"] == "error" and reply["payload"]["code"] == "forbidden"
            await ws.send_json({"type": "ping"})  # the connection stays usable
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "pong"
        forbidden = 1
        for method, path, body in _endpoints("not-theirs")[:4]:
            async with session.request(method, server.url + path, json=body) as response:
                assert response.status == 403, (method, path, response.status)
                forbidden += 1
    record(jwt_scope_refusals=forbidden)


async def test_a_token_that_expires_mid_connection_ends_its_websocket_and_its_sse_stream(
    server: AttackServer,
) -> None:
    exp = int(time.time()) + 3
    short = _sign(_claims(exp=exp))
    valid = _sign(_claims(sub="healthy"))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            server.ws_url, headers={"Authorization": f"Bearer {short}"}, heartbeat=None
        )
        await ws.send_json({"type": "subscribe_execution", "payload": {"executionId": "long"}})
        assert json.loads((await ws.receive(timeout=10)).data)["type"] == "subscribed"
        async with session.post(
            server.url + "/executions",
            json={"prompt": "p", "executionId": "long", "words": 100_000},
            headers={"Authorization": f"Bearer {valid}"},
        ) as response:
            assert response.status == 202
        sse = await session.get(
            f"{server.url}/executions/long/events", headers={"Authorization": f"Bearer {short}"}
        )
        assert sse.status == 200
        closing = None
        async with asyncio.timeout(15):
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
            closing = (ws.close_code, time.time() - exp)
        assert closing[0] == 4401, closing
        assert -0.05 <= closing[1] <= 2, closing  # at exp, not before, and promptly
        async with asyncio.timeout(15):
            async for _ in sse.content.iter_any():
                pass
        ended = time.time() - exp
        assert ended <= 4, ended
        sse.close()
        async with session.post(
            server.url + "/executions/long/cancel", headers={"Authorization": f"Bearer {valid}"}
        ) as response:
            assert response.status in (200, 202)
    record(jwt_expired_mid_connection=2)
