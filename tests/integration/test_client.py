"""StreamingClient against a small server speaking the wire protocol, and against the real gateway.

The protocol server here is deliberately tiny: a replay log per execution, ``subscribed``
replies, ``lastSequence`` resume, and knobs to misbehave (drop the connection, replay with an
overlap, refuse the token) so the client's reconnect, resume and de-duplication are exercised
on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from streaming_module.client import Frame, ReconnectFailedError, StreamingClient
from streaming_module.errors import AuthenticationError, ForbiddenError, WebSocketError

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_reconnect_attempts": 5}


@dataclass
class ProtocolServer:
    """The gateway's protocol, minus everything but what the client relies on."""

    log: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    live: dict[str, set[web.WebSocketResponse]] = field(default_factory=dict)
    connections: list[web.WebSocketResponse] = field(default_factory=list)
    subscribe_requests: list[dict[str, Any]] = field(default_factory=list)
    replay_overlap: int = 0
    """Replay this many already-delivered frames again on resume (at-least-once servers do)."""
    close_code_on_connect: int | None = None
    refuse_http: int | None = None
    unrelated_error_first: str | None = None
    """Send an ``error`` with this code (about something else) before answering a subscribe."""
    url: str = ""
    sends: set[asyncio.Future[None]] = field(default_factory=set)

    def publish(self, execution_id: str, type_: str, payload: dict[str, Any]) -> None:
        frames = self.log.setdefault(execution_id, [])
        frame = {
            "type": type_,
            "executionId": execution_id,
            "sequence": len(frames) + 1,
            "timestamp": "2026-01-01T00:00:00Z",
            "payload": payload,
        }
        frames.append(frame)
        for ws in list(self.live.get(execution_id, ())):
            if not ws.closed:
                # Tasks start in creation order, so frames go out in sequence order.
                task = asyncio.ensure_future(ws.send_str(json.dumps(frame)))
                self.sends.add(task)
                task.add_done_callback(self.sends.discard)

    async def drop_everyone(self, code: int = 1011) -> None:
        for ws in list(self.connections):
            if not ws.closed:
                await ws.close(code=code, message=b"forced disconnect")

    async def handler(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_http is not None:
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.close_code_on_connect is not None:
            await ws.close(code=self.close_code_on_connect)
            return ws
        self.connections.append(ws)
        try:
            async for msg in ws:
                data = json.loads(msg.data)
                if data["type"] == "subscribe_execution":
                    payload = data["payload"]
                    self.subscribe_requests.append(payload)
                    execution_id = payload["executionId"]
                    if self.unrelated_error_first is not None:
                        await ws.send_json(
                            {
                                "type": "error",
                                "payload": {"code": self.unrelated_error_first, "message": "x"},
                            }
                        )
                    if execution_id == "crowded":
                        await ws.send_json(
                            {
                                "type": "error",
                                "payload": {"code": "too_many_subscriptions", "message": "full"},
                            }
                        )
                        continue
                    if execution_id == "secret":
                        await ws.send_json(
                            {"type": "error", "payload": {"code": "forbidden", "message": "no"}}
                        )
                        continue
                    await ws.send_json(
                        {"type": "subscribed", "payload": {"executionId": execution_id}}
                    )
                    last = payload.get("lastSequence")
                    if last is not None:
                        start = max(0, last - self.replay_overlap)
                        for frame in self.log.get(execution_id, [])[start:]:
                            await ws.send_str(json.dumps(frame))
                    self.live.setdefault(execution_id, set()).add(ws)
                elif data["type"] == "unsubscribe_execution":
                    self.live.get(data["payload"]["executionId"], set()).discard(ws)
                elif data["type"] == "ping":
                    await ws.send_json({"type": "pong", "payload": {}})
        finally:
            for subscribers in self.live.values():
                subscribers.discard(ws)
        return ws


@pytest.fixture
async def server() -> AsyncIterator[ProtocolServer]:
    proto = ProtocolServer()
    app = web.Application()
    app.router.add_get("/ws", proto.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proto.url = f"ws://127.0.0.1:{port}/ws"
    try:
        yield proto
    finally:
        await runner.cleanup()


def words(n: int) -> list[str]:
    return [("" if i == 0 else " ") + f"w{i}" for i in range(n)]


async def run_workflow(
    server: ProtocolServer, execution_id: str, tokens: list[str], *, drop_at: int | None = None
) -> None:
    """Publish a run: started, the tokens (dropping every connection at ``drop_at``), completed."""
    server.publish(execution_id, "status", {"status": "started"})
    for i, token in enumerate(tokens):
        if i == drop_at:
            await server.drop_everyone()
        server.publish(execution_id, "token", {"content": token, "nodeId": "generateContent"})
        if i % 5 == 0:
            await asyncio.sleep(0.002)
    server.publish(execution_id, "status", {"status": "completed"})


def assert_exactly_once(frames: list[Frame]) -> None:
    sequences = [f.sequence for f in frames]
    assert sequences == list(range(1, len(frames) + 1)), sequences
    assert frames[-1].is_final
    assert sum(f.is_final for f in frames) == 1


async def test_stream_resumes_across_a_forced_disconnect_with_the_exact_text(
    server: ProtocolServer,
) -> None:
    tokens = words(300)
    async with StreamingClient(server.url, **FAST) as client:
        frames: list[Frame] = []

        async def consume() -> None:
            async for frame in client.stream("run-1", last_sequence=None):
                frames.append(frame)

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.05)  # subscribed before the run starts, the usual order
        await run_workflow(server, "run-1", tokens, drop_at=120)
        await asyncio.wait_for(consumer, 10)

        assert client.reconnects >= 1
    assert "".join(f.content for f in frames) == "".join(tokens)
    assert_exactly_once(frames)
    resumed = [r for r in server.subscribe_requests if r.get("lastSequence")]
    assert resumed and resumed[0]["lastSequence"] >= 1


async def test_frames_a_server_sends_twice_are_delivered_once(server: ProtocolServer) -> None:
    server.replay_overlap = 10  # an at-least-once server re-sends 10 frames on every resume
    tokens = words(200)
    async with StreamingClient(server.url, **FAST) as client:
        sub = await client.subscribe("run-2", last_sequence=0)
        runner = asyncio.create_task(run_workflow(server, "run-2", tokens, drop_at=50))
        frames = [frame async for frame in sub]
        await runner
    assert "".join(f.content for f in frames) == "".join(tokens)
    assert_exactly_once(frames)
    assert sub.duplicates_dropped >= 1


async def test_collect_text_replays_a_finished_run(server: ProtocolServer) -> None:
    tokens = words(40)
    await run_workflow(server, "done", tokens)
    async with StreamingClient(server.url, **FAST) as client:
        assert await asyncio.wait_for(client.collect_text("done"), 5) == "".join(tokens)
        # Frames read as the wire protocol's objects too.
        async for frame in client.stream("done"):
            assert frame["type"] == frame.type and frame["payload"] == frame.payload
            assert frame["sequence"] == frame.sequence and frame["executionId"] == "done"


async def test_a_gap_is_passed_on_and_resume_starts_after_it(server: ProtocolServer) -> None:
    async with StreamingClient(server.url, **FAST) as client:
        sub = await client.subscribe("gappy")
        server.log["gappy"] = [{}] * 7  # frames 1..7 are gone from the log
        server.live["gappy"] = set(server.connections)
        ws = server.connections[0]
        await ws.send_json({"type": "gap", "executionId": "gappy", "payload": {"from": 1, "to": 7}})
        server.publish("gappy", "status", {"status": "completed"})
        frames = [f async for f in sub]
    assert [f.type for f in frames] == ["gap", "status"]
    assert frames[1].sequence == 8 and sub.last_sequence == 8


async def test_close_4401_raises_authentication_error(server: ProtocolServer) -> None:
    server.close_code_on_connect = 4401
    async with StreamingClient(server.url, **FAST) as client:
        with pytest.raises(AuthenticationError):
            async for _ in client.stream("x"):
                pass


async def test_http_401_at_the_upgrade_raises_authentication_error(
    server: ProtocolServer,
) -> None:
    server.refuse_http = 401
    with pytest.raises(AuthenticationError, match="token"):
        async with StreamingClient(server.url, token="not-a-jwt", **FAST):
            pass


async def test_forbidden_subscription_raises_forbidden_error(server: ProtocolServer) -> None:
    async with StreamingClient(server.url, **FAST) as client:
        with pytest.raises(ForbiddenError):
            await client.subscribe("secret")
        # The connection is still usable for other executions.
        await run_workflow(server, "ok", words(3))
        assert await asyncio.wait_for(client.collect_text("ok"), 5) == "w0 w1 w2"


@pytest.mark.parametrize("code", ["rate_limited", "invalid_json", "not_subscribed"])
async def test_an_error_about_something_else_does_not_fail_a_pending_subscribe(
    server: ProtocolServer, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The gateway's errors carry no executionId: only an error a subscribe can get answers it.
    server.unrelated_error_first = code
    async with StreamingClient(server.url, **FAST) as client:
        await run_workflow(server, "ok", words(3))
        assert await asyncio.wait_for(client.collect_text("ok"), 5) == "w0 w1 w2"
        [error] = client.server_errors
        assert error.code == code
        assert f"server error {code}" in caplog.text


async def test_an_error_that_answers_a_subscribe_fails_that_subscribe_only(
    server: ProtocolServer,
) -> None:
    async with StreamingClient(server.url, **FAST) as client:
        with pytest.raises(WebSocketError) as failure:
            await client.subscribe("crowded")
        assert failure.value.code == "too_many_subscriptions"
        assert "crowded" in str(failure.value)
        assert not client.server_errors
        await run_workflow(server, "ok", words(2))
        assert await asyncio.wait_for(client.collect_text("ok"), 5) == "w0 w1"


async def test_an_unreachable_server_fails_after_bounded_attempts() -> None:
    # A port nobody listens on: bind one, note it, close it.
    sock_server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = sock_server.sockets[0].getsockname()[1]
    sock_server.close()
    await sock_server.wait_closed()
    client = StreamingClient(f"http://127.0.0.1:{port}/ws", max_reconnect_attempts=2,
                             backoff_initial=0.01)  # fmt: skip
    with pytest.raises(ReconnectFailedError, match="3 attempt"):
        await asyncio.wait_for(client.connect(), 5)
    await client.close()


async def test_close_is_clean_and_idempotent(server: ProtocolServer) -> None:
    client = StreamingClient(server.url, **FAST)
    await client.connect()
    assert client.connected
    await client.ping()
    await client.close()
    await client.close()
    assert not client.connected


def test_the_token_travels_in_the_authorization_header_not_the_url() -> None:
    client = StreamingClient("http://127.0.0.1:1/ws", token="abc")
    assert client.url == "ws://127.0.0.1:1/ws"
    assert client._headers["Authorization"] == "Bearer abc"


# --------------------------------------------------------------------------- the real gateway


@pytest.fixture
async def demo() -> AsyncIterator[Any]:
    from streaming_module.demo.app import DemoServer

    async with DemoServer(port=0, token_delay_ms=1) as server:
        yield server


async def test_against_the_real_gateway_a_cut_connection_resumes_with_the_exact_text(
    demo: Any,
) -> None:
    execution_id = "client-resume-1"
    async with StreamingClient(demo.url + "/ws", **FAST) as client:
        sub = await client.subscribe(execution_id, last_sequence=0)
        await demo.app.start("Write about rivers", execution_id=execution_id, words=600)
        frames: list[Frame] = []
        cut = False
        async with asyncio.timeout(30):
            async for frame in sub:
                frames.append(frame)
                if not cut and sum(f.type == "token" for f in frames) == 3:
                    cut = True  # the server drops us mid-run
                    for info in demo.gateway.get_connections():
                        connection = demo.gateway.get_connection(info["clientId"])
                        await connection.close(1011, "cut by the test", drain_timeout=0)
        assert client.reconnects >= 1
    record = demo.app.executions[execution_id]
    for _ in range(100):
        if record.status == "completed":
            break
        await asyncio.sleep(0.02)
    assert "".join(f.content for f in frames) == record.result["content"]
    assert_exactly_once(frames)


async def test_against_the_real_gateway_a_missing_token_is_refused(demo: Any) -> None:
    from streaming_module.demo.app import DemoServer
    from streaming_module.gateway.auth import JwtAuthenticator

    secret = "client-test-secret-" + "z" * 40
    async with DemoServer(port=0, token_delay_ms=0, jwt_secret=secret) as server:
        with pytest.raises(AuthenticationError):
            async with StreamingClient(server.url + "/ws", **FAST):
                pass
        authenticator = JwtAuthenticator(server.container.options().gateway.authentication)
        token = authenticator.issue_token("client-test", executions=["mine"])
        async with StreamingClient(server.url + "/ws", token=token, **FAST) as client:
            with pytest.raises(ForbiddenError):
                await client.subscribe("not-mine")
            sub = await client.subscribe("mine", last_sequence=0)
            await server.app.start("Write about owls", execution_id="mine", words=30)
            text = "".join([f.content async for f in sub])
            assert len(text.split()) == 30
