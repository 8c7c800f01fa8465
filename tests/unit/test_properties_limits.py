"""Property-based tests of the rate limits: whatever the timing of the events, no span of
``window`` seconds ever holds more admitted events than the limit; the limits are not stricter
than they document; a refused JWT never costs another address anything; and the open-connection
caps count exactly. Deterministic: ``derandomize=True`` and a bounded ``max_examples``."""

from __future__ import annotations

import bisect
import copy
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming_module.config import RateLimitOptions
from streaming_module.core.clock import FakeClock
from streaming_module.core.rate import SlidingWindowLimit
from streaming_module.errors import RateLimitError
from streaming_module.gateway.limits import (
    ConnectionRateLimiter,
    ConnectionSlot,
    RequestRateLimiter,
)

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# Gaps between events: many at the same instant, some tiny, some around a window's length.
GAPS = st.one_of(
    st.just(0.0),
    st.sampled_from([0.001, 0.01, 0.1, 0.25, 0.999, 1.0, 1.001]),
    st.floats(0.0, 3.0, allow_nan=False),
)


def _max_in_any_window(times: list[float], window: float) -> int:
    """The most events inside any half-open span [t, t + window)."""
    best = 0
    for i, start in enumerate(times):
        best = max(best, bisect.bisect_left(times, start + window, lo=i) - i)
    return best


@PROPERTY
@given(
    limit=st.integers(1, 6),
    window=st.sampled_from([0.5, 1.0, 2.5]),
    resolution=st.integers(1, 12),
    events=st.lists(st.tuples(GAPS, st.integers(1, 3)), max_size=120),
)
def test_a_sliding_window_never_admits_more_than_the_limit_in_any_window(
    limit: int, window: float, resolution: int, events: list[tuple[float, int]]
) -> None:
    meter = SlidingWindowLimit(limit, window, resolution=resolution)
    now = 1000.0
    admitted: list[float] = []
    for gap, n in events:
        now += gap
        # Not stricter than documented: what an exact log would admit, counting every event
        # for window + window/resolution, is admitted.
        generous_count = sum(1 for t in admitted if t > now - window - window / resolution)
        expect_admitted = generous_count + n <= limit
        retry = meter.retry_after(now, n)
        if meter.try_acquire(now, n):
            admitted.extend([now] * n)
            assert retry == 0.0
        else:
            assert not expect_admitted, (now, n, admitted[-limit:])
            assert retry > 0.0
            if math.isfinite(retry):
                # retry_after is exact: admitted at that moment, and not a little before.
                assert copy.deepcopy(meter).allows(now + retry + 1e-9, n)
                if retry > 1e-6:
                    assert not copy.deepcopy(meter).allows(now + retry - 1e-6, n)
        # Never more than the limit in any span of `window` seconds.
        assert _max_in_any_window(admitted, window) <= limit
        # What it remembers is every admitted event of the last window, and no older than
        # window + window/resolution.
        remembered = meter.count(now)
        assert sum(1 for t in admitted if t > now - window) <= remembered
        assert remembered <= sum(1 for t in admitted if t > now - window - window / resolution)


@PROPERTY
@given(
    limit=st.integers(1, 8),
    window_ms=st.sampled_from([500, 1000, 60_000]),
    gaps=st.lists(GAPS, max_size=150),
)
def test_a_connection_is_closed_exactly_when_it_sends_more_than_the_limit(
    limit: int, window_ms: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    limiter = RequestRateLimiter(
        RateLimitOptions(window_ms=window_ms, max_requests_per_connection=limit), clock
    )
    window = window_ms / 1000
    sent: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        now = clock.monotonic()
        try:
            limiter.check()
        except RateLimitError as exc:
            # Refused only when `limit` frames were already sent in the last window (and its
            # tenth of slack).
            recent = sum(1 for t in sent if t > now - window - window / 10)
            assert recent >= limit
            assert exc.context["scope"] == "connection"
            assert 0 < exc.context["retry_after"] <= window * 1.1 + 1e-9
            break  # the gateway closes the connection (4429)
        sent.append(now)
        assert _max_in_any_window(sent, window) <= limit


ADDRESSES = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "203.0.113.66", None]

ATTEMPTS = st.lists(
    st.tuples(
        GAPS,
        st.integers(0, len(ADDRESSES) - 1),
        st.sampled_from(["good", "bad_token", "good", "close"]),
    ),
    max_size=150,
)


@PROPERTY
@given(
    limit=st.integers(1, 5),
    max_open=st.one_of(st.none(), st.integers(1, 6)),
    max_open_per_address=st.one_of(st.none(), st.integers(1, 3)),
    attempts=ATTEMPTS,
)
def test_connection_limits_hold_and_a_bad_token_never_costs_another_address(
    limit: int,
    max_open: int | None,
    max_open_per_address: int | None,
    attempts: list[tuple[float, int, str]],
) -> None:
    clock = FakeClock()
    window = 1.0
    limiter = ConnectionRateLimiter(
        RateLimitOptions(window_ms=1000, max_connections=limit),
        clock,
        max_open=max_open,
        max_open_per_address=max_open_per_address,
    )
    counted: dict[str, list[float]] = {}  # attempts counted against each address
    admitted: list[float] = []  # connections counted against the server
    open_slots: list[ConnectionSlot] = []
    for gap, who, outcome in attempts:
        clock.advance(gap)
        now = clock.monotonic()
        address = ADDRESSES[who] or "unknown"
        if outcome == "close":
            mine = [s for s in open_slots if s.address == address]
            if mine:
                mine[0].release()
                open_slots.remove(mine[0])
            continue
        open_here = sum(1 for s in open_slots if s.address == address)
        try:
            limiter.check_attempt(ADDRESSES[who])
        except RateLimitError as exc:
            scope = exc.context["scope"]
            slack = window + window / 10
            if scope == "address":
                assert sum(1 for t in counted.get(address, []) if t > now - slack) >= limit
            elif scope == "overall":
                # Only admitted connections fill the server's budget: bad tokens never do.
                assert sum(1 for t in admitted if t > now - slack) >= limit
            elif scope == "open_overall":
                assert max_open is not None and len(open_slots) >= max_open
            else:
                assert scope == "open_address"
                assert max_open_per_address is not None and open_here >= max_open_per_address
            continue
        counted.setdefault(address, []).append(now)
        if outcome == "bad_token":
            continue  # refused with 401: no admit
        slot = limiter.admit(ADDRESSES[who])  # nothing happened between the two steps
        admitted.append(now)
        open_slots.append(slot)
        # The limits hold: per address and overall in any window, open connections at once.
        assert _max_in_any_window(counted[address], window) <= limit
        assert _max_in_any_window(admitted, window) <= limit
        assert limiter.open_connections == len(open_slots)
        if max_open is not None:
            assert len(open_slots) <= max_open
        if max_open_per_address is not None:
            assert limiter.open_from(ADDRESSES[who]) <= max_open_per_address
    for slot in open_slots:
        slot.release()
    assert limiter.open_connections == 0
