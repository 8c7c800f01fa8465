"""Rate limits: how many connections a window lets in, and how many frames one client may send."""

from __future__ import annotations

import pytest

from streaming_module.config import RateLimitOptions
from streaming_module.core.clock import FakeClock
from streaming_module.errors import RateLimitError
from streaming_module.gateway.limits import ConnectionRateLimiter, RequestRateLimiter


def _options(**kwargs: int) -> RateLimitOptions:
    return RateLimitOptions(**{"window_ms": 10_000, "max_connections": 3, **kwargs})


# ------------------------------------------------------------------ connections


def test_no_options_means_unlimited() -> None:
    limiter = ConnectionRateLimiter(None, FakeClock())
    for _ in range(10_000):
        limiter.check_connection("10.0.0.1")
    assert not limiter.enabled
    assert limiter.tracked_addresses == 0


def test_one_address_gets_max_connections_per_window() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_options(), clock)
    for _ in range(3):
        limiter.check_connection("10.0.0.1")
    clock.advance(4)
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_connection("10.0.0.1")
    error = exc_info.value
    assert error.close_code == 4429
    assert error.code == "rate_limited"
    assert error.context["scope"] == "address"
    assert error.context["retry_after"] == pytest.approx(6)
    assert "at most 3 per 10 s" in error.message
    assert "retry in 6 s" in error.message
    assert "10.0.0.1" in error.message


def test_other_addresses_are_not_held_back_by_a_busy_one() -> None:
    limiter = ConnectionRateLimiter(_options(max_connections=3), FakeClock())
    for _ in range(2):
        limiter.check_connection("10.0.0.1")
    limiter.check_connection("10.0.0.2")
    with pytest.raises(RateLimitError):  # the overall budget of 3 is now spent
        limiter.check_connection("10.0.0.3")


def test_overall_limit_applies_across_addresses() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_options(max_connections=3), clock)
    for n in range(3):
        limiter.check_connection(f"10.0.0.{n}")
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_connection("10.0.0.99")
    assert exc_info.value.context["scope"] == "overall"
    assert "to this server" in exc_info.value.message


def test_connections_are_allowed_again_after_the_window() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_options(), clock)
    for _ in range(3):
        limiter.check_connection("10.0.0.1")
    clock.advance(9.999)
    with pytest.raises(RateLimitError):
        limiter.check_connection("10.0.0.1")
    clock.advance(0.001)
    for _ in range(3):
        limiter.check_connection("10.0.0.1")
    with pytest.raises(RateLimitError):
        limiter.check_connection("10.0.0.1")


def test_refused_attempts_do_not_extend_the_window() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_options(max_connections=1), clock)
    limiter.check_connection("10.0.0.1")
    for _ in range(50):
        clock.advance(0.1)
        with pytest.raises(RateLimitError):
            limiter.check_connection("10.0.0.1")
    clock.advance(5)
    limiter.check_connection("10.0.0.1")


def test_unknown_remote_counts_as_one_shared_address() -> None:
    limiter = ConnectionRateLimiter(_options(max_connections=2), FakeClock())
    limiter.check_connection(None)
    limiter.check_connection(None)
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check_connection(None)
    assert exc_info.value.context["remote"] == "unknown"


def test_memory_is_pruned_when_windows_end() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_options(max_connections=1000), clock)
    for n in range(500):
        limiter.check_connection(f"10.0.{n // 256}.{n % 256}")
    assert limiter.tracked_addresses == 500
    clock.advance(10)
    limiter.check_connection("192.168.0.1")
    assert limiter.tracked_addresses == 1


def test_tracked_addresses_are_capped() -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(
        _options(max_connections=100_000), clock, max_tracked_addresses=100
    )
    for n in range(1000):
        clock.advance(0.001)
        limiter.check_connection(f"addr-{n}")
    assert limiter.tracked_addresses == 100


def test_refusals_are_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = ConnectionRateLimiter(_options(max_connections=1), clock)
    limiter.check_connection("10.0.0.1")
    for _ in range(20):
        with pytest.raises(RateLimitError):
            limiter.check_connection("10.0.0.1")
    assert caplog.text.count("refusing new connections") == 1


# ------------------------------------------------------------------ requests per connection


def test_request_limiter_allows_max_requests_per_window_then_refuses() -> None:
    clock = FakeClock()
    limiter = RequestRateLimiter(_options(max_requests_per_connection=5), clock)
    for _ in range(5):
        limiter.check()
    clock.advance(2.5)
    with pytest.raises(RateLimitError) as exc_info:
        limiter.check()
    error = exc_info.value
    assert error.close_code == 4429
    assert error.context["scope"] == "connection"
    assert error.context["limit"] == 5
    assert error.context["retry_after"] == pytest.approx(7.5)
    assert "at most 5 per 10 s" in error.message
    assert "max_requests_per_connection" in error.message


def test_request_limiter_recovers_after_the_window() -> None:
    clock = FakeClock()
    limiter = RequestRateLimiter(_options(max_requests_per_connection=2), clock)
    limiter.check()
    limiter.check()
    with pytest.raises(RateLimitError):
        limiter.check()
    clock.advance(10)
    limiter.check()
    limiter.check()
    with pytest.raises(RateLimitError):
        limiter.check()


def test_request_limiters_are_per_connection() -> None:
    clock = FakeClock()
    options = _options(max_requests_per_connection=1)
    flooder, quiet = RequestRateLimiter(options, clock), RequestRateLimiter(options, clock)
    flooder.check()
    with pytest.raises(RateLimitError):
        flooder.check()
    quiet.check()


def test_request_limiter_without_options_is_unlimited() -> None:
    limiter = RequestRateLimiter(None, FakeClock())
    for _ in range(100_000):
        limiter.check()
