"""Acceptance: SPEC.md "The WebSocket gateway (aiohttp)" and "Errors", checked the way a user
meets them: a container from ``StreamingModule.for_root(websocket={'enabled': True, 'port': 0})``
started with ``async with container:``, runs published through the container's services, and
real clients (aiohttp's and the third-party ``websockets`` package) on 127.0.0.1. Every loop is
bounded in count and time."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from acceptance_support import (
    TIMEOUT,
    app_run,
    assert_contiguous,
    is_final,
    no_message,
    recv,
    recv_until,
    serve,
    subscribe,
    text_of,
    wait_for,
)

from streaming_module import StreamingError, WebSocketError
from streaming_module.protocol.close_codes import CloseCode

WORDS = [f"w{i} " for i in range(40)]
SECRET = "acceptance-secret-" + "s" * 40


def _token(claims: dict[str, Any] | None = None, *, secret: str = SECRET, **kw: Any) -> str:
    body = {"sub": "tester", "exp": int(time.time()) + 600, **(claims or {})}
    return jwt.encode(body, secret, algorithm=kw.pop("algorithm", "HS256"))


def _auth(**extra: Any) -> dict[str, Any]:
    return {"authentication": {"enabled": True, "secretKey": SECRET, **extra}}


# --------------------------------------------------------------------------- endpoints


async def test_websocket_at_root_and_ws_and_health_json() -> None:
    """SPEC: "WebSocket at `/` (as the manual's `new WebSocket('ws://localhost:8080')`) and at
    `/ws`"; "`GET /health` → 200 JSON"."""
    async with serve() as server, aiohttp.ClientSession() as session:
        for url in (server.root_ws_url, server.root_ws_url + "/", server.ws_url):
            async with session.ws_connect(url) as ws:
                await ws.send_json({"type": "ping"})
                assert (await recv(ws))["type"] == "pong"
        async with session.get(server.http_url + "/health") as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            assert isinstance(await response.json(), dict)


async def test_the_manuals_browser_client_at_root_with_the_websockets_package() -> None:
    """Manual, WebSocket Integration: `new WebSocket('ws://localhost:8080')`, subscribe with
    `events: ['token','event','progress','status']`, read `message.payload.content` for tokens
    and `message.payload.progress` (percent) for progress."""
    async with serve() as server:
        async with websockets.connect(server.root_ws_url, proxy=None, open_timeout=5) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe_execution",
                        "payload": {
                            "executionId": "execution-123",
                            "events": ["token", "event", "progress", "status"],
                        },
                    }
                )
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "subscribed"
            run = asyncio.create_task(app_run(server.container, "execution-123", WORDS))
            text, progress, events = [], [], []
            for _ in range(1000):
                message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                if message["type"] == "token":
                    text.append(message["payload"]["content"])
                elif message["type"] == "progress":
                    progress.append(message["payload"]["progress"])
                elif message["type"] == "event":
                    events.append(message["payload"])
                if is_final(message):
                    break
            await run
    assert "".join(text) == "".join(WORDS)
    assert progress[-1] == 100 and all(0 <= p <= 100 for p in progress)
    assert progress == sorted(progress)
    assert {e["eventType"] for e in events} >= {"node_start", "node_complete"}


# --------------------------------------------------------------------------- frames


async def test_frame_shapes_are_exactly_the_specs() -> None:
    """SPEC: server → client `{"type", "executionId", "sequence", "timestamp": "ISO-8601",
    "payload"}` where a token payload has `content` and `nodeId`, a progress payload has
    `progress` (percent), an event payload has `eventType` and `data`, and a status payload has
    `status` (plus `error` on failure)."""
    from datetime import datetime

    async with serve() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "shapes")
            await app_run(server.container, "shapes", WORDS[:7], node="llm", fail=True)
            messages = await recv_until(ws)
    for m in messages:
        assert set(m) == {"type", "executionId", "sequence", "timestamp", "payload"}, m
        assert m["executionId"] == "shapes"
        assert isinstance(m["sequence"], int)
        assert datetime.fromisoformat(m["timestamp"]).tzinfo is not None
    kinds = {m["type"] for m in messages}
    assert kinds == {"token", "event", "progress", "status"}, kinds
    for m in messages:
        p = m["payload"]
        if m["type"] == "token":
            assert isinstance(p["content"], str) and p["nodeId"] == "llm", p
        elif m["type"] == "progress":
            assert isinstance(p["progress"], (int, float)) and 0 <= p["progress"] <= 100, p
            assert p["nodeId"] == "llm"
        elif m["type"] == "event":
            assert isinstance(p["eventType"], str) and "data" in p, p
        else:
            assert p["status"] in ("started", "completed", "failed", "cancelled"), p
    assert messages[0]["payload"] == {"status": "started"}
    assert messages[-1]["payload"]["status"] == "failed"
    assert messages[-1]["payload"]["error"] == "boom: the model went away"
    assert text_of(messages) == "".join(WORDS[:7])


