"""A Python client for the streaming gateway that reconnects and resumes by itself.

::

    async with StreamingClient("ws://127.0.0.1:8080/ws") as client:
        async for frame in client.stream(execution_id):
            print(frame.content, end="", flush=True)

:meth:`StreamingClient.stream` yields every frame of one execution exactly once, in sequence
order, and ends after the run's final ``status`` frame (``completed``, ``failed`` or
``cancelled``). When the connection drops, the client reconnects with exponential backoff and
jitter (a bounded number of attempts), subscribes again with ``lastSequence`` set to the last
sequence it delivered, and drops any frame it already delivered: a consumer sees no duplicate and,
unless the server announces a ``gap``, no hole.

Errors say why, with the server's own ``code`` and ``message`` (the gateway repeats them in its
``Streaming-Error`` header, since a refused handshake's body is not readable here):

- a refused token (HTTP 401 at the upgrade, close code ``CloseCode.UNAUTHORIZED``, or an
  ``error`` reply with code ``unauthorized``) raises
  :class:`~streaming_module.errors.AuthenticationError` — e.g. "the token expired 3 s ago" or
  "the token's signature does not match", with the server's ``reason`` (``expired``,
  ``bad_signature`` ...) in ``context``;
- a refusal of what the token allows (HTTP 403, close code ``CloseCode.FORBIDDEN``, ``error``
  ``forbidden``) raises :class:`~streaming_module.errors.ForbiddenError`;
- HTTP 401, 403, 404 (and other 4xx but 408 and 429) are never retried: retrying cannot help;
- 429 (rate limited), 503 and network failures are retried with backoff, no sooner than the
  server's ``Retry-After``; running out of attempts raises :class:`ReconnectFailedError`, whose
  ``code`` and message are the server's last refusal when there was one (``rate_limited``).

Tokens expire: give ``token`` as a callable (sync or async) returning a JWT, and the client asks
it for a fresh one at every (re)connection. When the gateway closes the connection because the
token expired (``UNAUTHORIZED``), the client reconnects with a fresh token and resumes every
subscription after its last delivered frame: nothing is lost. With a plain string, that close raises
:class:`~streaming_module.errors.AuthenticationError`.

No resource outlives a failure: a client that cannot connect closes the aiohttp session it
made before raising (``async with StreamingClient(...)`` leaves nothing open).

The gateway's ``error`` replies carry no ``executionId``; the client attributes one to a
subscription only when it is the answer to a ``subscribe_execution``: its code is one a
subscribe can get (:data:`SUBSCRIBE_ERROR_CODES`: ``forbidden``, ``unauthorized``,
``invalid_payload``, ``bad_request``, ``too_many_subscriptions``) and a subscribe is waiting
for its reply (the oldest one: the gateway answers in order). Any other error (``rate_limited``,
``invalid_json``, ``not_subscribed`` after an unsubscribe or ack, ...) fails no subscription:
it is logged on ``streaming_module.client`` and kept in :attr:`StreamingClient.server_errors`
(the latest 32), and the client keeps going.

Memory: each subscription buffers at most ``queue_size`` undelivered frames. When a consumer falls
that far behind, the client stops reading the socket (back-pressure): the server then applies its
slow-client policy (close ``CloseCode.SLOW_CONSUMER``), and the client resumes from its last
sequence once the consumer catches up. Nothing is lost either way.

Frames are yielded as :class:`~streaming_module.protocol.frames.Frame` objects, the type the
server sends, decoded; what the client sends is built by :mod:`streaming_module.protocol.messages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from streaming_module.errors import AuthenticationError, ForbiddenError, WebSocketError
from streaming_module.protocol.close_codes import CloseCode
from streaming_module.protocol.frames import ERROR, GAP, PONG, REPLY_TYPES, SUBSCRIBED, Frame
from streaming_module.protocol.json import loads
from streaming_module.protocol.messages import (
    encode_ping,
    encode_subscribe,
    encode_unsubscribe,
)

logger = logging.getLogger("streaming_module.client")

TokenProvider: TypeAlias = Callable[[], "str | Awaitable[str]"]
"""A callable giving a fresh JWT: ``def get_token() -> str`` or ``async def get_token() -> str``."""

ERROR_HEADER: Final = "Streaming-Error"
"""The gateway's header repeating a refused upgrade's ``{"code", "message", "reason"?}``."""

RETRY_AFTER_CAP: Final = 60.0
"""Longest ``Retry-After`` (seconds) the client waits for before its next attempt."""

_NOT_RETRIED: Final = frozenset(range(400, 500)) - {408, 429}
"""HTTP statuses a refused upgrade is not retried after (401, 403, 404 ...)."""

_FATAL_CLOSE_CODES: Final = frozenset({CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN})
SUBSCRIBE_ERROR_CODES: Final = frozenset(
    {"forbidden", "unauthorized", "invalid_payload", "bad_request", "too_many_subscriptions"}
)
"""``error`` codes that can answer a ``subscribe_execution`` (see the module docstring)."""


class ReconnectFailedError(WebSocketError):
    """The connection dropped and every reconnect attempt failed."""

    default_code = "reconnect_failed"


class _Refused(Exception):
    """A handshake the server refused: the error to raise, and when to try again."""

    def __init__(self, error: WebSocketError, status: int, retry_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.status = status
        self.retry_after = retry_after


def _refusal(exc: aiohttp.WSServerHandshakeError) -> _Refused:
    """The server's own code and message for a refused handshake (from the gateway's
    :data:`ERROR_HEADER`, else the status alone)."""
    headers: Mapping[str, str] = exc.headers or {}
    info: dict[str, Any] = {}
    raw = headers.get(ERROR_HEADER)
    if raw:
        try:
            decoded = loads(raw)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            info = decoded
    status = exc.status
    code = info.get("code") if isinstance(info.get("code"), str) else None
    said = info.get("message") if isinstance(info.get("message"), str) else None
    context = {"status": status, "reason": info.get("reason"), "server_code": code}
    text = f"the gateway refused the connection (HTTP {status}" + (f" {code}" if code else "")
    text += f"): {said}" if said else ")"
    error: WebSocketError
    if status == 401:
        error = AuthenticationError(
            text if said else text + ": pass a valid JWT as StreamingClient(url, token=...)",
            code=code or "unauthorized",
            context=context,
        )
    elif status == 403:
        error = ForbiddenError(
            text if said else text + ": the token or origin is not allowed",
            code=code or "forbidden",
            context=context,
        )
    else:
        error = WebSocketError(text, code=code or f"http_{status}", context=context)
    retry_after: float | None = None
    try:
        retry_after = float(headers.get("Retry-After", ""))
    except ValueError:
        retry_after = None
    return _Refused(error, status, retry_after)


class ClientClosedError(WebSocketError):
    """The client was closed while a subscription was still open."""

    default_code = "client_closed"


class _Inbox:
    """A bounded FIFO of frames for one subscription that can also be closed with an error.

    ``put`` waits while full (back-pressure on the socket reader); ``close`` wakes everyone and
    makes ``put`` a no-op, so an abandoned subscription never blocks the reader.
    """

    __slots__ = ("_closed", "_error", "_items", "_maxsize", "_not_empty", "_not_full")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[Frame] = deque()
        self._maxsize = maxsize
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False
        self._error: BaseException | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, frame: Frame) -> None:
        while len(self._items) >= self._maxsize and not self._closed:
            self._not_full.clear()
            await self._not_full.wait()
        if self._closed:
            return
        self._items.append(frame)
        self._not_empty.set()

    def close(self, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._not_empty.set()
        self._not_full.set()

    async def get(self) -> Frame | None:
        """The next frame; ``None`` once closed and drained; raises the close error, if any,
        after the frames queued before it."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                return None
            self._not_empty.clear()
            await self._not_empty.wait()
        frame = self._items.popleft()
        if len(self._items) < self._maxsize:
            self._not_full.set()
        return frame


