"""Whole runs across real processes sharing Redis (two private ``redis-server`` processes, the
executions spread over both): a decorated workflow (tokens, events, progress) runs in one
``streaming_module serve`` process, WebSocket clients watch it from two others.

- the text is exact, sequences are contiguous and identical on both, the final status is last,
  and `GET /executions/{id}` on any process answers the run (its record lives in Redis);
- the producer is killed mid-run: every watcher gets ``status: failed`` ``producer_lost`` as the
  run's last frame, and `GET /executions/{id}` on any process says failed;
- a watcher's gateway is killed mid-run: its client resumes on the other gateway with
  ``lastSequence`` and misses nothing.

Servers run in their own session with output to files, and are stopped with killpg.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

import aiohttp

from redis_support import RedisServer, delete_prefix

pytestmark = pytest.mark.redis

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 60.0
LEASE_MS = 1000
FINAL = ("completed", "failed", "cancelled")


class Gateway:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def redis_urls() -> Iterator[list[str]]:
    servers: list[RedisServer] = []
    try:
        for _ in range(2):
            try:
                servers.append(RedisServer().start())
            except RuntimeError as exc:
                pytest.skip(f"cannot start redis-server: {exc}")
        yield [server.url for server in servers]
    finally:
        for server in servers:
            server.close()


@contextmanager
def gateways(tmp_path: Path, urls: list[str], count: int) -> Iterator[list[Gateway]]:
    """``count`` gateway processes serving ``redis_app:factory`` on one key prefix, started
    together; each is ready once it printed ``listening on URL``."""
    prefix = f"sme2e:{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "SM_REDIS_URLS": ",".join(urls),
        "SM_PREFIX": prefix,
        "SM_LEASE_MS": str(LEASE_MS),
    }
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    out: list[Gateway] = []
    try:
        for i in range(count):
            log = tmp_path / f"gateway-{i}-{uuid.uuid4().hex[:4]}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [sys.executable, "-m", "streaming_module", "serve", "--app",
                     "redis_app:factory", "--port", "0"],
                    stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                )  # fmt: skip
            started.append((process, log))
        deadline = time.monotonic() + START_TIMEOUT
        for process, log in started:
            while True:
                text = log.read_text(errors="replace")
                lines = [x for x in text.splitlines() if "listening on" in x]
                if lines:
                    url = lines[0].split("listening on ", 1)[1].strip()
                    out.append(Gateway(process, url, log))
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"a gateway did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.05)
        yield out
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        for url in urls:
            delete_prefix(url, prefix)


class Watcher:
    """A WebSocket client of one execution: keeps its frames, resumes elsewhere on demand."""

    def __init__(self, session: aiohttp.ClientSession, execution_id: str) -> None:
        self.session = session
        self.execution_id = execution_id
        self.frames: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, gateway: Gateway, last_sequence: int | None = None) -> None:
        self.ws = await self.session.ws_connect(gateway.ws_url)
        payload: dict[str, Any] = {"executionId": self.execution_id}
        if last_sequence is not None:
            payload["lastSequence"] = last_sequence
        await self.ws.send_json({"type": "subscribe_execution", "payload": payload})
        reply = json.loads((await self.ws.receive(timeout=20)).data)
        assert reply["type"] == "subscribed", reply

    async def read(self, until: Any, within: float = 60.0) -> None:
        """Read frames until ``until(frames)`` holds; raises ConnectionError if the server
        goes away first."""
        assert self.ws is not None
        deadline = time.monotonic() + within
        while not until(self.frames):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"gave up after {len(self.frames)} frames: {self.frames[-2:]}"
            message = await self.ws.receive(timeout=remaining)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"connection ended ({message.type.name})")
            frame = json.loads(message.data)
            if frame["type"] not in ("subscribed", "pong"):
                self.frames.append(frame)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


def ended(frames: list[dict[str, Any]]) -> bool:
    last = frames[-1] if frames else None
    return last is not None and last["type"] == "status" and last["payload"]["status"] in FINAL


def check_run(frames: list[dict[str, Any]], execution_id: str) -> str:
    """Contiguous sequences from 1, no gap, one final status, last; returns the streamed text."""
    assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
    assert all(f["executionId"] == execution_id and f["type"] != "gap" for f in frames)
    finals = [f for f in frames if f["type"] == "status" and f["payload"]["status"] in FINAL]
    assert finals == [frames[-1]]
    return "".join(f["payload"]["content"] for f in frames if f["type"] == "token")


async def start_run(
    s: aiohttp.ClientSession, gateway: Gateway, execution_id: str, **body: Any
) -> None:
    body = {"executionId": execution_id, "prompt": f"story {execution_id}", **body}
    async with s.post(gateway.url + "/executions", json=body) as r:
        assert r.status == 202, await r.text()


async def watch(s: aiohttp.ClientSession, execution_id: str, *where: Gateway) -> list[Watcher]:
    """A client subscribed live to the execution on each of ``where``."""
    watchers = [Watcher(s, execution_id) for _ in where]
    for watcher, gateway in zip(watchers, where, strict=True):
        await watcher.connect(gateway)
    return watchers


async def record(s: aiohttp.ClientSession, gateway: Gateway, execution_id: str) -> dict[str, Any]:
    async with s.get(f"{gateway.url}/executions/{execution_id}") as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def test_a_whole_run_streams_exactly_to_clients_of_two_other_processes(
    tmp_path: Path, redis_urls: list[str]
) -> None:
    with gateways(tmp_path, redis_urls, 3) as (producer, left, right):
        async with aiohttp.ClientSession() as s:
            execution_id = f"story-{uuid.uuid4().hex[:8]}"
            watchers = await watch(s, execution_id, left, right)
            await start_run(s, producer, execution_id, words=300, delayMs=1)
            await asyncio.gather(*(w.read(ended) for w in watchers))
            texts = [check_run(w.frames, execution_id) for w in watchers]
            assert watchers[0].frames == watchers[1].frames  # the same frames everywhere
            frames = watchers[0].frames
            assert frames[0]["type"] == "status" and frames[0]["payload"]["status"] == "started"
            assert frames[-1]["payload"]["status"] == "completed"
            kinds = {f["type"] for f in frames}
            assert {"token", "progress", "event", "status"} <= kinds
            events = {f["payload"]["eventType"] for f in frames if f["type"] == "event"}
            assert {"tool_start", "tool_complete"} <= events
            progress = [f["payload"]["progress"] for f in frames if f["type"] == "progress"]
            assert progress[-1] == 100
            # Any process answers the run record, with the exact text that streamed.
            answered = await record(s, right, execution_id)
            assert answered["status"] == "completed"
            assert answered["result"]["content"] == texts[0] == texts[1]
            assert len(texts[0].split()) == 300
            for w in watchers:
                await w.close()


async def test_a_killed_producer_ends_the_run_for_every_watcher_with_producer_lost(
    tmp_path: Path, redis_urls: list[str]
) -> None:
    with gateways(tmp_path, redis_urls, 3) as (producer, left, right):
        async with aiohttp.ClientSession() as s:
            execution_id = f"doomed-{uuid.uuid4().hex[:8]}"
            watchers = await watch(s, execution_id, left, right)
            await start_run(s, producer, execution_id, words=5000, delayMs=5)
            tokens = 0

            def some_tokens(frames: list[dict[str, Any]]) -> bool:
                return sum(f["type"] == "token" for f in frames) >= 5

            await asyncio.gather(*(w.read(some_tokens) for w in watchers))
            producer.kill()
            killed = time.monotonic()
            await asyncio.gather(*(w.read(ended, within=30) for w in watchers))
            # The lease (1 s) plus a look by the others, with slack for a loaded machine.
            assert time.monotonic() - killed < 15
            for w in watchers:
                check_run(w.frames, execution_id)
                final = w.frames[-1]["payload"]
                assert final["status"] == "failed" and final["error"]["code"] == "producer_lost"
                tokens = max(tokens, sum(f["type"] == "token" for f in w.frames))
            assert watchers[0].frames == watchers[1].frames
            assert tokens < 5000 / 8  # it was really cut short
            answered = await record(s, left, execution_id)
            assert answered["status"] == "failed"
            assert answered["error"]["code"] == "producer_lost"
            # A client arriving later replays the whole run, ending the same way.
            late = Watcher(s, execution_id)
            await late.connect(right, last_sequence=0)
            await late.read(ended)
            assert late.frames == watchers[0].frames
            for w in (*watchers, late):
                await w.close()


async def test_a_client_whose_gateway_is_killed_resumes_on_another_and_misses_nothing(
    tmp_path: Path, redis_urls: list[str]
) -> None:
    with gateways(tmp_path, redis_urls, 3) as (producer, doomed, spare):
        async with aiohttp.ClientSession() as s:
            execution_id = f"resume-{uuid.uuid4().hex[:8]}"
            (client,) = await watch(s, execution_id, doomed)
            await start_run(s, producer, execution_id, words=1500, delayMs=2)
            await client.read(lambda frames: len(frames) >= 20)
            doomed.kill()
            with pytest.raises((ConnectionError, aiohttp.ClientError)):
                await client.read(ended, within=30)
            assert not ended(client.frames)
            resumed_at = client.frames[-1]["sequence"]
            await client.connect(spare, last_sequence=resumed_at)
            await client.read(ended)
            text = check_run(client.frames, execution_id)
            assert client.frames[-1]["payload"]["status"] == "completed"
            assert resumed_at < client.frames[-1]["sequence"]
            assert (await record(s, spare, execution_id))["result"]["content"] == text
            await client.close()