async def test_sequences_rise_by_one_and_the_final_status_is_the_last_frame() -> None:
    """SPEC: "Sequence numbers rise by one per execution, over every frame of that execution";
    "A run's final `status` is its last frame: every other frame of the run has a lower
    sequence number"; two executions are numbered independently."""
    async with serve() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "seq-a")
            await subscribe(ws, "seq-b")
            await asyncio.gather(
                app_run(server.container, "seq-a", WORDS),
                app_run(server.container, "seq-b", WORDS[:10]),
            )
            finals = 0
            messages: list[dict[str, Any]] = []
            for _ in range(2000):
                message = await recv(ws)
                messages.append(message)
                finals += is_final(message)
                if finals == 2:
                    break
    for execution_id in ("seq-a", "seq-b"):
        mine = [m for m in messages if m["executionId"] == execution_id]
        assert_contiguous(mine)
        assert is_final(mine[-1]) and sum(map(is_final, mine)) == 1
        assert mine[0]["payload"]["status"] == "started"


async def test_subscribe_before_start_gets_every_frame_from_the_first() -> None:
    """SPEC: "A client may subscribe to an execution before it starts ... and then receives
    every frame from the first"."""
    async with serve() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "early", events=["token", "event", "progress", "status"])
            await app_run(server.container, "early", WORDS)
            messages = await recv_until(ws)
    assert messages[0]["sequence"] == 1 and messages[0]["payload"]["status"] == "started"
    assert_contiguous(messages)
    assert text_of(messages) == "".join(WORDS)


async def test_subscribed_answers_first_then_the_replay_then_live_without_gap_or_duplicate() -> (
    None
):
    """SPEC: "`subscribed` answers `subscribe_execution` and comes before any replayed frame";
    "`lastSequence: N` first replays every retained frame after N (so `0` means from the start),
    then goes live with no gap and no duplicate"."""
    async with serve() as server, aiohttp.ClientSession() as session:
        events = server.container.event_processor()
        tokens = server.container.token_streaming()
        events.emit_status("resume", "started")
        await tokens.initialize_token_stream(
            execution_id="resume", node_id="n", config={"buffer_size": 1}
        )
        for word in WORDS[:10]:
            tokens.stream_token("resume", "n", word)
        await tokens.flush_tokens("resume", "n")
        # 11 frames so far: started + 10 tokens.
        for last in (0, 4, 11):
            async with session.ws_connect(server.ws_url) as ws:
                await ws.send_json(
                    {
                        "type": "subscribe_execution",
                        "payload": {"executionId": "resume", "lastSequence": last},
                    }
                )
                first = await recv(ws)
                assert first["type"] == "subscribed", first
                assert first["payload"]["lastSequence"] == last
                replay = [await recv(ws) for _ in range(11 - last)]
                assert [m["sequence"] for m in replay] == list(range(last + 1, 12))
                await no_message(ws, 0.1)
        # Resume from 6, then the run goes on live.
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "resume", lastSequence=6)
            for word in WORDS[10:20]:
                tokens.stream_token("resume", "n", word)
            tokens.close_token_stream("resume", "n")
            events.emit_status("resume", "completed")
            messages = await recv_until(ws)
    assert_contiguous(messages, first=7)
    assert text_of(messages) == "".join(WORDS[5:20])


async def test_lastsequence_zero_on_a_finished_run_replays_it_whole() -> None:
    """SPEC: "`lastSequence: N` first replays every retained frame after N (so `0` means from
    the start)" — after the run has finished, too."""
    async with serve() as server, aiohttp.ClientSession() as session:
        await app_run(server.container, "done", WORDS)
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "done", lastSequence=0)
            messages = await recv_until(ws)
    assert_contiguous(messages)
    assert text_of(messages) == "".join(WORDS)


async def test_a_client_dropped_mid_run_resumes_with_the_exact_rest() -> None:
    """SPEC: resume with `lastSequence` = the last sequence processed: "no gap and no
    duplicate" — here across a real disconnect in the middle of a run."""
    async with serve() as server, aiohttp.ClientSession() as session:
        tokens = server.container.token_streaming()
        events = server.container.event_processor()
        events.emit_status("drop", "started")
        await tokens.initialize_token_stream(
            execution_id="drop", node_id="n", config={"buffer_size": 1}
        )
        got: list[dict[str, Any]] = []
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "drop", lastSequence=0)
            for word in WORDS[:5]:
                tokens.stream_token("drop", "n", word)
            got += [await recv(ws) for _ in range(6)]
        for word in WORDS[5:]:
            tokens.stream_token("drop", "n", word)  # published while nobody listens
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "drop", lastSequence=got[-1]["sequence"])
            tokens.close_token_stream("drop", "n")
            events.emit_status("drop", "completed")
            got += await recv_until(ws)
    assert_contiguous(got)
    assert text_of(got) == "".join(WORDS)


