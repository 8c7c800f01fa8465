"""Server-sent events over HTTP: one execution's frames, from the broker, in any encoding.

Two layers:

- :class:`ExecutionStream` is framework-neutral asyncio: it subscribes to an execution in the
  broker from a resume point, queues frames in order (bounded), and :meth:`ExecutionStream.sse`
  yields the encoded bytes — native frames, AG-UI events or AI SDK parts, whatever ``encode``
  makes of a frame — with comment heartbeats, ending after the run's final status. A Starlette or
  FastAPI app hands that iterator to its ``StreamingResponse`` (see ``docs/embedding.md``).
- :func:`respond` writes such an iterator as an aiohttp response, and :class:`SseConnections`
  keeps the live ones so a shutdown ends them (and a test can cut them, as a network would).

Bounds and costs. Frames wait in a per-stream queue of at most ``max_queue`` frames (default
4096; an entry is a reference to a shared frame, ~8 bytes). Replayed frames do not count: the
replay log holds them already. When a client reads so slowly that live frames overflow the queue,
its stream ends — the WebSocket's ``disconnect`` policy: the client reconnects with
``Last-Event-ID`` and loses nothing the log still holds; others are never slowed. Each stream
costs one broker subscription (~200 bytes) and, while idle, one timer tick per ``tick`` seconds
(to notice a client that went away without a write failing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from streaming_module.broker.base import Broker, Subscription
from streaming_module.protocol import sse
from streaming_module.protocol.frames import Frame

logger = logging.getLogger("streaming_module.gateway.sse")

DEFAULT_HEARTBEAT = 15.0
"""Seconds of silence after which a comment heartbeat is sent."""

DEFAULT_MAX_QUEUE = 4096
"""Live frames a stream may have waiting before it is ended (the client resumes)."""

DEFAULT_RETRY_MS = 1000
"""The ``retry:`` an ``EventSource`` is told to wait before reconnecting."""


class ExecutionStream:
    """An execution's frames after a resume point, as an async stream of encoded bytes.

    ``await ExecutionStream.open(broker, execution_id, after=N)`` subscribes (every retained
    frame after ``N``, then live); :attr:`complete` says whether the run's final status was
    already at or before ``N`` (nothing to send: answer 204); :meth:`sse` yields the bytes and
    closes the subscription when it ends, when the consumer stops, or on :meth:`close`.
    """

    def __init__(self, execution_id: str, after: int, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.execution_id = execution_id
        self.after = after
        self.max_queue = max_queue
        self.complete = False
        self.replayed_final = False
        self.overflowed = False
        self.closed = False
        self._frames: deque[Frame] = deque()
        self._replay_left = 0  # replayed frames still queued: they do not count against the bound
        self._wakeup = asyncio.Event()
        self._replaying = True
        self._subscription: Subscription | None = None

    @classmethod
    async def open(
        cls,
        broker: Broker,
        execution_id: str,
        *,
        after: int = 0,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> ExecutionStream:
        """Subscribe from ``after`` (0: every retained frame)."""
        stream = cls(execution_id, after, max_queue)
        # One frame earlier than asked: the frame `after` itself tells whether the run already
        # ended there (protocol.sse.stream_is_complete); it is not sent again.
        since = after - 1 if after > 0 else 0
        stream._subscription = await broker.subscribe(
            execution_id, stream._on_frame, last_sequence=since
        )
        stream._replaying = False
        first = stream._frames[0] if stream._frames else None
        stream.complete = sse.stream_is_complete(after, first)
        while stream._frames and stream._frames[0].sequence <= after:
            stream._frames.popleft()
        stream._replay_left = len(stream._frames)
        return stream

    def _on_frame(self, frame: Frame) -> None:
        # Called by the broker, synchronously: queue and return.
        if self.closed:
            return
        self._frames.append(frame)
        if self._replaying:
            if sse.is_final_status(frame):
                self.replayed_final = True
        elif len(self._frames) - self._replay_left > self.max_queue:
            self.overflowed = True
        self._wakeup.set()

    def close(self) -> None:
        """Stop receiving frames (idempotent); a running :meth:`sse` ends."""
        self.closed = True
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        self._wakeup.set()

    async def sse(
        self,
        encode: Callable[[Frame], bytes],
        *,
        prelude: bytes = b"",
        heartbeat: float = DEFAULT_HEARTBEAT,
        tick: float = 1.0,
        before_final: Callable[[Frame], Awaitable[None]] | None = None,
        epilogue: bytes = b"",
        until: float | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield ``prelude``, then ``encode(frame)`` for each frame in order (several frames per
        chunk when they queued up), ``epilogue`` after the final status, then stop.

        While idle, yields ``b""`` every ``tick`` seconds (a writer checks its connection then)
        and a comment heartbeat every ``heartbeat`` seconds. ``before_final`` is awaited before
        the final status is encoded (e.g. to fetch the run's result). Ends early when the queue
        overflowed (the client resumes), at ``until`` (epoch seconds: the JWT's ``exp``; the
        client's reconnect then needs a fresh token) or when :meth:`close` was called."""
        try:
            if prelude:
                yield prelude
            quiet_since = time.monotonic()
            while not self.closed:
                if until is not None and time.time() >= until:
                    logger.info("SSE stream of %s ends: its token expired", self.execution_id)
                    return
                if not self._frames:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), tick)
                    except TimeoutError:
                        if time.monotonic() - quiet_since >= heartbeat:
                            quiet_since = time.monotonic()
                            yield sse.HEARTBEAT
                        else:
                            yield b""
                    continue
                if self.overflowed:
                    logger.info(
                        "SSE stream of %s fell %d frames behind; ending it so the client resumes",
                        self.execution_id,
                        len(self._frames),
                    )
                    return
                parts: list[bytes] = []
                frames = self._frames
                while frames:
                    frame = frames.popleft()
                    if self._replay_left:
                        self._replay_left -= 1
                    if sse.is_final_status(frame):
                        if parts:
                            yield b"".join(parts)
                            parts = []
                        if before_final is not None:
                            await before_final(frame)
                        yield encode(frame) + epilogue
                        return
                    parts.append(encode(frame))
                quiet_since = time.monotonic()
                yield b"".join(parts)
        finally:
            self.close()