class ExecutionStream:
    """An execution's frames, delivered exactly once in sequence order: what
    :meth:`StreamingClient.subscribe` returns. Iterate it with ``async for``; iteration ends after
    the final status frame.

    ``last_sequence`` is the sequence of the last frame delivered (what a resume starts after).
    """

    def __init__(
        self,
        client: StreamingClient,
        execution_id: str,
        events: tuple[str, ...] | None,
        last_sequence: int | None,
        queue_size: int,
    ) -> None:
        self._client = client
        self.execution_id = execution_id
        self.events = events
        self.last_sequence = last_sequence
        self.duplicates_dropped = 0
        self.finished = False
        self._inbox = _Inbox(queue_size)
        self._ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Frame]:
        while True:
            frame = await self._inbox.get()
            if frame is None:
                return
            yield frame
            if frame.is_final:
                return

    async def unsubscribe(self) -> None:
        """Stop receiving this execution's frames (idempotent)."""
        await self._client._unsubscribe(self)

    def _resume_from(self) -> int:
        # Without any delivered frame, 0 replays from the start: more than needed, never less.
        return self.last_sequence if self.last_sequence is not None else 0

    def _accept(self, frame: Frame) -> bool:
        """Whether ``frame`` is new; advances ``last_sequence``."""
        if frame.type == GAP:
            # The gateway's gap carries `sequence` = `to`: judge it by `to`, so that moving
            # past it does not make it look like a duplicate of itself.
            to = _payload_field(frame, "to", frame.sequence)
            if not isinstance(to, int):
                return True
            if self.last_sequence is not None and to <= self.last_sequence:
                self.duplicates_dropped += 1  # already past it (announced before a resume)
                return False
            self.last_sequence = to
            return True
        if not frame.sequence:  # 0: not sequenced
            return True
        if self.last_sequence is not None and frame.sequence <= self.last_sequence:
            self.duplicates_dropped += 1
            return False
        self.last_sequence = frame.sequence
        return True

    def _fail(self, error: BaseException) -> None:
        if not self._ack.done():
            self._ack.set_exception(error)
            # The subscriber may never await the ack (it is failing anyway).
            self._ack.exception()
        self._inbox.close(error)

    def _end(self) -> None:
        self.finished = True
        if not self._ack.done():
            self._ack.set_result(None)
        self._inbox.close()