async def test_what_the_log_no_longer_holds_is_a_gap_message() -> None:
    """SPEC: "What the replay log no longer holds is announced by a `gap` message (`from`,
    `to`), never silently skipped" — and `gap` passes any `events` selection."""
    async with serve(broker={"replayMaxFrames": 5}) as server, aiohttp.ClientSession() as session:
        broker = server.container.broker()
        for i in range(12):
            broker.publish("g", "token", {"content": f"t{i}", "nodeId": "n"})
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "g", lastSequence=2, events=["status"])
            gap = await recv(ws)
            await no_message(ws, 0.1)
    assert gap["type"] == "gap"
    assert gap["payload"] == {"from": 3, "to": 7}
    assert gap["executionId"] == "g"


async def test_events_is_optional_and_selects_among_the_four_kinds_only() -> None:
    """SPEC: "`events` in `subscribe_execution` is optional (default: all four) and selects
    among `token`, `event`, `progress` and `status` frames only; the execution's other frames
    (`workflow_update` from `broadcast_to_execution`, `gap`) always reach its subscribers"."""
    async with serve() as server, aiohttp.ClientSession() as session:
        clients = {}
        selections: dict[str, list[str] | None] = {
            "all": None,
            "token": ["token"],
            "event": ["event"],
            "progress": ["progress"],
            "status": ["status"],
            "none": [],
        }
        for name, kinds in selections.items():
            ws = await session.ws_connect(server.ws_url)
            clients[name] = ws
            reply = await subscribe(ws, "sel", **({} if kinds is None else {"events": kinds}))
            if kinds is None:
                assert sorted(reply["payload"]["events"]) == [
                    "event",
                    "progress",
                    "status",
                    "token",
                ]
        await app_run(server.container, "sel", WORDS[:9])
        await server.gateway.broadcast_to_execution(
            "sel", {"type": "workflow_update", "payload": {"step": "after"}, "timestamp": "x"}
        )
        received = {}
        for name, ws in clients.items():
            received[name] = await recv_until(ws, lambda m: m["type"] == "workflow_update")
            await ws.close()
    everything = received["all"]
    assert_contiguous(everything)
    assert {m["type"] for m in everything} == {
        "status",
        "token",
        "progress",
        "event",
        "workflow_update",
    }
    for name in ("token", "event", "progress", "status"):
        got = received[name]
        assert {m["type"] for m in got} == {name, "workflow_update"}, (name, got)
        assert got == [m for m in everything if m["type"] in (name, "workflow_update")]
    assert [m["type"] for m in received["none"]] == ["workflow_update"]


# --------------------------------------------------------------------------- server side


async def test_broadcast_to_execution_as_in_the_manual_reaches_only_its_subscribers() -> None:
    """Manual, Server-Side Broadcasting: `broadcastToExecution(executionId, {type:
    'workflow_update', payload: data, timestamp})` "Broadcast to all subscribed clients" — of
    that execution only."""
    from datetime import UTC, datetime

    async with serve() as server, aiohttp.ClientSession() as session:
        gateway = server.container.gateway()
        mine1 = await session.ws_connect(server.ws_url)
        mine2 = await session.ws_connect(server.root_ws_url)
        other = await session.ws_connect(server.ws_url)
        bystander = await session.ws_connect(server.ws_url)
        for ws in (mine1, mine2):
            await subscribe(ws, "exec-b", events=["status"])
        await subscribe(other, "exec-other")
        data = {"stage": "review", "score": 0.9}
        await gateway.broadcast_to_execution(
            "exec-b",
            {
                "type": "workflow_update",
                "payload": data,
                "timestamp": datetime.now(UTC).isoformat(),
            },
        )
        for ws in (mine1, mine2):
            message = await recv(ws)
            assert message["type"] == "workflow_update"
            assert message["executionId"] == "exec-b"
            assert message["payload"] == data
            assert message["sequence"] == 1
        await no_message(other)
        await no_message(bystander)
        for ws in (mine1, mine2, other, bystander):
            await ws.close()


