"""Floods, with the limits on as a deployment would have them: connection storms, frame floods
(control frames included), subscription storms, half-open, slow ('slowloris') and silent
connections, bad-token storms. Each is answered with its documented code (429, 4429,
``too_many_executions``, 503 at the connection cap, a close at the request timeout, 4408) without
slowing a healthy client, whose text is exact; memory, descriptors and tasks return to where they
were. Servers run in their own process (the bad-token storm needs two client addresses, so it
runs in this one with the address set per request)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from attack_support import (
    AttackServer,
    Snapshot,
    attack_server,
    close_code_of,
    healthy_run,
    masked,
    raw_upgrade,
    read_frame,
    record,
)

from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import StreamingModuleOptions
from streaming_module.gateway.gateway import StreamingWebSocketGateway

LIMITS: dict[str, Any] = {
    "gateway": {
        "rateLimit": {
            "windowMs": 10_000,
            "maxConnections": 40,
            "maxRequestsPerConnection": 300,
            "maxOpenConnectionsPerAddress": 150,
        },
        "heartbeat": {"enabled": True, "interval": 1000, "timeout": 500},
    },
    "websocket": {"requestTimeoutMs": 1000},
    "broker": {"maxExecutions": 64},
}


async def _streaming(server: AttackServer, execution_id: str, words: int = 600) -> Any:
    """A healthy run, started; returns its task once its first token arrived."""
    streaming = asyncio.Event()
    task = asyncio.create_task(healthy_run(server, execution_id, words=words, streaming=streaming))
    async with asyncio.timeout(30):
        await streaming.wait()
    return task


async def test_a_connection_storm_gets_429_past_the_rate_and_spares_the_healthy_client() -> None:
    async with attack_server(LIMITS) as server:
        before = await Snapshot.take(server)
        healthy = await _streaming(server, "beside-storm")
        outcomes: Counter[int] = Counter()
        gate = asyncio.Semaphore(50)

        async def attempt(session: aiohttp.ClientSession) -> None:
            async with gate:
                try:
                    ws = await session.ws_connect(server.ws_url, heartbeat=None)
                except aiohttp.WSServerHandshakeError as refused:
                    outcomes[refused.status] += 1
                    assert refused.headers.get("Retry-After")
                else:
                    outcomes[101] += 1
                    await ws.close()

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(attempt(session) for _ in range(400)))
        result = await healthy
        assert result.text == result.expected
        assert outcomes[101] <= 40 and outcomes[429] >= 360, outcomes
        assert set(outcomes) <= {101, 429}, outcomes
        await before.assert_back(server)
        record(floods_connection_storm=400, floods_connection_storm_429=outcomes[429])


async def test_frame_floods_are_closed_with_4429_control_frames_included() -> None:
    async with attack_server(LIMITS) as server:
        before = await Snapshot.take(server)
        healthy = await _streaming(server, "beside-frames")
        # 1,000 text pings, then 1,000 WebSocket control pings (125 bytes each), each sent
        # without reading a reply: both count; 300 are answered (the text ones then get the
        # `rate_limited` error), then 4429.
        for frames, answer, expected in (
            (masked(0x1, b'{"type":"ping"}') * 1000, 0x1, 301),
            (masked(0x9, b"p" * 125) * 1000, 0xA, 300),
        ):
            reader, writer, _ = await raw_upgrade(server.port)
            writer.write(frames)
            answers = 0
            code = None
            for _ in range(1100):
                opcode, payload = await read_frame(reader)
                if opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big")
                    break
                answers += opcode == answer
            assert code == 4429 and answers == expected, (answer, code, answers)
            writer.close()
        result = await healthy
        assert result.text == result.expected
        await before.assert_back(server)
        record(floods_frames_sent=2000, floods_frame_floods_closed_4429=2)


async def test_a_subscription_storm_is_refused_past_max_executions_and_runs_still_stream() -> None:
    async with attack_server(LIMITS) as server:
        before = await Snapshot.take(server)
        healthy = await _streaming(server, "beside-subscriptions", words=1500)
        answers: Counter[str] = Counter()
        async with aiohttp.ClientSession() as session:
            storm = [await session.ws_connect(server.ws_url) for _ in range(4)]
            for number, ws in enumerate(storm):
                for i in range(60):
                    await ws.send_json(
                        {"type": "subscribe_execution",
                         "payload": {"executionId": f"storm-{number}-{i}"}}
                    )  # fmt: skip
                for _ in range(60):
                    reply = json.loads((await ws.receive(timeout=10)).data)
                    answers[reply["payload"].get("code", reply["type"])] += 1
            # Subscriptions waiting for runs that never start fill at most nine tenths of the
            # broker; a run that starts now finds room and streams all the same.
            late = await healthy_run(
                server, "started-during-the-storm", words=100, subscribe_first=False
            )
            assert late.text == late.expected
            for ws in storm:
                await ws.close()
        result = await healthy
        assert result.text == result.expected
        assert answers["subscribed"] + answers["too_many_executions"] == 240
        assert 0 < answers["subscribed"] < 64 and answers["too_many_executions"] >= 177, answers
        await before.assert_back(server)
        record(
            floods_subscription_storm=240,
            floods_subscriptions_refused=answers["too_many_executions"],
        )


async def test_half_open_slow_and_silent_connections_are_closed_and_the_cap_holds() -> None:
    # A file-descriptor limit of 400: at most 336 connections are held open (400 less 64 kept
    # back), 300 from one address (twice max_open_connections_per_address).
    async with attack_server(LIMITS, nofile=400) as server:
        before = await Snapshot.take(server)
        healthy = await _streaming(server, "beside-sockets", words=1500)
        started = time.monotonic()
        opened: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(200):  # half-open: connected, nothing sent
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            opened.append(("half-open", reader, writer))
        for _ in range(60):  # slowloris: a request that never ends
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            opened.append(("slow", reader, writer))
        silent = []
        for _ in range(20):  # upgraded, subscribed, then silent (not even a pong)
            reader, writer, _ = await raw_upgrade(server.port)
            writer.write(masked(0x1, b'{"type":"subscribe_execution","payload":'
                                     b'{"executionId":"quiet"}}'))  # fmt: skip
            silent.append((reader, writer))
        for _ in range(80):  # over the cap: answered 503 at once
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            opened.append(("over the cap", reader, writer))

        async def trickle() -> None:  # the slow ones keep sending a header line now and then
            for _ in range(15):
                await asyncio.sleep(0.2)
                for kind, _, writer in opened:
                    if kind == "slow" and not writer.is_closing():
                        writer.write(b"X-Slow: 1\r\n")

        trickler = asyncio.create_task(trickle())
        outcomes: Counter[str] = Counter()
        closed_after: list[float] = []
        for kind, reader, _ in opened:
            try:
                async with asyncio.timeout(10):
                    data = await reader.read(4096)
                    while data and b"503" not in data and not data.endswith(b"}"):
                        data += await reader.read(4096)
            except (ConnectionError, TimeoutError):
                data = b""
            outcomes[f"{kind}: {'503' if b' 503 ' in data else 'closed'}"] += 1
            closed_after.append(time.monotonic() - started)
        silent_codes = Counter([await close_code_of(reader) for reader, _ in silent])
        trickler.cancel()
        for _, _, writer in opened:
            writer.close()
        for _, writer in silent:
            writer.close()
        result = await healthy
        assert result.text == result.expected
        assert outcomes["half-open: closed"] + outcomes["half-open: 503"] == 200, outcomes
        assert outcomes["slow: closed"] + outcomes["slow: 503"] == 60, outcomes
        refused = sum(v for k, v in outcomes.items() if k.endswith("503"))
        assert refused >= 24, outcomes  # 360 connections asked for, at most 336 held
        assert max(closed_after) < 6, "a connection outlived the 1 s request timeout by far"
        assert silent_codes == {4408: 20}, silent_codes
        # A flood of refusals is logged at most once a second.
        refusal_lines = server.log().count("refusing connections")
        assert refusal_lines <= max(closed_after) + 2, refusal_lines
        health = await server.health()
        assert health["status"] == "ok"
        await before.assert_back(server)
        record(
            floods_half_open=200,
            floods_slowloris=60,
            floods_silent_websockets=20,
            floods_closed_4408=silent_codes[4408],
            floods_refused_503_at_cap=refused,
            floods_refusal_log_lines=refusal_lines,
        )


# ------------------------------------------------------------------ bad tokens, two addresses


SECRET = "flood-jwt-secret-" + "f" * 47


def _remote_from_header() -> Callable[..., Awaitable[web.StreamResponse]]:
    """Test-only: the client address comes from ``X-Test-Remote`` (every client here is
    127.0.0.1)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        remote = request.headers.get("X-Test-Remote")
        return await handler(request.clone(remote=remote) if remote else request)

    return middleware