class SseConnections:
    """The SSE responses being written, so that a shutdown ends them and a test (or the demo's
    "drop connection" control) can cut them as a network failure would."""

    def __init__(self) -> None:
        self._live: dict[web.StreamResponse, tuple[str, web.BaseRequest]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def executions(self) -> list[str]:
        """The execution id of each live SSE response."""
        return [execution_id for execution_id, _ in self._live.values()]

    def cut(self, execution_id: str | None = None) -> int:
        """Abort the connections of live streams (of ``execution_id`` only when given), without
        ending the SSE stream cleanly: the client sees a dropped connection and resumes. Returns
        how many were cut."""
        cut = 0
        for _, (ex_id, request) in list(self._live.items()):
            if execution_id is not None and ex_id != execution_id:
                continue
            transport = request.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
                cut += 1
        return cut

    async def close_all(self) -> None:
        """End every live stream (server shutting down); clients resume elsewhere or later."""
        self.cut()


async def respond(
    request: web.Request,
    chunks: AsyncIterator[bytes],
    *,
    connections: SseConnections | None = None,
    execution_id: str = "",
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Write ``chunks`` as a ``text/event-stream`` response; stop quietly when the client goes
    away (the run goes on: disconnecting never cancels it)."""
    response = web.StreamResponse(status=200, headers={**sse.HEADERS, **(headers or {})})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if connections is not None:
        connections._live[response] = (execution_id, request)
    try:
        async for chunk in chunks:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            if chunk:
                await response.write(chunk)
        else:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
    except (ConnectionError, RuntimeError) as exc:
        # RuntimeError: aiohttp's "Cannot write to closing transport".
        logger.debug("SSE client of %s went away: %s", execution_id, exc)
    finally:
        if connections is not None:
            connections._live.pop(response, None)
        closer: Any = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
    return response


__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_RETRY_MS",
    "ExecutionStream",
    "SseConnections",
    "respond",
]
