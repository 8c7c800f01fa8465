"""The pure progress rules: percent, rate and ETA, milestones, throttling, granularity, text."""

from __future__ import annotations

import math
from typing import Any

import pytest

from streaming_module.config import ProgressFormatOptions, StreamProgressOptions, parse_options
from streaming_module.core.progress import (
    RATE_SMOOTHING,
    ProgressComputer,
    RateEstimator,
    check_amounts,
    compute_percent,
    crossed_milestones,
    format_progress_text,
    granularity_key,
)
from streaming_module.errors import ProgressTrackingError


def opts(**kwargs: Any) -> StreamProgressOptions:
    return parse_options(StreamProgressOptions, kwargs, what="progress options")


def fmt(**kwargs: Any) -> ProgressFormatOptions:
    return parse_options(ProgressFormatOptions, kwargs, what="format")


# --------------------------------------------------------------------------- amounts and percent


@pytest.mark.parametrize(
    ("current", "total", "message"),
    [
        (1, 0, "total must be greater than 0"),
        (1, -5, "total must be greater than 0"),
        (-1, 10, "current must be 0 or more"),
        (math.nan, 10, "finite"),
        (1, math.inf, "finite"),
        ("3", 10, "must be a number, got str"),
        (1, None, "must be a number, got NoneType"),
        (True, 10, "must be a number, got bool"),
    ],
)
def test_bad_amounts_are_refused_with_a_helpful_message(
    current: Any, total: Any, message: str
) -> None:
    with pytest.raises(ProgressTrackingError, match=message) as info:
        check_amounts(current, total)
    assert info.value.code == "invalid_progress"


def test_good_amounts_become_floats_and_current_may_exceed_total() -> None:
    assert check_amounts(3, 10) == (3.0, 10.0)
    assert check_amounts(12, 10) == (12.0, 10.0)


def test_percent_is_current_over_total_clamped() -> None:
    assert compute_percent(42, 100, opts()) == 42.0
    assert compute_percent(1, 4, opts()) == 25.0
    assert compute_percent(12, 10, opts()) == 100.0


def test_a_calculator_replaces_the_percent_and_sees_the_metadata() -> None:
    def calc(current: float, total: float, metadata: dict[str, Any] | None) -> float:
        complexity = float((metadata or {}).get("complexity", 1))
        return min(current / total * 100 * complexity, 100.0)

    o = opts(calculator=calc)
    assert compute_percent(10, 100, o, {"complexity": 2}) == 20.0
    assert compute_percent(10, 100, o) == 10.0
    assert compute_percent(1, 100, opts(calculator=lambda c, t, m: -5)) == 0.0
    assert compute_percent(1, 100, opts(calculator=lambda c, t, m: 250)) == 100.0


def test_a_broken_calculator_is_reported_clearly() -> None:
    with pytest.raises(ProgressTrackingError, match="calculator raised ZeroDivisionError"):
        compute_percent(1, 10, opts(calculator=lambda c, t, m: 1 / 0))
    with pytest.raises(ProgressTrackingError, match="finite number, got 'x'"):
        compute_percent(1, 10, opts(calculator=lambda c, t, m: "x"))
    with pytest.raises(ProgressTrackingError, match="finite number"):
        compute_percent(1, 10, opts(calculator=lambda c, t, m: math.nan))


# --------------------------------------------------------------------------- text


def test_text_shows_what_the_format_options_ask_for() -> None:
    everything = fmt(showPercentage=True, showCurrent=True, showTotal=True, showRate=True)
    assert format_progress_text(42, 42, 100, 3.5, everything) == "42.0% (42/100) 3.5/s"
    assert format_progress_text(42, 42, 100, None, everything) == "42.0% (42/100)"
    assert format_progress_text(42.123, 4.5, 10, None, fmt(precision=2)) == "42.12%"
    assert format_progress_text(42, 42, 100, 1, fmt(show_current=True)) == "42.0% (42)"
    assert format_progress_text(42, 42, 100, 1, fmt(show_total=True, precision=0)) == (
        "42% (of 100)"
    )
    assert format_progress_text(42, 4.25, 10, 1, fmt(show_current=True, precision=1)) == (
        "42.0% (4.2)"
    )
    assert format_progress_text(42, 42, 100, 1, fmt(show_percentage=False)) == ""