async def test_send_to_client_and_introspection() -> None:
    """SPEC: "`gateway.send_to_client(client_id, message)`, connection and subscription
    introspection"; an unknown client id is a `WebSocketError`."""
    async with serve() as server, aiohttp.ClientSession() as session:
        gateway = server.gateway
        async with session.ws_connect(server.ws_url) as a, session.ws_connect(server.ws_url) as b:
            await subscribe(a, "x1")
            await subscribe(a, "x2")
            await subscribe(b, "x2")
            assert gateway.connection_count == 2
            connections = gateway.get_connections()
            by_subs = {tuple(c["subscriptions"]): c["clientId"] for c in connections}
            a_id, b_id = by_subs[("x1", "x2")], by_subs[("x2",)]
            subs = gateway.get_subscriptions()
            assert subs["x1"] == [a_id] and sorted(subs["x2"]) == sorted([a_id, b_id])
            assert gateway.get_subscriptions("x1") == {"x1": [a_id]}

            await gateway.send_to_client(b_id, {"type": "notice", "payload": {"hello": "b"}})
            assert await recv(b) == {"type": "notice", "payload": {"hello": "b"}}
            await no_message(a)
            with pytest.raises(WebSocketError) as missing:
                await gateway.send_to_client("no-such-client", {"type": "x"})
            assert isinstance(missing.value, StreamingError) and missing.value.code

            await a.send_json({"type": "unsubscribe_execution", "payload": {"executionId": "x1"}})
            reply = await recv(a)
            assert reply["type"] == "unsubscribed"
            assert reply["payload"] == {"executionId": "x1", "wasSubscribed": True}
            assert gateway.get_subscriptions("x1") == {}
        await wait_for(lambda: gateway.connection_count == 0)


async def test_ping_gets_pong_and_ack_is_accepted() -> None:
    """SPEC: client → server `ping` and `ack` (`executionId`, `sequence`); replies `pong`."""
    async with serve() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            await ws.send_json({"type": "ping", "payload": {"n": 7}})
            pong = await recv(ws)
            assert pong["type"] == "pong" and pong["payload"]["n"] == 7
            await subscribe(ws, "acked")
            await ws.send_json({"type": "ack", "payload": {"executionId": "acked", "sequence": 3}})
            await ws.send_json({"type": "ping"})
            assert (await recv(ws))["type"] == "pong"  # no reply to the ack itself
            (info,) = server.gateway.get_connections()
            assert info["acks"] == {"acked": 3}


# --------------------------------------------------------------------------- bad input


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("{not json", "invalid_json"),
    ("", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ("42", "invalid_message"),
    ("null", "invalid_message"),
    ('{"payload": {}}', "invalid_message"),
    ('{"type": 5}', "invalid_message"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "subscribe_execution"}', "invalid_payload"),
    ('{"type": "subscribe_execution", "payload": {}}', "invalid_payload"),
    ('{"type": "subscribe_execution", "payload": "exec-1"}', "invalid_payload"),
    ('{"type": "subscribe_execution", "payload": {"executionId": 42}}', "invalid_payload"),
    ('{"type": "subscribe_execution", "payload": {"executionId": ""}}', "invalid_payload"),
    (
        '{"type": "subscribe_execution", "payload": {"executionId": "e", "lastSequence": "4"}}',
        "invalid_payload",
    ),
    (
        '{"type": "subscribe_execution", "payload": {"executionId": "e", "lastSequence": -1}}',
        "invalid_payload",
    ),
    (
        '{"type": "subscribe_execution", "payload": {"executionId": "e", "events": "token"}}',
        "invalid_payload",
    ),
    (
        '{"type": "subscribe_execution", "payload": {"executionId": "e", "events": ["tokens"]}}',
        "invalid_payload",
    ),
    ('{"type": "unsubscribe_execution", "payload": {}}', "invalid_payload"),
    ('{"type": "ack", "payload": {"executionId": "e"}}', "invalid_payload"),
    ('{"type": "ack", "payload": {"executionId": "e", "sequence": "1"}}', "invalid_payload"),
    ('{"type": "ping", "payload": 3}', "invalid_payload"),
    (b"\x00\x01binary", "binary_not_supported"),
]


async def test_bad_input_gets_an_error_reply_and_the_connection_stays_open() -> None:
    """SPEC: "Malformed JSON, a non-object or binary frame, an unknown `type`, a missing or
    mistyped field: each gets an `error` reply and the connection stays open"; error replies are
    `{"type": "error", "payload": {"code": "...", "message": "..."}}`."""
    async with serve() as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url) as ws:
            for frame, code in BAD_FRAMES:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
                reply = await recv(ws)
                assert reply["type"] == "error", (frame, reply)
                assert set(reply) == {"type", "payload"}, reply
                assert set(reply["payload"]) == {"code", "message"}, reply
                assert reply["payload"]["code"] == code, (frame, reply)
                assert reply["payload"]["message"], reply
            # Still open and usable.
            await subscribe(ws, "after-bad")
            await app_run(server.container, "after-bad", WORDS[:3])
            assert text_of(await recv_until(ws)) == "".join(WORDS[:3])