def _payload_field(frame: Frame, name: str, default: Any = None) -> Any:
    payload = frame.payload
    return payload.get(name, default) if isinstance(payload, Mapping) else default


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"expected a ws://, wss://, http:// or https:// URL, got {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "…" if parts.query else "", ""))


class StreamingClient:
    """A WebSocket client for :class:`~streaming_module.StreamingWebSocketGateway`.

    ``url`` is the gateway's WebSocket URL (``ws://host:port/ws``; ``http://`` is accepted and
    converted). ``token`` is a JWT sent as ``Authorization: Bearer`` at the upgrade, or a
    callable (sync or async) returning one, asked again at every (re)connection: then a close
    for an expired token (``UNAUTHORIZED``) is followed by a reconnection with a fresh token and
    a resume.

    Reconnection: after an unexpected close the client waits
    ``min(backoff_max, backoff_initial * backoff_factor ** n)`` seconds, less a random fraction
    up to ``jitter`` of it, for attempt ``n``, and gives up after ``max_reconnect_attempts``
    consecutive failures (the counter resets once a connection succeeds). The first connection
    gets the same number of attempts. ``heartbeat`` (seconds, or ``None``) pings the server so
    a silently dead connection is noticed and replaced.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | TokenProvider | None = None,
        headers: Mapping[str, str] | None = None,
        max_reconnect_attempts: int = 10,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        backoff_factor: float = 2.0,
        jitter: float = 0.5,
        connect_timeout: float = 10.0,
        subscribe_timeout: float = 30.0,
        heartbeat: float | None = 30.0,
        queue_size: int = 10_000,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_reconnect_attempts < 0:
            raise ValueError("max_reconnect_attempts must be >= 0")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter is a fraction of the delay, from 0 to 1")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.url = _ws_url(url)
        self._headers = dict(headers or {})
        self._token_provider: TokenProvider | None = token if callable(token) else None
        if isinstance(token, str) and token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.max_reconnect_attempts = max_reconnect_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_factor = backoff_factor
        self.jitter = jitter
        self.connect_timeout = connect_timeout
        self.subscribe_timeout = subscribe_timeout
        self.heartbeat = heartbeat
        self.queue_size = queue_size
        self.reconnects = 0
        """How many times the client reconnected after a drop."""
        self.server_errors: deque[WebSocketError] = deque(maxlen=32)
        """The latest ``error`` replies that answered no subscription, oldest first."""
        self._rng = rng or random.Random()
        self._session = session
        self._owns_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._subs: dict[str, ExecutionStream] = {}
        self._send_lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> StreamingClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        """Open the connection (retrying like a reconnect) and start reading frames.

        Raises :class:`AuthenticationError`/:class:`ForbiddenError` when the token is refused,
        :class:`ReconnectFailedError` when the server stays unreachable.
        """
        if self._runner is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._open_with_retries(first=True)
        except BaseException:
            # Nothing of a client that could not connect stays open.
            if self._owns_session and self._session is not None:
                await self._session.close()
                self._session = None
            raise
        self._connected.set()
        self._runner = asyncio.create_task(self._run(), name="streaming-client-reader")

    async def close(self) -> None:
        """Close the socket (``CloseCode.NORMAL``) and stop every task (idempotent).
        Open subscriptions end with :class:`ClientClosedError`."""
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=CloseCode.NORMAL)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for sub in list(self._subs.values()):
            sub._fail(ClientClosedError("the client was closed"))
        self._subs.clear()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ public API

    async def subscribe(
        self,
        execution_id: str,
        events: Iterable[str] | None = None,
        last_sequence: int | None = None,
    ) -> ExecutionStream:
        """Subscribe to ``execution_id`` and wait for the server's ``subscribed`` reply.

        ``events`` selects among ``token``, ``event``, ``progress`` and ``status`` frames
        (default: all). ``last_sequence=None`` starts live; ``N`` first replays every retained
        frame after ``N`` (``0``: from the start).
        """
        if self._failure is not None:
            raise self._failure
        if self._runner is None:
            raise WebSocketError(
                "the client is not connected: use 'async with StreamingClient(url) as client' "
                "or await client.connect() first",
                code="not_connected",
            )
        if execution_id in self._subs:
            raise WebSocketError(
                f"already subscribed to execution {execution_id!r} on this client",
                code="already_subscribed",
            )
        sub = ExecutionStream(
            self,
            execution_id,
            tuple(events) if events is not None else None,
            last_sequence,
            self.queue_size,
        )
        self._subs[execution_id] = sub
        if self._connected.is_set():
            await self._send_subscribe(sub, last_sequence)
        try:
            await asyncio.wait_for(asyncio.shield(sub._ack), self.subscribe_timeout)
        except TimeoutError:
            self._subs.pop(execution_id, None)
            raise WebSocketError(
                f"no reply to subscribe_execution {execution_id!r} within "
                f"{self.subscribe_timeout:g} s",
                code="timeout",
            ) from None
        except BaseException:
            self._subs.pop(execution_id, None)
            raise
        return sub

    async def stream(
        self,
        execution_id: str,
        events: Iterable[str] | None = None,
        last_sequence: int | None = 0,
    ) -> AsyncIterator[Frame]:
        """Every frame of ``execution_id``, exactly once, ending after its final status.

        By default it replays the run from its first frame (``last_sequence=0``), so subscribing
        before or during a run yields the same frames; pass ``None`` to start live. Leaving the
        loop early unsubscribes.
        """
        sub = await self.subscribe(execution_id, events, last_sequence)
        try:
            async for frame in sub:
                yield frame
        finally:
            await sub.unsubscribe()

    async def collect_text(self, execution_id: str, last_sequence: int | None = 0) -> str:
        """The run's token text, concatenated in order, once the run has ended."""
        parts: list[str] = []
        async for frame in self.stream(execution_id, last_sequence=last_sequence):
            if frame.type == "token":
                parts.append(frame.content)
        return "".join(parts)

    async def ping(self) -> None:
        """Send a protocol-level ``ping`` (the server answers ``pong``)."""
        await self._send(encode_ping())

    # ------------------------------------------------------------------ internals

    async def _unsubscribe(self, sub: ExecutionStream) -> None:
        if self._subs.get(sub.execution_id) is sub:
            del self._subs[sub.execution_id]
            if self.connected:
                with contextlib.suppress(Exception):
                    await self._send(encode_unsubscribe(sub.execution_id))
        sub._end()

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return  # the reconnect re-sends what matters (subscriptions)
        async with self._send_lock:
            await ws.send_str(text)

    async def _send_subscribe(self, sub: ExecutionStream, last_sequence: int | None) -> None:
        await self._send(encode_subscribe(sub.execution_id, sub.events, last_sequence))

    def _delay(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * self.backoff_factor**attempt)
        return base * (1 - self.jitter * self._rng.random())

    async def _headers_now(self) -> dict[str, str]:
        """The upgrade's headers, with a fresh token from the provider when there is one."""
        headers = dict(self._headers)
        provider = self._token_provider
        if provider is not None:
            token = provider()
            if inspect.isawaitable(token):
                token = await token
            if not isinstance(token, str) or not token:
                raise AuthenticationError(
                    f"the token provider returned {type(token).__name__}, not a JWT string"
                )
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        headers = await self._headers_now()
        try:
            return await self._session.ws_connect(
                self.url,
                headers=headers,
                heartbeat=self.heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                max_msg_size=0,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _refusal(exc) from None

    async def _open_with_retries(self, *, first: bool) -> aiohttp.ClientWebSocketResponse:
        attempt = 0
        fresh_token_tried = False
        while True:
            retry_after: float | None = None
            try:
                return await asyncio.wait_for(self._open(), self.connect_timeout)
            except _Refused as refused:
                if refused.status in _NOT_RETRIED:
                    if (
                        refused.status == 401
                        and self._token_provider is not None
                        and not fresh_token_tried
                    ):
                        fresh_token_tried = True  # the provider may have a fresher one now
                        continue
                    raise refused.error from None
                failure: BaseException = refused.error
                retry_after = refused.retry_after
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failure = exc
            if attempt >= self.max_reconnect_attempts:
                server = failure if isinstance(failure, WebSocketError) else None
                raise ReconnectFailedError(
                    f"could not {'connect' if first else 'reconnect'} to "
                    f"{_redacted(self.url)} after {attempt + 1} attempt(s): "
                    + (server.message if server is not None else str(failure)),
                    code=server.code if server is not None else None,
                    context={
                        "attempts": attempt + 1,
                        **(server.context if server is not None else {}),
                    },
                ) from failure
            delay = max(self._delay(attempt), min(retry_after or 0.0, RETRY_AFTER_CAP))
            logger.info(
                "%s to %s failed (%s); retrying in %.2f s (attempt %d of %d)",
                "connection" if first else "reconnection",
                _redacted(self.url),
                failure.code if isinstance(failure, WebSocketError) else type(failure).__name__,
                delay,
                attempt + 1,
                self.max_reconnect_attempts,
            )
            attempt += 1
            await asyncio.sleep(delay)

    async def _run(self) -> None:
        """Read frames; on an unexpected close, reconnect and resume every subscription."""
        try:
            while True:
                ws = self._ws
                assert ws is not None
                reason = await self._read(ws)
                if self._closing:
                    return
                code = ws.close_code
                self._connected.clear()
                refresh = code == CloseCode.UNAUTHORIZED and self._token_provider is not None
                if code in _FATAL_CLOSE_CODES and not refresh:
                    said = f": {reason}" if reason else ""
                    error: WebSocketError = (
                        AuthenticationError(
                            f"the gateway closed the connection with {int(code)}{said} (the "
                            "token is missing, expired or invalid; give StreamingClient a token "
                            "provider to have it renewed)",
                            context={"close_code": int(code), "reason": reason},
                        )
                        if code == CloseCode.UNAUTHORIZED
                        else ForbiddenError(
                            f"the gateway closed the connection with {int(code)}{said}: not "
                            "allowed",
                            context={"close_code": int(code), "reason": reason},
                        )
                    )
                    self._fail_all(error)
                    return
                logger.info(
                    "connection to %s closed (code %s%s); reconnecting%s and resuming %d "
                    "subscription(s)",
                    _redacted(self.url),
                    code,
                    f": {reason}" if reason else "",
                    " with a fresh token" if refresh else "",
                    len(self._subs),
                )
                try:
                    self._ws = await self._open_with_retries(first=False)
                except WebSocketError as exc:
                    self._fail_all(exc)
                    return
                self.reconnects += 1
                self._connected.set()
                for sub in list(self._subs.values()):
                    await self._send_subscribe(sub, sub._resume_from())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected library error: fail loudly, once
            logger.exception("streaming client reader failed")
            self._fail_all(WebSocketError(f"the client's reader failed: {exc!r}"))

    def _fail_all(self, error: BaseException) -> None:
        self._failure = error
        for sub in list(self._subs.values()):
            sub._fail(error)
        self._subs.clear()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Dispatch frames until the connection ends; returns the server's close reason."""
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                return msg.extra if isinstance(msg.extra, str) else ""
            if msg.type is aiohttp.WSMsgType.CLOSED:
                return ""
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    message = loads(msg.data)
                except ValueError:
                    logger.warning("ignoring a frame that is not JSON")
                    continue
                if isinstance(message, dict):
                    await self._dispatch(message)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                logger.info("connection error: %s", ws.exception())
                return ""

    async def _dispatch(self, message: dict[str, Any]) -> None:
        frame = Frame.from_message(message)
        if frame.type in REPLY_TYPES:
            self._on_reply(frame)
            return
        sub = self._subs.get(frame.execution_id)
        if sub is None or not sub._accept(frame):
            return
        if not sub._ack.done():
            # A frame can only follow the `subscribed` reply; accept it as the ack.
            sub._ack.set_result(None)
        await sub._inbox.put(frame)
        if frame.is_final:
            self._subs.pop(frame.execution_id, None)
            sub.finished = True
            sub._inbox.close()

    def _on_reply(self, frame: Frame) -> None:
        if frame.type == PONG:
            return
        sub = self._subs.get(frame.execution_id)
        if sub is None and (
            frame.type == SUBSCRIBED
            or (frame.type == ERROR and _payload_field(frame, "code") in SUBSCRIBE_ERROR_CODES)
        ):
            # A reply without an execution id answers the oldest subscription still waiting
            # (the gateway answers in order); any other error is not about a subscribe.
            sub = next((s for s in self._subs.values() if not s._ack.done()), None)
        if frame.type == SUBSCRIBED:
            if sub is not None and not sub._ack.done():
                sub._ack.set_result(None)
            return
        if frame.type == ERROR:
            code = str(_payload_field(frame, "code", "error"))
            text = str(_payload_field(frame, "message", "the server reported an error"))
            if sub is None:
                logger.warning("server error %s: %s", code, text)
                self.server_errors.append(WebSocketError(text, code=code))
                return
            if code in ("unauthorized", "forbidden"):
                cls = AuthenticationError if code == "unauthorized" else ForbiddenError
                self._subs.pop(sub.execution_id, None)
                sub._fail(cls(f"execution {sub.execution_id!r}: {text}", code=code))
            elif not sub._ack.done():
                self._subs.pop(sub.execution_id, None)
                sub._fail(WebSocketError(f"subscribe {sub.execution_id!r}: {text}", code=code))
            else:
                logger.warning("server error for %s: %s: %s", sub.execution_id, code, text)


__all__ = [
    "ERROR_HEADER",
    "SUBSCRIBE_ERROR_CODES",
    "ClientClosedError",
    "ExecutionStream",
    "Frame",
    "ReconnectFailedError",
    "StreamingClient",
    "TokenProvider",
]
