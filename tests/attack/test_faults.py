"""Faults: clients that abort mid-frame or vanish without a FIN, a server stopped with SIGTERM in
the middle of a run and started again on the same Redis, user callbacks (a token processor, an
event transformer, a progress calculator) that raise. Nothing else is affected: the healthy
client's text is exact, the server's descriptors and tasks return to where they were."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from attack_support import (
    AttackServer,
    Snapshot,
    attack_server,
    healthy_run,
    masked,
    raw_upgrade,
    read_frame,
    record,
)

from streaming_module.client import StreamingClient
from streaming_module.protocol.close_codes import CloseCode

HEARTBEAT = {"enabled": True, "interval": 1000, "timeout": 500}


async def test_clients_that_abort_mid_frame_leave_nothing_behind() -> None:
    async with attack_server({"gateway": {"heartbeat": HEARTBEAT}}) as server:
        before = await Snapshot.take(server)
        healthy = asyncio.create_task(healthy_run(server, "beside-aborts", words=800))
        for number in range(60):
            _, writer, _ = await raw_upgrade(server.port)
            frame = masked(0x1, json.dumps({"type": "ping", "payload": {"n": number}}).encode())
            writer.write(frame[: len(frame) // 2])  # half a frame ...
            await writer.drain()
            sock = writer.get_extra_info("socket")
            if number % 2:  # ... then a reset (no FIN) ...
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()  # ... or a plain close
        result = await healthy
        assert result.text == result.expected
        await before.assert_back(server)
        assert "Traceback" not in server.log() and "1011" not in server.log()
        record(faults_aborted_mid_frame=60)


async def test_a_client_that_vanishes_is_reaped_by_the_heartbeat() -> None:
    async with attack_server({"gateway": {"heartbeat": HEARTBEAT}}) as server:
        before = await Snapshot.take(server)
        healthy = asyncio.create_task(healthy_run(server, "beside-ghosts", words=1500))
        ghosts = []
        for _ in range(10):  # subscribed, then nothing: no read, no write, no FIN
            reader, writer, _ = await raw_upgrade(server.port, rcvbuf=4096)
            writer.write(masked(0x1, b'{"type":"subscribe_execution","payload":'
                                     b'{"executionId":"beside-ghosts"}}'))  # fmt: skip
            ghosts.append((reader, writer))
        vanished = time.monotonic()
        reaped_after = None
        for _ in range(100):
            if (await server.health())["connections"] <= 1:  # the healthy client's only
                reaped_after = time.monotonic() - vanished
                break
            await asyncio.sleep(0.05)
        assert reaped_after is not None
        # interval + timeout = 1.5 s (+ the loop's and the health check's latency)
        assert reaped_after <= 1.5 + 1.0, reaped_after
        for _, writer in ghosts:
            writer.close()
        result = await healthy
        assert result.text == result.expected
        await before.assert_back(server)
        record(faults_vanished_clients=10, faults_reaped_within_ms=int(reaped_after * 1000))


# ------------------------------------------------------------------ SIGTERM, restart, Redis


@pytest.fixture
def redis_prefix() -> AsyncIterator[tuple[str, str]]:
    redis = pytest.importorskip("redis")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        client.ping()
    except Exception:
        client.close()
        pytest.skip(f"no Redis answers at {url}")
    prefix = f"smattack:{uuid.uuid4().hex[:10]}"
    yield url, prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    while True:
        yield await read_frame(reader, within=30)


async def test_sigterm_mid_run_closes_with_1001_and_clients_resume_after_a_restart(
    redis_prefix: tuple[str, str],
) -> None:
    url, prefix = redis_prefix
    options = {"broker": {"backend": "redis", "redisUrl": url, "keyPrefix": prefix}}
    first = await AttackServer(options, token_delay_ms=4).start()
    port = first.port
    try:
        # The library's client, which reconnects by itself.
        client = StreamingClient(
            first.ws_url, max_reconnect_attempts=80, backoff_initial=0.05, backoff_max=0.25
        )
        await client.connect()
        sub = await client.subscribe("restarted", last_sequence=0)
        # A raw client that reads everything and sees the close code.
        reader, writer, _ = await raw_upgrade(port)
        writer.write(masked(0x1, b'{"type":"subscribe_execution","payload":'
                                 b'{"executionId":"restarted","lastSequence":0}}'))  # fmt: skip
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                first.url + "/executions",
                json={"prompt": "p", "executionId": "restarted", "words": 3000},
            ) as response,
        ):
            assert response.status == 202
        seen: list[dict[str, Any]] = []
        close_code = None
        stopping = False
        async for opcode, payload in _frames(reader):
            if opcode == 0x8:
                close_code = struct.unpack("!H", payload[:2])[0]
                break
            message = json.loads(payload)
            if "sequence" in message:
                seen.append(message)
            if not stopping and sum(m["type"] == "token" for m in seen) == 10:
                stopping = True
                os.killpg(first.pid, signal.SIGTERM)  # mid-run, once
        writer.close()
        # Shutting down, the server ended the run (its final status reached the reader) and
        # closed every client with 1001, then exited cleanly.
        assert close_code == CloseCode.GOING_AWAY
        assert seen[-1]["type"] == "status" and seen[-1]["payload"]["status"] == "cancelled"
        assert [m["sequence"] for m in seen] == list(range(1, len(seen) + 1))
        assert await first.exited(within=15) == 0, first.log()[-2000:]

        second = await AttackServer(options, token_delay_ms=4, port=port).start()
        try:
            # The library's client got the whole run before the 1001, once, and reconnected to
            # the restarted server by itself.
            async with asyncio.timeout(60):
                frames = [f async for f in sub]
                while client.reconnects < 1:  # noqa: ASYNC110 - the client's own reconnect
                    await asyncio.sleep(0.05)
            assert [f.sequence for f in frames] == [m["sequence"] for m in seen]
            # A resume on the restarted server gets, from Redis, exactly what followed: with the
            # raw protocol and with the library's client.
            middle = seen[len(seen) // 2]["sequence"]
            reader, writer, _ = await raw_upgrade(port)
            writer.write(masked(0x1, json.dumps({"type": "subscribe_execution", "payload": {
                "executionId": "restarted", "lastSequence": middle}}).encode()))  # fmt: skip
            rest: list[dict[str, Any]] = []
            async for opcode, payload in _frames(reader):
                if opcode != 0x1:
                    continue
                message = json.loads(payload)
                if "sequence" in message:
                    rest.append(message)
                    if message["type"] == "status" and message["payload"]["status"] != "started":
                        break
            writer.close()
            assert rest == seen[middle:]
            async with asyncio.timeout(30):
                resumed = [f async for f in client.stream("restarted", last_sequence=middle)]
            assert [f.to_dict() for f in resumed] == seen[middle:]
            await client.close()
            record(
                faults_sigterm_closed_1001=1,
                faults_resumed_after_restart=2,
                faults_frames_across_restart=len(seen),
            )
        finally:
            await second.stop()
    finally:
        await first.stop()


# ------------------------------------------------------------------ user callbacks that raise


CALLBACKS = ("processor", "transformer", "calculator")
CALLBACK_NAMES = {"processor": "token processor", "transformer": "event transformer",
                  "calculator": "progress calculator"}  # fmt: skip
DROPPED = {"processor": "tokens", "transformer": "events", "calculator": "progress reports"}
SUMMARY_WORDS = 12


def _boom(*_: Any) -> Any:
    raise RuntimeError("a user callback failed")


def _faulty_workflows() -> dict[str, type]:
    """One workflow per callback kind: its ``write`` node has that callback raising on every
    item; its ``summarise`` node, after it, has none (it streams tokens, events and progress)."""
    from interop_support import Draft
    from streaming_module.workflow import (
        DeclarativeWorkflowBase,
        node,
        stream_event,
        stream_progress,
        stream_token,
        workflow,
    )

    class _Base(DeclarativeWorkflowBase[Draft]):
        def __init__(self, *, llm: Any, **services: Any) -> None:
            super().__init__(**services)
            self.llm = llm

        async def _summary(self) -> Draft:
            reply = await self.llm.ainvoke("summarise", words=SUMMARY_WORDS)
            return {"inner": str(reply.content)}

    @workflow(name="bad-processor")
    class BadProcessor(_Base):
        @node(type="llm")
        @stream_token(flush_interval=20, buffer_size=8, processor=_boom)
        async def write(self, state: Draft) -> Draft:
            reply = await self.llm.ainvoke(state["prompt"], words=30)
            return {"content": str(reply.content)}

        @node(type="llm")
        @stream_token(flush_interval=20, buffer_size=8)
        @stream_progress(interval=0)
        async def summarise(self, state: Draft) -> Draft:
            return await self._summary()

    @workflow(name="bad-transformer")
    class BadTransformer(_Base):
        @node(type="llm")
        @stream_event(transformer=_boom)
        async def write(self, state: Draft) -> Draft:
            reply = await self.llm.ainvoke(state["prompt"], words=30)
            return {"content": str(reply.content)}

        @node(type="llm")
        @stream_token(flush_interval=20, buffer_size=8)
        @stream_progress(interval=0)
        async def summarise(self, state: Draft) -> Draft:
            return await self._summary()

    @workflow(name="bad-calculator")
    class BadCalculator(_Base):
        @node(type="llm")
        @stream_progress(interval=0, calculator=_boom)
        async def write(self, state: Draft) -> Draft:
            await self.progress.update(1, 2)
            reply = await self.llm.ainvoke(state["prompt"], words=30)
            return {"content": str(reply.content)}

        @node(type="llm")
        @stream_token(flush_interval=20, buffer_size=8)
        @stream_progress(interval=0)
        async def summarise(self, state: Draft) -> Draft:
            return await self._summary()

    return {"processor": BadProcessor, "transformer": BadTransformer, "calculator": BadCalculator}


async def _watch(session: aiohttp.ClientSession, url: str, run: dict[str, Any]) -> list[Any]:
    async with session.ws_connect(url) as ws:
        await ws.send_json({"type": "subscribe_execution",
                            "payload": {"executionId": run["executionId"]}})  # fmt: skip
        assert json.loads((await ws.receive(timeout=10)).data)["type"] == "subscribed"
        async with session.post(url.replace("ws://", "http://").rsplit("/", 1)[0]
                                + "/executions", json=run) as response:  # fmt: skip
            assert response.status == 202, await response.text()
        frames = []
        async with asyncio.timeout(30):
            async for msg in ws:
                frame = json.loads(msg.data)
                frames.append(frame)
                if frame["type"] == "status" and frame["payload"]["status"] != "started":
                    return frames
    raise AssertionError("no final status")


@contextlib.asynccontextmanager
async def _callback_server() -> AsyncIterator[Any]:
    from interop_support import Writer, services_of
    from streaming_module.demo.model import DemoChatModel
    from streaming_module.module import StreamingModule

    container = StreamingModule.for_root(websocket={"enabled": True, "port": 0})
    gateway = container.gateway()
    services = services_of(container)
    model = DemoChatModel(token_delay_ms=1)
    gateway.register_workflow("writer", Writer(llm=model, **services), options=("words",))
    for name, cls in _faulty_workflows().items():
        gateway.register_workflow(f"bad-{name}", cls(llm=model, **services))
    async with container:
        yield gateway


async def _callback_runs() -> tuple[dict[str, list[Any]], dict[str, Any], str, str]:
    """The three faulty runs and a healthy one, watched side by side: each faulty run's frames
    and result, the healthy run's text and its result's text."""
    async with _callback_server() as gateway, aiohttp.ClientSession() as session:
        url = gateway.ws_url
        runs = [{"workflow": f"bad-{n}", "prompt": "p", "executionId": f"bad-{n}"}
                for n in CALLBACKS]  # fmt: skip
        healthy = {"workflow": "writer", "prompt": "p", "executionId": "good", "words": 400}
        results = await asyncio.gather(*(_watch(session, url, run) for run in [*runs, healthy]))
        states: dict[str, Any] = {}
        for execution_id in [*(run["executionId"] for run in runs), "good"]:
            async with session.get(f"{gateway.url}/executions/{execution_id}") as response:
                states[execution_id] = (await response.json())["result"]
        text = "".join(f["payload"]["content"] for f in results[-1] if f["type"] == "token")
        frames = dict(zip(CALLBACKS, results[:-1], strict=True))
        return frames, states, text, states["good"]["content"]


def _node_frames(frames: list[Any], kind: str, node_id: str) -> list[Any]:
    return [f for f in frames if f["type"] == kind and f["payload"].get("nodeId") == node_id]


def _error_events(frames: list[Any]) -> list[Any]:
    return [f for f in frames if f["type"] == "event" and f["payload"]["eventType"] == "error"]


async def test_a_user_callback_that_raises_leaves_its_run_and_the_others_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks_before = len(asyncio.all_tasks())
    with caplog.at_level(logging.WARNING, logger="streaming_module"):
        streams, states, text, expected = await _callback_runs()
    # Logged once per failing callback (with its traceback), not once per item it failed on.
    logged = [(r.name, r.levelname) for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(logged) == [("streaming_module.events", "ERROR"),
                              ("streaming_module.progress", "ERROR"),
                              ("streaming_module.tokens", "ERROR")]  # fmt: skip
    assert text == expected  # the healthy run beside them: exact
    for name, frames in streams.items():
        # Numbered 1, 2, 3, ... with no gap; one final status, the last frame: completed.
        assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1)), name
        statuses = [f["payload"]["status"] for f in frames if f["type"] == "status"]
        assert statuses == ["started", "completed"], (name, statuses)
        assert frames[-1]["type"] == "status"
        # The node after the failing one streams exactly as if nothing had happened.
        state = states[f"bad-{name}"]
        summary = _node_frames(frames, "token", "summarise")
        assert "".join(f["payload"]["content"] for f in summary) == state["inner"], name
        assert len(state["inner"].split()) == SUMMARY_WORDS
        assert [f["payload"]["progress"] for f in _node_frames(frames, "progress", "summarise")
                ] == [0, 100], name  # fmt: skip
        summary_events = [f["payload"]["eventType"]
                          for f in _node_frames(frames, "event", "summarise")]  # fmt: skip
        assert summary_events == ["node_start", "node_complete"], name
        assert len(state["content"].split()) == 30  # the failing node's own work is done
    # What each callback produced for the failing node is dropped, and only that.
    processor, transformer, calculator = (streams[n] for n in CALLBACKS)
    assert _node_frames(processor, "token", "write") == []
    assert [f["payload"]["eventType"] for f in _node_frames(processor, "event", "write")
            ] == ["node_start", "error", "node_complete"]  # fmt: skip
    assert [f["payload"]["eventType"] for f in _node_frames(transformer, "event", "write")
            ] == ["error"]  # fmt: skip
    assert len(_node_frames(transformer, "token", "write")) == 0  # no @stream_token there
    assert _node_frames(calculator, "progress", "write") == []
    # (the node's 0 % comes before its node_start: there the calculator failed first)
    assert [f["payload"]["eventType"] for f in _node_frames(calculator, "event", "write")
            ] == ["error", "node_start", "node_complete"]  # fmt: skip
    await asyncio.sleep(0.1)
    assert len(asyncio.all_tasks()) <= tasks_before
    record(faults_raising_callbacks=3)


async def test_a_user_callback_that_raises_is_reported_by_an_error_event() -> None:
    streams, _, _, _ = await _callback_runs()
    for name, frames in streams.items():
        (error,) = _error_events(frames)  # one, however many items the callback failed on
        payload = error["payload"]
        assert (payload["nodeId"], payload["priority"]) == ("write", "high"), name
        assert payload["data"] == {
            "code": "callback_failed",
            "callback": name,
            "node": "write",
            "error": "a user callback failed",
            "error_type": "RuntimeError",
            "message": f"the {CALLBACK_NAMES[name]} of node 'write' failed (RuntimeError: a "
            f"user callback failed); the {DROPPED[name]} it fails on are dropped",
        }, name
