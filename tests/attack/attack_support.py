"""What every attack test uses: the server in a process of its own (:class:`AttackServer`), a
healthy client that streams a run beside the attack and must get its exact text
(:func:`healthy_run`), the server's memory, descriptors and tasks before and after
(:class:`Snapshot`), raw WebSocket frames for what no client library sends, and the figures
docs/reliability.md reports (:data:`FIGURES`).

Everything on 127.0.0.1; every loop bounded in count and time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 60.0
RUN_TIMEOUT = 60.0

FIGURES: Counter[str] = Counter()
"""Counts the suite adds up: inputs tried, refusals by kind, ... (printed at the end with -s,
and written to $ATTACK_FIGURES when set; docs/reliability.md quotes them)."""


# ------------------------------------------------------------------------------ the server


class AttackServer:
    """``streaming-module serve --app attack_app:create`` with ``options`` on ``port`` (0: a free
    one), in its own session, output to files; :meth:`stop` sends ``sig`` to its process group
    and waits (then kills)."""

    def __init__(
        self,
        options: dict[str, Any],
        *,
        token_delay_ms: float = 2.0,
        nofile: int | None = None,
        extra_env: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.options = options
        self.token_delay_ms = token_delay_ms
        self.nofile = nofile
        self.extra_env = extra_env or {}
        self.dir = Path(tempfile.mkdtemp(prefix="attack_"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return (self.dir / "stderr.txt").read_text(errors="replace")

    async def start(self) -> AttackServer:
        env = {
            **os.environ,
            "ATTACK_OPTIONS": json.dumps(self.options),
            "ATTACK_TOKEN_DELAY_MS": str(self.token_delay_ms),
            "PYTHONPATH": os.pathsep.join(sys.path),
            **self.extra_env,
        }
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with (
            (self.dir / "stdout.txt").open("wb") as out,
            (self.dir / "stderr.txt").open("wb") as err,
        ):
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "streaming_module", "serve", "--app",
                 "attack_app:create", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=HERE, env=env, stdout=out, stderr=err, start_new_session=True,
                preexec_fn=limits,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = (self.dir / "stdout.txt").read_text()
            if "listening on" in text:
                self.port = int(text.split("listening on", 1)[1].split()[0].rsplit(":", 1)[1])
                return self
            if self.proc.poll() is not None:
                log = self.log()[-3000:]
                await self.stop()
                raise AssertionError(f"the server did not start:\n{log}")
            await asyncio.sleep(0.05)
        log = self.log()[-3000:]
        await self.stop()
        raise AssertionError(f"the server did not start in time:\n{log}")

    async def stop(self, sig: int = signal.SIGTERM, within: float = 15.0) -> int | None:
        """Stop the server (if it still runs) and remove its output files; its status."""
        try:
            return await self._stop(sig, within)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _stop(self, sig: int, within: float) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + within
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a process
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        return proc.returncode

    async def exited(self, within: float = 15.0) -> int | None:
        """Wait for the process to end by itself (after a signal sent elsewhere); its status."""
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + within
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a process
            await asyncio.sleep(0.05)
        return proc.poll()

    # -------------------------------------------------------------- measured from outside

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def fds(self) -> int:
        return int(psutil.Process(self.pid).num_fds())

    async def health(self) -> dict[str, Any]:
        # A fresh connection each time, closed after: no keep-alive connection skews the count.
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=10)) as r,
        ):
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body


@contextlib.asynccontextmanager
async def attack_server(options: dict[str, Any], **kwargs: Any) -> AsyncIterator[AttackServer]:
    server = AttackServer(options, **kwargs)
    try:
        yield await server.start()
    finally:
        await server.stop()


@dataclass
class Snapshot:
    """The server at rest: memory, descriptors, tasks, connections."""

    rss: int
    fds: int
    tasks: int
    connections: int

    @classmethod
    async def take(cls, server: AttackServer) -> Snapshot:
        health = await server.health()
        return cls(server.rss(), server.fds(), health["tasks"], health["connections"])

    async def assert_back(
        self, server: AttackServer, *, rss_slack_mb: float = 16.0, within: float = 20.0
    ) -> Snapshot:
        """Wait (bounded) until descriptors, tasks and connections are back to this snapshot's
        (a couple of descriptors and tasks of slack for what is closing), then check memory grew
        by at most ``rss_slack_mb``. Returns the snapshot it ended on."""
        deadline = time.monotonic() + within
        while True:
            now = await Snapshot.take(server)
            settled = (
                now.fds <= self.fds + 2
                and now.tasks <= self.tasks + 2
                and now.connections <= self.connections
            )
            if settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert now.connections <= self.connections, (self, now)
        assert now.fds <= self.fds + 2, f"descriptors not back: {self} -> {now}"
        assert now.tasks <= self.tasks + 2, f"tasks not back: {self} -> {now}"
        grown = (now.rss - self.rss) / 2**20
        assert grown <= rss_slack_mb, f"memory grew by {grown:.1f} MB: {self} -> {now}"
        return now


# ------------------------------------------------------------------------------ clients


@dataclass
class HealthyResult:
    execution_id: str
    text: str
    expected: str
    frames: int


async def healthy_run(
    server: AttackServer,
    execution_id: str,
    *,
    words: int = 300,
    token: str | None = None,
    streaming: asyncio.Event | None = None,
    subscribe_first: bool = True,
) -> HealthyResult:
    """A well-behaved client: subscribe, start the run with ``POST /executions``, read every
    frame to the final status, then fetch the run's result. The caller asserts
    ``text == expected``. ``streaming`` is set once the first token arrived. A 503 (the server
    at its connection cap) is retried, as any HTTP client would. ``subscribe_first=False``
    starts the run first and then subscribes from its first frame (``lastSequence: 0``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    parts: list[str] = []
    frames = 0
    body = {"prompt": "Write about tides", "executionId": execution_id, "words": words}
    async with asyncio.timeout(RUN_TIMEOUT), aiohttp.ClientSession(headers=headers) as session:
        if not subscribe_first:
            status, text = await _retrying(session, "POST", "/executions", server, body)
            assert status == 202, text
        async with session.ws_connect(server.ws_url, heartbeat=None) as ws:
            await ws.send_json(
                {
                    "type": "subscribe_execution",
                    "payload": {"executionId": execution_id, "lastSequence": 0},
                }
            )
            started = not subscribe_first
            async for msg in ws:
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                frame = json.loads(msg.data)
                if frame["type"] == "subscribed" and not started:
                    started = True
                    status, text = await _retrying(session, "POST", "/executions", server, body)
                    assert status == 202, text
                    continue
                assert frame["type"] != "error", frame
                frames += 1
                if frame["type"] == "token":
                    parts.append(frame["payload"]["content"])
                    if streaming is not None:
                        streaming.set()
                if frame["type"] == "status" and frame["payload"]["status"] != "started":
                    assert frame["payload"]["status"] == "completed", frame
                    break
        for _ in range(200):
            status, text = await _retrying(session, "GET", f"/executions/{execution_id}", server)
            record = json.loads(text)
            if record["status"] == "completed":
                break
            await asyncio.sleep(0.05)
    return HealthyResult(execution_id, "".join(parts), record["result"]["content"], frames)


async def _retrying(
    session: aiohttp.ClientSession, method: str, path: str, server: AttackServer, body: Any = None
) -> tuple[int, str]:
    for _ in range(100):
        try:
            async with session.request(method, server.url + path, json=body) as response:
                if response.status != 503:
                    return response.status, await response.text()
        except aiohttp.ClientConnectionError:  # refused at the connection cap mid-request
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{method} {path}: still 503 after 10 s")


# ------------------------------------------------------------------------------ raw frames


def masked(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame (RFC 6455 5.2), masked unless told otherwise."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, (0x80 if mask else 0) | length))
    elif length < 65536:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    body = (
        bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        if length < 4096
        else _mask(payload, key)
    )
    return header + key + body


def _mask(payload: bytes, key: bytes) -> bytes:
    # Whole-word XOR for large payloads (the per-byte loop is slow).
    reps = key * (len(payload) // 4 + 1)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(reps[: len(payload)], "big")).to_bytes(
        len(payload), "big"
    )


async def raw_upgrade(
    port: int,
    *,
    path: str = "/ws",
    headers: dict[str, str] | None = None,
    rcvbuf: int | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A WebSocket handshake over a plain socket (``rcvbuf``: a small receive buffer, so that a
    client that stops reading stops the server's writes soon). Returns the streams and the
    response head."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


async def read_frame(reader: asyncio.StreamReader, within: float = 10.0) -> tuple[int, bytes]:
    """The next server frame: (opcode, payload)."""
    async with asyncio.timeout(within):
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        return first & 0x0F, await reader.readexactly(length)


async def close_code_of(reader: asyncio.StreamReader, *, limit: int = 100_000) -> int | None:
    """Read frames until the server's close frame; its code (``None``: the connection ended
    without one)."""
    for _ in range(limit):
        try:
            opcode, payload = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None
    raise AssertionError("no close frame")


def record(**counts: int) -> None:
    FIGURES.update(counts)