async def test_an_oversized_frame_closes_with_1009_and_others_keep_streaming() -> None:
    """SPEC: "A frame over the size limit closes with 1009 ... Every other client keeps
    streaming"."""
    async with serve(websocket={"maxMessageSize": 1024}) as server:
        async with aiohttp.ClientSession() as session:
            healthy = await session.ws_connect(server.ws_url)
            await subscribe(healthy, "big")
            async with websockets.connect(server.ws_url, proxy=None, max_size=None) as big:
                await big.send(json.dumps({"type": "ping", "payload": {"x": "y" * 5000}}))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    for _ in range(10):
                        await asyncio.wait_for(big.recv(), TIMEOUT)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
            await app_run(server.container, "big", WORDS[:5])
            assert text_of(await recv_until(healthy)) == "".join(WORDS[:5])
            await healthy.close()


async def test_a_request_flood_closes_with_4429_and_others_keep_streaming() -> None:
    """SPEC: "a flood over `max_requests_per_connection` with 4429. Every other client keeps
    streaming"; `rate_limit.max_requests_per_connection` is enforced."""
    options = {"gateway": {"rateLimit": {"windowMs": 60000, "maxRequestsPerConnection": 20}}}
    async with serve(**options) as server, aiohttp.ClientSession() as session:
        healthy = await session.ws_connect(server.ws_url)
        await subscribe(healthy, "flood")
        flooder = await session.ws_connect(server.ws_url)
        for _ in range(20):
            await flooder.send_json({"type": "ping"})
        pongs = [await recv(flooder) for _ in range(20)]
        assert {p["type"] for p in pongs} == {"pong"}
        await flooder.send_json({"type": "ping"})
        reply = await recv(flooder)
        assert reply["type"] == "error" and reply["payload"]["code"] == "rate_limited"
        closing = await flooder.receive(timeout=TIMEOUT)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert flooder.close_code == CloseCode.RATE_LIMITED
        await app_run(server.container, "flood", WORDS[:5])
        assert text_of(await recv_until(healthy)) == "".join(WORDS[:5])
        await healthy.close()


# --------------------------------------------------------------------------- security


async def test_jwt_in_query_or_bearer_header_connects() -> None:
    """SPEC: "a JWT in the `token` query parameter ... or an `Authorization: Bearer` header,
    checked at the upgrade"."""
    async with serve(gateway=_auth()) as server, aiohttp.ClientSession() as session:
        token = _token()
        async with session.ws_connect(f"{server.ws_url}?token={token}") as ws:
            await subscribe(ws, "a")
        async with session.ws_connect(
            server.ws_url, headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            await subscribe(ws, "a")
        async with websockets.connect(
            f"{server.root_ws_url}/?token={token}", proxy=None, open_timeout=5
        ) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "pong"


def _alg_none_token() -> str:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'x', 'exp': 2**31})}."


@pytest.mark.parametrize(
    "case",
    ["missing", "expired", "forged", "alg_none", "garbage", "no_exp", "wrong_alg"],
)
async def test_bad_tokens_are_refused_with_401_before_any_frame(case: str) -> None:
    """SPEC: "a missing, expired, forged or `alg: none` token is refused (HTTP 401, or close
    code 4401) before any frame flows"."""
    tokens = {
        "missing": None,
        "expired": _token({"exp": int(time.time()) - 5}),
        "forged": _token(secret="not-the-servers-secret-" + "x" * 30),
        "alg_none": _alg_none_token(),
        "garbage": "not.a.jwt",
        "no_exp": jwt.encode({"sub": "x"}, SECRET, algorithm="HS256"),
        "wrong_alg": jwt.encode(
            {"sub": "x", "exp": int(time.time()) + 60}, SECRET + "x" * 40, algorithm="HS512"
        ),
    }
    token = tokens[case]
    async with serve(gateway=_auth()) as server:
        for base in (server.ws_url, server.root_ws_url):
            for where in ("query", "header"):
                url = base if token is None or where == "header" else f"{base}?token={token}"
                headers = (
                    {"Authorization": f"Bearer {token}"}
                    if token is not None and where == "header"
                    else {}
                )
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(
                        url, proxy=None, open_timeout=5, additional_headers=headers
                    ):
                        pass
                assert refused.value.response.status_code == 401
                assert json.loads(refused.value.response.body)["code"] == "unauthorized"
        assert server.gateway.connection_count == 0


