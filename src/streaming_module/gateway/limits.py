"""Limits for the WebSocket gateway: how fast clients connect, how many stay open, how fast each
one sends; and a log throttle so that a flood does not flood the log too.

Rates are **sliding windows** (:class:`~streaming_module.core.rate.SlidingWindowLimit`): at most
the limit in *any* span of ``window_ms``, so no timing of bursts around a window's edge gets a
client more (fixed windows let it have twice the limit). Refused events are not counted: a
client that keeps knocking while refused is let in as soon as its earlier events are a window
old.

What is limited, and by which option:

================================== ============================================= ==============
Limit                              Option                                        Refusal
================================== ============================================= ==============
new connections per address        ``rate_limit.max_connections`` / window       HTTP 429
new connections, whole server      ``rate_limit.max_connections`` / window       HTTP 429
open connections per address       ``rate_limit.max_open_connections_per_address`` HTTP 429
open connections, whole server     ``websocket.max_open_connections``            HTTP 429
frames per connection (all kinds)  ``rate_limit.max_requests_per_connection``    RATE_LIMITED
================================== ============================================= ==============

Admitting a connection takes two steps, so that a client refused for a bad JWT never spends
anybody else's budget (see :class:`ConnectionRateLimiter`)::

    limiter.check_attempt(request.remote)      # 429 before anything else is done
    claims = authenticator.authenticate_request(request)  # 401: only this address paid
    slot = limiter.admit(request.remote)       # counts overall, holds the open-connection slot
    try:
        ...                                    # serve the connection
    finally:
        slot.release()

Pure code: no asyncio, no aiohttp, time from an injected :class:`~streaming_module.core.clock.Clock`
(``monotonic``), so tests move a ``FakeClock`` instead of sleeping.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from types import TracebackType

from streaming_module.config import RateLimitOptions, StreamingModuleOptions
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.core.rate import SlidingWindowLimit
from streaming_module.errors import RateLimitError

_log = logging.getLogger("streaming_module.gateway.limits")

DEFAULT_MAX_TRACKED_ADDRESSES = 16384
"""Hard cap on addresses whose recent connection attempts are remembered (~560 bytes each, so
~9 MB at most); past it the least recently seen address is forgotten first."""

RESOLUTION = 10
"""Counters per window in every sliding-window limit here (see
:class:`~streaming_module.core.rate.SlidingWindowLimit`): events spread within a tenth of a
window are remembered until a window after the last of them."""

OPEN_CAP_RETRY_AFTER = 5.0
"""The ``retry_after`` hint (seconds) of a refusal for too many open connections: nobody knows
when one will close, so a client is told to wait a little and try again."""

MIN_DESCRIPTOR_RESERVE = 64
"""File descriptors kept back from WebSocket connections when their cap is derived from the
process's limit (files, Redis, the listening socket, HTTP requests)."""

REFUSAL_LOG_INTERVAL = 1.0
"""Seconds between two log lines about refused connections of one kind."""

_UNKNOWN_REMOTE = "unknown"


def _seconds(window_ms: int) -> str:
    seconds = window_ms / 1000
    return f"{seconds:g} s"


