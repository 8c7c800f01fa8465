"""The in-process broker: sequences, replay logs and fan-out in one event loop.

Bounds (from :class:`~streaming_module.config.BrokerOptions`):

- per execution, a :class:`~streaming_module.core.replay.ReplayLog` of at most
  ``replay_max_frames`` frames no older than ``replay_max_age_ms``: about
  ``replay_max_frames * (encoded frame + payload + ~300 bytes)``;
- at most ``max_executions`` executions, a hard bound kept in O(1): when a new one would exceed
  it, the oldest *ended* execution is evicted first, then the one nobody has been subscribed to
  for longest; an execution being watched is never evicted under its subscribers' feet. A
  *subscription* may create an execution (to wait for its run) only while fewer than
  ``max_executions`` less a tenth of it exist after that: the last tenth is kept for runs that
  publish, so that subscriptions waiting for runs that never start (a subscription storm)
  cannot keep runs from streaming. When nothing can go, the new execution is refused with
  :class:`BrokerError` code ``too_many_executions`` (a subscribe gets it as an ``error`` reply),
  logged at most once a second;
- an ended execution is evicted ``retention_after_end_ms`` after :meth:`end_execution`, by a timer
  of the injected clock;
- at most ``max_executions`` run records (:meth:`~InMemoryBroker.save_run`), the least
  recently saved dropped first;
- an evicted execution leaves a tombstone, its id and last sequence number (~150 bytes), for the
  ``max_executions`` most recently evicted ones. If the execution is published to or subscribed
  to again, its numbering continues after that sequence and a client resuming from an earlier
  point is sent a ``gap`` for everything the dropped log held: sequence numbers never restart
  (a client de-duplicating by sequence would silently drop the restarted ones) and a resume is
  never met with silence.

Run records (:meth:`~InMemoryBroker.save_run`, read by ``GET /executions/{id}``): at most
``max_executions``, the least recently saved dropped first.

Everything is synchronous and runs on the caller's thread; ``subscribe`` does its replay and
registration without yielding, so it is atomic with respect to concurrent ``publish`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from typing import Any

from streaming_module.broker.base import (
    GAP,
    Broker,
    Frame,
    Listener,
    ListenerSubscription,
    RunRecord,
    Subscription,
)
from streaming_module.config import BrokerOptions
from streaming_module.core.clock import Clock, SystemClock, TimerHandle
from streaming_module.core.replay import ReplayLog
from streaming_module.errors import BrokerError

logger = logging.getLogger("streaming_module.gateway")


class _Execution:
    __slots__ = ("ended", "execution_id", "last_sequence", "listeners", "log", "timer")

    def __init__(self, execution_id: str, log: ReplayLog[Frame]) -> None:
        self.execution_id = execution_id
        self.last_sequence = 0
        self.log = log
        self.listeners: tuple[ListenerSubscription, ...] = ()
        self.ended = False
        self.timer: TimerHandle | None = None


class InMemoryBroker(Broker):
    """A :class:`Broker` for one process. See the module docstring for its bounds."""

    def __init__(self, options: BrokerOptions | None = None, clock: Clock | None = None) -> None:
        self.options = options or BrokerOptions()
        self._clock: Clock = clock or SystemClock()
        self._max_age = self.options.replay_max_age_ms / 1000
        # Insertion order = creation order; ended executions also listed in end order.
        self._executions: OrderedDict[str, _Execution] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._idle: OrderedDict[str, None] = OrderedDict()  # no listener, longest idle first
        self._refused = 0  # new executions refused since the last log line about it
        self._refused_logged = -1.0
        # Last sequence of evicted executions, oldest eviction first (see the module docstring).
        self._forgotten: OrderedDict[str, int] = OrderedDict()
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._closed = False

    # ------------------------------------------------------------------ state
    @property
    def execution_count(self) -> int:
        return len(self._executions)

    def retained(self, execution_id: str) -> int:
        """How many frames the execution's replay log holds."""
        ex = self._executions.get(execution_id)
        return len(ex.log) if ex is not None else 0

    def subscriber_count(self, execution_id: str) -> int:
        ex = self._executions.get(execution_id)
        return len(ex.listeners) if ex is not None else 0

    def last_sequence(self, execution_id: str) -> int:
        ex = self._executions.get(execution_id)
        if ex is not None:
            return ex.last_sequence
        return self._forgotten.get(execution_id, 0)

    # ------------------------------------------------------------------ contract
    def publish(
        self, execution_id: str, type: str, payload: Any, *, replayable: bool = True
    ) -> Frame:
        ex = self._executions.get(execution_id) or self._create(execution_id, publishing=True)
        ex.last_sequence += 1
        frame = Frame(
            execution_id, ex.last_sequence, type, self._clock.now().isoformat(), payload, replayable
        )
        if replayable:
            ex.log.append(frame.sequence, self._clock.monotonic(), frame)
        for sub in ex.listeners:
            try:
                sub.listener(frame)
            except Exception:
                logger.exception("a subscriber of execution %r failed on %r", execution_id, frame)
        return frame

    async def subscribe(
        self, execution_id: str, listener: Listener, *, last_sequence: int | None = None
    ) -> Subscription:
        # No await below: replay and registration are atomic w.r.t. publish.
        ex = self._executions.get(execution_id) or self._create(execution_id)
        sub = ListenerSubscription(execution_id, listener, self._remove)
        if last_sequence is not None:
            replay = ex.log.since(last_sequence, self._clock.monotonic())
            if replay.gap is not None:
                gap = Frame(
                    execution_id,
                    replay.gap.last,
                    GAP,
                    self._clock.now().isoformat(),
                    {"from": replay.gap.first, "to": replay.gap.last},
                    replayable=False,
                )
                listener(gap)
            for frame in replay.items:
                listener(frame)
        ex.listeners = (*ex.listeners, sub)
        self._idle.pop(execution_id, None)
        return sub

    def end_execution(self, execution_id: str) -> None:
        ex = self._executions.get(execution_id)
        if ex is None or ex.ended:
            return
        ex.ended = True
        self._ended[execution_id] = None
        retention = self.options.retention_after_end_ms / 1000
        ex.timer = self._clock.call_later(retention, lambda: self._evict(execution_id, ex))

    async def save_run(self, record: RunRecord) -> None:
        runs = self._runs
        runs[record.execution_id] = dataclasses.replace(record)
        runs.move_to_end(record.execution_id)
        while len(runs) > self.options.max_executions:
            runs.popitem(last=False)

    async def load_run(self, execution_id: str) -> RunRecord | None:
        record = self._runs.get(execution_id)
        return dataclasses.replace(record) if record is not None else None

    async def health(self) -> dict[str, Any]:
        return {"backend": "memory", "status": "ok", "executions": len(self._executions)}

    async def aclose(self) -> None:
        self._closed = True
        self._runs.clear()
        for ex in self._executions.values():
            if ex.timer is not None:
                ex.timer.cancel()
            for sub in ex.listeners:
                sub._closed = True
            ex.listeners = ()
            ex.log.clear()
        self._executions.clear()
        self._ended.clear()
        self._idle.clear()
        self._forgotten.clear()
        self._runs.clear()

    # ------------------------------------------------------------------ internals
    def _create(self, execution_id: str, *, publishing: bool = False) -> _Execution:
        bound = self.options.max_executions
        if not publishing:
            bound -= bound // 10  # the last tenth is kept for runs that publish
        if len(self._executions) >= bound:
            self._make_room(execution_id, publishing)
        ex = _Execution(execution_id, ReplayLog(self.options.replay_max_frames, self._max_age))
        forgotten = self._forgotten.pop(execution_id, 0)
        if forgotten:
            # Its log was dropped: carry on numbering, and report 1..forgotten as a gap.
            ex.last_sequence = forgotten
            ex.log.evicted_through = forgotten
        self._executions[execution_id] = ex
        self._idle[execution_id] = None
        return ex

    def _make_room(self, execution_id: str, publishing: bool) -> None:
        """Evict one execution (see the module docstring for which), O(1), or refuse."""
        for candidates in (self._ended, self._idle):
            if candidates:
                victim = next(iter(candidates))
                self._evict(victim, self._executions[victim])
                return
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 1.0:
            logger.warning(
                "broker holds %d executions (max_executions=%d), all watched; refused %d new "
                "one(s) since the last line (raise broker.max_executions?)",
                len(self._executions),
                self.options.max_executions,
                self._refused,
            )
            self._refused, self._refused_logged = 0, now
        raise BrokerError(
            f"this server holds as many executions as it may ({len(self._executions)}, all being "
            f"watched; max_executions={self.options.max_executions}); cannot "
            f"{'publish to' if publishing else 'subscribe to'} a new execution "
            f"{execution_id[:64]!r} now, try again later",
            code="too_many_executions",
            context={"max_executions": self.options.max_executions},
        )

    def _evict(self, execution_id: str, ex: _Execution) -> None:
        if self._executions.get(execution_id) is not ex:
            return  # already evicted (and maybe recreated since)
        if ex.timer is not None:
            ex.timer.cancel()
        del self._executions[execution_id]
        self._ended.pop(execution_id, None)
        self._idle.pop(execution_id, None)
        if ex.last_sequence:
            self._forgotten[execution_id] = ex.last_sequence
            while len(self._forgotten) > self.options.max_executions:
                self._forgotten.popitem(last=False)
        for sub in ex.listeners:
            sub._closed = True
        ex.listeners = ()
        ex.log.clear()

    def _remove(self, sub: ListenerSubscription) -> None:
        ex = self._executions.get(sub.execution_id)
        if ex is not None and sub in ex.listeners:
            ex.listeners = tuple(s for s in ex.listeners if s is not sub)
            if not ex.listeners:
                self._idle[sub.execution_id] = None


__all__ = ["InMemoryBroker"]
