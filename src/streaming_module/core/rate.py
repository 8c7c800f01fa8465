"""A sliding-window rate meter: "how many per second, right now".

Pure and clock-injected: give it anything with a ``monotonic()`` method (``SystemClock``,
``FakeClock``) and feed it counts with :meth:`RateMeter.add`. :meth:`RateMeter.rate` answers the
*current* rate — events counted over the last ``window`` seconds divided by that window — not a
lifetime average, so it falls to 0 soon after events stop.

Counts are kept in ``resolution`` buckets of ``window / resolution`` seconds each, so memory is
fixed (``resolution`` small entries) whatever the event rate; an event is counted for between
``window - window / resolution`` and ``window`` seconds. ``add`` and ``rate`` cost O(1)
amortised (an expired bucket is dropped once).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol


class MonotonicClock(Protocol):
    """What the meter needs of a clock."""

    def monotonic(self) -> float: ...


class RateMeter:
    """Counts events in a sliding window of ``window`` seconds.

    While the meter is younger than the window (since its first event), the rate is taken over
    the time actually observed (at least one bucket width), so a burst at start-up is not
    under-reported as ``count / window``.
    """

    __slots__ = ("_buckets", "_clock", "_first", "_sum", "_width", "resolution", "total", "window")

    def __init__(self, clock: MonotonicClock, *, window: float = 1.0, resolution: int = 10) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive seconds, got {window!r}")
        if resolution < 1:
            raise ValueError(f"resolution must be at least 1 bucket, got {resolution!r}")
        self._clock = clock
        self.window = float(window)
        self.resolution = resolution
        self._width = self.window / resolution
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


__all__ = ["MonotonicClock", "RateMeter"]
