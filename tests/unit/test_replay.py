"""The replay log: bounded by count and age, and honest about what it no longer holds."""

from __future__ import annotations

import pytest

from streaming_module.core.replay import Gap, ReplayLog


def _log(max_entries: int = 5, max_age: float = 60.0) -> ReplayLog[str]:
    return ReplayLog(max_entries, max_age)


def test_resume_gets_everything_after_the_last_sequence() -> None:
    log = _log()
    for seq in range(1, 5):
        log.append(seq, 0.0, f"f{seq}")
    replay = log.since(2)
    assert replay.gap is None
    assert replay.items == ["f3", "f4"]
    assert log.since(0).items == ["f1", "f2", "f3", "f4"]
    assert log.since(4).items == []
    assert log.since(99).items == []


def test_count_bound_evicts_oldest_and_reports_a_gap() -> None:
    log = _log(max_entries=3)
    for seq in range(1, 8):
        log.append(seq, 0.0, f"f{seq}")
    assert len(log) == 3
    assert log.evicted_through == 4
    replay = log.since(1)
    assert replay.gap == Gap(2, 4)
    assert replay.items == ["f5", "f6", "f7"]
    assert log.since(4).gap is None


def test_age_bound_evicts_old_entries() -> None:
    log = _log(max_entries=100, max_age=10.0)
    log.append(1, 0.0, "old")
    log.append(2, 5.0, "mid")
    log.append(3, 12.0, "new")  # evicts 'old' (12 - 10 > 0)
    assert list(log) == ["mid", "new"]
    replay = log.since(0, now=16.0)  # 'mid' expires too
    assert replay.gap == Gap(1, 2)
    assert replay.items == ["new"]


def test_sequences_that_were_never_replayable_are_not_a_gap() -> None:
    log = _log()
    log.append(1, 0.0, "a")
    log.append(3, 0.0, "c")  # 2 was at-most-once: never stored
    replay = log.since(0)
    assert replay.gap is None
    assert replay.items == ["a", "c"]
    assert log.since(2).items == ["c"]


def test_sequences_must_rise() -> None:
    log = _log()
    log.append(2, 0.0, "b")
    with pytest.raises(ValueError, match="not after"):
        log.append(2, 0.0, "again")
    with pytest.raises(ValueError):
        ReplayLog(0, 1.0)
    with pytest.raises(ValueError):
        ReplayLog(1, 0)


def test_first_and_last_sequence_and_clear() -> None:
    log = _log()
    assert log.first_sequence is None and log.last_sequence is None
    log.append(1, 0.0, "a")
    log.append(2, 0.0, "b")
    assert (log.first_sequence, log.last_sequence) == (1, 2)
    log.clear()
    assert len(log) == 0
