"""One WebSocket client: its subscriptions, acks, bounded send queue, writer task and heartbeat.

Frames reach a connection synchronously from the broker (:meth:`ClientConnection.deliver`) and
wait in a bounded queue that only this connection's writer task drains, so a client that reads
slowly never slows the publisher nor any other client.

Memory per connection is bounded twice, whatever the frames' sizes:

- in entries: at most ``send_queue_size`` queued (a reference to a shared, already-encoded
  :class:`~streaming_module.protocol.frames.Frame`, or the bytes of a reply);
- in bytes: what the queue holds plus what the socket's transport holds unsent stays within
  ``send_queue_bytes`` (default 1 MiB). Each entry is counted at its encoded size even when the
  frame is shared with other clients and the replay log, so this is an upper bound on what one
  client can make the process keep. A single entry larger than the bound is still let through
  when nothing else is queued (so a client can receive any frame at all).

Every reply a client provokes (``pong``, ``error``, ``subscribed`` ...) is counted like a frame,
so a client that sends requests and never reads fills its own bound, not the process.

A resume's replay may go over both bounds once: the frames are already held by the replay log, and
a replay of up to ``replay_max_frames`` must not disconnect the client it is for. What the replay
added becomes an allowance that shrinks as the writer sends; a second replay while one is still
draining gets no allowance (so re-subscribing in a loop without reading hits the bound).

The direct path: a frame delivered to an uncompressed connection whose queue is empty, whose
writer is not mid-send and whose transport holds less than :data:`DIRECT_WRITE_LIMIT` unsent
bytes is written straight to the socket's transport as the broadcast's pre-built WebSocket frame
(:func:`~streaming_module.gateway._aiohttp.ws_frame`, framed once for every client), without
waking the writer task. Order is kept because anything queued goes first: with a non-empty queue
the frame is queued behind it. A client that stops reading fills its transport to the limit, then
its queue, as before. This reaches below aiohttp's public API, so it lives in
:mod:`streaming_module.gateway._aiohttp`, whose ``direct_transport`` checks once per connection
that the internals look as expected; if not, the connection uses the queue and writer task only.

When either bound is hit: ``disconnect`` closes the client with ``CloseCode.SLOW_CONSUMER`` (it
reconnects and resumes with ``lastSequence``); ``coalesce`` merges consecutive queued token frames
of the same execution and node into one (content concatenated, the last sequence kept; see
:mod:`streaming_module.protocol.coalesce`) while only the entry bound is hit, and falls back to
``SLOW_CONSUMER`` when nothing can be merged or the byte bound is hit (merging cannot shrink the
text a client is owed).
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
    ws_transport,
)
from streaming_module.protocol.close_codes import CloseCode
from streaming_module.protocol.coalesce import merge, mergeable
from streaming_module.protocol.frames import FILTERABLE_KINDS, Frame, encode_error

logger = logging.getLogger("streaming_module.gateway")

CLOSE_TIMEOUT = 5.0
"""Seconds a close handshake may take before the transport is closed without it."""

DIRECT_WRITE_LIMIT = 64 * 1024
"""Unsent bytes a connection's transport may hold for :meth:`ClientConnection.deliver` to still
write a frame straight to it (asyncio's default high-water mark is 64 KiB; lower when
``send_queue_bytes`` is); past it frames wait in the bounded queue, whose policy applies. The
transport's unsent bytes count against ``send_queue_bytes`` with the queue."""

DEFAULT_SEND_QUEUE_BYTES = 1024 * 1024
"""Default of ``websocket.send_queue_bytes``: what one client may be owed, queue and transport
together (Centrifugo bounds a client's queue at 1 MiB too)."""

SlowClientPolicy = Literal["disconnect", "coalesce"]


class Permissions(Protocol):
    """What the gateway asks of verified JWT claims."""

    def may_subscribe(self, execution_id: str) -> bool: ...