async def test_a_bad_token_storm_spends_only_its_own_addresss_budget() -> None:
    options = StreamingModuleOptions.model_validate(
        {
            "websocket": {"enabled": True, "port": 0},
            "gateway": {
                "authentication": {"enabled": True, "secretKey": SECRET},
                "rateLimit": {"windowMs": 60_000, "maxConnections": 5},
                "heartbeat": {"enabled": False},
            },
        }
    )
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    gateway.app.middlewares.append(_remote_from_header())
    await gateway.start(port=0)
    outcomes: Counter[str] = Counter()
    try:
        good = jwt.encode({"sub": "ok", "exp": int(time.time()) + 600}, SECRET, "HS256")
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # from 10.0.0.66, with a forged token
                try:
                    await session.ws_connect(
                        gateway.ws_url or "",
                        headers={"X-Test-Remote": "10.0.0.66", "Authorization": "Bearer forged"},
                    )
                except aiohttp.WSServerHandshakeError as refused:
                    outcomes[f"attacker {refused.status}"] += 1
            for _ in range(5):  # from another address, valid: the server-wide budget is intact
                ws = await session.ws_connect(
                    gateway.ws_url or "",
                    headers={"X-Test-Remote": "10.0.0.7", "Authorization": f"Bearer {good}"},
                )
                outcomes["valid client 101"] += 1
                await ws.close()
    finally:
        await gateway.stop()
        await broker.aclose()
    assert outcomes == {"attacker 401": 5, "attacker 429": 95, "valid client 101": 5}, outcomes
    record(floods_bad_token_storm=100, floods_bad_token_storm_valid_admitted=5)


async def test_failing_accepts_are_logged_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What asyncio logs when accept() fails (out of descriptors), once per failure: once a
    # gateway has started, it is let through once a second, with a count of the others.
    options = StreamingModuleOptions.model_validate({"websocket": {"enabled": True, "port": 0}})
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    await gateway.start(port=0)
    try:
        with caplog.at_level("ERROR", logger="asyncio"):
            for _ in range(500):
                logging.getLogger("asyncio").error(
                    "socket.accept() out of system resource", exc_info=OSError(24, "EMFILE")
                )
    finally:
        await gateway.stop()
        await broker.aclose()
    accepts = [r for r in caplog.records if r.getMessage().startswith("socket.accept()")]
    assert len(accepts) == 1, len(accepts)
    record(floods_accept_failures_logged_of_500=len(accepts))
