"""Shared pieces of the benchmarks: the result row, repetition with a median, and timing.

Every benchmark module in ``bench/`` named ``bench_*.py`` exposes ``run(quick: bool) -> list[Row]``;
``bench/run.py`` collects the rows into ``bench/results.json``. A row compares our figure with a
baseline measured in the same run, as a ratio, with its goal written ``">=X"`` or ``"<=X"``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline_value: float
    ratio: float
    goal: str
    note: str = ""

    def met(self) -> bool | None:
        """Whether the ratio meets the goal (None when the goal is only reported)."""
        if self.goal.startswith(">="):
            return self.ratio >= float(self.goal[2:])
        if self.goal.startswith("<="):
            return self.ratio <= float(self.goal[2:])
        return None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["met"] = self.met()
        return out


def row(
    name: str,
    value: float,
    unit: str,
    baseline_name: str,
    baseline_value: float,
    goal: str,
    *,
    note: str = "",
) -> Row:
    """A row whose ratio is ``value / baseline_value`` (throughputs: higher is better; times:
    lower is better — the goal's direction says which)."""
    ratio = value / baseline_value if baseline_value else float("inf")
    return Row(name, value, unit, baseline_name, baseline_value, round(ratio, 3), goal, note)


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    """Run ``measure`` ``repeats`` times and keep the median, to tame a noisy shared machine."""
    return statistics.median(measure() for _ in range(repeats))


def interleaved_medians(
    repeats: int, ours: Callable[[], float], baseline: Callable[[], float]
) -> tuple[float, float]:
    """Measure ours and the baseline alternately (so drifts in machine load hit both alike) and
    return both medians."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        a.append(ours())
        b.append(baseline())
    return statistics.median(a), statistics.median(b)


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