async def test_executions_claim_allows_only_listed_executions() -> None:
    """SPEC: "A valid token without an `executions` claim may subscribe to any execution; with
    one (a list of ids), only to those (`error` with code `forbidden` otherwise)"."""
    async with serve(gateway=_auth()) as server, aiohttp.ClientSession() as session:
        scoped = _token({"executions": ["mine"]})
        async with session.ws_connect(f"{server.ws_url}?token={scoped}") as ws:
            await ws.send_json(
                {"type": "subscribe_execution", "payload": {"executionId": "theirs"}}
            )
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["payload"]["code"] == "forbidden"
            await subscribe(ws, "mine")
            await app_run(server.container, "theirs", WORDS[:2])
            await app_run(server.container, "mine", WORDS[:3])
            messages = await recv_until(ws)
            assert {m["executionId"] for m in messages} == {"mine"}
        anyone = _token()
        async with session.ws_connect(f"{server.ws_url}?token={anyone}") as ws:
            await subscribe(ws, "theirs", lastSequence=0)
            assert text_of(await recv_until(ws)) == "".join(WORDS[:2])


async def test_expires_in_is_honoured_for_issued_tokens() -> None:
    """SPEC: `authentication` (`expires_in`) is enforced: a token the module issues lives
    `expires_in`."""
    from streaming_module.gateway.auth import JwtAuthenticator

    async with serve(gateway=_auth(expiresIn="2s")) as server:
        options = server.container.options()
        auth = JwtAuthenticator(options.gateway.authentication)
        token = auth.issue_token("u")
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        assert claims["exp"] - claims["iat"] in (2, 3)


async def test_an_upgrade_without_origin_is_not_refused_by_cors() -> None:
    """SPEC: "An upgrade with no `Origin` header (a non-browser client) is not refused by the
    CORS check" — whatever `cors` says; a foreign browser origin is refused unless listed."""
    for cors in (False, True, {"origin": ["http://localhost:3000"], "credentials": True}):
        async with serve(gateway={"cors": cors}) as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(server.ws_url) as ws:  # aiohttp sends no Origin
                await ws.send_json({"type": "ping"})
                assert (await recv(ws))["type"] == "pong"
            async with websockets.connect(server.ws_url, proxy=None, origin=None) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "pong"
            evil = {"Origin": "https://evil.example"}
            if cors is True:
                async with session.ws_connect(server.ws_url, headers=evil):
                    pass
            else:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    async with session.ws_connect(server.ws_url, headers=evil):
                        pass
                assert refused.value.status == 403
            if isinstance(cors, dict):
                allowed = {"Origin": "http://localhost:3000"}
                async with session.ws_connect(server.ws_url, headers=allowed):
                    pass


async def test_max_connections_per_window_is_enforced() -> None:
    """SPEC: `rate_limit` (`window_ms`, `max_connections`) is enforced, not just accepted."""
    options = {"gateway": {"rateLimit": {"windowMs": 60000, "maxConnections": 3}}}
    async with serve(**options) as server, aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.ws_connect(server.ws_url):
                pass
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with session.ws_connect(server.ws_url):
                pass
        assert refused.value.status == 429


async def test_heartbeat_closes_a_silent_peer_and_keeps_an_answering_one() -> None:
    """SPEC: `heartbeat` (`enabled`, `interval`, `timeout`) is enforced: the server pings every
    `interval` and closes a peer that stays silent `timeout` after a ping."""
    options = {"gateway": {"heartbeat": {"enabled": True, "interval": 100, "timeout": 100}}}
    async with serve(**options) as server, aiohttp.ClientSession() as session:
        # The websockets package answers pings in the background, as a browser does.
        live = await websockets.connect(server.ws_url, proxy=None, ping_interval=None)
        silent = await session.ws_connect(server.ws_url, autoping=False)
        pinged = False
        for _ in range(50):
            msg = await silent.receive(timeout=TIMEOUT)
            if msg.type is aiohttp.WSMsgType.PING:
                pinged = True
                continue
            break
        assert pinged
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert silent.close_code == CloseCode.HEARTBEAT_TIMEOUT
        await asyncio.sleep(0.5)  # several intervals: the answering peer stays
        await live.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(live.recv(), TIMEOUT))["type"] == "pong"
        await live.close()
        assert live.close_code == 1000


async def test_heartbeat_disabled_sends_no_pings() -> None:
    """SPEC: `heartbeat.enabled` is honoured."""
    options = {"gateway": {"heartbeat": {"enabled": False, "interval": 50, "timeout": 50}}}
    async with serve(**options) as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url, autoping=False) as ws:
            await no_message(ws, 0.4)
            await ws.send_json({"type": "ping"})
            assert (await recv(ws))["type"] == "pong"