class ClientSubscription:
    """A connection's subscription to one execution, with the frame kinds it selected. Called
    by the broker for each frame of the execution.

    ``reply`` (the ``subscribed`` message) goes out just before the first frame the broker
    delivers, or by :meth:`confirm` once the broker accepted the subscription: so it always
    precedes the replay, and a subscription the broker refuses gets an ``error`` instead."""

    __slots__ = ("broker_subscription", "connection", "execution_id", "kinds", "reply")

    def __init__(
        self,
        connection: ClientConnection,
        execution_id: str,
        kinds: frozenset[str],
        reply: bytes | None = None,
    ) -> None:
        self.connection = connection
        self.execution_id = execution_id
        self.kinds = kinds
        self.reply = reply
        self.broker_subscription: Subscription | None = None

    def __call__(self, frame: Frame) -> None:
        if frame.type in FILTERABLE_KINDS and frame.type not in self.kinds:
            return
        if self.reply is not None:
            self.confirm()
        self.connection.deliver(frame)

    def confirm(self) -> None:
        """Send the ``subscribed`` reply if it has not gone out yet."""
        reply, self.reply = self.reply, None
        if reply is not None:
            self.connection.send(reply)

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
        send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES,
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
        self.max_queue_bytes = send_queue_bytes
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
        self._sizes: deque[int] = deque()  # bytes counted for each entry of _queue
        self._queued_bytes = 0
        # What a replay may hold beyond the bounds, shrinking as the writer sends (see the module
        # docstring); _replay_mark is (entries, bytes) when the replay that gets it began.
        self._slack_entries = 0
        self._slack_bytes = 0
        self._replay_mark: tuple[int, int] | None = None
        self._transport: Transport | None = None
        self._direct_limit = min(DIRECT_WRITE_LIMIT, send_queue_bytes)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._replaying = 0
        self._compress_threshold = compress_threshold
        self._heartbeat = heartbeat if heartbeat is not None and heartbeat.enabled else None
        self._timer: TimerHandle | None = None
        self._expiry: TimerHandle | None = None
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
    def queued_bytes(self) -> int:
        """Bytes counted for the entries waiting in the send queue."""
        return self._queued_bytes

    @property
    def owed_bytes(self) -> int:
        """What the byte bound is checked against: the queue plus the transport's unsent
        bytes."""
        return self._queued_bytes + self._buffered()

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
            "queuedBytes": self._queued_bytes,
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
        self._transport = ws_transport(self.ws)
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.id}")
        if self._heartbeat is not None:
            self._timer = self._clock.call_later(self._heartbeat.interval / 1000, self._ping_due)

    def expire_in(self, seconds: float) -> None:
        """Close with ``CloseCode.UNAUTHORIZED`` (reason ``token expired``) ``seconds`` from now
        on the injected clock: when the token the connection was opened with stops being
        valid."""
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = self._clock.call_later(max(0.0, seconds), self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        if self._closer is None:
            logger.info(
                "client %s: its token expired; closing with %d", self.id, CloseCode.UNAUTHORIZED
            )
            self.close_soon(CloseCode.UNAUTHORIZED, "token expired")

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
        self._forget_queue()

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
                and transport.get_write_buffer_size() < self._direct_limit
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
        self._enqueue(frame, len(frame.encoded()), self._replay_mark is not None)

    def send(self, data: bytes) -> None:
        """Queue a reply or a message for this client only (never blocks); it counts against
        both bounds like a frame."""
        if self._closer is not None:
            return
        self._enqueue(data, len(data), False)

    def send_error(self, code: str, message: str) -> None:
        self.send(encode_error(code, message))

    def begin_replay(self) -> None:
        """Frames delivered until :meth:`end_replay` are a resume's replay: they are already held
        by the replay log, so they may go over the bounds once (see the module docstring)."""
        self._replaying += 1
        if (
            self._replaying == 1
            and self._replay_mark is None
            and not self._slack_entries
            and not self._slack_bytes
        ):
            self._replay_mark = (len(self._queue), self._queued_bytes)

    def end_replay(self) -> None:
        self._replaying -= 1
        mark = self._replay_mark
        if self._replaying == 0 and mark is not None:
            self._replay_mark = None
            self._slack_entries = max(0, len(self._queue) - mark[0])
            self._slack_bytes = max(0, self._queued_bytes - mark[1])

    async def drained(self, within: float) -> bool:
        """Wait up to ``within`` seconds until the queue is empty; True if it is."""
        if not self._queue:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    def _enqueue(self, item: Frame | bytes, size: int, free: bool) -> None:
        """Queue ``item`` (``size`` bytes) unless a bound says otherwise; ``free``: a replay
        that may go over them."""
        if self._queue and not free:
            over_entries = len(self._queue) >= self.max_queue + self._slack_entries
            over_bytes = (
                self._queued_bytes + size + self._buffered()
                > self.max_queue_bytes + self._slack_bytes
            )
            if (over_entries or over_bytes) and not self._make_room(
                item if isinstance(item, Frame) else None, size, over_bytes
            ):
                return
        self._queue.append(item)  # (re-read: _make_room may have compacted into a new deque)
        self._sizes.append(size)
        self._queued_bytes += size
        self._idle.clear()
        self._wake.set()

    def _buffered(self) -> int:
        transport = self._transport
        if transport is None:
            return 0
        try:
            return transport.get_write_buffer_size()
        except (AttributeError, RuntimeError):  # a transport already torn down
            return 0

    def _make_room(self, incoming: Frame | None, size: int, over_bytes: bool) -> bool:
        """A bound is hit. Apply the slow-client policy; True if ``incoming`` may be queued (for
        'coalesce' it may already have been merged into the tail: then False)."""
        if self.policy == "coalesce" and not over_bytes:
            queue = self._queue
            tail = queue[-1] if queue else None
            if incoming is not None and isinstance(tail, Frame) and mergeable(tail, incoming):
                queue[-1] = merge(tail, incoming)
                self._sizes[-1] += size  # an upper bound: the parts' envelopes are counted too
                self._queued_bytes += size
                self.coalesced += 1
                return False
            if self._compact():
                return True
        logger.warning(
            "client %s fell behind (%d entries, %d bytes owed; bounds %d entries, %d bytes); "
            "closing with %d (it can resume)",
            self.id,
            len(self._queue),
            self._queued_bytes + self._buffered(),
            self.max_queue,
            self.max_queue_bytes,
            CloseCode.SLOW_CONSUMER,
        )
        self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer: resume with lastSequence")
        return False

    def _compact(self) -> int:
        """Merge runs of consecutive mergeable token frames in the queue; returns the number of
        entries freed. A merged entry is counted at the sum of its parts' sizes."""
        before = len(self._queue)
        out: deque[Frame | bytes] = deque()
        sizes: deque[int] = deque()
        for item, size in zip(self._queue, self._sizes, strict=True):
            last = out[-1] if out else None
            if isinstance(item, Frame) and isinstance(last, Frame) and mergeable(last, item):
                out[-1] = merge(last, item)
                sizes[-1] += size
            else:
                out.append(item)
                sizes.append(size)
        freed = before - len(out)
        self.coalesced += freed
        self._queue = out
        self._sizes = sizes
        return freed

    def _forget_queue(self) -> None:
        self._queue.clear()
        self._sizes.clear()
        self._queued_bytes = 0
        self._slack_entries = self._slack_bytes = 0
        self._idle.set()

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
                size = self._sizes.popleft()
                self._queued_bytes -= size
                if self._slack_entries:
                    self._slack_entries -= 1
                if self._slack_bytes:
                    self._slack_bytes = max(0, self._slack_bytes - size)
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
            self._forget_queue()

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
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    # ------------------------------------------------------------------ closing
    async def _close(self, code: int, reason: str, drain_timeout: float) -> None:
        self.close_code = code
        self._cancel_timer()
        if drain_timeout > 0:
            await self.drained(drain_timeout)
        await self._cancel_writer()
        self._forget_queue()
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
    "DEFAULT_SEND_QUEUE_BYTES",
    "DIRECT_WRITE_LIMIT",
    "ClientConnection",
    "ClientSubscription",
    "Permissions",
]
