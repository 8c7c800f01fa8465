"""ProgressTrackingService: per execution and node progress trackers, their reports as streams.

A :class:`ProgressTracker` turns ``update(current, total)`` calls into progress updates —
``StreamUpdate(type=PROGRESS, data=ProgressData(...), metadata=StreamMetadata(..., execution_id,
node_id))`` — following its :class:`~streaming_module.config.StreamProgressOptions`. What is
reported, and how rate, ETA and milestones are computed, is decided by the pure
:class:`streaming_module.core.progress.ProgressComputer` (see that module's docstring); this module
adds time (the injected clock), sequence numbers (per execution, from 1: see
:class:`~streaming_module.types.StreamMetadata`) and synchronous, ordered delivery to subscribers
through the services' :class:`~streaming_module.services.hub.Hub` (a subscriber that raises is
logged on ``streaming_module.progress`` and the others still get the update).

A ``calculator`` that raises, or returns something other than a finite number, costs only the
report it failed on: ``update`` returns ``None`` (as for a report held back), ``start`` and
``complete`` return ``None`` instead of the data, nothing is recorded, the tracker stays open
and later updates are offered to the calculator again. The first failure of a node's calculator
in an execution publishes one update of type ``ERROR`` on the progress stream, data
``{"code": "callback_failed", "callback": "calculator", "node", "error", "error_type",
"message"}`` (see :mod:`streaming_module.services._base`; ``error_type`` is the calculator's
exception, not ``ProgressTrackingError``), and logs its traceback once; later failures there
publish nothing more. A tracker with ``enabled=False`` publishes nothing, that included.
Subscribers of a progress stream therefore check ``update.type``
(:data:`ProgressStreamUpdate`).

Memory: a tracker is a few floats plus its last report; one channel per stream that has
subscribers (released when the last one leaves). A tracker is released by ``close_tracker``; an
execution's trackers, streams and counter by ``close_execution``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from reactivex import Observable
from reactivex import operators as ops

from streaming_module.config import StreamingModuleOptions, StreamProgressOptions, parse_options
from streaming_module.core.clock import Clock
from streaming_module.core.progress import ProgressComputer
from streaming_module.errors import ProgressTrackingError
from streaming_module.services._base import CallbackErrorUpdate, ServiceBase, split_metadata
from streaming_module.services._streams import (
    DEFAULT_MAX_QUEUE,
    ObservableAsyncIterator,
    OverflowPolicy,
    observable_to_async_iter,
)
from streaming_module.types import ProgressData, StreamEventType, StreamUpdate

logger = logging.getLogger("streaming_module.progress")

TrackerKey = tuple[str, str | None]
ProgressUpdate = StreamUpdate[ProgressData]
"""A progress report: type ``PROGRESS``, data :class:`ProgressData`."""

ProgressStreamUpdate = ProgressUpdate | CallbackErrorUpdate
"""What a progress stream carries: progress reports, and one ``error`` update for a tracker
whose calculator failed (check ``update.type``)."""

_CALCULATOR_FAILED = "calculator_failed"  # the code core.progress gives a calculator's failure


def _describe(key: TrackerKey) -> str:
    return f"{key[0]}:{key[1]}" if key[1] is not None else key[0]


class ProgressTracker:
    """Progress of one execution, or one node of it. Get one from
    :meth:`ProgressTrackingService.create_tracker`.

    ``last`` is the last reported :class:`ProgressData` (``None`` before the first report).
    Reporting is synchronous: when ``update``/``update_nowait`` returns, subscribers have the
    update.
    """

    def __init__(
        self,
        execution_id: str,
        node_id: str | None,
        options: StreamProgressOptions,
        clock: Clock,
        publish: Callable[[ProgressTracker, ProgressData, Mapping[str, Any] | None], None],
        on_close: Callable[[ProgressTracker], None],
        on_calculator_error: Callable[[ProgressTracker, BaseException], None],
    ) -> None:
        self.execution_id = execution_id
        self.node_id = node_id
        self.options = options
        self._clock = clock
        self._publish = publish
        self._on_close = on_close
        self._on_calculator_error = on_calculator_error
        self._core = ProgressComputer(options, clock.monotonic())
        self.closed = False

    @property
    def key(self) -> TrackerKey:
        return (self.execution_id, self.node_id)

    @property
    def last(self) -> ProgressData | None:
        return self._core.last

    @property
    def rate(self) -> float | None:
        """The current smoothed rate in items per second (``None`` until known)."""
        return self._core.rate

    def update_nowait(
        self,
        current: float,
        total: float,
        metadata: Mapping[str, Any] | None = None,
    ) -> ProgressData | None:
        """Record progress; report it if the rules allow (first, last, milestone, then
        ``interval`` and ``granularity``). Returns the reported data, or ``None`` when held back,
        when the ``calculator`` failed (see the module docstring), or when the tracker is
        ``enabled=False`` (it then reports nothing).

        ``metadata`` goes to the ``calculator`` and into the update's metadata extras (its
        ``agent_type`` sets that field; the other
        :data:`~streaming_module.types.RESERVED_METADATA_KEYS` are the service's and ignored).
        Raises :class:`ProgressTrackingError` for a closed tracker or bad numbers.
        """
        return self._observe(current, total, metadata, force=False)

    async def update(
        self,
        current: float,
        total: float,
        metadata: Mapping[str, Any] | None = None,
    ) -> ProgressData | None:
        """:meth:`update_nowait` for ``await self.progress.update(...)`` (it never waits)."""
        return self._observe(current, total, metadata, force=False)

    async def start(self, total: float = 100) -> ProgressData | None:
        """Start (or restart) timing now and report 0 %. Rate, ETA and milestones start afresh.
        Returns the data reported (``None`` only when the ``calculator`` failed)."""
        self._check_open()
        self._core.restart(self._clock.monotonic())
        return self._observe(0, total, None, force=True)

    async def complete(self, metadata: Mapping[str, Any] | None = None) -> ProgressData | None:
        """Report 100 % (``current = total``, ``eta`` 0 with ``include_eta``), always, whatever
        the interval. The total is the last update's (100 if there was none). Returns the data
        reported (``None`` only when the ``calculator`` failed)."""
        total = self._core.last.total if self._core.last is not None else 100.0
        return self._observe(total, total, metadata, force=True)

    def close(self) -> None:
        """Stop this tracker and complete its node stream (see ``close_tracker``). Idempotent."""
        if not self.closed:
            self._on_close(self)

    def __repr__(self) -> str:
        last = f"{self.last.progress:.1f}%" if self.last is not None else "none"
        return f"ProgressTracker({_describe(self.key)!r}, last={last}, closed={self.closed})"

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self.closed:
            raise ProgressTrackingError(
                f"progress tracker {_describe(self.key)!r} is closed; create a new one with "
                "create_tracker(...)",
                code="tracker_closed",
                context={"execution_id": self.execution_id, "node_id": self.node_id},
            )

    def _observe(
        self,
        current: Any,
        total: Any,
        metadata: Mapping[str, Any] | None,
        *,
        force: bool,
    ) -> ProgressData | None:
        self._check_open()
        try:
            data = self._core.observe(
                current, total, self._clock.monotonic(), metadata, force=force
            )
        except ProgressTrackingError as exc:
            if exc.code == _CALCULATOR_FAILED:
                # The user's calculator, not the caller's figures: this report is dropped.
                if self.options.enabled:
                    self._on_calculator_error(self, exc.__cause__ or exc)
                return None
            exc.context.setdefault("execution_id", self.execution_id)
            exc.context.setdefault("node_id", self.node_id)
            raise
        if data is None:
            return None
        if not self.options.enabled:
            # A disabled tracker publishes nothing; start/complete still answer with the figures.
            return data if force else None
        self._publish(self, data, metadata)
        return data


class ProgressTrackingService(ServiceBase[ProgressData]):
    """Per execution and node progress trackers (the manual's ``ProgressTrackingService``).

    ``clock`` gives all time (monotonic for intervals and rates, wall time for timestamps);
    ``options`` (a :class:`StreamingModuleOptions` or a dict) is kept for the container's sake.
    Not thread-safe: use from the event loop's thread.
    """

    error_type = ProgressTrackingError
    _hub_name = "progress stream"
    _logger = logger

    def __init__(
        self,
        options: StreamingModuleOptions | Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(options, clock)
        self._trackers: dict[TrackerKey, ProgressTracker] = {}

    # ------------------------------------------------------------------ trackers

    def create_tracker(
        self,
        execution_id: str,
        node_id: str | None = None,
        options: StreamProgressOptions | Mapping[str, Any] | None = None,
    ) -> ProgressTracker:
        """The open tracker for ``(execution_id, node_id)`` — the existing one if there is one
        (then ``options`` is ignored), else a new one with ``options`` (a model or a dict,
        snake_case or camelCase; bad ones raise ``StreamingConfigError``). Timing starts now."""
        self._check_open("create_tracker")
        self._check_ids(execution_id, node_id)
        key: TrackerKey = (execution_id, node_id)
        tracker = self._trackers.get(key)
        if tracker is not None:
            return tracker
        parsed = parse_options(StreamProgressOptions, options, what="progress options")
        tracker = ProgressTracker(
            execution_id,
            node_id,
            parsed,
            self.clock,
            self._publish,
            self._close_tracker,
            self._calculator_failed,
        )
        self._trackers[key] = tracker
        return tracker

    def get_tracker(self, execution_id: str, node_id: str | None = None) -> ProgressTracker:
        """The open tracker for ``(execution_id, node_id)``; :class:`ProgressTrackingError` if
        there is none."""
        tracker = self._trackers.get((execution_id, node_id))
        if tracker is None:
            key = _describe((execution_id, node_id))
            raise ProgressTrackingError(
                f"no open progress tracker for {key!r}; call create_tracker("
                f"{execution_id!r}, {node_id!r}) first",
                code="unknown_tracker",
                context={"execution_id": execution_id, "node_id": node_id},
            )
        return tracker

    async def update_progress(
        self,
        execution_id: str,
        node_id: str | None,
        current: float,
        total: float,
        metadata: Mapping[str, Any] | None = None,
    ) -> ProgressData | None:
        """``get_tracker(execution_id, node_id).update(current, total, metadata)``."""
        return self.get_tracker(execution_id, node_id).update_nowait(current, total, metadata)

    def get_active_trackers(self) -> list[ProgressTracker]:
        """The open trackers, oldest first."""
        return list(self._trackers.values())

    def close_tracker(self, execution_id: str, node_id: str | None = None) -> None:
        """Close that tracker (further updates raise) and complete the stream of exactly that
        ``(execution_id, node_id)``; the execution's stream goes on. Idempotent."""
        tracker = self._trackers.get((execution_id, node_id))
        if tracker is not None:
            self._close_tracker(tracker)

    def close_execution(self, execution_id: str) -> None:
        """Close every tracker of the execution, complete its streams and free its state.
        Idempotent."""
        for key in [k for k in self._trackers if k[0] == execution_id]:
            self._close_tracker(self._trackers[key])
        self._forget_callback_failures(execution_id)
        self._hub.complete_execution(execution_id)

    async def aclose(self) -> None:
        """Close every tracker, complete every stream (the global one last) and refuse further
        use (code ``service_closed``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for tracker in list(self._trackers.values()):
            self._close_tracker(tracker)
        self._forget_callback_failures()
        self._hub.close()

    # ------------------------------------------------------------------ streams

    def get_progress_stream(
        self, execution_id: str | None = None, node_id: str | None = None
    ) -> Observable[ProgressStreamUpdate]:
        """Live progress updates:

        - no arguments: every tracker's (completes on ``aclose``);
        - ``execution_id``: that execution's, all nodes (completes on ``close_execution``);
        - ``execution_id`` and ``node_id``: that tracker's (completes when it closes);
        - ``node_id`` only: that node's in any execution (completes on ``aclose``).

        May be asked for before the tracker exists. Nothing is replayed; ``tracker.last`` has
        the latest report. Subscribing again to an Observable whose stream has completed
        completes at once (ask again for a new tracker with the same ids).
        """
        self._check_open("get_progress_stream")
        if execution_id is None:
            if node_id is None:
                return self._hub.stream()
            self._check_id(node_id, "node_id")

            def same_node(update: ProgressStreamUpdate) -> bool:
                return update.node_id == node_id

            return self._hub.stream().pipe(ops.filter(same_node))
        self._check_ids(execution_id, node_id)
        return self._hub.stream(execution_id, node_id)

    def iter_progress_stream(
        self,
        execution_id: str | None = None,
        node_id: str | None = None,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        overflow: OverflowPolicy = "error",
    ) -> ObservableAsyncIterator[ProgressStreamUpdate]:
        """:meth:`get_progress_stream` as an async iterator (``async for``), ending when the
        stream completes. Subscribes at once; holds at most ``max_queue`` updates for a slow
        consumer; beyond that ``overflow='error'`` unsubscribes and raises
        ``StreamOverflowError`` after the queued updates, ``'drop_oldest'`` discards the oldest
        (see :func:`streaming_module.services._streams.observable_to_async_iter`)."""
        return observable_to_async_iter(
            self.get_progress_stream(execution_id, node_id),
            max_queue=max_queue,
            overflow=overflow,
            name="progress stream",
        )

    # ------------------------------------------------------------------ internals

    def _check_ids(self, execution_id: object, node_id: object) -> None:
        self._check_id(execution_id, "execution_id")
        if node_id is not None:
            self._check_id(node_id, "node_id")

    def _close_tracker(self, tracker: ProgressTracker) -> None:
        tracker.closed = True
        if self._trackers.get(tracker.key) is tracker:
            del self._trackers[tracker.key]
        if tracker.node_id is not None:
            self._hub.complete_node(tracker.execution_id, tracker.node_id)

    def _calculator_failed(self, tracker: ProgressTracker, error: BaseException) -> None:
        self._callback_failed("calculator", tracker.execution_id, tracker.node_id, error)

    def _publish(
        self,
        tracker: ProgressTracker,
        data: ProgressData,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        extras, _, agent_type = split_metadata(metadata)
        self._publish_new(
            StreamEventType.PROGRESS,
            data,
            tracker.execution_id,
            tracker.node_id,
            agent_type,
            extras,
        )


__all__ = ["ProgressStreamUpdate", "ProgressTracker", "ProgressTrackingService", "ProgressUpdate"]
