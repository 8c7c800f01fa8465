"""Turning a reactivex Observable into an ``async for``-able iterator, with a bounded queue.

Every service Observable has an async-iterator twin built with :func:`observable_to_async_iter`.
The Observable side pushes synchronously (it cannot wait for a slow consumer), so the iterator
keeps what was pushed and not yet consumed in a queue of at most ``max_queue`` items. What happens
when that queue is full is the ``overflow`` policy:

``"error"`` (the default; for streams where a gap would corrupt what the consumer builds, such as
    tokens): the subscription is dropped, the consumer still receives every item queued before
    the overflow, then ``async for`` raises :class:`StreamOverflowError`. Nothing is silently
    lost: the consumer knows exactly where its copy stops.
``"drop_oldest"`` (for snapshot streams such as statistics, where only the latest matters): the
    oldest queued item is discarded to make room; ``iterator.dropped`` counts them.

Memory: at most ``max_queue`` references. Iteration ends when the Observable completes, raises the
Observable's error after the items queued before it, and unsubscribes when the consumer breaks out
of ``async for`` (CPython frees the iterator at once, which unsubscribes), calls ``aclose()``, or
drops the iterator. The subscription is made when :func:`observable_to_async_iter` is called, not
at the first ``__anext__``, so nothing pushed in between is missed.

Items may be pushed from the consumer's event-loop thread (the usual case: the services emit
synchronously on the loop) or from another thread (the wake-up then goes through
``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, Literal, TypeVar

from reactivex import Observable
from reactivex.abc import DisposableBase

from streaming_module.errors import StreamOverflowError

T = TypeVar("T")

OverflowPolicy = Literal["error", "drop_oldest"]

DEFAULT_MAX_QUEUE = 10_000
"""Items an iterator holds before its overflow policy applies."""


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Sink(Generic[T]):
    """The subscriber side: the queue and the wake-up. It never references the iterator that
    wraps it, so dropping the iterator (e.g. ``break``) can unsubscribe at once."""

    __slots__ = (
        "dropped",
        "error",
        "finished",
        "items",
        "loop",
        "loop_thread",
        "max_queue",
        "name",
        "overflow",
        "subscription",
        "waiter",
    )

    def __init__(self, max_queue: int, overflow: OverflowPolicy, name: str) -> None:
        self.max_queue = max_queue
        self.overflow: OverflowPolicy = overflow
        self.name = name
        self.dropped = 0
        self.items: deque[T] = deque()
        self.error: BaseException | None = None
        self.finished = False  # no more items will be queued
        self.waiter: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.subscription: DisposableBase | None = None

    def on_next(self, value: T) -> None:
        if self.finished:
            return
        items = self.items
        if len(items) >= self.max_queue:
            if self.overflow == "drop_oldest":
                items.popleft()
                self.dropped += 1
            else:
                self.error = StreamOverflowError(
                    f"the consumer of {self.name} fell more than {self.max_queue} updates "
                    "behind, so it was unsubscribed; consume faster, raise max_queue, or "
                    "subscribe to the Observable directly",
                    context={"max_queue": self.max_queue, "stream": self.name},
                )
                self.finish()
                return
        items.append(value)
        self.notify()

    def on_error(self, error: Exception) -> None:
        if not self.finished:
            self.error = error
            self.finish()

    def on_completed(self) -> None:
        if not self.finished:
            self.finish()

    def finish(self) -> None:
        self.finished = True
        self.unsubscribe()
        self.notify()

    def notify(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if threading.get_ident() == self.loop_thread:
            waiter.set_result(None)
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(_wake, waiter)

    def unsubscribe(self) -> None:
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            subscription.dispose()


class ObservableAsyncIterator(AsyncIterator[T]):
    """An ``async for`` view of an Observable; see the module docstring for the queue policy."""

    __slots__ = ("_sink", "name")

    def __init__(
        self,
        observable: Observable[T],
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        overflow: OverflowPolicy = "error",
        name: str = "stream",
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue!r}")
        if overflow not in ("error", "drop_oldest"):
            raise ValueError(f"overflow must be 'error' or 'drop_oldest', got {overflow!r}")
        self.name = name
        sink: _Sink[T] = _Sink(max_queue, overflow, name)
        self._sink = sink
        subscription = observable.subscribe(
            on_next=sink.on_next, on_error=sink.on_error, on_completed=sink.on_completed
        )
        if sink.finished:
            # Completed (or overflowed) during subscribe: nothing left to listen to.
            subscription.dispose()
        else:
            sink.subscription = subscription

    def __aiter__(self) -> ObservableAsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        """The next item; waits (without polling) while the queue is empty."""
        sink = self._sink
        while True:
            if sink.items:
                return sink.items.popleft()
            if sink.error is not None:
                error, sink.error = sink.error, None
                raise error
            if sink.finished:
                raise StopAsyncIteration
            loop = asyncio.get_running_loop()
            sink.loop = loop
            sink.loop_thread = threading.get_ident()
            waiter: asyncio.Future[None] = loop.create_future()
            sink.waiter = waiter
            try:
                await waiter
            finally:
                sink.waiter = None

    async def aclose(self) -> None:
        """Unsubscribe and discard what is queued; iteration then ends. Idempotent."""
        self.close()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        sink = self._sink
        sink.error = None
        sink.items.clear()
        sink.finish()

    @property
    def max_queue(self) -> int:
        return self._sink.max_queue

    @property
    def overflow(self) -> OverflowPolicy:
        return self._sink.overflow

    @property
    def dropped(self) -> int:
        """Items discarded by the ``drop_oldest`` policy."""
        return self._sink.dropped

    @property
    def queued(self) -> int:
        """Items received and not yet consumed."""
        return len(self._sink.items)

    @property
    def subscribed(self) -> bool:
        """Whether the iterator still listens to its Observable."""
        return self._sink.subscription is not None

    def __del__(self) -> None:
        # Breaking out of ``async for`` drops the last reference: unsubscribe right away.
        sink = getattr(self, "_sink", None)
        if sink is not None:
            sink.finished = True
            sink.unsubscribe()


def observable_to_async_iter(
    observable: Observable[T],
    *,
    max_queue: int = DEFAULT_MAX_QUEUE,
    overflow: OverflowPolicy = "error",
    name: str = "stream",
) -> ObservableAsyncIterator[T]:
    """Subscribe to ``observable`` now and return an async iterator over what it pushes.

    ``max_queue`` bounds the items held for a slow consumer and ``overflow`` says what happens
    beyond it (``"error"``: unsubscribe, deliver what was queued, then raise
    :class:`StreamOverflowError`; ``"drop_oldest"``: discard the oldest). ``name`` appears in
    the overflow message. Cost per item: one deque append and, when the consumer is waiting,
    one future wake-up.
    """
    return ObservableAsyncIterator(observable, max_queue=max_queue, overflow=overflow, name=name)


__all__ = [
    "DEFAULT_MAX_QUEUE",
    "ObservableAsyncIterator",
    "OverflowPolicy",
    "StreamOverflowError",
    "observable_to_async_iter",
]
