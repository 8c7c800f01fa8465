"""Limits that cannot be gamed: sliding windows (no double budget across a window's edge), a
refused token that spends only its own address's budget, caps on open connections, and a log
that says "refused" once a second however hard the flood. All on a FakeClock: nothing sleeps."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from streaming_module.config import RateLimitOptions, StreamingModuleOptions, parse_options
from streaming_module.core.clock import FakeClock
from streaming_module.core.rate import SlidingWindowLimit
from streaming_module.errors import RateLimitError, StreamingConfigError
from streaming_module.gateway import limits as limits_module
from streaming_module.gateway.limits import (
    ConnectionRateLimiter,
    LogThrottle,
    RequestRateLimiter,
    ThrottledLogFilter,
    default_max_open_connections,
)


def _rate(**kwargs: int) -> RateLimitOptions:
    return RateLimitOptions(**{"window_ms": 10_000, "max_connections": 3, **kwargs})


# ------------------------------------------------------------------ SlidingWindowLimit


def test_a_burst_across_a_fixed_windows_edge_gets_no_second_budget() -> None:
    # The fixed-window exploit: the whole budget just before a window would end, and again just
    # after. Here the second burst must wait until the first is a whole window old.
    limit = SlidingWindowLimit(5, 10.0)
    t = 1009.9
    assert all(limit.try_acquire(t) for _ in range(5))
    for dt in (0.2, 1.0, 5.0, 9.99):
        assert not limit.try_acquire(t + dt)
    assert limit.try_acquire(t + 10.0)


def test_a_burst_is_forgotten_exactly_one_window_later() -> None:
    limit = SlidingWindowLimit(3, 60.0)
    for _ in range(3):
        assert limit.try_acquire(500.0)
    assert limit.retry_after(530.0) == pytest.approx(30.0)
    assert not limit.allows(559.999)
    assert limit.allows(560.0)


def test_events_spread_out_are_released_one_by_one_as_they_age() -> None:
    limit = SlidingWindowLimit(3, 3.0, resolution=3)
    for t in (0.0, 1.0, 2.0):
        assert limit.try_acquire(t)
    assert not limit.try_acquire(2.5)
    assert limit.retry_after(2.5) == pytest.approx(0.5)
    assert limit.try_acquire(3.0)  # the event at 0.0 is now a window old
    assert not limit.try_acquire(3.5)
    assert limit.try_acquire(4.0)


def test_refused_events_are_not_counted() -> None:
    limit = SlidingWindowLimit(1, 10.0)
    assert limit.try_acquire(0.0)
    for k in range(1, 100):
        assert not limit.try_acquire(k * 0.1)
    assert limit.count(9.95) == 1
    assert limit.try_acquire(10.0)


def test_weighted_acquire_and_impossible_requests() -> None:
    limit = SlidingWindowLimit(4, 1.0)
    assert limit.try_acquire(0.0, 3)
    assert not limit.try_acquire(0.0, 2)
    assert limit.try_acquire(0.0, 1)
    assert limit.retry_after(0.5, 5) == math.inf
    assert limit.retry_after(0.5, 4) == pytest.approx(0.5)


def test_a_long_pause_clears_everything_and_idle_at_says_when() -> None:
    limit = SlidingWindowLimit(10, 2.0)
    assert limit.idle_at() is None
    for t in (0.0, 0.5, 1.5):
        limit.try_acquire(t)
    assert limit.idle_at() == pytest.approx(3.5)
    assert limit.count(3.49) == 1
    assert limit.count(1_000_000.0) == 0
    assert limit.idle_at() is None
    assert limit.try_acquire(1_000_000.0, 10)


def test_time_going_backwards_never_uncounts() -> None:
    limit = SlidingWindowLimit(2, 10.0)
    assert limit.try_acquire(100.0)
    assert limit.try_acquire(95.0)  # counted with the newest events
    assert not limit.try_acquire(100.0)
    assert limit.allows(110.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1.0), "limit"),
        ((1, 0.0), "window"),
        ((1, math.inf), "window"),
        ((1, math.nan), "window"),
        ((1, 1.0, 0), "resolution"),
    ],
)
def test_sliding_window_arguments_are_validated(args: tuple[Any, ...], message: str) -> None:
    limit, window, *rest = args
    with pytest.raises(ValueError, match=message):
        SlidingWindowLimit(limit, window, resolution=rest[0] if rest else 10)


# ------------------------------------------------------------------ connections: two steps


def test_bad_tokens_from_one_address_never_spend_another_addresses_budget() -> None:
    # The unauthenticated lockout: upgrades refused for a bad JWT used to count in the server's
    # budget, so valid clients elsewhere got 429. Now an attempt counts only against its own
    # address until it is admitted.
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_rate(max_connections=3), clock)
    attacker = "203.0.113.66"
    refused = 0
    for _ in range(1000):
        clock.advance(0.001)
        try:
            limiter.check_attempt(attacker)  # then the JWT check fails: no admit()
        except RateLimitError as exc:
            assert exc.context["scope"] == "address"
            refused += 1
    assert refused == 997  # the attacker had its own 3 attempts
    for n in range(3):
        limiter.check_attempt(f"198.51.100.{n}")
        limiter.admit(f"198.51.100.{n}")


def test_admitted_connections_count_in_the_servers_rate() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_rate(max_connections=2), clock)
    for n in range(2):
        limiter.check_attempt(f"10.0.0.{n}")
        limiter.admit(f"10.0.0.{n}")
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_attempt("10.0.0.9")
    assert exc_info.value.context["scope"] == "overall"
    assert exc_info.value.context["retry_after"] == pytest.approx(10.0)
    clock.advance(10)
    limiter.check_attempt("10.0.0.9")
    limiter.admit("10.0.0.9")


def test_admit_refuses_when_the_server_rate_filled_since_the_check() -> None:
    limiter = ConnectionRateLimiter(_rate(max_connections=1), FakeClock())
    limiter.check_attempt("10.0.0.1")
    limiter.check_attempt("10.0.0.2")
    limiter.admit("10.0.0.1")
    with pytest.raises(RateLimitError) as exc_info:
        limiter.admit("10.0.0.2")
    assert exc_info.value.context["scope"] == "overall"
    assert limiter.open_connections == 1


def test_one_address_gets_max_connections_in_any_window_not_twice_across_an_edge() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_rate(max_connections=3), clock)
    clock.advance(9.9)
    for _ in range(3):
        limiter.check_attempt("10.0.0.1")
    clock.advance(0.2)  # a fixed window would have reset here
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_attempt("10.0.0.1")
    assert exc_info.value.context["retry_after"] == pytest.approx(9.8)
    assert "retry in 10 s" in exc_info.value.message
    clock.advance(9.8)
    limiter.check_attempt("10.0.0.1")


def test_without_rate_options_only_the_open_caps_apply() -> None:
    limiter = ConnectionRateLimiter(None, FakeClock(), max_open=2)
    slots = []
    for _ in range(2):
        limiter.check_attempt("10.0.0.1")
        slots.append(limiter.admit("10.0.0.1"))
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_attempt("10.0.0.2")
    assert exc_info.value.context["scope"] == "open_overall"
    slots[0].release()
    limiter.check_attempt("10.0.0.2")
    assert not limiter.enabled


# ------------------------------------------------------------------ open-connection caps


def test_open_connections_are_capped_per_address_and_released_on_close() -> None:
    limiter = ConnectionRateLimiter(
        _rate(max_connections=1000), FakeClock(), max_open=100, max_open_per_address=2
    )
    first = limiter.admit("10.0.0.1")
    second = limiter.admit("10.0.0.1")
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_attempt("10.0.0.1")
    error = exc_info.value
    assert error.context["scope"] == "open_address"
    assert error.context["limit"] == 2
    assert error.context["retry_after"] > 0
    assert "max_open_connections_per_address" in error.message
    limiter.check_attempt("10.0.0.2")  # another address is not held back
    limiter.admit("10.0.0.2").release()
    first.release()
    first.release()  # idempotent: the slot is given back once
    assert limiter.open_from("10.0.0.1") == 1
    assert limiter.open_connections == 1
    with limiter.admit("10.0.0.1"):
        assert limiter.open_from("10.0.0.1") == 2
    assert limiter.open_from("10.0.0.1") == 1
    second.release()
    assert limiter.open_connections == 0
    assert limiter.open_from("10.0.0.1") == 0
    assert limiter._open_by_address == {}  # nothing is kept for addresses with none open


def test_the_server_wide_cap_refuses_everyone_until_one_closes() -> None:
    limiter = ConnectionRateLimiter(None, FakeClock(), max_open=3)
    slots = [limiter.admit(f"10.0.0.{n}") for n in range(3)]
    with pytest.raises(RateLimitError) as exc_info:
        limiter.admit("10.0.0.99")
    assert exc_info.value.context["scope"] == "open_overall"
    assert "websocket.max_open_connections" in exc_info.value.message
    slots[1].release()
    limiter.admit("10.0.0.99")
    assert limiter.open_connections == 3


def test_unknown_remotes_share_one_address() -> None:
    limiter = ConnectionRateLimiter(None, FakeClock(), max_open_per_address=1)
    limiter.admit(None)
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_attempt(None)
    assert exc_info.value.context["remote"] == "unknown"


def test_from_options_reads_the_caps_and_derives_the_default_from_the_fd_limit() -> None:
    options = parse_options(
        StreamingModuleOptions,
        {"gateway": {"rateLimit": {"maxOpenConnectionsPerAddress": 7}}},
        what="options",
    )
    limiter = ConnectionRateLimiter.from_options(options)
    assert limiter.max_open_per_address == 7
    assert limiter.max_open == default_max_open_connections()
    explicit = parse_options(
        StreamingModuleOptions, {"websocket": {"maxOpenConnections": 50}}, what="options"
    )
    no_rate = ConnectionRateLimiter.from_options(explicit)
    assert (no_rate.max_open, no_rate.max_open_per_address, no_rate.enabled) == (50, None, False)


@pytest.mark.parametrize(
    ("soft", "expected"), [(1024, 922), (256, 192), (65536, 58983), (100, 36), (20, 1)]
)
def test_the_default_cap_keeps_descriptors_in_reserve(
    monkeypatch: pytest.MonkeyPatch, soft: int, expected: int
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, 1 << 20))
    assert default_max_open_connections() == expected


def test_an_unlimited_descriptor_limit_gives_a_large_finite_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resource

    monkeypatch.setattr(
        resource, "getrlimit", lambda _which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    )
    assert default_max_open_connections() == 1_000_000


def test_address_memory_is_forgotten_a_window_after_the_last_attempt() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_rate(max_connections=100_000), clock)
    for n in range(500):
        limiter.check_attempt(f"10.0.{n // 256}.{n % 256}")
    assert limiter.tracked_addresses == 500
    clock.advance(5)
    limiter.check_attempt("10.0.0.1")  # seen again: remembered a window from now
    clock.advance(5)
    limiter.check_attempt("192.168.0.1")
    assert limiter.tracked_addresses == 2
    clock.advance(10)
    limiter.check_attempt("192.168.0.2")
    assert limiter.tracked_addresses == 1


# ------------------------------------------------------------------ refusals in the log


def test_a_flood_of_refusals_writes_one_line_a_second(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_rate(max_connections=1), clock)
    limiter.check_attempt("10.0.0.1")
    with caplog.at_level(logging.WARNING, logger="streaming_module.gateway.limits"):
        for _ in range(5000):  # 5 s of 1,000 refusals a second
            clock.advance(0.001)
            with pytest.raises(RateLimitError):
                limiter.check_attempt("10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert 5 <= len(lines) <= 6
    assert "more refusals since the last line" in lines[1]
    assert "(and 999 more" in lines[1] or "(and 1000 more" in lines[1]


def test_log_throttle_counts_what_it_kept_quiet() -> None:
    clock = FakeClock()
    throttle = LogThrottle(1.0, clock)
    assert throttle.allow("accept") == 0
    assert [throttle.allow("accept") for _ in range(3)] == [None, None, None]
    assert throttle.allow("other") == 0  # keys are independent
    clock.advance(0.999)
    assert throttle.allow("accept") is None
    clock.advance(0.001)
    assert throttle.allow("accept") == 4
    assert throttle.allow("accept") is None


def test_log_throttle_remembers_a_bounded_number_of_keys() -> None:
    throttle = LogThrottle(1.0, FakeClock(), max_keys=10)
    for n in range(1000):
        throttle.allow(n)
    assert len(throttle._keys) == 10


def test_throttled_filter_keeps_accept_failures_to_one_traceback_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    logger = logging.getLogger("test.accept")
    log_filter = ThrottledLogFilter(
        1.0, clock, match=lambda r: r.getMessage().startswith("socket.accept()")
    )
    logger.addFilter(log_filter)
    try:
        with caplog.at_level(logging.DEBUG, logger="test.accept"):
            for _ in range(3000):  # 3 s of failing accepts, each with a traceback
                clock.advance(0.001)
                try:
                    raise OSError(24, "Too many open files")
                except OSError:
                    logger.exception("socket.accept() out of system resource")
            logger.info("an unrelated line")
            logger.info("an unrelated line")
    finally:
        logger.removeFilter(log_filter)
    accept_lines = [r for r in caplog.records if r.getMessage().startswith("socket.accept()")]
    assert 3 <= len(accept_lines) <= 4
    # 1,000 failures a second, one let through: 999 kept quiet (1,000 when float steps land
    # just short of the second).
    assert (
        accept_lines[1]
        .getMessage()
        .endswith(
            ("(and 999 more like it since the last)", "(and 1000 more like it since the last)")
        )
    )
    assert sum(r.getMessage() == "an unrelated line" for r in caplog.records) == 2


# ------------------------------------------------------------------ frames per connection


def test_frames_across_a_window_edge_get_no_second_budget() -> None:
    clock = FakeClock()
    limiter = RequestRateLimiter(_rate(max_requests_per_connection=100), clock)
    clock.advance(9.99)
    for _ in range(100):
        limiter.check()
    clock.advance(0.02)
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check()
    assert exc_info.value.close_code == 4429
    assert exc_info.value.context["scope"] == "connection"
    assert exc_info.value.context["retry_after"] == pytest.approx(9.98)


def test_a_steady_sender_at_the_documented_floor_is_never_refused() -> None:
    # 1,000 frames per 10 s allowed. Events spread within a tenth of a window are remembered
    # until a window after the last of them, so a perfectly steady sender is guaranteed
    # limit * 10/11 per window (909 here): 90 per second for a minute is never refused.
    clock = FakeClock()
    limiter = RequestRateLimiter(_rate(max_requests_per_connection=1000), clock)
    for _ in range(60 * 90):
        clock.advance(1 / 90)
        limiter.check()


def test_a_steady_sender_over_the_limit_is_refused_within_a_window() -> None:
    clock = FakeClock()
    limiter = RequestRateLimiter(_rate(max_requests_per_connection=1000), clock)
    sent = 0
    with pytest.raises(RateLimitError):
        while sent < 10_000:
            clock.advance(1 / 101)
            limiter.check()
            sent += 1
    assert 1000 <= sent <= 1010


# ------------------------------------------------------------------ options


def test_new_limit_options_have_documented_defaults_and_camel_case_aliases() -> None:
    assert RateLimitOptions().max_open_connections_per_address == 100
    assert StreamingModuleOptions().websocket.max_open_connections is None
    options = parse_options(
        StreamingModuleOptions,
        {
            "websocket": {"maxOpenConnections": 5000},
            "gateway": {"rateLimit": {"maxOpenConnectionsPerAddress": 20}},
        },
        what="options",
    )
    assert options.websocket.max_open_connections == 5000
    assert options.gateway.rate_limit is not None
    assert options.gateway.rate_limit.max_open_connections_per_address == 20


@pytest.mark.parametrize(
    "bad",
    [
        {"websocket": {"maxOpenConnections": 0}},
        {"gateway": {"rateLimit": {"maxOpenConnectionsPerAddress": 0}}},
        {"gateway": {"rateLimit": {"maxOpenPerAddress": 5}}},
    ],
)
def test_new_limit_options_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(StreamingConfigError):
        parse_options(StreamingModuleOptions, bad, what="options")


def test_the_module_documents_every_limit_it_enforces() -> None:
    doc = limits_module.__doc__ or ""
    for option in (
        "rate_limit.max_connections",
        "rate_limit.max_open_connections_per_address",
        "websocket.max_open_connections",
        "rate_limit.max_requests_per_connection",
    ):
        assert option in doc