# --------------------------------------------------------------------------- milestones, keys


def test_crossed_milestones_are_those_reached_and_not_seen() -> None:
    assert crossed_milestones([25, 50, 75], set(), 60) == [25, 50]
    assert crossed_milestones([25, 50, 75], {25, 50}, 60) == []
    assert crossed_milestones([25, 50, 75], {25}, 100) == [50, 75]


def test_granularity_keys() -> None:
    assert granularity_key(42.7, opts(granularity="coarse")) == 4
    assert granularity_key(100, opts(granularity="coarse")) == 10
    assert granularity_key(42.74, opts(granularity="fine")) == 42.7
    assert granularity_key(42.74, opts(granularity="fine", format={"precision": 0})) == 43
    assert granularity_key(42.74, opts(granularity="detailed")) is None


# --------------------------------------------------------------------------- rate


def test_rate_is_unknown_until_two_observations_over_time() -> None:
    r = RateEstimator()
    assert r.observe(0.0, 0) is None
    assert r.observe(0.0, 5) is None  # same instant: merged into the next step
    assert r.observe(1.0, 10) == 10.0
    assert r.average(1.0, 10) == 10.0


def test_rate_is_an_ewma_of_instant_rates() -> None:
    r = RateEstimator()
    r.observe(0, 0)
    r.observe(1, 10)  # 10/s
    rate = r.observe(2, 30)  # 20/s
    assert rate is not None
    assert rate == pytest.approx(RATE_SMOOTHING * 20 + (1 - RATE_SMOOTHING) * 10)
    assert r.observe(3, 25) == pytest.approx((1 - RATE_SMOOTHING) * rate)  # backwards counts 0
    with pytest.raises(ValueError):
        RateEstimator(0)


# --------------------------------------------------------------------------- the state machine


def test_first_update_reports_without_eta_then_eta_from_the_rate() -> None:
    pc = ProgressComputer(opts(interval=0, granularity="detailed"), started_at=0)
    first = pc.observe(10, 100, now=1)
    assert first is not None
    assert first.progress == 10.0
    assert first.eta is None
    assert first.rate is None
    second = pc.observe(20, 100, now=2)
    assert second is not None
    assert second.rate == 10.0
    assert second.eta == pytest.approx(8.0)
    assert pc.last is second


def test_eta_is_zero_at_completion_and_none_without_include_eta() -> None:
    pc = ProgressComputer(opts(interval=0), started_at=0)
    pc.observe(0, 10, now=0)
    done = pc.observe(10, 10, now=5)
    assert done is not None
    assert done.eta == 0
    pc2 = ProgressComputer(opts(interval=0, includeETA=False), started_at=0)
    pc2.observe(0, 10, now=0)
    mid = pc2.observe(5, 10, now=1)
    assert mid is not None
    assert mid.rate == 5.0
    assert mid.eta is None
    end = pc2.observe(10, 10, now=2)
    assert end is not None
    assert end.eta is None


def test_eta_stays_unknown_while_nothing_moves() -> None:
    pc = ProgressComputer(opts(interval=0, granularity="detailed"), started_at=0)
    pc.observe(5, 10, now=0)
    stalled = pc.observe(5, 10, now=1)
    assert stalled is not None
    assert stalled.rate == 0
    assert stalled.eta is None


def test_interval_holds_back_updates_but_not_the_first_or_last() -> None:
    pc = ProgressComputer(opts(interval=1000, granularity="detailed"), started_at=0)
    reported = [pc.observe(i, 10, now=i * 0.25) is not None for i in range(11)]
    # t=0 first; t=1.0 (i=4) and t=2.0 (i=8) after a full second; t=2.5 (i=10) is the last
    assert reported == [True, False, False, False, True, False, False, False, True, False, True]


