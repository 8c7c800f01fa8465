"""One WebSocket client: its subscriptions, acks, bounded send queue, writer task and heartbeat.

Frames reach a connection synchronously from the broker (:meth:`ClientConnection.deliver`) and
wait in a bounded queue that only this connection's writer task drains, so a client that reads
slowly never slows the publisher nor any other client.

Memory per connection: the queue holds at most ``send_queue_size`` entries. An entry is a
reference to a :class:`~streaming_module.protocol.frames.Frame` (shared with every other
subscriber and the replay log, so ~8 bytes here) or the bytes of a reply. Replayed frames are the
one exception to the bound: a resume may queue up to ``replay_max_frames`` references at once,
since they are already held by the replay log. Below the queue, aiohttp's transport buffers up to
~64 KiB before the writer waits. With ``slow_client_policy='coalesce'`` merged token frames are new
objects, each capped at :data:`~streaming_module.protocol.coalesce.COALESCE_MAX_CHARS`
characters of content.

The direct path: a frame delivered to an uncompressed connection whose queue is empty, whose
writer is not mid-send and whose transport holds less than :data:`DIRECT_WRITE_LIMIT` unsent
bytes is written straight to the socket's transport as the broadcast's pre-built WebSocket frame
(:func:`~streaming_module.gateway._aiohttp.ws_frame`, framed once for every client), without
waking the writer task. Order is kept because anything queued goes first: with a non-empty queue
the frame is queued behind it. A client that stops reading fills its transport to the limit, then
its queue, as before. This reaches below aiohttp's public API, so it lives in
:mod:`streaming_module.gateway._aiohttp`, whose ``direct_transport`` checks once per connection
that the internals look as expected; if not, the connection uses the queue and writer task only.

When the queue is full: ``disconnect`` closes the client with ``CloseCode.SLOW_CONSUMER`` (it
reconnects and resumes with ``lastSequence``); ``coalesce`` merges consecutive queued token frames
of the same execution and node into one (content concatenated, the last sequence kept; see
:mod:`streaming_module.protocol.coalesce`) and falls back to ``SLOW_CONSUMER`` when nothing can be
merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, Literal, Protocol

from aiohttp import web

from streaming_module.broker.base import Subscription
from streaming_module.config import HeartbeatOptions
from streaming_module.core.clock import Clock, TimerHandle
from streaming_module.gateway._aiohttp import (
    Transport,
    WriterProtocol,
    direct_transport,
    send_text,
    ws_frame,
)
from streaming_module.protocol.close_codes import CloseCode
from streaming_module.protocol.coalesce import merge, mergeable
from streaming_module.protocol.frames import FILTERABLE_KINDS, Frame, encode_error

logger = logging.getLogger("streaming_module.gateway")

CLOSE_TIMEOUT = 5.0
"""Seconds a close handshake may take before the transport is closed without it."""

DIRECT_WRITE_LIMIT = 64 * 1024
"""Unsent bytes a connection's transport may hold for :meth:`ClientConnection.deliver` to still
write a frame straight to it (asyncio's default high-water mark is 64 KiB); past it frames wait in
the bounded queue, whose policy applies. So a stalled client costs at most this much plus its
queue."""

SlowClientPolicy = Literal["disconnect", "coalesce"]


class Permissions(Protocol):
    """What the gateway asks of verified JWT claims."""

    def may_subscribe(self, execution_id: str) -> bool: ...


class ClientSubscription:
    """A connection's subscription to one execution, with the frame kinds it selected. Called
    by the broker for each frame of the execution."""

    __slots__ = ("broker_subscription", "connection", "execution_id", "kinds")

    def __init__(
        self, connection: ClientConnection, execution_id: str, kinds: frozenset[str]
    ) -> None:
        self.connection = connection
        self.execution_id = execution_id
        self.kinds = kinds
        self.broker_subscription: Subscription | None = None

    def __call__(self, frame: Frame) -> None:
        if frame.type in FILTERABLE_KINDS and frame.type not in self.kinds:
            return
        self.connection.deliver(frame)

    def close(self) -> None:
        if self.broker_subscription is not None:
            self.broker_subscription.close()


class ClientConnection:
    """A connected client. Owns its writer task, heartbeat timers and close task."""

    def __init__(
        self,
        client_id: str,
        ws: web.WebSocketResponse,
        *,
        clock: Clock,
        remote: str | None = None,
        claims: Permissions | None = None,
        send_queue_size: int = 4096,
        slow_client_policy: SlowClientPolicy = "disconnect",
        compress_threshold: int | None = None,
        heartbeat: HeartbeatOptions | None = None,
    ) -> None:
        self.id = client_id
        self.ws = ws
        self.remote = remote
        self.claims = claims
        self.connected_at = clock.now()
        self.subscriptions: dict[str, ClientSubscription] = {}
        self.acks: dict[str, int] = {}
        """Highest sequence the client acknowledged, per execution (see docs/protocol.md)."""
        self.max_queue = send_queue_size
        self.policy: SlowClientPolicy = slow_client_policy
        self.close_code: int | None = None
        self.frames_sent = 0
        self.coalesced = 0
        """Frames merged into others by the 'coalesce' policy."""
        self.heard = 0
        """Frames received from the client (any kind, pongs included)."""
        self.direct_writes = 0
        """Frames written straight to the transport by :meth:`deliver` (the direct path)."""
        self._clock = clock
        self._queue: deque[Frame | bytes] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._replaying = 0
        self._compress_threshold = compress_threshold
        self._heartbeat = heartbeat if heartbeat is not None and heartbeat.enabled else None
        self._timer: TimerHandle | None = None
        self._ping_heard = 0
        self._writer: asyncio.Task[None] | None = None
        self._writing = False  # the writer task is inside a send
        self._direct: tuple[Transport, WriterProtocol] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ state
    @property
    def queued(self) -> int:
        """Entries waiting in the send queue."""
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closer is not None

    def info(self) -> dict[str, Any]:
        """What introspection shows about this connection."""
        return {
            "clientId": self.id,
            "remote": self.remote,
            "subject": getattr(self.claims, "subject", None),
            "connectedAt": self.connected_at.isoformat(),
            "subscriptions": sorted(self.subscriptions),
            "acks": dict(self.acks),
            "queued": len(self._queue),
            "framesSent": self.frames_sent,
            "coalesced": self.coalesced,
            "compressed": bool(self.ws.compress),
            "directWrites": self.direct_writes,
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the writer task and the heartbeat; detect whether the direct path is
        available (once: compression and aiohttp's writer are fixed after ``prepare``)."""
        self._direct = direct_transport(self.ws)
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.id}")
        if self._heartbeat is not None:
            self._timer = self._clock.call_later(self._heartbeat.interval / 1000, self._ping_due)

    def heard_from_client(self) -> None:
        self.heard += 1

    def close_soon(self, code: int, reason: str = "", *, drain_timeout: float = 0.0) -> None:
        """Close the connection with ``code`` from synchronous code (idempotent)."""
        if self._closer is None:
            self._closer = asyncio.create_task(
                self._close(code, reason, drain_timeout), name=f"ws-close-{self.id}"
            )

    async def close(self, code: int, reason: str = "", *, drain_timeout: float = 0.0) -> None:
        """Close with ``code`` after up to ``drain_timeout`` seconds for queued frames to go
        out; returns once closed (idempotent: a second call waits for the first)."""
        self.close_soon(code, reason, drain_timeout=drain_timeout)
        assert self._closer is not None
        await asyncio.shield(self._closer)

    async def aclose(self) -> None:
        """Release everything: subscriptions, timers, writer, close task. Nothing is left
        running when it returns."""
        for sub in self.subscriptions.values():
            sub.close()
        self.subscriptions.clear()
        self._cancel_timer()
        if self._closer is None and not self.ws.closed:
            self.close_soon(CloseCode.NORMAL)
        if self._closer is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._closer)
        await self._cancel_writer()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue.clear()

    # ------------------------------------------------------------------ sending
    def deliver(self, frame: Frame) -> None:
        """Write one execution frame straight to the socket when the direct path allows it
        (see the module docstring), else queue it (never blocks). Called by the broker."""
        if self._closer is not None:
            return
        direct = self._direct
        if direct is not None and not self._queue and not self._writing:
            transport, protocol = direct
            if (
                not protocol.writing_paused
                and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
                and not transport.is_closing()
                and not self.ws.closed
            ):
                try:
                    transport.write(ws_frame(frame))
                except (ConnectionError, RuntimeError) as exc:
                    logger.debug("client %s: direct write failed: %s", self.id, exc)
                    self._direct = None  # the writer task's send will see the error
                else:
                    self.frames_sent += 1
                    self.direct_writes += 1
                    return
        if (
            len(self._queue) >= self.max_queue
            and not self._replaying
            and not self._make_room(frame)
        ):
            return
        self._queue.append(frame)  # (re-read: _make_room may have compacted into a new deque)
        self._idle.clear()
        self._wake.set()

    def send(self, data: bytes) -> None:
        """Queue a reply or a message for this client only (never blocks)."""
        if self._closer is not None:
            return
        if len(self._queue) >= self.max_queue and not self._make_room(None):
            return
        self._queue.append(data)
        self._idle.clear()
        self._wake.set()

    def send_error(self, code: str, message: str) -> None:
        self.send(encode_error(code, message))

    def begin_replay(self) -> None:
        """Frames delivered until :meth:`end_replay` are a resume's replay: they are already held
        by the replay log, so they do not count against the queue bound."""
        self._replaying += 1

    def end_replay(self) -> None:
        self._replaying -= 1

    async def drained(self, within: float) -> bool:
        """Wait up to ``within`` seconds until the queue is empty; True if it is."""
        if not self._queue:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    def _make_room(self, incoming: Frame | None) -> bool:
        """The queue is full. Apply the slow-client policy; True if ``incoming`` may be queued
        (for 'coalesce' it may already have been merged into the tail: then False)."""
        if self.policy == "coalesce":
            queue = self._queue
            tail = queue[-1] if queue else None
            if incoming is not None and isinstance(tail, Frame) and mergeable(tail, incoming):
                queue[-1] = merge(tail, incoming)
                self.coalesced += 1
                return False
            freed = self._compact()
            if freed:
                return True
        logger.warning(
            "client %s fell %d frames behind; closing with %d (it can resume)",
            self.id,
            len(self._queue),
            CloseCode.SLOW_CONSUMER,
        )
        self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer: resume with lastSequence")
        return False

    def _compact(self) -> int:
        """Merge runs of consecutive mergeable token frames in the queue; returns the number of
        entries freed."""
        before = len(self._queue)
        out: deque[Frame | bytes] = deque()
        for item in self._queue:
            last = out[-1] if out else None
            if isinstance(item, Frame) and isinstance(last, Frame) and mergeable(last, item):
                out[-1] = merge(last, item)
            else:
                out.append(item)
        freed = before - len(out)
        self.coalesced += freed
        self._queue = out
        return freed

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                queue = self._queue
                if not queue:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = queue.popleft()
                data = item.encoded() if isinstance(item, Frame) else item
                self._writing = True
                try:
                    await self._send(ws, data)
                finally:
                    self._writing = False
                self.frames_sent += 1
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away (aiohttp raises ClientConnectionResetError, a ConnectionError).
            logger.debug("client %s: send failed: %s", self.id, exc)
            self._queue.clear()
            self._idle.set()

    async def _send(self, ws: web.WebSocketResponse, data: bytes) -> None:
        # Frames under the threshold go uncompressed on a deflate connection; only this task
        # sends data frames, as send_text requires.
        threshold = self._compress_threshold
        await send_text(ws, data, compress=threshold is None or len(data) >= threshold)

    # ------------------------------------------------------------------ heartbeat
    def _ping_due(self) -> None:
        hb = self._heartbeat
        if hb is None or self._closer is not None:
            return
        self._ping_heard = self.heard
        self._spawn(self._ping())
        self._timer = self._clock.call_later(hb.timeout / 1000, self._pong_due)

    def _pong_due(self) -> None:
        hb = self._heartbeat
        if hb is None or self._closer is not None:
            return
        if self.heard == self._ping_heard:
            logger.info(
                "client %s silent for %d ms after a ping; closing with %d",
                self.id,
                hb.timeout,
                CloseCode.HEARTBEAT_TIMEOUT,
            )
            self.close_soon(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
            return
        remaining = max(0.0, (hb.interval - hb.timeout) / 1000)
        self._timer = self._clock.call_later(remaining, self._ping_due)

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.ping()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ closing
    async def _close(self, code: int, reason: str, drain_timeout: float) -> None:
        self.close_code = code
        self._cancel_timer()
        if drain_timeout > 0:
            await self.drained(drain_timeout)
        await self._cancel_writer()
        self._queue.clear()
        self._idle.set()
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=reason.encode()[:120]), CLOSE_TIMEOUT
            )
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            logger.debug("client %s: close handshake incomplete: %s", self.id, exc)

    async def _cancel_writer(self) -> None:
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = [
    "DIRECT_WRITE_LIMIT",
    "ClientConnection",
    "ClientSubscription",
    "Permissions",
]