async def test_compression_threshold_is_enforced() -> None:
    """SPEC: `compression` (`enabled`, `threshold`) is enforced: permessage-deflate is
    negotiated when enabled, and frames below `threshold` go uncompressed."""
    options = {"gateway": {"compression": {"enabled": True, "threshold": 200}}}
    async with serve(**options) as server:
        async with websockets.connect(server.ws_url, proxy=None, compression="deflate") as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "pong"
            await ws.send(json.dumps({"type": "ping", "payload": {"pad": "z" * 2000}}))
            big = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert big["payload"]["pad"] == "z" * 2000
    async with serve() as server:  # disabled (the default): not negotiated
        async with websockets.connect(server.ws_url, proxy=None, compression="deflate") as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" not in extensions


async def test_graceful_shutdown_closes_clients_with_1001_and_leaves_no_task() -> None:
    """SPEC/issue 4: "Graceful shutdown: buffered tokens flushed, clients closed with 1001, no
    task left running"."""
    before = set(asyncio.all_tasks())
    session = aiohttp.ClientSession()
    try:
        async with serve() as server:
            ws = await session.ws_connect(server.ws_url)
            await subscribe(ws, "bye")
            tokens = server.container.token_streaming()
            await tokens.initialize_token_stream(
                execution_id="bye", node_id="n", config={"buffer_size": 100}
            )
            tokens.stream_token("bye", "n", "buffered ")
            tokens.stream_token("bye", "n", "text")
        frames = []
        for _ in range(10):
            msg = await ws.receive(timeout=TIMEOUT)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            frames.append(json.loads(msg.data))
        assert msg.type is aiohttp.WSMsgType.CLOSE
        # (aiohttp's client reports 1006 in close_code when its own close reply finds the
        # socket already gone; the code the server sent is the message's.)
        assert msg.data == CloseCode.GOING_AWAY, msg
        assert text_of(frames) == "buffered text"
        await ws.close()
    finally:
        await session.close()
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
    assert not left, left


# --------------------------------------------------------------------------- evicted executions


async def test_a_resume_after_the_log_was_dropped_gets_a_gap_not_silence() -> None:
    """SPEC: "What the replay log no longer holds is announced by a `gap` message (`from`, `to`),
    never silently skipped" — also once an ended execution's whole log was dropped
    (`retention_after_end_ms` after its final status): a client resuming then learns what it
    missed instead of waiting forever, and sequence numbers never restart."""
    options = {"broker": {"retentionAfterEndMs": 20}}
    async with serve(**options) as server, aiohttp.ClientSession() as session:
        broker = server.container.broker()
        await app_run(server.container, "gone", WORDS[:6])
        last = broker.last_sequence("gone")
        assert last > 4
        await wait_for(lambda: broker.retained("gone") == 0, within=2.0)  # real time: 20 ms
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "gone", lastSequence=3)
            gap = await recv(ws)
            assert gap["type"] == "gap", gap
            assert gap["payload"] == {"from": 4, "to": last}
            await server.gateway.broadcast_to_execution(
                "gone", {"type": "workflow_update", "payload": {"late": True}}
            )
            late = await recv(ws)
            assert late["type"] == "workflow_update"
            assert late["sequence"] == last + 1  # never a sequence number the client saw


async def test_an_unwatched_running_execution_evicted_for_room_keeps_its_numbering() -> None:
    """SPEC: "Sequence numbers rise by one per execution, over every frame of that execution";
    what the log no longer holds is a `gap`. When `broker.max_executions` forces a running
    execution that nobody watches out of memory, a client resuming it must not receive
    restarted sequence numbers (which its de-duplication would silently drop)."""
    options = {"broker": {"maxExecutions": 2}}
    async with serve(**options) as server, aiohttp.ClientSession() as session:
        broker = server.container.broker()
        for i in range(5):
            broker.publish("long-run", "token", {"content": f"a{i} ", "nodeId": "n"})
        broker.publish("other-1", "status", {"status": "started"})
        broker.publish("other-2", "status", {"status": "started"})  # evicts long-run's log
        async with session.ws_connect(server.ws_url) as ws:
            await subscribe(ws, "long-run", lastSequence=2)
            for i in range(5, 8):
                broker.publish("long-run", "token", {"content": f"a{i} ", "nodeId": "n"})
            messages = [await recv(ws) for _ in range(4)]
    assert messages[0]["type"] == "gap" and messages[0]["payload"] == {"from": 3, "to": 5}
    assert [m["sequence"] for m in messages[1:]] == [6, 7, 8]
    assert text_of(messages) == "a5 a6 a7 "