def test_held_back_updates_still_feed_the_rate() -> None:
    pc = ProgressComputer(opts(interval=10_000, granularity="detailed"), started_at=0)
    pc.observe(0, 100, now=0)
    for i in range(1, 10):
        assert pc.observe(i, 100, now=i) is None
    assert pc.rate == pytest.approx(1.0)


def test_coarse_reports_when_the_ten_percent_bucket_changes() -> None:
    pc = ProgressComputer(opts(interval=0, granularity="coarse"), started_at=0)
    shown = [p for p in range(0, 101, 3) if pc.observe(p, 100, now=p) is not None]
    assert shown == [0, 12, 21, 30, 42, 51, 60, 72, 81, 90]  # 99 is still the 90s bucket
    assert pc.observe(100, 100, now=200) is not None  # the last, always


def test_fine_reports_when_the_rounded_percent_changes() -> None:
    pc = ProgressComputer(opts(interval=0, granularity="fine", format={"precision": 0}), 0)
    values = [0, 0.2, 0.4, 0.6, 1.2, 1.4, 2.0]
    shown = [v for v in values if pc.observe(v, 100, now=v) is not None]
    assert shown == [0, 0.6, 2.0]


def test_detailed_reports_every_update_the_interval_allows() -> None:
    pc = ProgressComputer(opts(interval=0, granularity="detailed"), started_at=0)
    assert all(pc.observe(5, 100, now=t) is not None for t in range(5))


def test_each_milestone_is_reported_once_the_highest_when_jumped_over() -> None:
    pc = ProgressComputer(
        opts(interval=5000, granularity="coarse", milestones=[25, 50, 75], include_metrics=True),
        started_at=0,
    )
    assert pc.observe(0, 100, now=0) is not None
    jump = pc.observe(60, 100, now=0.1)  # inside the interval, but crosses 25 and 50
    assert jump is not None
    assert jump.milestone == 50
    assert jump.metrics is not None
    assert jump.metrics["milestones_crossed"] == [25, 50]
    assert pc.observe(55, 100, now=0.2) is None  # backwards: nothing new
    assert pc.observe(62, 100, now=6) is None  # same 10 % bucket as the last report
    again = pc.observe(71, 100, now=6.5)
    assert again is not None
    assert again.milestone is None
    assert pc.crossed == {25, 50}
    last = pc.observe(100, 100, now=7)
    assert last is not None
    assert last.milestone == 75


def test_metrics_when_include_metrics() -> None:
    pc = ProgressComputer(opts(interval=0, include_metrics=True), started_at=10)
    pc.observe(0, 50, now=12)
    data = pc.observe(20, 50, now=14)
    assert data is not None
    assert data.metrics == {
        "elapsed": 4.0,
        "items_done": 20.0,
        "items_remaining": 30.0,
        "rate": 10.0,
        "average_rate": 10.0,
        "updates": 2,
        "reports": 2,
        "milestones_crossed": [],
    }
    assert ProgressComputer(opts(), 0).observe(1, 2, now=0).metrics is None  # type: ignore[union-attr]


def test_a_forced_report_ignores_the_throttles_and_restart_forgets_everything() -> None:
    pc = ProgressComputer(opts(interval=10_000, milestones=[50]), started_at=0)
    pc.observe(60, 100, now=0)
    assert pc.observe(61, 100, now=1) is None
    assert pc.observe(61, 100, now=1, force=True) is not None
    pc.restart(5)
    again = pc.observe(60, 100, now=5)
    assert again is not None
    assert again.milestone == 50
    assert pc.updates == 1


def test_a_bad_observation_records_nothing() -> None:
    pc = ProgressComputer(opts(), started_at=0)
    with pytest.raises(ProgressTrackingError):
        pc.observe(1, 0, now=0)
    assert pc.updates == 0
    assert pc.last is None


def test_text_is_built_into_each_report() -> None:
    pc = ProgressComputer(
        opts(
            interval=0,
            format={"showCurrent": True, "showTotal": True, "showRate": True, "precision": 1},
        ),
        started_at=0,
    )
    pc.observe(0, 100, now=0)
    data = pc.observe(42, 100, now=12)
    assert data is not None
    assert data.text == "42.0% (42/100) 3.5/s"
