"""Rate limits for the WebSocket gateway: new connections per window, frames per connection.

Both limiters use **fixed windows**: a window of ``window_ms`` opens with the first event it
counts (per key) and at most the limit is allowed inside it; when it has passed, the next event
opens a fresh window. This is exact, O(1) in time and memory per key, and gives a precise "retry
in N s". Its known cost: a client that times its bursts across a window boundary can get up to
twice the limit within one ``window_ms`` span (but never more than the limit within one window).

Refused events are not counted: a client that keeps knocking while refused is still let in once
its window has passed.

Pure code: no asyncio, no aiohttp, time from an injected :class:`~streaming_module.core.clock.Clock`
(``monotonic``), so tests move a ``FakeClock`` instead of sleeping.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

from streaming_module.config import RateLimitOptions
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.errors import RateLimitError

_log = logging.getLogger("streaming_module.gateway.limits")

DEFAULT_MAX_TRACKED_ADDRESSES = 65536
"""Hard cap on addresses whose window is remembered (about 100 bytes each)."""

_UNKNOWN_REMOTE = "unknown"


def _seconds(window_ms: int) -> str:
    seconds = window_ms / 1000
    return f"{seconds:g} s"


class _Window:
    __slots__ = ("count", "refused", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.refused = False


class ConnectionRateLimiter:
    """Counts new connections per ``window_ms``, per client address and overall.

    ``max_connections`` applies to each: one address may open at most ``max_connections``
    connections per window, and all addresses together at most ``max_connections`` per window
    (so one busy address can also exhaust the overall budget; behind a reverse proxy every client
    shares the proxy's address). It limits how fast connections are opened, not how many are open.

    ``options=None`` means unlimited: :meth:`check_connection` returns at once.

    Memory: one small entry per address seen in the current window. Since a counted connection
    also counts overall, at most ``max_connections`` addresses are live per window; ended windows
    are pruned as new connections arrive, and ``max_tracked_addresses`` caps the table regardless
    (the oldest windows are forgotten first).
    """

    def __init__(
        self,
        options: RateLimitOptions | None,
        clock: Clock | None = None,
        *,
        max_tracked_addresses: int = DEFAULT_MAX_TRACKED_ADDRESSES,
    ) -> None:
        if max_tracked_addresses < 1:
            raise ValueError("max_tracked_addresses must be at least 1")
        self._options = options
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._window = options.window_ms / 1000 if options is not None else math.inf
        self._max_tracked = max_tracked_addresses
        # Ordered by window start (entries are appended when a window opens), so pruning
        # ended windows only ever looks at the front.
        self._by_address: OrderedDict[str, _Window] = OrderedDict()
        self._overall: _Window | None = None

    @property
    def enabled(self) -> bool:
        return self._options is not None

    @property
    def tracked_addresses(self) -> int:
        """How many addresses currently have a window remembered."""
        return len(self._by_address)

    def check_connection(self, remote: str | None) -> None:
        """Count a new connection from ``remote`` (an IP address; ``None`` counts as one shared
        ``"unknown"`` address), or raise :class:`RateLimitError` (HTTP 429 at the upgrade, close
        code ``RATE_LIMITED``) when this address or the server as a whole is over
        ``max_connections`` in the current window. ``context['retry_after']`` is the seconds
        until that window ends."""
        options = self._options
        if options is None:
            return
        now = self._clock.monotonic()
        self._prune(now)
        address = remote or _UNKNOWN_REMOTE
        limit = options.max_connections

        window = self._by_address.get(address)
        if window is not None and window.count >= limit:
            raise self._refusal("address", address, window, now)
        overall = self._overall
        if overall is None or now - overall.start >= self._window:
            overall = self._overall = _Window(now)
        if overall.count >= limit:
            raise self._refusal("overall", address, overall, now)

        overall.count += 1
        if window is None:
            window = self._by_address[address] = _Window(now)
            while len(self._by_address) > self._max_tracked:
                self._by_address.popitem(last=False)
        window.count += 1

    def _prune(self, now: float) -> None:
        windows = self._by_address
        while windows:
            first = next(iter(windows.values()))
            if now - first.start < self._window:
                break
            windows.popitem(last=False)

    def _refusal(self, scope: str, address: str, window: _Window, now: float) -> RateLimitError:
        assert self._options is not None
        retry_after = max(0.0, window.start + self._window - now)
        limit = self._options.max_connections
        span = _seconds(self._options.window_ms)
        who = f"from {address}" if scope == "address" else "to this server"
        if not window.refused:  # once per window, so a flood does not flood the log too
            window.refused = True
            _log.warning(
                "refusing new connections %s until the %s window ends (max_connections=%d)",
                who,
                span,
                limit,
            )
        return RateLimitError(
            f"too many new connections {who}: at most {limit} per {span} "
            f"(rate_limit.max_connections); retry in {math.ceil(retry_after)} s",
            context={
                "scope": scope,
                "remote": address,
                "limit": limit,
                "window_ms": self._options.window_ms,
                "retry_after": retry_after,
            },
        )


class RequestRateLimiter:
    """Counts the frames one client sends: at most ``max_requests_per_connection`` per
    ``window_ms``. Make one per connection and call :meth:`check` for each client frame.

    ``options=None`` means unlimited. Cost per frame: one clock read and two comparisons.
    """

    __slots__ = ("_clock", "_count", "_limit", "_options", "_start", "_window")

    def __init__(self, options: RateLimitOptions | None, clock: Clock | None = None) -> None:
        self._options = options
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._window = options.window_ms / 1000 if options is not None else math.inf
        self._limit = options.max_requests_per_connection if options is not None else 0
        self._start = -math.inf
        self._count = 0

    def check(self) -> None:
        """Count one client frame, or raise :class:`RateLimitError` (``RATE_LIMITED``) when this
        connection is over ``max_requests_per_connection`` in the current window; the gateway
        then closes it. ``context['retry_after']`` is the seconds until that window ends."""
        if self._options is None:
            return
        now = self._clock.monotonic()
        if now - self._start >= self._window:
            self._start = now
            self._count = 0
        if self._count >= self._limit:
            retry_after = max(0.0, self._start + self._window - now)
            span = _seconds(self._options.window_ms)
            raise RateLimitError(
                f"too many messages on this connection: at most {self._limit} per {span} "
                f"(rate_limit.max_requests_per_connection); reconnect in "
                f"{math.ceil(retry_after)} s and slow down",
                context={
                    "scope": "connection",
                    "limit": self._limit,
                    "window_ms": self._options.window_ms,
                    "retry_after": retry_after,
                },
            )
        self._count += 1


__all__ = ["DEFAULT_MAX_TRACKED_ADDRESSES", "ConnectionRateLimiter", "RequestRateLimiter"]
