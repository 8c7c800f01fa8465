"""The replay log of one execution: what a reconnecting client can still be sent. No I/O.

Entries are appended in rising sequence order (sequences need not be contiguous: frames that are
not replayable, such as ``at-most-once`` events, are never stored, and that is not a gap). The log
is bounded by count (``max_entries``) and by age (``max_age`` seconds, measured with the
monotonic times given to it); what falls out is remembered only as ``evicted_through``, the
highest sequence no longer held, so :meth:`ReplayLog.since` can report a gap instead of
skipping silently.

Memory: one ``(sequence, time, item)`` tuple (~72 bytes) plus the item per entry; with the
broker's frames (payload + encoded JSON, typically 200-500 bytes) budget roughly
``max_entries * (frame size + 300 bytes)`` per execution.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequences ``first``..``last`` (inclusive) are no longer in the log."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Replay(Generic[T]):
    """What to send a client resuming after some sequence: a gap (or ``None``), then items."""

    gap: Gap | None
    items: list[T]


class ReplayLog(Generic[T]):
    """A bounded, sequence-ordered log of items with their sequence and monotonic time."""

    __slots__ = ("_entries", "evicted_through", "max_age", "max_entries")

    def __init__(self, max_entries: int, max_age: float) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self.max_entries = max_entries
        self.max_age = max_age
        self._entries: deque[tuple[int, float, T]] = deque()
        self.evicted_through = 0
        """The highest sequence evicted (0: nothing evicted yet)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[T]:
        return (item for _, _, item in self._entries)

    @property
    def first_sequence(self) -> int | None:
        return self._entries[0][0] if self._entries else None

    @property
    def last_sequence(self) -> int | None:
        return self._entries[-1][0] if self._entries else None

    def append(self, sequence: int, now: float, item: T) -> None:
        """Keep ``item`` under ``sequence`` (greater than every sequence appended before),
        evicting the oldest entries beyond the count or age bound."""
        entries = self._entries
        if entries and sequence <= entries[-1][0]:
            raise ValueError(
                f"sequence {sequence} is not after the last one kept ({entries[-1][0]})"
            )
        entries.append((sequence, now, item))
        if len(entries) > self.max_entries:
            self.evicted_through = entries.popleft()[0]
        self.evict_expired(now)

    def evict_expired(self, now: float) -> int:
        """Drop entries older than ``max_age``; returns how many were dropped."""
        entries = self._entries
        cutoff = now - self.max_age
        dropped = 0
        while entries and entries[0][1] < cutoff:
            self.evicted_through = entries.popleft()[0]
            dropped += 1
        return dropped

    def since(self, after: int, now: float | None = None) -> Replay[T]:
        """Every retained item with a sequence greater than ``after``, in order, preceded by the
        gap of evicted sequences after ``after`` (if any). ``now`` first evicts expired items."""
        if now is not None:
            self.evict_expired(now)
        gap = Gap(after + 1, self.evicted_through) if self.evicted_through > after else None
        entries = self._entries
        if not entries or entries[-1][0] <= after:
            return Replay(gap, [])
        if entries[0][0] > after:
            return Replay(gap, [item for _, _, item in entries])
        # Sequences rise: walk back from the newest entry, usually a short way for a resume.
        out: list[T] = []
        for seq, _, item in reversed(entries):
            if seq <= after:
                break
            out.append(item)
        out.reverse()
        return Replay(gap, out)

    def clear(self) -> None:
        self._entries.clear()


__all__ = ["Gap", "Replay", "ReplayLog"]
