"""EventStreamProcessorService: publish workflow events and process streams of them.

Publishing (:meth:`~EventStreamProcessorService.emit_event`, ``emit_update``, ``emit_status``)
is synchronous: every subscriber of the execution's stream and of the global stream has seen the
update when the call returns (called from inside a subscriber, the update follows right after the
one being delivered, so every subscriber sees events in publication order). Delivery goes through
the services' :class:`~streaming_module.services.hub.Hub`: a subscriber that raises is logged
(logger ``streaming_module.events``) and the others and the publisher carry on.

Memory: one channel per execution stream that has subscribers (released when the last one
leaves) and one sequence counter per execution that has events (plus, for an execution whose
transformer failed, the nodes it failed for), freed by
:meth:`~EventStreamProcessorService.complete_execution` — called automatically by a final status
(``completed``, ``failed``, ``cancelled``). Nothing is kept for replay here (that is the broker's
job): an update reaches the subscribers present when it is published.

The processing helpers (``filter_events``, ``transform_events``, ``aggregate_by_execution``,
``process_batch``, ``group_events_by_type``) are thin adapters over the pure
:mod:`streaming_module.core.events`.

A transformer that fails
    ``emit_event(..., transformer=...)`` (what a ``@stream_event(transformer=...)`` node
    publishes through) and ``transform_events`` run a user's transformer on one event at a
    time. When it raises, or returns something that is not an update (see
    :func:`~streaming_module.core.events.merge_transformed`), that event is dropped and nothing
    else: the call returns normally and every later event is offered to the transformer again.
    The first failure for a node of an execution is reported by one ``error`` event, data
    ``{"code": "callback_failed", "callback": "transformer", "node", "error", "error_type",
    "message"}`` (see :mod:`streaming_module.services._base`), logged once with its traceback:
    ``emit_event`` publishes it on the execution's stream (it does not go through the
    transformer); ``transform_events`` puts it in the returned list in place of the event, with
    that event's metadata (execution, node, timestamp, number) and priority ``high``, once per
    node and execution in that list.

Not thread-safe: publish from the event loop's thread (a node running in a worker thread should
hand its events over with ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, overload

import reactivex
from reactivex import GroupedObservable, Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, Disposable

from streaming_module.config import EventFilterCriteria, parse_options
from streaming_module.core.clock import TimerHandle
from streaming_module.core.events import (
    Batcher,
    aggregate_for_execution,
    check_priority,
    coerce_event_type,
    coerce_event_types,
    default_priority,
    filter_updates,
    merge_transformed,
)
from streaming_module.errors import EventStreamingError
from streaming_module.services._base import CallbackErrorUpdate, ServiceBase, split_metadata
from streaming_module.services._streams import (
    DEFAULT_MAX_QUEUE,
    ObservableAsyncIterator,
    OverflowPolicy,
    observable_to_async_iter,
)
from streaming_module.services.hub import Channel
from streaming_module.types import (
    FINAL_STATUSES,
    EventPriority,
    RunStatus,
    StatusData,
    StreamEventType,
    StreamMetadata,
    StreamUpdate,
)

logger = logging.getLogger("streaming_module.events")

_RUN_STATUSES = ("started", "completed", "failed", "cancelled")

Update = StreamUpdate[Any]
Transformer = Callable[[Update], Any]
"""A user's event transformer: an update in; a :class:`StreamUpdate`, a dict in the manual's
spread style (``{**event, "enriched": True}``) or ``None`` (drop the event) out."""


class EventStreamProcessorService(ServiceBase[Any]):
    """Publishes workflow events per execution and processes event streams (the manual's
    ``EventStreamProcessorService``).

    ``options`` (a :class:`StreamingModuleOptions` or a dict) is kept for the container's sake;
    ``clock`` gives timestamps and ``process_batch``'s debounce timers (default: real time).
    """

    error_type = EventStreamingError
    _hub_name = "event stream"
    _logger = logger

    # ------------------------------------------------------------------ publishing

    @overload
    def emit_event(
        self,
        execution_id: str,
        event_type: StreamEventType | str,
        data: Any = None,
        *,
        node_id: str | None = None,
        priority: EventPriority | None = None,
        metadata: Mapping[str, Any] | None = None,
        transformer: None = None,
    ) -> Update: ...

    @overload
    def emit_event(
        self,
        execution_id: str,
        event_type: StreamEventType | str,
        data: Any = None,
        *,
        node_id: str | None = None,
        priority: EventPriority | None = None,
        metadata: Mapping[str, Any] | None = None,
        transformer: Transformer | None,
    ) -> Update | None: ...

    def emit_event(
        self,
        execution_id: str,
        event_type: StreamEventType | str,
        data: Any = None,
        *,
        node_id: str | None = None,
        priority: EventPriority | None = None,
        metadata: Mapping[str, Any] | None = None,
        transformer: Transformer | None = None,
    ) -> Update | None:
        """Publish one event of ``execution_id`` and return it.

        The update gets ``StreamMetadata(timestamp=clock.now(), sequence_number=<next of this
        execution's events, from 1>, execution_id, node_id, **extras)``. ``metadata`` entries
        become extras, except the :data:`~streaming_module.types.RESERVED_METADATA_KEYS`:
        ``agent_type`` sets that field, ``node_id`` is used when the argument is not given, and
        ``timestamp``, ``sequence_number`` and ``execution_id`` are the service's and are
        ignored. ``priority`` (else ``metadata['priority']``, else ``high`` for ``error``,
        ``low`` for ``debug``, ``medium`` otherwise) is stored as the extra ``priority``.

        With a ``transformer`` the event is first built (timestamped now, ``sequence_number``
        0: it has no number yet, and gets one only if published) and handed to it. It may
        return a :class:`StreamUpdate`, a dict in the manual's spread style, merged over the
        event (see :meth:`transform_events`), or ``None`` to drop the event (then nothing is
        published and ``None`` is returned). What it returns sets the published event's type,
        data, ``agent_type`` and extras (``priority`` included, else the default for the new
        type); the execution, node, timestamp and number stay the service's. A transformer that
        fails drops the event, returns ``None``, and reports itself by one ``error`` event (see
        "A transformer that fails" in the module docstring).

        Raises :class:`EventStreamingError` for an empty ``execution_id`` (code
        ``invalid_id``), an unknown type or priority, or a closed service (code
        ``service_closed``).
        """
        self._check_open("emit_event")
        self._check_id(execution_id, "execution_id")
        kind = coerce_event_type(event_type)
        extras, given_node_id, agent_type = split_metadata(metadata)
        if node_id is None:
            node_id = given_node_id
        if priority is not None:
            extras["priority"] = check_priority(priority)
        elif "priority" in extras:
            extras["priority"] = check_priority(extras["priority"])
        if transformer is not None:
            candidate = StreamUpdate(
                kind,
                data,
                StreamMetadata(self.clock.now(), 0, execution_id, node_id, agent_type, **extras),
            )
            try:
                transformed = self._transform(candidate, transformer)
                if transformed is None:
                    return None
                kind = coerce_event_type(transformed.type)
                data = transformed.data
                if transformed.metadata is not None:
                    extras = dict(transformed.metadata.extra)
                    agent_type = transformed.metadata.agent_type
                    if "priority" in extras:
                        extras["priority"] = check_priority(extras["priority"])
            except Exception as exc:  # the user's transformer: this event is dropped
                self._callback_failed("transformer", execution_id, node_id, exc)
                return None
        if "priority" not in extras:
            extras["priority"] = default_priority(kind)
        return self._publish_new(kind, data, execution_id, node_id, agent_type, extras)

    def emit_update(self, update: StreamUpdate[Any]) -> None:
        """Publish an update built elsewhere, unchanged. It must carry
        ``metadata.execution_id``; later ``emit_event`` numbers continue after its
        ``sequence_number`` (never reusing one)."""
        self._check_open("emit_update")
        if not isinstance(update, StreamUpdate):
            raise EventStreamingError(
                f"emit_update takes a StreamUpdate, got {type(update).__name__}",
                code="invalid_event",
            )
        if update.metadata is None:
            raise EventStreamingError(
                "emit_update needs an update with metadata carrying its execution_id; use "
                "emit_event(execution_id, type, data) to have it built",
                code="invalid_event",
            )
        execution_id = self._check_id(update.metadata.execution_id, "execution_id")
        seq = update.metadata.sequence_number
        if isinstance(seq, int):
            self._hub.note_sequence(execution_id, seq)
        self._hub.publish(execution_id, None, update)

    def emit_status(
        self,
        execution_id: str,
        status: RunStatus,
        *,
        error: str | None = None,
        result: Any = None,
    ) -> StreamUpdate[StatusData]:
        """Publish a run status (type ``status``, data :class:`StatusData`; priority ``high``
        for ``failed``, else ``medium``). A final status
        (``completed``, ``failed``, ``cancelled``) then completes the execution's streams and
        frees its state, as :meth:`complete_execution` does."""
        if status not in _RUN_STATUSES:
            raise EventStreamingError(
                f"unknown run status {status!r}; use one of {', '.join(_RUN_STATUSES)}",
                code="unknown_status",
                context={"status": status},
            )
        update = self.emit_event(
            execution_id,
            StreamEventType.STATUS,
            StatusData(status, error, result),
            priority="high" if status == "failed" else None,
        )
        if status in FINAL_STATUSES:
            self.complete_execution(execution_id)
        return update

    # ------------------------------------------------------------------ subscribing

    def get_event_stream(
        self,
        execution_id: str | None = None,
        types: Iterable[StreamEventType | str] | None = None,
    ) -> Observable[Update]:
        """Live events: of every execution (``execution_id=None``; completes on ``aclose``) or of
        one execution (completes when it completes; may be asked for before its first event),
        optionally only of the given ``types``. Nothing is replayed. Subscribing again to an
        execution's Observable after that execution completed completes at once (ask again for
        a later run with the same id)."""
        self._check_open("get_event_stream")
        if execution_id is not None:
            self._check_id(execution_id, "execution_id")
        source = self._hub.stream(execution_id)
        if types is None:
            return source
        wanted = coerce_event_types(types)

        def wanted_type(update: Update) -> bool:
            return update.type in wanted

        return source.pipe(ops.filter(wanted_type))

    def iter_event_stream(
        self,
        execution_id: str | None = None,
        types: Iterable[StreamEventType | str] | None = None,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        overflow: OverflowPolicy = "error",
    ) -> ObservableAsyncIterator[Update]:
        """:meth:`get_event_stream` as an async iterator (``async for``), ending when the stream
        completes. Subscribes at once; holds at most ``max_queue`` updates for a slow consumer;
        beyond that ``overflow='error'`` unsubscribes and raises ``StreamOverflowError`` after
        the queued updates, ``'drop_oldest'`` discards the oldest (see
        :func:`streaming_module.services._streams.observable_to_async_iter`)."""
        return observable_to_async_iter(
            self.get_event_stream(execution_id, types),
            max_queue=max_queue,
            overflow=overflow,
            name="event stream",
        )

    # ------------------------------------------------------------------ processing

    def process_batch(
        self,
        events: Iterable[Update] | Observable[Update],
        batch_size: int = 10,
        debounce_ms: int = 0,
    ) -> Observable[list[Update]]:
        """Batches of at most ``batch_size`` events: every event exactly once, in order; the
        remainder is emitted when the source completes (or errors, before the error), then the
        stream completes. With ``debounce_ms > 0`` a partial batch is also emitted after that many
        milliseconds without a new event (timer from the injected clock; with the real clock it
        needs a running event loop). Holds at most ``batch_size - 1`` events."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EventStreamingError(
                f"batch_size must be a whole number of at least 1, got {batch_size!r}",
                code="invalid_argument",
            )
        if isinstance(debounce_ms, bool) or not isinstance(debounce_ms, (int, float)):
            raise EventStreamingError(
                f"debounce_ms must be a number of milliseconds, got {debounce_ms!r}",
                code="invalid_argument",
            )
        if debounce_ms < 0:
            raise EventStreamingError(
                f"debounce_ms must be 0 or more, got {debounce_ms!r}", code="invalid_argument"
            )
        source = self._as_observable(events)
        clock = self.clock
        delay = debounce_ms / 1000.0

        def subscribe(
            observer: abc.ObserverBase[list[Update]],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            batcher = Batcher(batch_size)
            lock = threading.RLock()
            timer: list[TimerHandle | None] = [None]

            def cancel_timer() -> None:
                if timer[0] is not None:
                    timer[0].cancel()
                    timer[0] = None

            def on_quiet() -> None:
                with lock:
                    timer[0] = None
                    batch = batcher.drain()
                if batch:
                    observer.on_next(batch)

            def on_next(event: Update) -> None:
                with lock:
                    batch = batcher.add(event)
                    cancel_timer()
                    if delay > 0 and len(batcher):
                        timer[0] = clock.call_later(delay, on_quiet)
                if batch:
                    observer.on_next(batch)

            def on_error(exc: Exception) -> None:
                with lock:
                    cancel_timer()
                    batch = batcher.drain()
                if batch:
                    observer.on_next(batch)
                observer.on_error(exc)

            def on_completed() -> None:
                with lock:
                    cancel_timer()
                    batch = batcher.drain()
                if batch:
                    observer.on_next(batch)
                observer.on_completed()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)
            return CompositeDisposable(subscription, Disposable(cancel_timer))

        return reactivex.create(subscribe)

    def iter_process_batch(
        self,
        events: Iterable[Update] | Observable[Update],
        batch_size: int = 10,
        debounce_ms: int = 0,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> ObservableAsyncIterator[list[Update]]:
        """:meth:`process_batch` as an async iterator (``async for batch in ...``), ending when
        the source completes. Subscribes at once; a consumer more than ``max_queue`` batches
        behind gets ``StreamOverflowError`` after the batches queued before it (a batch is never
        silently dropped)."""
        return observable_to_async_iter(
            self.process_batch(events, batch_size, debounce_ms),
            max_queue=max_queue,
            overflow="error",
            name="event batches",
        )

    def group_events_by_type(
        self, events: Observable[Update] | Iterable[Update]
    ) -> Observable[GroupedObservable[StreamEventType, Update]]:
        """One inner stream per event type (``group.key``), emitted when its first event arrives
        (subscribe to it right away to see that event). All groups complete, and are released,
        when the source completes; they error with it; disposing the outer subscription releases
        them too. Costs one subject per distinct type (at most one per ``StreamEventType``)."""
        source = self._as_observable(events)

        def subscribe(
            observer: abc.ObserverBase[GroupedObservable[StreamEventType, Update]],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            groups: dict[StreamEventType, Channel[Update]] = {}

            def on_next(event: Update) -> None:
                group = groups.get(event.type)
                if group is None:
                    group = groups[event.type] = Channel(f"the {event.type} group", logger)
                    observer.on_next(GroupedObservable(event.type, group.as_observable()))
                group.emit(event)

            def on_error(exc: Exception) -> None:
                released = list(groups.values())
                groups.clear()
                for group in released:
                    group.fail(exc)
                observer.on_error(exc)

            def on_completed() -> None:
                released = list(groups.values())
                groups.clear()
                for group in released:
                    group.complete()
                observer.on_completed()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)
            return CompositeDisposable(subscription, Disposable(groups.clear))

        return reactivex.create(subscribe)

    def aggregate_by_execution(
        self, execution_id: str, events: Iterable[Update]
    ) -> dict[StreamEventType, list[Update]]:
        """The events of ``execution_id`` grouped by type (keys in first-seen order, events in
        arrival order); other executions' events and events without metadata are left out."""
        self._check_id(execution_id, "execution_id")
        return aggregate_for_execution(execution_id, events)

    def filter_events(
        self,
        events: Iterable[Update],
        criteria: EventFilterCriteria | Mapping[str, Any],
    ) -> list[Update]:
        """The events that meet every rule of ``criteria`` (an :class:`EventFilterCriteria` or a
        dict with the same keys, snake_case or camelCase), in order. Rules:
        :class:`streaming_module.core.events.EventFilter`. Bad criteria raise
        :class:`~streaming_module.errors.StreamingConfigError` naming the bad key."""
        parsed = parse_options(EventFilterCriteria, criteria, what="event filter criteria")
        return filter_updates(events, parsed)

    def transform_events(
        self,
        events: Iterable[Update],
        transformer: Transformer,
    ) -> list[Update | CallbackErrorUpdate]:
        """``transformer`` applied to each event, in order. It may return a
        :class:`StreamUpdate`, a dict in the manual's spread style
        (``lambda e: {**e, "enriched": True}``) that is merged into a new update
        (``type``/``data``/``metadata`` replace those fields, metadata field names set them, and
        every other key becomes a metadata extra: ``e.metadata.enriched``), or ``None`` to
        leave the event out. The input events are never modified. See
        :func:`streaming_module.core.events.merge_transformed`.

        An event the transformer fails on is left out; the first such event of each node and
        execution is replaced by an ``error`` update saying so (see "A transformer that fails"
        in the module docstring), so the list reports it the way a live stream does."""
        if not callable(transformer):
            raise EventStreamingError(
                f"transformer must be callable, got {type(transformer).__name__}",
                code="invalid_argument",
            )
        out: list[Update | CallbackErrorUpdate] = []
        failed: dict[str, set[tuple[str | None, str]]] = {}
        for event in events:
            try:
                transformed = self._transform(event, transformer)
            except Exception as exc:  # the user's transformer: this event is left out
                meta = event.metadata
                execution_id = meta.execution_id if meta is not None else None
                node_id = meta.node_id if meta is not None else None
                error = self._first_failure(failed, "transformer", execution_id, node_id, exc)
                if error is not None:
                    out.append(StreamUpdate(StreamEventType.ERROR, error, _error_metadata(meta)))
                continue
            if transformed is not None:
                out.append(transformed)
        return out

    # ------------------------------------------------------------------ lifecycle

    def complete_execution(self, execution_id: str) -> None:
        """Complete the execution's streams and free its channel and counter. Idempotent. A
        later event of the same id starts afresh (sequence numbers from 1)."""
        self._forget_callback_failures(execution_id)
        self._hub.complete_execution(execution_id)

    @property
    def active_executions(self) -> list[str]:
        """Executions holding a stream with subscribers or a sequence counter (introspection,
        tests)."""
        return sorted(self._hub.executions())

    async def aclose(self) -> None:
        """Complete every stream (per execution, then the global one) and refuse further use
        (code ``service_closed``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._forget_callback_failures()
        self._hub.close()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _transform(event: Update, transformer: Transformer) -> Update | None:
        """What ``transformer`` makes of ``event`` (``None``: leave it out); raises what the
        transformer raises, and :class:`EventStreamingError` for a result that is not an
        update."""
        result = transformer(event)
        if result is None:
            return None
        return merge_transformed(event, result)

    @staticmethod
    def _as_observable(events: Iterable[Update] | Observable[Update]) -> Observable[Update]:
        if isinstance(events, Observable):
            return events
        if isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
            raise EventStreamingError(
                f"expected an Observable or an iterable of StreamUpdate, got "
                f"{type(events).__name__}",
                code="invalid_argument",
            )
        return reactivex.from_iterable(events)


def _error_metadata(metadata: StreamMetadata | None) -> StreamMetadata | None:
    """Where an event stood, for the ``error`` update that takes its place."""
    if metadata is None:
        return None
    return StreamMetadata(
        metadata.timestamp,
        metadata.sequence_number,
        metadata.execution_id,
        metadata.node_id,
        metadata.agent_type,
        priority="high",
    )


__all__ = ["EventStreamProcessorService", "Transformer"]
