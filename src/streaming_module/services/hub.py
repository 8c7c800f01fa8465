"""The one fan-out hub the services publish through.

Each service (tokens, events, progress) owns one :class:`Hub`. It delivers the service's
updates to the subscribers of three levels of stream — every update (the global stream), one
execution's, one ``(execution_id, node_id)``'s — and numbers each execution's updates (the
``sequence_number`` documented on :class:`~streaming_module.types.StreamMetadata`).

Delivery
    Synchronous and in order. When :meth:`Hub.publish` (or :meth:`Hub.deliver`) returns, the
    update has reached the node's, then the execution's, then the global subscribers. Called
    from inside a subscriber's callback, it only queues the update (or completion), which the
    delivery already running hands out right after the current one: every subscriber sees the
    updates in the order they were published. A subscriber that raises is logged on the
    service's logger and stays subscribed; the other subscribers and the publisher carry on.

Lifecycles
    A :class:`Channel` (the observers of one stream) is created by the first subscription and
    released when its last subscriber leaves, or when its stream completes
    (:meth:`~Hub.complete_node`, :meth:`~Hub.complete_execution`, :meth:`~Hub.close`). An
    Observable from :meth:`Hub.stream` follows the stream as it was when the Observable was made
    or first subscribed: once that stream has completed, subscribing to the same Observable again
    completes at once (as a completed reactivex ``Subject`` does); asking :meth:`Hub.stream`
    again gives an Observable of the next stream with the same ids. After :meth:`Hub.close`
    every subscription completes at once.

Memory: one channel (a tuple of observers) per stream that has subscribers, and one ``int`` per
execution from its first numbered update until :meth:`~Hub.complete_execution`,
:meth:`~Hub.release_sequence` or :meth:`~Hub.close` — nothing per execution or node that nobody
watches. Cost per update: two dict lookups for a node update (one for an execution-level update),
then one loop step and one ``try`` per subscriber; nothing is allocated unless the update is
published from inside a callback (then one queue entry).

Not thread-safe: publish and subscribe from one thread (the event loop's).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import reactivex
from reactivex import Observable
from reactivex.abc import DisposableBase, ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

T = TypeVar("T")

# Queue entry kinds (deliveries requested from inside a subscriber callback).
_UPDATE = 0
_COMPLETE_NODE = 1
_COMPLETE_EXECUTION = 2
_CLOSE = 3


class Channel(Generic[T]):
    """The observers of one stream, and the fan-out to them.

    ``emit`` calls each observer's ``on_next`` in subscription order, logging (on ``logger``)
    and otherwise ignoring what one of them raises. Subscribing or leaving during an emission
    is safe: the observers are a copy-on-write tuple. Once completed (or failed), the channel
    completes (fails) every later subscriber at once.
    """

    __slots__ = ("error", "logger", "name", "observers", "stopped")

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self.logger = logger
        self.observers: tuple[ObserverBase[T], ...] = ()
        self.stopped = False
        self.error: Exception | None = None

    def emit(self, value: T) -> None:
        for observer in self.observers:
            try:
                observer.on_next(value)
            except Exception:
                self.logger.exception(
                    "a subscriber raised on an update of %s; it stays subscribed and the "
                    "other subscribers still receive the update",
                    self.name,
                )

    def complete(self) -> None:
        """Complete every observer and every later subscriber. Idempotent."""
        self.stopped = True
        observers, self.observers = self.observers, ()
        for observer in observers:
            try:
                observer.on_completed()
            except Exception:
                self.logger.exception("a subscriber raised on completion of %s", self.name)

    def fail(self, error: Exception) -> None:
        """Send ``error`` to every observer and every later subscriber."""
        self.stopped = True
        self.error = error
        observers, self.observers = self.observers, ()
        for observer in observers:
            try:
                observer.on_error(error)
            except Exception:
                self.logger.exception("a subscriber raised on an error of %s", self.name)

    def attach(
        self,
        observer: ObserverBase[T],
        on_empty: Callable[[Channel[T]], None] | None = None,
    ) -> DisposableBase:
        """Add ``observer``; disposing the result removes it and, when it was the last one,
        calls ``on_empty(channel)``."""
        if self.stopped:
            if self.error is not None:
                observer.on_error(self.error)
            else:
                observer.on_completed()
            return Disposable()
        self.observers = (*self.observers, observer)

        def leave() -> None:
            self.observers = tuple(o for o in self.observers if o is not observer)
            if on_empty is not None and not self.observers:
                on_empty(self)

        return Disposable(leave)

    def as_observable(self) -> Observable[T]:
        """This channel as an Observable (each subscription is :meth:`attach`)."""

        def subscribe(
            observer: ObserverBase[T], scheduler: SchedulerBase | None = None
        ) -> DisposableBase:
            return self.attach(observer)

        return reactivex.create(subscribe)


class Hub(Generic[T]):
    """Fan-out and per-execution numbering of one service's updates (see the module
    docstring). ``name`` names the streams in log lines (``"token stream"`` gives "the global
    token stream", "the token stream of e1", "the token stream e1:llm"); a raising subscriber is
    logged on ``logger``."""

    __slots__ = (
        "_closed",
        "_delivering",
        "_executions",
        "_global",
        "_logger",
        "_name",
        "_nodes",
        "_outbox",
        "_sequences",
    )

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self._name = name
        self._logger = logger
        self._global: Channel[T] = Channel(f"the global {name}", logger)
        self._executions: dict[str, Channel[T]] = {}
        self._nodes: dict[str, dict[str, Channel[T]]] = {}
        self._sequences: dict[str, int] = {}
        self._outbox: deque[tuple[int, Any, Any, Any]] = deque()
        self._delivering = False
        self._closed = False

    # ------------------------------------------------------------------ subscribing

    def stream(self, execution_id: str | None = None, node_id: str | None = None) -> Observable[T]:
        """The updates of every execution (no ids), of one execution (``execution_id``), or of
        one node of it (both ids). Nothing is replayed: a subscriber gets what is published
        after it subscribed. ``node_id`` without ``execution_id`` is not a level of this hub
        (filter the global stream)."""
        bound: list[Channel[T] | None] = [self._find(execution_id, node_id)]

        def subscribe(
            observer: ObserverBase[T], scheduler: SchedulerBase | None = None
        ) -> DisposableBase:
            channel = bound[0]
            if channel is None or not channel.stopped:
                channel = bound[0] = self._open(execution_id, node_id)
            return channel.attach(observer, self._forget)

        return reactivex.create(subscribe)

    def _find(self, execution_id: str | None, node_id: str | None) -> Channel[T] | None:
        if execution_id is None:
            return self._global
        if node_id is None:
            return self._executions.get(execution_id)
        nodes = self._nodes.get(execution_id)
        return nodes.get(node_id) if nodes is not None else None

    def _open(self, execution_id: str | None, node_id: str | None) -> Channel[T]:
        """The live channel of that stream, created if needed (the stopped global channel
        after close, so new subscribers complete at once)."""
        if execution_id is None or self._closed:
            return self._global
        if node_id is None:
            channel = self._executions.get(execution_id)
            if channel is None:
                channel = self._executions[execution_id] = _KeyedChannel(
                    f"the {self._name} of {execution_id}", self._logger, execution_id, None
                )
            return channel
        nodes = self._nodes.get(execution_id)
        if nodes is None:
            nodes = self._nodes[execution_id] = {}
        channel = nodes.get(node_id)
        if channel is None:
            channel = nodes[node_id] = _KeyedChannel(
                f"the {self._name} {execution_id}:{node_id}", self._logger, execution_id, node_id
            )
        return channel

    def _forget(self, channel: Channel[T]) -> None:
        """The last subscriber left ``channel``: drop it, so memory follows subscribers."""
        if not isinstance(channel, _KeyedChannel):
            return  # the global channel stays
        execution_id, node_id = channel.execution_id, channel.node_id
        if node_id is None:
            if self._executions.get(execution_id) is channel:
                del self._executions[execution_id]
            return
        nodes = self._nodes.get(execution_id)
        if nodes is not None and nodes.get(node_id) is channel:
            del nodes[node_id]
            if not nodes:
                del self._nodes[execution_id]

    # ------------------------------------------------------------------ numbering

    def next_sequence(self, execution_id: str) -> int:
        """The next ``sequence_number`` of ``execution_id``'s updates: 1, 2, 3, ..."""
        sequence = self._sequences.get(execution_id, 0) + 1
        self._sequences[execution_id] = sequence
        return sequence

    def note_sequence(self, execution_id: str, sequence: int) -> None:
        """An update numbered elsewhere was published: later numbers continue after it."""
        if sequence > self._sequences.get(execution_id, 0):
            self._sequences[execution_id] = sequence

    def release_sequence(self, execution_id: str) -> None:
        """Forget ``execution_id``'s numbering: its next update is number 1 again."""
        self._sequences.pop(execution_id, None)

    # ------------------------------------------------------------------ publishing

    def publish(self, execution_id: str, node_id: str | None, update: T) -> None:
        """Deliver ``update`` to its node's, its execution's and the global subscribers (from
        inside a subscriber callback: queue it behind the delivery under way)."""
        if self._delivering:
            self._outbox.append((_UPDATE, execution_id, node_id, update))
            return
        self._delivering = True
        try:
            self._emit(execution_id, node_id, update)
            if self._outbox:
                self._drain()
        finally:
            self._delivering = False

    def enqueue(self, execution_id: str, node_id: str | None, update: T) -> None:
        """Queue ``update``; :meth:`deliver` hands out the queue. Use it to publish several
        updates as one step, so nothing published by their subscribers comes between them."""
        self._outbox.append((_UPDATE, execution_id, node_id, update))

    def deliver(self) -> None:
        """Deliver everything queued, in order (a no-op inside a delivery under way: that one
        delivers it)."""
        if self._delivering or not self._outbox:
            return
        self._delivering = True
        try:
            self._drain()
        finally:
            self._delivering = False

    @property
    def delivering(self) -> bool:
        """Whether a delivery is under way (i.e. the caller runs inside a subscriber)."""
        return self._delivering

    def complete_node(self, execution_id: str, node_id: str) -> None:
        """Complete the stream of that node (its subscribers' ``on_completed``), after what is
        queued."""
        self._outbox.append((_COMPLETE_NODE, execution_id, node_id, None))
        self.deliver()

    def complete_execution(self, execution_id: str) -> None:
        """Complete the execution's node streams and its own stream, after what is queued, and
        forget its numbering. Idempotent."""
        self._sequences.pop(execution_id, None)
        self._outbox.append((_COMPLETE_EXECUTION, execution_id, None, None))
        self.deliver()

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Complete every stream (node, execution, then global), after what is queued, then
        call ``then``. Later subscriptions complete at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sequences.clear()
        self._outbox.append((_CLOSE, None, None, then))
        self.deliver()

    # ------------------------------------------------------------------ introspection

    @property
    def channel_count(self) -> int:
        """Execution and node streams that have subscribers (the global one not counted)."""
        return len(self._executions) + sum(len(nodes) for nodes in self._nodes.values())

    def executions(self) -> set[str]:
        """Executions this hub holds anything for (a stream with subscribers or numbering)."""
        return set(self._executions) | set(self._nodes) | set(self._sequences)

    # ------------------------------------------------------------------ internals

    def _emit(self, execution_id: str, node_id: str | None, update: T) -> None:
        if node_id is not None:
            nodes = self._nodes.get(execution_id)
            if nodes is not None:
                channel = nodes.get(node_id)
                if channel is not None:
                    channel.emit(update)
        channel = self._executions.get(execution_id)
        if channel is not None:
            channel.emit(update)
        self._global.emit(update)

    def _drain(self) -> None:
        outbox = self._outbox
        while outbox:
            kind, execution_id, node_id, payload = outbox.popleft()
            if kind == _UPDATE:
                self._emit(execution_id, node_id, payload)
            elif kind == _COMPLETE_NODE:
                nodes = self._nodes.get(execution_id)
                channel = nodes.pop(node_id, None) if nodes is not None else None
                if nodes is not None and not nodes:
                    del self._nodes[execution_id]
                if channel is not None:
                    channel.complete()
            elif kind == _COMPLETE_EXECUTION:
                for channel in list(self._nodes.pop(execution_id, {}).values()):
                    channel.complete()
                channel = self._executions.pop(execution_id, None)
                if channel is not None:
                    channel.complete()
            else:
                self._complete_all()
                if payload is not None:
                    payload()

    def _complete_all(self) -> None:
        nodes, self._nodes = self._nodes, {}
        executions, self._executions = self._executions, {}
        for by_node in nodes.values():
            for channel in list(by_node.values()):
                channel.complete()
        for channel in list(executions.values()):
            channel.complete()
        self._global.complete()


class _KeyedChannel(Channel[T]):
    """A channel of one execution (``node_id`` ``None``) or one node: it knows its key so the
    hub can drop it when its last subscriber leaves."""

    __slots__ = ("execution_id", "node_id")

    def __init__(
        self, name: str, logger: logging.Logger, execution_id: str, node_id: str | None
    ) -> None:
        super().__init__(name, logger)
        self.execution_id = execution_id
        self.node_id = node_id


__all__ = ["Channel", "Hub"]