def default_max_open_connections() -> int:
    """The cap on open WebSocket connections when ``websocket.max_open_connections`` is unset:
    the soft ``RLIMIT_NOFILE`` less a tenth of it (at least :data:`MIN_DESCRIPTOR_RESERVE`), so
    accepting one more connection never fails for want of a descriptor. 10,000 where the limit
    cannot be read, 1,000,000 when it is unlimited. E.g. a soft limit of 1,024 gives 922."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return 10_000
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    reserve = max(MIN_DESCRIPTOR_RESERVE, soft // 10)
    return max(1, soft - reserve)


# --------------------------------------------------------------------------- log throttle


class LogThrottle:
    """Lets one event per key through every ``interval`` seconds and counts the others.

    ``allow(key)`` returns ``None`` when the event should stay quiet, else how many events of
    that key were kept quiet since the last one let through (0 the first time), for a message
    like "... (and 312 more in the last second)". O(1) per call; remembers at most ``max_keys``
    keys (the least recently let through is forgotten first).
    """

    __slots__ = ("_clock", "_keys", "interval", "max_keys")

    def __init__(
        self, interval: float = 1.0, clock: Clock | None = None, *, max_keys: int = 1024
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive seconds, got {interval!r}")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.interval = float(interval)
        self.max_keys = max_keys
        self._clock: Clock = clock if clock is not None else SystemClock()
        # key -> [time let through, events kept quiet since]
        self._keys: OrderedDict[Hashable, list[float]] = OrderedDict()

    def allow(self, key: Hashable = None) -> int | None:
        """``None`` to keep this event quiet, else the number kept quiet since the last one."""
        now = self._clock.monotonic()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        self._keys[key] = [now, 0]
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return suppressed


class ThrottledLogFilter(logging.Filter):
    """A :class:`logging.Filter` that lets through at most one matching record per ``interval``
    seconds per logger and message template, and appends to the next one let through how many
    were dropped meanwhile. Records ``match`` rejects pass untouched.

    For failures that repeat at the rate of an attack — ``socket.accept()`` out of descriptors,
    connections reset mid-handshake — whose every occurrence would otherwise write a traceback::

        logging.getLogger("asyncio").addFilter(
            ThrottledLogFilter(match=lambda r: r.getMessage().startswith("socket.accept()"))
        )
    """

    def __init__(
        self,
        interval: float = 1.0,
        clock: Clock | None = None,
        *,
        match: Callable[[logging.LogRecord], bool] | None = None,
    ) -> None:
        super().__init__()
        self._throttle = LogThrottle(interval, clock)
        self._match = match

    def filter(self, record: logging.LogRecord) -> bool:
        if self._match is not None and not self._match(record):
            return True
        suppressed = self._throttle.allow((record.name, record.msg))
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.getMessage()} (and {suppressed} more like it since the last)"
            record.args = None
        return True


# --------------------------------------------------------------------------- connections


class ConnectionSlot:
    """One admitted connection's hold on the open-connection caps; :meth:`release` it when the
    connection ends (idempotent; also a context manager)."""

    __slots__ = ("_limiter", "address", "released")

    def __init__(self, limiter: ConnectionRateLimiter, address: str) -> None:
        self._limiter = limiter
        self.address = address
        self.released = False

    def release(self) -> None:
        """Give the slot back. O(1); calling it again does nothing."""
        if not self.released:
            self.released = True
            self._limiter._release(self.address)

    def __enter__(self) -> ConnectionSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ConnectionRateLimiter:
    """Admits new connections: how fast they come per address and overall, and how many are
    open per address and overall.

    **Rates** (``rate_limit`` given): one address may open at most ``max_connections`` per
    ``window_ms`` (sliding), and all addresses together at most ``max_connections`` per window.
    **Open connections**: at most ``max_open`` at once (``websocket.max_open_connections``; its
    default is derived from the file-descriptor limit), and at most ``max_open_per_address``
    from one address (``rate_limit.max_open_connections_per_address``, only with ``rate_limit``).

    Two steps, so that a refusal for a bad JWT never spends another client's budget:

    * :meth:`check_attempt` — before authenticating. Refuses (``RateLimitError``, HTTP 429) when
      the address is over its rate, or when the server's rate or an open-connection cap is full
      (those are only looked at, not counted). Otherwise counts the attempt against **this
      address's own** rate: a client sending bad tokens uses up its own budget, nobody else's.
    * :meth:`admit` — after authenticating. Counts the connection in the server-wide rate and
      takes a :class:`ConnectionSlot` on the open-connection caps; refuses if one filled since.
      Release the slot when the connection ends.

    :meth:`check_connection` is the one-step form (both rates counted at once, no slot), kept for
    callers that authenticate after it; there a bad token does spend the server-wide budget.

    ``options=None`` means no rate limits (the open-connection caps still apply when given).
    Memory: ~560 bytes per address with attempts in the last window (at most
    ``max_tracked_addresses``; forgotten once a window has passed since their last attempt), one
    dict entry per address with open connections, and one limit for the server. Each call is
    O(1) amortised.
    """

    def __init__(
        self,
        options: RateLimitOptions | None,
        clock: Clock | None = None,
        *,
        max_tracked_addresses: int = DEFAULT_MAX_TRACKED_ADDRESSES,
        max_open: int | None = None,
        max_open_per_address: int | None = None,
    ) -> None:
        if max_tracked_addresses < 1:
            raise ValueError("max_tracked_addresses must be at least 1")
        if max_open is not None and max_open < 1:
            raise ValueError("max_open must be at least 1 (or None for no cap)")
        if max_open_per_address is not None and max_open_per_address < 1:
            raise ValueError("max_open_per_address must be at least 1 (or None for no cap)")
        self._options = options
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._window = options.window_ms / 1000 if options is not None else math.inf
        self._max_tracked = max_tracked_addresses
        self.max_open = max_open
        self.max_open_per_address = max_open_per_address
        # Least recently counted first, so forgetting idle addresses only looks at the front.
        self._by_address: OrderedDict[str, SlidingWindowLimit] = OrderedDict()
        self._overall = (
            SlidingWindowLimit(options.max_connections, self._window, resolution=RESOLUTION)
            if options is not None
            else None
        )
        self._open = 0
        self._open_by_address: dict[str, int] = {}
        self._log_throttle = LogThrottle(REFUSAL_LOG_INTERVAL, self._clock)

    @classmethod
    def from_options(
        cls, options: StreamingModuleOptions, clock: Clock | None = None
    ) -> ConnectionRateLimiter:
        """The limiter the module's options describe: ``gateway.rate_limit`` for the rates and
        the per-address cap, ``websocket.max_open_connections`` (or
        :func:`default_max_open_connections`) for the server-wide cap."""
        rate_limit = options.gateway.rate_limit
        max_open = options.websocket.max_open_connections
        return cls(
            rate_limit,
            clock,
            max_open=max_open if max_open is not None else default_max_open_connections(),
            max_open_per_address=(
                rate_limit.max_open_connections_per_address if rate_limit is not None else None
            ),
        )

    @property
    def enabled(self) -> bool:
        """Whether rate limits apply (the open-connection caps are separate)."""
        return self._options is not None

    @property
    def tracked_addresses(self) -> int:
        """How many addresses have attempts remembered."""
        return len(self._by_address)

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet released."""
        return self._open

    def open_from(self, remote: str | None) -> int:
        """Connections from ``remote`` admitted and not yet released."""
        return self._open_by_address.get(remote or _UNKNOWN_REMOTE, 0)

    # ------------------------------------------------------------------ the two steps

    def check_attempt(self, remote: str | None) -> None:
        """Step 1, before authentication: refuse, or count one attempt against ``remote``'s own
        rate. ``remote`` is the client's IP address; ``None`` counts as one shared ``"unknown"``
        address. Raises :class:`RateLimitError` (HTTP 429 at the upgrade) with ``context``
        ``scope`` (``address``, ``overall``, ``open_address`` or ``open_overall``), ``remote``,
        ``limit`` and ``retry_after`` (seconds)."""
        address = remote or _UNKNOWN_REMOTE
        now = self._clock.monotonic()
        self._check_open(address)
        if self._options is None:
            return
        self._prune(now)
        limit = self._by_address.get(address)
        if limit is not None and not limit.allows(now):
            raise self._rate_refusal("address", address, limit, now)
        overall = self._overall
        assert overall is not None
        if not overall.allows(now):
            raise self._rate_refusal("overall", address, overall, now)
        self._count_address(address, limit, now)

    def admit(self, remote: str | None) -> ConnectionSlot:
        """Step 2, after authentication: count the connection in the server-wide rate and take
        an open-connection slot. Raises :class:`RateLimitError` like :meth:`check_attempt` when
        the server's rate or a cap filled in between. Release the slot when the connection
        closes."""
        address = remote or _UNKNOWN_REMOTE
        self._check_open(address)
        overall = self._overall
        if overall is not None:
            now = self._clock.monotonic()
            if not overall.try_acquire(now):
                raise self._rate_refusal("overall", address, overall, now)
        self._open += 1
        self._open_by_address[address] = self._open_by_address.get(address, 0) + 1
        return ConnectionSlot(self, address)

    def check_connection(self, remote: str | None) -> None:
        """One step: count a new connection from ``remote`` against its address's rate and the
        server's, or raise :class:`RateLimitError` (HTTP 429; ``context['retry_after']`` in
        seconds). Takes no open-connection slot. Prefer :meth:`check_attempt` then
        :meth:`admit`, which keep a refused token from spending the server-wide budget."""
        options = self._options
        if options is None:
            return
        now = self._clock.monotonic()
        self._prune(now)
        address = remote or _UNKNOWN_REMOTE
        limit = self._by_address.get(address)
        if limit is not None and not limit.allows(now):
            raise self._rate_refusal("address", address, limit, now)
        overall = self._overall
        assert overall is not None
        if not overall.try_acquire(now):
            raise self._rate_refusal("overall", address, overall, now)
        self._count_address(address, limit, now)

    # ------------------------------------------------------------------ internals

    def _count_address(self, address: str, limit: SlidingWindowLimit | None, now: float) -> None:
        assert self._options is not None
        if limit is None:
            limit = SlidingWindowLimit(
                self._options.max_connections, self._window, resolution=RESOLUTION
            )
            self._by_address[address] = limit
            while len(self._by_address) > self._max_tracked:
                self._by_address.popitem(last=False)
        else:
            self._by_address.move_to_end(address)
        limit.try_acquire(now)

    def _prune(self, now: float) -> None:
        """Forget addresses whose every attempt is a window old (least recent first)."""
        table = self._by_address
        while table:
            address, limit = next(iter(table.items()))
            idle_at = limit.idle_at()
            if idle_at is not None and now < idle_at:
                break
            del table[address]

    def _release(self, address: str) -> None:
        self._open -= 1
        remaining = self._open_by_address.get(address, 0) - 1
        if remaining > 0:
            self._open_by_address[address] = remaining
        else:
            self._open_by_address.pop(address, None)

    def _check_open(self, address: str) -> None:
        if self.max_open is not None and self._open >= self.max_open:
            raise self._open_refusal("open_overall", address, self.max_open)
        per_address = self.max_open_per_address
        if per_address is not None and self._open_by_address.get(address, 0) >= per_address:
            raise self._open_refusal("open_address", address, per_address)

    def _open_refusal(self, scope: str, address: str, limit: int) -> RateLimitError:
        if scope == "open_address":
            who, option = f"from {address}", "rate_limit.max_open_connections_per_address"
        else:
            who, option = "to this server", "websocket.max_open_connections"
        self._log_refusal(
            scope, "refusing new connections %s: %d are open (%s=%d)", who, limit, option, limit
        )
        return RateLimitError(
            f"too many open connections {who}: at most {limit} at once ({option}); close one "
            f"or retry in {OPEN_CAP_RETRY_AFTER:g} s",
            context={
                "scope": scope,
                "remote": address,
                "limit": limit,
                "retry_after": OPEN_CAP_RETRY_AFTER,
            },
        )

    def _rate_refusal(
        self, scope: str, address: str, limit: SlidingWindowLimit, now: float
    ) -> RateLimitError:
        assert self._options is not None
        retry_after = limit.retry_after(now)
        span = _seconds(self._options.window_ms)
        who = f"from {address}" if scope == "address" else "to this server"
        self._log_refusal(
            scope,
            "refusing new connections %s: over %d per %s (rate_limit.max_connections)",
            who,
            limit.limit,
            span,
        )
        return RateLimitError(
            f"too many new connections {who}: at most {limit.limit} per {span} "
            f"(rate_limit.max_connections); retry in {math.ceil(retry_after)} s",
            context={
                "scope": scope,
                "remote": address,
                "limit": limit.limit,
                "window_ms": self._options.window_ms,
                "retry_after": retry_after,
            },
        )

    def _log_refusal(self, scope: str, message: str, *args: object) -> None:
        # Once a second per kind of refusal, so a flood does not flood the log too.
        suppressed = self._log_throttle.allow(scope)
        if suppressed is None:
            return
        if suppressed:
            _log.warning(message + " (and %d more refusals since the last line)", *args, suppressed)
        else:
            _log.warning(message, *args)


