"""Shared helpers of the Redis tests: private ``redis-server`` processes, key clean-up, a
collecting listener and a bounded wait.

A private server listens on 127.0.0.1 on a free port (retried on a fresh port when another
process takes it first), without persistence, writes its log to a temporary file and runs in its
own session; :meth:`RedisServer.stop` kills it. Faults are injected on private servers only, never
on the machine's shared Redis: :meth:`~RedisServer.pause` / :meth:`~RedisServer.resume`
(``SIGSTOP`` / ``SIGCONT``: a Redis that stops answering) and :meth:`~RedisServer.restart` (same
port, data gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from streaming_module.broker.base import GAP, Frame

WAIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class RedisServer:
    """A private ``redis-server`` (no persistence) on 127.0.0.1."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary")
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="redis-", suffix=".log", delete=False)
        self.log.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> RedisServer:
        """Start on ``port`` (a free one when None, retried on another when taken)."""
        for _ in range(5):
            self.port = port or free_port()
            with open(self.log.name, "ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--protected-mode", "no"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                if answers(self.url):
                    return self
                time.sleep(0.05)
            self._kill()
            if port is not None:
                time.sleep(0.5)  # the old socket may linger a moment: retry the same port
        raise RuntimeError(f"could not start redis-server (log: {self.log.name})")

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def stop(self) -> None:
        self._kill()

    def restart(self) -> None:
        """Kill the server and start a fresh one (empty: no persistence) on the same port."""
        self._kill()
        self.start(self.port)

    def pause(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        self._kill()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # a server a test stopped
    finally:
        client.close()


class Collector:
    """A listener that keeps what it is given."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)

    @property
    def sequences(self) -> list[int]:
        return [f.sequence for f in self.frames if f.type != GAP]

    @property
    def gaps(self) -> list[dict[str, Any]]:
        return [f.payload for f in self.frames if f.type == GAP]

    async def until(self, count: int, within: float = WAIT) -> list[Frame]:
        deadline = time.monotonic() + within
        while len(self.frames) < count:
            assert time.monotonic() < deadline, f"got {len(self.frames)} of {count} frames"
            await asyncio.sleep(0.01)
        return self.frames

    async def until_type(self, frame_type: str, within: float = WAIT) -> Frame:
        deadline = time.monotonic() + within
        while True:
            for frame in self.frames:
                if frame.type == frame_type:
                    return frame
            assert time.monotonic() < deadline, f"no {frame_type!r} frame in {within} s"
            await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def assert_contiguous(frames: list[Frame], first: int = 1) -> None:
    """Sequences ``first, first+1, ...`` with no gap frame and no duplicate."""
    sequences = [f.sequence for f in frames]
    assert GAP not in [f.type for f in frames], [f.payload for f in frames if f.type == GAP]
    assert sequences == list(range(first, first + len(frames))), sequences[:50]


PUBLISHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "redis_publisher.py")


class Publisher:
    """``tests/redis_publisher.py`` in its own process (output to a file, own session)."""

    def __init__(self, url: str, prefix: str, execution_id: str, frames: int, *args: str) -> None:
        self.output = tempfile.NamedTemporaryFile(prefix="publisher-", suffix=".log", delete=False)
        self.output.close()
        with open(self.output.name, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, PUBLISHER, url, prefix, execution_id, str(frames), *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def text(self) -> str:
        with open(self.output.name, errors="replace") as f:
            return f.read()

    def published(self, within: float = 60.0) -> int:
        """Wait for ``published N`` and return N (the last sequence it wrote)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in self.text().splitlines():
                if line.startswith("published "):
                    return int(line.split()[1])
            if self.process.poll() is not None:
                raise AssertionError(f"the publisher exited early:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"the publisher did not finish in {within} s:\n{self.text()}")

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            os.unlink(self.output.name)
