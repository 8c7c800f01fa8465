"""What the gateway needs of a broker: sequenced frames per execution, replay and fan-out.

A :class:`Broker` gives every frame of an execution the next sequence number (1, 2, 3 ... over
every frame of that execution, replayable or not), keeps replayable frames in a bounded replay
log, and calls local subscribers synchronously. The in-memory implementation is
:class:`~streaming_module.broker.memory.InMemoryBroker`; a Redis Streams one can implement the
same contract without changing the gateway.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streaming_module.protocol.frames import GAP, Frame


@dataclass(slots=True)
class RunRecord:
    """What any instance can tell about a run: ``GET /executions/{id}`` answers from it.

    ``status`` is ``"pending"``, ``"started"``, ``"completed"``, ``"failed"`` or ``"cancelled"``;
    ``result`` the JSON-able final state (bounded in bytes by whoever saves it); ``error``
    ``{"code", "message"}`` or a string when failed; ``updated`` an ISO timestamp.
    """

    execution_id: str
    status: str
    workflow: str | None = None
    result: Any = None
    error: Any = None
    updated: str = ""


RUN_RECORDS_KEPT = 10_000
"""Run records the default (in-process) :meth:`Broker.save_run` keeps, oldest dropped first."""


Listener = Callable[[Frame], None]
"""Called synchronously with each frame; must not block or await (queue and return)."""


class Subscription(abc.ABC):
    """A listener's registration on one execution. :meth:`close` stops delivery; idempotent."""

    execution_id: str

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...


class ListenerSubscription(Subscription):
    """A listener registered on one execution; the first :meth:`close` hands the subscription
    to ``on_close`` (the broker's own bookkeeping), later ones do nothing."""

    __slots__ = ("_closed", "_on_close", "execution_id", "listener")

    def __init__(
        self,
        execution_id: str,
        listener: Listener,
        on_close: Callable[[Any], None],
    ) -> None:
        self.execution_id = execution_id
        self.listener = listener
        self._on_close = on_close
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)


class Broker(abc.ABC):
    """Sequences, retains and fans out the frames of executions."""

    @abc.abstractmethod
    def publish(
        self, execution_id: str, type: str, payload: Any, *, replayable: bool = True
    ) -> Frame:
        """Give the frame the execution's next sequence number, keep it for replay when
        ``replayable``, and deliver it to the current subscribers — synchronously, never
        blocking."""

    @abc.abstractmethod
    async def subscribe(
        self, execution_id: str, listener: Listener, *, last_sequence: int | None = None
    ) -> Subscription:
        """Deliver the execution's frames to ``listener``.

        ``last_sequence`` None: live frames from now on. ``N``: first every retained frame after
        ``N`` in order — preceded by a ``gap`` frame ``{"from", "to"}`` for sequences the log no
        longer holds — then live frames, with no gap and no duplicate between the two. An
        execution that does not exist yet is subscribed to from its first frame.
        """

    @abc.abstractmethod
    def end_execution(self, execution_id: str) -> None:
        """The execution published its final frame: keep its log ``retention_after_end_ms``,
        then evict it."""

    @abc.abstractmethod
    def last_sequence(self, execution_id: str) -> int:
        """The sequence of the execution's latest frame (0 when none)."""

    async def save_run(self, record: RunRecord) -> None:
        """Keep ``record`` (replacing the execution's previous one) for :meth:`load_run`.

        This default keeps at most :data:`RUN_RECORDS_KEPT` records in this process; a backend
        shared by several processes overrides both methods so every instance sees them."""
        records: OrderedDict[str, RunRecord] | None = getattr(self, "_run_records", None)
        if records is None:
            records = OrderedDict()
            self._run_records = records
        records[record.execution_id] = record
        records.move_to_end(record.execution_id)
        while len(records) > RUN_RECORDS_KEPT:
            records.popitem(last=False)

    async def load_run(self, execution_id: str) -> RunRecord | None:
        """The last record saved for ``execution_id``, or None."""
        records: OrderedDict[str, RunRecord] | None = getattr(self, "_run_records", None)
        return records.get(execution_id) if records is not None else None

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Check the backend answers; raises :class:`BrokerError` saying what to check (no-op in
        memory). The server resource calls it before it starts listening."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait until published frames have reached the backend (no-op in memory)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop timers, drop subscriptions and logs."""


__all__ = [
    "GAP",
    "RUN_RECORDS_KEPT",
    "Broker",
    "Frame",
    "Listener",
    "ListenerSubscription",
    "RunRecord",
    "Subscription",
]