# --------------------------------------------------------------------------- frames


class RequestRateLimiter:
    """Counts the frames one client sends: at most ``max_requests_per_connection`` in any span
    of ``window_ms``. Make one per connection and call :meth:`check` for **every** frame the
    client sends — text, binary, ping, pong — so that control frames cannot flood past it.

    ``options=None`` means unlimited. Cost per frame: one clock read, a division and a couple of
    comparisons. Memory: ~500 bytes per connection.
    """

    __slots__ = ("_clock", "_limit", "_options")

    def __init__(self, options: RateLimitOptions | None, clock: Clock | None = None) -> None:
        self._options = options
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limit = (
            SlidingWindowLimit(
                options.max_requests_per_connection,
                options.window_ms / 1000,
                resolution=RESOLUTION,
            )
            if options is not None
            else None
        )

    def check(self) -> None:
        """Count one client frame, or raise :class:`RateLimitError` (close code ``RATE_LIMITED``)
        when this connection has sent ``max_requests_per_connection`` frames within the last
        window; the gateway then closes it. ``context['retry_after']`` is the seconds until one
        more frame would have been allowed."""
        limit = self._limit
        if limit is None:
            return
        now = self._clock.monotonic()
        if limit.try_acquire(now):
            return
        assert self._options is not None
        retry_after = limit.retry_after(now)
        span = _seconds(self._options.window_ms)
        raise RateLimitError(
            f"too many messages on this connection: at most {limit.limit} per {span} "
            f"(rate_limit.max_requests_per_connection); reconnect in "
            f"{math.ceil(retry_after)} s and slow down",
            context={
                "scope": "connection",
                "limit": limit.limit,
                "window_ms": self._options.window_ms,
                "retry_after": retry_after,
            },
        )


__all__ = [
    "DEFAULT_MAX_TRACKED_ADDRESSES",
    "ConnectionRateLimiter",
    "ConnectionSlot",
    "LogThrottle",
    "RequestRateLimiter",
    "ThrottledLogFilter",
    "default_max_open_connections",
]
