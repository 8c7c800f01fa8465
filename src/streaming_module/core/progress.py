"""Pure progress logic: percent, smoothed rate and ETA, milestones, report throttling, text.

No asyncio and no clock of its own: :class:`ProgressComputer` is told the time (monotonic
seconds) with each observation and answers with the :class:`ProgressData` to report, or ``None``
when the update is held back. The service layer only adds time, sequence numbers and delivery.

What gets reported (:meth:`ProgressComputer.observe`), in this order of rules:

1. **Always**: the first update after creation (or :meth:`~ProgressComputer.restart`), the
   *last* one (``current >= total`` or a percent of 100), a forced one (``start``/``complete``),
   and any update that crosses a milestone not crossed before.
2. Otherwise the update must pass **both** throttles:

   - ``interval`` (ms): at least that long since the previous report (``0``: no wait);
   - ``granularity``: ``coarse`` reports when the 10 %-bucket (``int(percent // 10)``) differs
     from the previous report's; ``fine`` when the percent rounded to ``format.precision``
     decimals differs from the previous report's; ``detailed`` every update the interval allows.

Every update — reported or not — feeds the rate estimate, so held-back updates still improve the
ETA.

Rate and ETA
    Each pair of consecutive observations with elapsed time > 0 gives an instantaneous rate
    ``Δcurrent / Δt`` (a decrease counts as 0); the reported ``rate`` is an exponentially
    weighted moving average of those (weight :data:`RATE_SMOOTHING` for the newest). Observations
    at the same instant are merged into the next one. ``rate`` and ``eta`` are ``None`` until two
    observations over a nonzero time exist; ``eta = (total - current) / rate`` seconds (``None``
    while the rate is 0), ``0`` at completion, and always ``None`` with ``include_eta=False``.
    With a ``calculator`` the percent is the calculator's, but rate and ETA stay in items.

Milestones
    Each milestone is reported exactly once, by the first update whose percent reaches it. If one
    update jumps over several, they are all recorded as crossed and the **highest** is reported in
    ``milestone`` (``metrics['milestones_crossed']`` lists them all when ``include_metrics`` is
    on). Going backwards never re-reports a milestone.

Costs: O(number of milestones) per observation, a few floats of state per tracker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from streaming_module.config import ProgressFormatOptions, StreamProgressOptions
from streaming_module.errors import ProgressTrackingError
from streaming_module.types import ProgressData

RATE_SMOOTHING = 0.3
"""Weight of the newest instantaneous rate in the EWMA (0 < w ≤ 1; 1 means no smoothing)."""


# --------------------------------------------------------------------------- small pure functions


def check_amounts(current: Any, total: Any) -> tuple[float, float]:
    """``(current, total)`` as floats, or :class:`ProgressTrackingError` saying what is wrong.

    Both must be real numbers (not ``bool``), finite; ``total > 0`` and ``current >= 0``.
    ``current`` may exceed ``total`` (the percent is then clamped to 100).
    """
    for name, value in (("current", current), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ProgressTrackingError(
                f"progress {name} must be a number, got {type(value).__name__} {value!r}",
                code="invalid_progress",
                context={name: value},
            )
        if not math.isfinite(float(value)):
            raise ProgressTrackingError(
                f"progress {name} must be a finite number, got {value!r}",
                code="invalid_progress",
                context={name: value},
            )
    cur, tot = float(current), float(total)
    if tot <= 0:
        raise ProgressTrackingError(
            f"progress total must be greater than 0, got {total!r}; pass the number of items "
            "(or 100 for a percentage)",
            code="invalid_progress",
            context={"total": total},
        )
    if cur < 0:
        raise ProgressTrackingError(
            f"progress current must be 0 or more, got {current!r}",
            code="invalid_progress",
            context={"current": current},
        )
    return cur, tot


def compute_percent(
    current: float,
    total: float,
    options: StreamProgressOptions,
    metadata: Mapping[str, Any] | None = None,
) -> float:
    """The percent 0-100: ``options.calculator(current, total, metadata)`` when given, else
    ``current / total * 100``; clamped to 0-100. A calculator that raises or returns something
    other than a finite number gives :class:`ProgressTrackingError`."""
    if options.calculator is None:
        value = current / total * 100.0
    else:
        meta = dict(metadata) if metadata is not None else None
        try:
            raw = options.calculator(current, total, meta)
        except Exception as exc:
            raise ProgressTrackingError(
                f"the progress calculator raised {type(exc).__name__}: {exc}",
                code="calculator_failed",
            ) from exc
        if isinstance(raw, bool) or not isinstance(raw, Real) or not math.isfinite(float(raw)):
            raise ProgressTrackingError(
                f"the progress calculator must return a finite number, got {raw!r}",
                code="calculator_failed",
            )
        value = float(raw)
    return min(100.0, max(0.0, value))


def _number(value: float, precision: int) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{precision}f}"


def format_progress_text(
    percent: float,
    current: float,
    total: float,
    rate: float | None,
    fmt: ProgressFormatOptions,
) -> str:
    """The human-readable line, parts joined by spaces, each shown only when its option is on:

    ``show_percentage`` → ``"42.0%"`` (``precision`` decimals); ``show_current`` and
    ``show_total`` → ``"(42/100)"`` (only one of them: ``"(42)"`` or ``"(of 100)"``; whole numbers
    are shown without decimals); ``show_rate`` → ``"3.5/s"`` once the rate is known.
    Example with everything on: ``"42.0% (42/100) 3.5/s"``. Everything off gives ``""``.
    """
    parts: list[str] = []
    p = fmt.precision
    if fmt.show_percentage:
        parts.append(f"{percent:.{p}f}%")
    if fmt.show_current and fmt.show_total:
        parts.append(f"({_number(current, p)}/{_number(total, p)})")
    elif fmt.show_current:
        parts.append(f"({_number(current, p)})")
    elif fmt.show_total:
        parts.append(f"(of {_number(total, p)})")
    if fmt.show_rate and rate is not None:
        parts.append(f"{rate:.{p}f}/s")
    return " ".join(parts)


def crossed_milestones(milestones: list[float], already: set[float], percent: float) -> list[float]:
    """Milestones reached by ``percent`` and not in ``already``, ascending."""
    return [m for m in milestones if m <= percent and m not in already]


def granularity_key(percent: float, options: StreamProgressOptions) -> float | None:
    """What must change between reports: the 10 %-bucket (coarse), the percent rounded to
    ``format.precision`` (fine), or nothing (detailed → ``None``)."""
    if options.granularity == "coarse":
        return float(int(percent // 10))
    if options.granularity == "fine":
        return round(percent, options.format.precision)
    return None


class RateEstimator:
    """EWMA of the instantaneous rate between observations (see the module docstring)."""

    __slots__ = ("_first", "_prev", "rate", "smoothing")

    def __init__(self, smoothing: float = RATE_SMOOTHING) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self.smoothing = smoothing
        self.rate: float | None = None
        self._prev: tuple[float, float] | None = None
        self._first: tuple[float, float] | None = None

    def observe(self, now: float, current: float) -> float | None:
        """Record ``current`` at ``now``; return the smoothed rate (``None`` until known)."""
        if self._prev is None:
            self._prev = self._first = (now, current)
            return self.rate
        prev_t, prev_c = self._prev
        dt = now - prev_t
        if dt <= 0:
            # Same instant: keep the older point so the next step spans the combined delta.
            return self.rate
        instant = max(0.0, current - prev_c) / dt
        if self.rate is None:
            self.rate = instant
        else:
            self.rate = self.smoothing * instant + (1 - self.smoothing) * self.rate
        self._prev = (now, current)
        return self.rate

    def average(self, now: float, current: float) -> float | None:
        """Items per second from the first observation to (``now``, ``current``)."""
        if self._first is None or now <= self._first[0]:
            return None
        return max(0.0, current - self._first[1]) / (now - self._first[0])


# --------------------------------------------------------------------------- the state machine


class ProgressComputer:
    """The progress state of one tracker. Feed it observations; it says what to report.

    ``started_at`` is the monotonic time the tracker started (used for ``metrics['elapsed']``).
    ``last`` is the last reported :class:`ProgressData`. Not thread-safe (one tracker, one task).
    """

    __slots__ = (
        "_last_key",
        "_last_report_at",
        "_rate",
        "crossed",
        "last",
        "options",
        "reports",
        "started_at",
        "updates",
    )

    def __init__(self, options: StreamProgressOptions, started_at: float) -> None:
        self.options = options
        self.restart(started_at)

    def restart(self, now: float) -> None:
        """Forget everything observed (rate, milestones, last report) and start timing at
        ``now``; the next observation is a first one again."""
        self.started_at = now
        self.crossed: set[float] = set()
        self.last: ProgressData | None = None
        self.updates = 0
        self.reports = 0
        self._rate = RateEstimator()
        self._last_report_at: float | None = None
        self._last_key: float | None = None

    @property
    def rate(self) -> float | None:
        return self._rate.rate

    def observe(
        self,
        current: Any,
        total: Any,
        now: float,
        metadata: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> ProgressData | None:
        """Record an update at monotonic time ``now``; return the data to report, or ``None`` if
        the interval or granularity holds it back (rules in the module docstring).

        Raises :class:`ProgressTrackingError` for bad amounts or a failing calculator; nothing
        is recorded then.
        """
        cur, tot = check_amounts(current, total)
        opts = self.options
        percent = compute_percent(cur, tot, opts, metadata)
        finished = cur >= tot or percent >= 100.0

        self.updates += 1
        rate = self._rate.observe(now, cur)
        new_milestones = crossed_milestones(opts.milestones, self.crossed, percent)
        self.crossed.update(new_milestones)
        key = granularity_key(percent, opts)

        first = self._last_report_at is None
        if not (force or first or finished or new_milestones):
            assert self._last_report_at is not None
            if opts.interval > 0 and (now - self._last_report_at) * 1000.0 < opts.interval:
                return None
            if key is not None and key == self._last_key:
                return None

        eta: float | None = None
        if opts.include_eta:
            if finished:
                eta = 0.0
            elif rate is not None and rate > 0:
                eta = (tot - cur) / rate

        self.reports += 1
        metrics: dict[str, Any] | None = None
        if opts.include_metrics:
            metrics = {
                "elapsed": max(0.0, now - self.started_at),
                "items_done": cur,
                "items_remaining": max(0.0, tot - cur),
                "rate": rate,
                "average_rate": self._rate.average(now, cur),
                "updates": self.updates,
                "reports": self.reports,
                "milestones_crossed": new_milestones,
            }
        data = ProgressData(
            progress=percent,
            current=cur,
            total=tot,
            eta=eta,
            rate=rate,
            milestone=new_milestones[-1] if new_milestones else None,
            text=format_progress_text(percent, cur, tot, rate, opts.format),
            metrics=metrics,
        )
        self._last_report_at = now
        self._last_key = key
        self.last = data
        return data


__all__ = [
    "RATE_SMOOTHING",
    "ProgressComputer",
    "RateEstimator",
    "check_amounts",
    "compute_percent",
    "crossed_milestones",
    "format_progress_text",
    "granularity_key",
]
