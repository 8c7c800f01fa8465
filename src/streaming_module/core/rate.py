"""A sliding-window rate meter: "how many per second, right now".

Pure and clock-injected: give it anything with a ``monotonic()`` method (``SystemClock``,
``FakeClock``) and feed it counts with :meth:`RateMeter.add`. :meth:`RateMeter.rate` answers the
*current* rate — events counted over the last ``window`` seconds divided by that window — not a
lifetime average, so it falls to 0 soon after events stop.

Counts are kept in ``resolution`` buckets of ``window / resolution`` seconds each, so memory is
fixed (``resolution`` small entries) whatever the event rate; an event is counted for between
``window - window / resolution`` and ``window`` seconds. ``add`` and ``rate`` cost O(1)
amortised (an expired bucket is dropped once).

:class:`SlidingWindowLimit` is the other side of the same idea: not "how many", but "may one more
happen?": at most ``limit`` events in **any** span of ``window`` seconds, for rate limits that a
client cannot game by timing its bursts around a window's edge.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol


class MonotonicClock(Protocol):
    """What the meter needs of a clock."""

    def monotonic(self) -> float: ...


def _window_width(window: float, resolution: int) -> tuple[float, float]:
    """``(window, window / resolution)`` in seconds, for a window of ``resolution`` parts; raises
    ``ValueError`` naming what is wrong (a window that is not a positive finite number of
    seconds, or fewer than one part)."""
    if not window > 0 or math.isinf(window):
        raise ValueError(f"window must be a positive number of seconds, got {window!r}")
    if resolution < 1:
        raise ValueError(f"resolution must be at least 1, got {resolution!r}")
    return float(window), float(window) / resolution


class RateMeter:
    """Counts events in a sliding window of ``window`` seconds.

    While the meter is younger than the window (since its first event), the rate is taken over
    the time actually observed (at least one bucket width), so a burst at start-up is not
    under-reported as ``count / window``.
    """

    __slots__ = ("_buckets", "_clock", "_first", "_sum", "_width", "resolution", "total", "window")

    def __init__(self, clock: MonotonicClock, *, window: float = 1.0, resolution: int = 10) -> None:
        self.window, self._width = _window_width(window, resolution)
        self._clock = clock
        self.resolution = resolution
        # [bucket number, count] from oldest to newest; see _bucket.
        self._buckets: deque[list[int]] = deque()
        self._sum = 0
        self._first: float | None = None
        self.total = 0
        """Every event ever counted (a lifetime total, not windowed)."""

    def add(self, count: int = 1, *, at: float | None = None) -> None:
        """Count ``count`` events at ``at`` (default: the clock's now). O(1) amortised."""
        if count <= 0:
            return
        now = self._clock.monotonic() if at is None else at
        if self._first is None:
            self._first = now
        bucket = self._bucket(now)
        self._expire(bucket)
        buckets = self._buckets
        if buckets and buckets[-1][0] >= bucket:
            # Same bucket (or a timestamp slightly in the past): count it in the newest bucket.
            buckets[-1][1] += count
        else:
            buckets.append([bucket, count])
        self._sum += count
        self.total += count

    def count(self, *, at: float | None = None) -> int:
        """Events counted within the window ending at ``at`` (default: now)."""
        now = self._clock.monotonic() if at is None else at
        if self._first is not None:
            self._expire(self._bucket(now))
        return self._sum

    def rate(self, *, at: float | None = None) -> float:
        """Events per second over the last ``window`` seconds (see the class note on start-up);
        0.0 when nothing was counted in the window."""
        now = self._clock.monotonic() if at is None else at
        counted = self.count(at=now)
        if counted == 0 or self._first is None:
            return 0.0
        span = min(self.window, max(now - self._first, self._width))
        return counted / span

    def reset(self) -> None:
        """Forget every windowed count (``total`` is kept)."""
        self._buckets.clear()
        self._sum = 0
        self._first = None

    def _bucket(self, now: float) -> int:
        # Buckets are numbered from the first event, so float error stays small.
        assert self._first is not None
        return math.floor((now - self._first) / self._width)

    def _expire(self, current_bucket: int) -> None:
        oldest_kept = current_bucket - self.resolution + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest_kept:
            self._sum -= buckets.popleft()[1]


class SlidingWindowLimit:
    """At most ``limit`` events in any span of ``window`` seconds, whatever their timing.

    A fixed window (count from the window's first event, reset when it ends) lets a client send
    ``limit`` events just before the reset and ``limit`` more just after: twice the limit within
    one window's span. This limit groups events in counters of ``window / resolution`` seconds,
    each remembering when its latest event happened, and forgets a counter ``window`` seconds
    after that latest event. An event is admitted only when the events still remembered plus this
    one stay within ``limit``, so **no span of ``window`` seconds ever holds more than ``limit``
    admitted events**: every earlier event in that span is still remembered when a later one asks.
    A burst is forgotten exactly ``window`` seconds after it; events spread within one counter are
    remembered until ``window`` after the last of them, at most ``window / resolution`` longer than
    an exact (and, in memory, unbounded) log of timestamps would. So a client sending at a
    perfectly steady pace is guaranteed ``limit * resolution / (resolution + 1)`` events per
    window (91% of the limit at the default resolution), a burst all of it.

    Pure: the caller passes ``now`` (monotonic seconds) to every method, read once per decision.
    Time that goes backwards is counted with the newest events (never un-counted).

    Cost: :meth:`try_acquire` is one division, a comparison or two and an increment, plus
    forgetting counters that expired since the last call (each at most once): O(1) amortised.
    Memory: ``resolution + 1`` counters, about 500 bytes per limit at the default resolution of 10
    (measured with ``tracemalloc``; see docs/reliability.md).
    """

    __slots__ = (
        "_counts",
        "_current",
        "_latest",
        "_oldest",
        "_sum",
        "_width",
        "limit",
        "resolution",
        "window",
    )

    def __init__(self, limit: int, window: float, *, resolution: int = 10) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number of events, at least 1; got {limit!r}")
        self.window, self._width = _window_width(window, resolution)
        self.limit = limit
        self.resolution = resolution
        slots = resolution + 1
        self._counts = [0] * slots  # a ring indexed by counter number % slots
        self._latest = [0.0] * slots  # when each counter's latest event happened
        self._current: int | None = None  # number of the newest counter (now // width)
        self._oldest = 0  # number of the oldest counter that may still hold events
        self._sum = 0

    def _advance(self, now: float) -> int:
        """Forget counters whose latest event is ``window`` old; return ``now``'s counter."""
        current = self._current
        bucket = math.floor(now / self._width)
        if current is None:
            self._current = self._oldest = bucket
            return bucket
        counts, latest = self._counts, self._latest
        slots = len(counts)
        if bucket > current:
            # Counters current+1..bucket reuse the slots of counters ``slots`` older, whose
            # events all happened more than a window ago: clear them.
            if bucket - current >= slots:
                for i in range(slots):
                    counts[i] = 0
                self._sum = 0
            else:
                for number in range(current + 1, bucket + 1):
                    i = number % slots
                    self._sum -= counts[i]
                    counts[i] = 0
            self._current = current = bucket
        if not self._sum:
            self._oldest = current
            return current
        horizon = now - self.window
        oldest = max(self._oldest, current - slots + 1)
        while oldest <= current:
            i = oldest % slots
            if counts[i]:
                if latest[i] > horizon:
                    break
                self._sum -= counts[i]
                counts[i] = 0
            oldest += 1
        self._oldest = min(oldest, current)
        return current

    def count(self, now: float) -> int:
        """Events still remembered at ``now``."""
        self._advance(now)
        return self._sum

    def allows(self, now: float, n: int = 1) -> bool:
        """Whether ``n`` more events would be admitted at ``now`` (nothing is counted)."""
        self._advance(now)
        return self._sum + n <= self.limit

    def try_acquire(self, now: float, n: int = 1) -> bool:
        """Count ``n`` events at ``now`` and return True, or return False (counting nothing)
        when that would put more than ``limit`` events in a window."""
        current = self._advance(now)
        if self._sum + n > self.limit:
            return False
        i = current % len(self._counts)
        if not self._counts[i] or now > self._latest[i]:
            self._latest[i] = now
        self._counts[i] += n
        self._sum += n
        return True

    def retry_after(self, now: float, n: int = 1) -> float:
        """Seconds from ``now`` until ``n`` more events would be admitted (0.0: now;
        ``math.inf`` when ``n`` exceeds ``limit``, which never fits)."""
        if n > self.limit:
            return math.inf
        current = self._advance(now)
        excess = self._sum + n - self.limit
        if excess <= 0:
            return 0.0
        counts, latest = self._counts, self._latest
        slots = len(counts)
        freed = 0
        for number in range(self._oldest, current + 1):  # oldest first
            i = number % slots
            freed += counts[i]
            if freed >= excess:
                return max(0.0, latest[i] + self.window - now)
        raise AssertionError("unreachable: the counters hold every remembered event")

    def idle_at(self) -> float | None:
        """The monotonic time from which every event counted so far is forgotten (``None`` when
        none is remembered as of the last call): a table of limits may drop this one then."""
        current = self._current
        if not self._sum or current is None:
            return None
        counts, latest = self._counts, self._latest
        slots = len(counts)
        for number in range(current, self._oldest - 1, -1):  # newest first
            i = number % slots
            if counts[i]:
                return latest[i] + self.window
        raise AssertionError("unreachable: a positive sum is held by some counter")

    def reset(self) -> None:
        """Forget every counted event."""
        for i in range(len(self._counts)):
            self._counts[i] = 0
        self._sum = 0


__all__ = ["MonotonicClock", "RateMeter", "SlidingWindowLimit"]