async def test_the_python_client_passes_on_the_gateways_gap() -> None:
    """SPEC: what the log no longer holds "is announced by a `gap` message (`from`, `to`), never
    silently skipped" — through `StreamingClient` too, against the real gateway (whose `gap`
    frame carries `sequence` = `to`)."""
    from streaming_module import StreamingClient

    async with serve(broker={"replayMaxFrames": 3}) as server:
        broker = server.container.broker()
        broker.publish("gappy", "status", {"status": "started"})
        for i in range(6):
            broker.publish("gappy", "token", {"content": f"t{i} ", "nodeId": "n"})
        async with StreamingClient(server.ws_url, backoff_initial=0.01) as client:
            sub = await client.subscribe("gappy", last_sequence=0)
            broker.publish("gappy", "status", {"status": "completed"})
            frames = []
            async with asyncio.timeout(TIMEOUT):
                async for frame in sub:
                    frames.append(frame)
                    assert len(frames) < 20
    assert [f.type for f in frames] == ["gap", "token", "token", "token", "status"], frames
    assert frames[0]["payload"] == {"from": 1, "to": 4}
    assert [f.sequence for f in frames[1:]] == [5, 6, 7, 8]


async def test_the_manuals_advanced_configuration_works_verbatim() -> None:
    """SPEC: "Config exactly as the manual" — the manual's Advanced Configuration, camelCase keys
    and all (port 0 here), starts a gateway that enforces it: JWT required, compression
    negotiated, CORS open to any origin."""
    options = {
        "websocket": {"enabled": True, "port": 0},
        "defaultBufferSize": 100,
        "gateway": {
            "enabled": True,
            "cors": True,
            "authentication": {
                "enabled": True,
                "strategy": "jwt",
                "secretKey": SECRET,
                "expiresIn": "1h",
            },
            "rateLimit": {
                "windowMs": 60000,
                "maxConnections": 100,
                "maxRequestsPerConnection": 1000,
            },
            "compression": {"enabled": True, "algorithm": "gzip", "threshold": 1024},
            "heartbeat": {"enabled": True, "interval": 30000, "timeout": 5000},
        },
    }
    from streaming_module import StreamingModule

    container = StreamingModule.for_root(options)
    async with container:
        url = f"ws://127.0.0.1:{container.gateway().port}/"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, proxy=None):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(
            f"{url}?token={_token()}",
            proxy=None,
            origin=websockets.Origin("https://anywhere.example"),
            compression="deflate",
        ) as ws:
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await ws.send(
                json.dumps(
                    {"type": "subscribe_execution", "payload": {"executionId": "execution-123"}}
                )
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "subscribed"
            await app_run(container, "execution-123", WORDS[:4])
            got = []
            for _ in range(100):
                got.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
                if is_final(got[-1]):
                    break
            assert text_of(got) == "".join(WORDS[:4])


async def _raw_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return head[0], await reader.readexactly(length)


def _masked_text(data: bytes) -> bytes:
    import os
    import struct

    mask = os.urandom(4)
    n = len(data)
    header = bytes([0x81]) + (
        bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def test_compression_sends_frames_below_threshold_uncompressed_and_others_compressed() -> (
    None
):
    """SPEC: `compression` (`enabled`, `threshold`) enforced: with permessage-deflate negotiated,
    a frame shorter than `threshold` bytes goes uncompressed (RSV1 clear), a longer one
    compressed (RSV1 set). Checked on the raw bytes."""
    options = {"gateway": {"compression": {"enabled": True, "threshold": 300}}}
    async with serve(**options) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.gateway.port)
        try:
            key = base64.b64encode(b"acceptance-key16").decode()
            writer.write(
                (
                    f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.gateway.port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
                ).encode()
            )
            response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert response.startswith(b"HTTP/1.1 101"), response
            assert b"permessage-deflate" in response.lower()
            writer.write(_masked_text(b'{"type": "ping"}'))
            first, small = await _raw_frame(reader)
            assert first & 0x40 == 0, "a frame below the threshold was compressed"
            assert json.loads(small)["type"] == "pong"
            writer.write(
                _masked_text(json.dumps({"type": "ping", "payload": {"p": "a" * 900}}).encode())
            )
            first, big = await _raw_frame(reader)
            assert first & 0x40, "a frame above the threshold was sent uncompressed"
            assert len(big) < 300
        finally:
            writer.close()


async def test_gateway_enabled_false_serves_no_websocket() -> None:
    """SPEC: `gateway.enabled` is enforced, not just accepted."""
    async with serve(gateway={"enabled": False}) as server, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with session.ws_connect(server.ws_url):
                pass
        async with session.get(server.http_url + "/health") as response:
            assert response.status == 200
