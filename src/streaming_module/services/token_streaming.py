"""``TokenStreamingService``: LLM tokens in, buffered and batched ``StreamUpdate``s out.

Streams are keyed by ``(execution_id, node_id)`` (ids may contain ``:``; ``stream_key`` —
``"execution_id:node_id"`` — is only a display name). The per-stream pure logic (filter,
processor, buffering, batching, payload format) lives in
:mod:`streaming_module.core.token_buffer`, whose docstring documents the exact ``TokenData``
shape of each ``format``. This module adds time, ids and delivery.

When a stream's buffer flushes
    * ``stream_token`` fills it to ``buffer_size`` (``None`` in the config:
      ``options.default_buffer_size``) — in that same call;
    * at most ``flush_interval`` ms after the first token entered the empty buffer, on a timer
      from the injected clock (a config without ``flush_interval`` uses
      ``options.default_flush_interval``; ``0`` disables the timer). Each stream's timer runs
      a little early: ``flush_interval * (1 - j)``, with ``j`` drawn once per stream, uniformly
      in ``[0, FLUSH_JITTER)`` (10%), from the service's ``rng``. So every token still leaves
      within its ``flush_interval``, but streams opened together (e.g. one per execution, fed
      round-robin) stop flushing in the same event-loop turn; in lock-step they would write one
      burst of frames per interval (100 streams x 10 clients: 1,000 frames, a ~10 ms loop
      stall) and add that stall to the latency tail. Pass ``rng=random.Random(seed)`` for a
      repeatable draw;
    * ``await flush_tokens(...)``, ``close_token_stream(...)``,
      ``close_execution_token_streams(...)``, ``close_stale_streams()``, ``aclose()``, and
      re-initialising the stream.

Delivery is synchronous: when any of the calls above returns, the updates have reached every
subscriber: each update goes to ``get_token_stream(execution_id, node_id)``, then
``get_token_stream(execution_id)``, then ``get_global_token_stream()`` subscribers, through the
services' :class:`~streaming_module.services.hub.Hub`. A subscriber that raises is logged on
``streaming_module.tokens`` and stays subscribed; the other subscribers and the stream carry on.

Order
    All emissions go through the hub's queue, drained in FIFO order, so updates reach
    subscribers in sequence-number order even when a subscriber itself streams, flushes or
    closes from inside its callback (the nested work is queued and delivered right after the
    current update, so such a nested ``flush_tokens`` returns before its updates are
    delivered), or when the flush timer and an explicit flush meet (the buffer is drained
    atomically; the later one finds it empty and emits nothing).

Sequence numbers
    ``metadata.sequence_number`` counts the token updates of the execution, all its nodes
    together, from 1 (see :class:`~streaming_module.types.StreamMetadata`): the execution's
    stream sees 1, 2, 3, ...; a node's stream sees rising numbers. The numbering is kept while
    the execution has an open stream and after its last one closed, until
    ``close_execution_token_streams`` (or ``aclose``); an execution left without an open stream
    for ``stream_idle_timeout_ms`` is forgotten too (checked when a stream opens and by the idle
    sweep; with a timeout of 0 the numbering is kept until ``close_execution_token_streams``),
    and so is the oldest of more than :data:`MAX_IDLE_EXECUTIONS` executions without an open
    stream (~250 bytes each), so memory stays bounded however fast executions come and go; an
    execution whose numbering was forgotten starts again from 1.

Lifecycles
    ``get_token_stream`` may be called, and subscribed to, before the stream is initialised: it
    receives everything emitted after the subscription. The fan-out lists behind these
    Observables are created when the first subscriber arrives and removed when their last
    subscriber leaves or when they complete, so memory follows subscribers, not executions.
    ``close_token_stream`` completes that node's stream; ``close_execution_token_streams``
    completes the execution's node streams and its execution-level stream. Subscribing again to
    an Observable whose stream has completed completes at once; ``get_token_stream`` again gives
    one that waits for a new stream with the same ids. Re-initialising an open stream flushes
    what it buffered under the old config, then applies the new config; its counters, token
    index and sequence numbers carry on. After close, initialising the same ids starts a new
    stream (counters and token index from 0; sequence numbers go on as described above).

When the processor fails
    A ``processor`` that raises, or returns something other than a ``str``, costs only the token
    it failed on: ``stream_token`` drops that token (``tokens_dropped`` counts it) and returns
    normally, the stream stays open, and every later token is offered to the processor again.
    The first failure of a node's processor in an execution also flushes what the stream had
    buffered, then publishes one update of type ``ERROR`` on the stream (node, execution and
    global levels), data ``{"code": "callback_failed", "callback": "processor", "node",
    "error", "error_type", "message"}`` (see :mod:`streaming_module.services._base`), and logs
    the traceback once on ``streaming_module.tokens``. So the tokens before the ``error`` update
    are exactly the text up to the failure; after it the node's text may have holes. Later
    failures in the same execution publish nothing more (a debug log line each). Subscribers
    of a token stream therefore check ``update.type`` (:data:`TokenStreamUpdate`).

Threading: call the service from its event loop's thread (it is not thread-safe; from another
thread use ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import reactivex
from reactivex import Observable
from reactivex.abc import DisposableBase, ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from streaming_module.config import StreamingModuleOptions, StreamTokenOptions, parse_options
from streaming_module.core.clock import Clock, TimerHandle
from streaming_module.core.rate import RateMeter
from streaming_module.core.token_buffer import TokenBuffer, TokenCounters
from streaming_module.errors import StreamingError, TokenStreamingError
from streaming_module.services._base import CallbackErrorUpdate, ServiceBase
from streaming_module.services._streams import ObservableAsyncIterator, observable_to_async_iter
from streaming_module.services.hub import Channel
from streaming_module.types import StreamEventType, StreamMetadata, StreamUpdate, TokenData

logger = logging.getLogger("streaming_module.tokens")

TokenUpdate = StreamUpdate[TokenData]
"""A token update: type ``TOKEN``, data :class:`TokenData`."""

TokenStreamUpdate = TokenUpdate | CallbackErrorUpdate
"""What a token stream carries: token updates, and one ``error`` update for a node whose
processor failed (check ``update.type``)."""

MAX_IDLE_EXECUTIONS = 10_000
"""Executions without an open token stream whose numbering is kept at most (oldest forgotten
first; see "Sequence numbers")."""

RATE_WINDOW_SECONDS = 1.0
"""``tokens_per_second`` counts tokens emitted over this many most recent seconds."""

FLUSH_JITTER = 0.1
"""A stream's flush timer fires after ``flush_interval * (1 - j)``, ``j`` drawn once per stream
in ``[0, FLUSH_JITTER)``: never later than ``flush_interval``, and desynchronised between streams
started together (see the module docstring)."""

_TOKEN = StreamEventType.TOKEN


@dataclass(frozen=True, slots=True)
class TokenStreamInfo:
    """One open token stream, as ``get_active_token_streams()`` reports it.

    ``config`` is the validated config with ``buffer_size`` and ``flush_interval`` resolved
    against the module defaults; ``last_flush`` is when it last emitted (its creation time until
    then); ``buffered`` counts tokens waiting for a flush.
    """

    execution_id: str
    node_id: str
    stream_key: str
    config: StreamTokenOptions
    created_at: datetime
    last_flush: datetime
    buffered: int
    counters: TokenCounters

    @property
    def tokens_in(self) -> int:
        return self.counters.tokens_in

    @property
    def tokens_out(self) -> int:
        return self.counters.tokens_out

    @property
    def tokens_dropped(self) -> int:
        return self.counters.tokens_dropped

    @property
    def updates_emitted(self) -> int:
        return self.counters.updates_emitted


@dataclass(frozen=True, slots=True)
class TokenStatistics:
    """The service's token statistics at ``timestamp``.

    Counters cover every stream since the service started (closed ones included);
    ``tokens_per_second`` is the *current* rate: tokens emitted over the last
    :data:`RATE_WINDOW_SECONDS`, per second (it drops to 0 when streaming stops).
    """

    active_streams: int
    tokens_in: int
    tokens_out: int
    tokens_dropped: int
    updates_emitted: int
    buffered_tokens: int
    tokens_per_second: float
    timestamp: datetime


class _Stream:
    """One open stream: its buffer plus what the service needs around it."""

    __slots__ = (
        "buffer",
        "buffer_size",
        "config",
        "created_at",
        "execution_id",
        "interval",
        "interval_scale",
        "key",
        "last_activity",
        "last_flush",
        "node_id",
        "seen_tokens_in",
        "timer",
    )

    def __init__(
        self,
        execution_id: str,
        node_id: str,
        config: StreamTokenOptions,
        default_buffer_size: int,
        now: datetime,
        monotonic: float,
        interval_scale: float,
    ) -> None:
        self.execution_id = execution_id
        self.node_id = node_id
        self.key = (execution_id, node_id)
        self.config = config
        self.buffer = TokenBuffer(config, default_buffer_size=default_buffer_size)
        self.buffer_size = self.buffer.buffer_size
        # The timer's delay in seconds: flush_interval shortened by this stream's jitter.
        self.interval_scale = interval_scale
        self.interval = config.flush_interval / 1000.0 * interval_scale
        self.timer: TimerHandle | None = None
        self.created_at = now
        self.last_flush = now
        self.last_activity = monotonic
        self.seen_tokens_in = 0

    @property
    def stream_key(self) -> str:
        return f"{self.execution_id}:{self.node_id}"


class TokenStreamingService(ServiceBase[TokenData]):
    """Buffers each ``(execution_id, node_id)`` stream's tokens and emits them as
    ``StreamUpdate[TokenData]`` updates to reactivex Observables (and their async-iterator
    twins). See the module docstring for when buffers flush, ordering and lifecycles.

    ``options`` (a model, a dict or ``None``) gives ``default_buffer_size``,
    ``default_flush_interval``, ``stream_idle_timeout_ms`` and ``max_token_length``; ``clock``
    (default :class:`SystemClock`) gives time and the flush/idle timers; ``rng`` (default a
    fresh, unseeded :class:`random.Random`) draws each stream's flush-timer jitter (one draw per
    stream opened, none per token).
    """

    error_type = TokenStreamingError
    _hub_name = "token stream"
    _logger = logger

    def __init__(
        self,
        options: StreamingModuleOptions | Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(options, clock)
        self._rng = rng if rng is not None else random.Random()
        self._max_token_length = self.options.max_token_length
        self._idle_timeout = self.options.stream_idle_timeout_ms / 1000.0
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._by_execution: dict[str, dict[str, _Stream]] = {}
        # Executions whose last stream closed, with when (monotonic), oldest first: their
        # numbering is forgotten after the idle timeout (see "Sequence numbers").
        self._idle_executions: OrderedDict[str, float] = OrderedDict()
        self._stats_channel: Channel[TokenStatistics] = Channel("the token statistics", logger)
        self._retired = TokenCounters()
        self._rate = RateMeter(self.clock, window=RATE_WINDOW_SECONDS)
        self._sweep_timer: TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle of a stream

    async def initialize_token_stream(
        self,
        *,
        execution_id: str,
        node_id: str,
        config: StreamTokenOptions | Mapping[str, Any] | None = None,
    ) -> None:
        """Open the stream for ``(execution_id, node_id)`` with ``config`` (a
        :class:`StreamTokenOptions`, a dict with snake_case or camelCase keys, or ``None`` for
        the defaults). Re-initialising an open stream flushes it under its old config, then
        applies the new one (counters and sequence numbers carry on).

        Raises :class:`StreamingConfigError` for a bad config (naming each bad key) and
        :class:`TokenStreamingError` for bad ids (code ``invalid_id``) or a closed service
        (code ``service_closed``).
        """
        self._check_open("initialize_token_stream")
        self._check_id(execution_id, "execution_id")
        self._check_id(node_id, "node_id")
        parsed = parse_options(
            StreamTokenOptions, config, what=f"token stream config for {execution_id}:{node_id}"
        )
        resolved = self._resolve(parsed)
        key = (execution_id, node_id)
        stream = self._streams.get(key)
        if stream is not None:
            self._flush(stream)
            stream.config = resolved
            stream.buffer.configure(resolved, default_buffer_size=self.options.default_buffer_size)
            stream.buffer_size = stream.buffer.buffer_size
            stream.interval = resolved.flush_interval / 1000.0 * stream.interval_scale
            logger.debug("re-initialised token stream %s", stream.stream_key)
            return
        monotonic = self.clock.monotonic()
        stream = _Stream(
            execution_id,
            node_id,
            resolved,
            self.options.default_buffer_size,
            self.clock.now(),
            monotonic,
            1.0 - FLUSH_JITTER * self._rng.random(),
        )
        self._streams[key] = stream
        self._by_execution.setdefault(execution_id, {})[node_id] = stream
        if self._idle_executions:
            self._idle_executions.pop(execution_id, None)
            self._forget_idle_executions(monotonic)
        if self._sweep_timer is None and self._idle_timeout > 0:
            self._schedule_sweep()
        logger.debug("initialised token stream %s", stream.stream_key)
        self._emit_stats()

    def _resolve(self, config: StreamTokenOptions) -> StreamTokenOptions:
        update: dict[str, Any] = {}
        if config.buffer_size is None:
            update["buffer_size"] = self.options.default_buffer_size
        if "flush_interval" not in config.model_fields_set:
            update["flush_interval"] = self.options.default_flush_interval
        return config.model_copy(update=update) if update else config

    def stream_token(
        self,
        execution_id: str,
        node_id: str,
        token: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one token to the stream. Synchronous and non-blocking: it filters, processes and
        buffers the token and, when that fills the buffer, emits the batch to subscribers before
        returning. ``metadata`` goes to the stream's processor and, with ``include_metadata``
        or ``format='structured'``, into the updates (it is copied then; otherwise it is not
        kept). Cost: about 0.3 µs per token plus the flush (one update per batch), amortised.

        A processor that raises (or returns something other than a ``str``) does not raise
        here: the token is dropped (counted in ``tokens_dropped``) and, the first time in the
        execution, what was buffered is flushed and one ``error`` update is published on the
        stream (see "When the processor fails" in the module docstring).

        Raises :class:`TokenStreamingError` when the stream is not open (never initialised, or
        closed), the token is not a ``str`` or longer than ``options.max_token_length``, or the
        metadata is not a mapping.
        """
        try:
            stream = self._streams.get((execution_id, node_id))
        except TypeError:  # an unhashable id
            stream = None
        if stream is None:
            raise self._no_stream(execution_id, node_id)
        if not isinstance(token, str) or len(token) > self._max_token_length:
            raise self._bad_token(stream, token)
        meta = None
        if metadata is not None:
            if stream.buffer.uses_metadata:
                meta = self._metadata_dict(stream, metadata)  # a copy: the caller may reuse it
            elif not isinstance(metadata, dict | Mapping):
                raise self._bad_metadata(stream, metadata)
        try:
            buffered = stream.buffer.offer(token, meta)
        except Exception as exc:  # the user's processor: that token is dropped, nothing else
            self._processor_failed(stream, exc)
            return
        if buffered >= stream.buffer_size:
            self._flush(stream)
        elif buffered == 1 and stream.interval > 0:
            stream.timer = self.clock.call_later(stream.interval, partial(self._on_timer, stream))

    async def flush_tokens(self, execution_id: str, node_id: str) -> None:
        """Emit what the stream has buffered. When it returns, those updates have reached the
        subscribers (unless called from inside a subscriber callback: then they follow right
        after that callback, to keep order).

        Raises :class:`TokenStreamingError` (code ``stream_not_found``, naming
        ``execution_id:node_id``) when the stream is not open — never initialised, or already
        closed — as :meth:`stream_token` does. After :meth:`aclose` it is a no-op (everything
        was flushed then)."""
        self.flush_tokens_nowait(execution_id, node_id)

    def flush_tokens_nowait(self, execution_id: str, node_id: str) -> None:
        """:meth:`flush_tokens` for synchronous code (a LangChain callback, a subscriber): the
        same checks, the same delivery. Never blocks."""
        if self._closed:
            return
        stream = self._lookup(execution_id, node_id)
        if stream is None:
            raise self._no_stream(execution_id, node_id)
        self._flush(stream)

    def close_token_stream(self, execution_id: str, node_id: str) -> None:
        """Flush the stream to its subscribers, then complete its node-level Observable and
        forget it. The execution-level and global streams go on. Closing a stream that is not
        open is a no-op."""
        stream = self._lookup(execution_id, node_id)
        if stream is None:
            return
        self._flush(stream)
        self._remove(stream)
        self._hub.complete_node(execution_id, node_id)
        self._emit_stats()

    def close_execution_token_streams(self, execution_id: str) -> None:
        """Flush and close every stream of ``execution_id`` (in the order they were opened),
        then complete the execution-level Observable and any node-level Observable of that
        execution still subscribed, and forget the execution's numbering. Cost: O(streams of the
        execution + node subscriptions of the execution)."""
        if self._closed:
            return
        streams = list(self._by_execution.get(execution_id, {}).values())
        for stream in streams:
            self._flush(stream)
            self._remove(stream)
        self._idle_executions.pop(execution_id, None)
        self._forget_callback_failures(execution_id)
        self._hub.complete_execution(execution_id)
        if streams:
            self._emit_stats()

    def close_stale_streams(self) -> int:
        """Flush and close every stream idle for longer than
        ``options.stream_idle_timeout_ms`` (no token and no flush); returns how many were
        closed (0 when the timeout is 0, which disables it). It also runs by itself every half
        timeout while streams are open, so an abandoned stream closes between one and two
        timeouts after its last activity. It also forgets the numbering of executions left
        without an open stream for that long. Cost: O(open streams)."""
        if self._closed or self._idle_timeout <= 0:
            return 0
        now = self.clock.monotonic()
        self._forget_idle_executions(now)
        stale: list[_Stream] = []
        for stream in self._streams.values():
            tokens_in = stream.buffer.tokens_in
            if tokens_in != stream.seen_tokens_in:
                # Tokens came since the last look (stream_token does not read the clock, to
                # stay cheap): count the stream as active now.
                stream.seen_tokens_in = tokens_in
                stream.last_activity = now
            elif now - stream.last_activity > self._idle_timeout:
                stale.append(stream)
        for stream in stale:
            logger.info(
                "closing token stream %s: idle for more than %d ms",
                stream.stream_key,
                self.options.stream_idle_timeout_ms,
            )
            self._flush(stream)
            self._remove(stream)
            self._hub.complete_node(stream.execution_id, stream.node_id)
        if stale:
            self._emit_stats()
        return len(stale)

    async def aclose(self) -> None:
        """Flush and close every stream, complete every Observable (the global and statistics
        ones included) and cancel every timer. The service is unusable afterwards: opening,
        streaming and subscribing raise :class:`TokenStreamingError`; flushing and closing are
        no-ops. Idempotent."""
        if self._closed:
            return
        for stream in list(self._streams.values()):
            self._flush(stream)
            self._remove(stream)
        self._idle_executions.clear()
        self._forget_callback_failures()
        self._hub.close(then=self._close_stats)
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        logger.debug("token streaming service closed")

    # ------------------------------------------------------------------ introspection

    def has_token_stream(self, execution_id: str, node_id: str) -> bool:
        """Whether ``(execution_id, node_id)`` is open."""
        try:
            return (execution_id, node_id) in self._streams
        except TypeError:
            return False

    def get_active_token_streams(self) -> list[TokenStreamInfo]:
        """A snapshot of every open stream, in the order they were opened. O(open streams)."""
        return [
            TokenStreamInfo(
                execution_id=s.execution_id,
                node_id=s.node_id,
                stream_key=s.stream_key,
                config=s.config,
                created_at=s.created_at,
                last_flush=s.last_flush,
                buffered=s.buffer.pending,
                counters=s.buffer.counters(),
            )
            for s in self._streams.values()
        ]

    def token_statistics(self) -> TokenStatistics:
        """The current statistics (what ``get_token_stats()`` emits). O(open streams)."""
        totals = TokenCounters()
        totals.add(self._retired)
        buffered = 0
        for stream in self._streams.values():
            buffer = stream.buffer
            totals.tokens_in += buffer.tokens_in
            totals.tokens_out += buffer.tokens_out
            totals.tokens_dropped += buffer.tokens_dropped
            totals.updates_emitted += buffer.updates_emitted
            buffered += len(buffer.tokens)
        return TokenStatistics(
            active_streams=len(self._streams),
            tokens_in=totals.tokens_in,
            tokens_out=totals.tokens_out,
            tokens_dropped=totals.tokens_dropped,
            updates_emitted=totals.updates_emitted,
            buffered_tokens=buffered,
            tokens_per_second=self._rate.rate(),
            timestamp=self.clock.now(),
        )

    # ------------------------------------------------------------------ Observables

    def get_token_stream(
        self, execution_id: str, node_id: str | None = None
    ) -> Observable[TokenStreamUpdate]:
        """The updates of one node's stream, or of every node of an execution when ``node_id``
        is ``None``. May be subscribed to before the stream is initialised. Completes when the
        stream closes (node level) or when ``close_execution_token_streams`` runs (both
        levels)."""
        self._check_open("get_token_stream")
        self._check_id(execution_id, "execution_id")
        if node_id is not None:
            self._check_id(node_id, "node_id")
        return self._hub.stream(execution_id, node_id)

    def iter_token_stream(
        self,
        execution_id: str,
        node_id: str | None = None,
        *,
        max_queue: int = 10_000,
    ) -> ObservableAsyncIterator[TokenStreamUpdate]:
        """``async for`` twin of :meth:`get_token_stream`; subscribes immediately. A consumer
        more than ``max_queue`` updates behind gets :class:`StreamOverflowError` after the
        updates queued before the overflow (see :mod:`streaming_module.services._streams`)."""
        name = execution_id if node_id is None else f"{execution_id}:{node_id}"
        return observable_to_async_iter(
            self.get_token_stream(execution_id, node_id),
            max_queue=max_queue,
            overflow="error",
            name=f"the token stream {name}",
        )

    def get_global_token_stream(self) -> Observable[TokenStreamUpdate]:
        """Every token update of every stream; completes on :meth:`aclose`."""
        self._check_open("get_global_token_stream")
        return self._hub.stream()

    def iter_global_token_stream(
        self, *, max_queue: int = 10_000
    ) -> ObservableAsyncIterator[TokenStreamUpdate]:
        """``async for`` twin of :meth:`get_global_token_stream` (overflow policy ``error``)."""
        return observable_to_async_iter(
            self.get_global_token_stream(),
            max_queue=max_queue,
            overflow="error",
            name="the global token stream",
        )

    def get_token_stats(self) -> Observable[TokenStatistics]:
        """:class:`TokenStatistics` now, on subscription, then after every flush and every
        stream opened or closed (not per token). Completes on :meth:`aclose`."""
        self._check_open("get_token_stats")
        channel = self._stats_channel

        def subscribe(
            observer: ObserverBase[TokenStatistics], scheduler: SchedulerBase | None = None
        ) -> DisposableBase:
            if self._closed:
                observer.on_completed()
                return Disposable()
            observer.on_next(self.token_statistics())
            return channel.attach(observer)

        return reactivex.create(subscribe)

    def iter_token_stats(self, *, max_queue: int = 100) -> ObservableAsyncIterator[TokenStatistics]:
        """``async for`` twin of :meth:`get_token_stats`; a slow consumer loses the oldest
        snapshots (overflow policy ``drop_oldest``), never the latest."""
        return observable_to_async_iter(
            self.get_token_stats(), max_queue=max_queue, overflow="drop_oldest", name="token stats"
        )

    # ------------------------------------------------------------------ internals

    def _flush(self, stream: _Stream) -> None:
        timer = stream.timer
        if timer is not None:
            stream.timer = None
            timer.cancel()
        batches = stream.buffer.drain()
        if not batches:
            return
        clock = self.clock
        now = clock.now()
        stream.last_flush = now
        stream.last_activity = clock.monotonic()
        stream.seen_tokens_in = stream.buffer.tokens_in
        execution_id = stream.execution_id
        node_id = stream.node_id
        hub = self._hub
        count = 0
        # Queued, then delivered as one step: nothing a subscriber streams meanwhile can come
        # between two batches of this flush.
        for batch in batches:
            sequence = hub.next_sequence(execution_id)
            extra = batch.extra
            if extra is None:
                metadata = StreamMetadata(now, sequence, execution_id, node_id)
            else:
                metadata = StreamMetadata(now, sequence, execution_id, node_id, None, **extra)
            hub.enqueue(execution_id, node_id, StreamUpdate(_TOKEN, batch.data, metadata))
            count += batch.token_count
        self._rate.add(count)
        hub.deliver()
        self._emit_stats()

    def _processor_failed(self, stream: _Stream, error: Exception) -> None:
        stream.buffer.tokens_dropped += 1  # offered, then neither buffered nor emitted
        self._callback_failed(
            "processor",
            stream.execution_id,
            stream.node_id,
            error,
            before=partial(self._flush, stream),
        )
        self._emit_stats()

    def _close_stats(self) -> None:
        stats = self._stats_channel
        if stats.observers:
            stats.emit(self.token_statistics())
        stats.complete()

    def _emit_stats(self) -> None:
        if self._stats_channel.observers and not self._hub.delivering:
            self._stats_channel.emit(self.token_statistics())

    def _remove(self, stream: _Stream) -> None:
        timer = stream.timer
        if timer is not None:
            stream.timer = None
            timer.cancel()
        del self._streams[stream.key]
        nodes = self._by_execution.get(stream.execution_id)
        if nodes is not None:
            nodes.pop(stream.node_id, None)
            if not nodes:
                del self._by_execution[stream.execution_id]
                idle = self._idle_executions
                idle[stream.execution_id] = self.clock.monotonic()
                if len(idle) > MAX_IDLE_EXECUTIONS:  # memory stays bounded at any rate
                    oldest, _ = idle.popitem(last=False)
                    self._hub.release_sequence(oldest)
                    self._forget_callback_failures(oldest)
        self._retired.add(stream.buffer.counters())
        if not self._streams and self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        logger.debug("closed token stream %s", stream.stream_key)

    def _on_timer(self, stream: _Stream) -> None:
        stream.timer = None
        if self._streams.get(stream.key) is stream:
            self._flush(stream)

    def _forget_idle_executions(self, now: float) -> None:
        """Forget the numbering of executions without an open stream for the idle timeout.
        O(executions forgotten): the oldest come first. A timeout of 0 forgets none."""
        if self._idle_timeout <= 0:
            return
        idle = self._idle_executions
        while idle:
            execution_id, since = next(iter(idle.items()))
            if now - since <= self._idle_timeout:
                return
            del idle[execution_id]
            self._hub.release_sequence(execution_id)
            self._forget_callback_failures(execution_id)

    def _schedule_sweep(self) -> None:
        self._sweep_timer = self.clock.call_later(self._idle_timeout / 2, self._on_sweep)

    def _on_sweep(self) -> None:
        self._sweep_timer = None
        try:
            self.close_stale_streams()
        except Exception:
            logger.exception("closing stale token streams failed")
        if self._streams and not self._closed and self._sweep_timer is None:
            self._schedule_sweep()

    def _lookup(self, execution_id: str, node_id: str) -> _Stream | None:
        try:
            return self._streams.get((execution_id, node_id))
        except TypeError:
            return None

    def _no_stream(self, execution_id: object, node_id: object) -> StreamingError:
        self._check_open("stream_token")
        self._check_id(execution_id, "execution_id")
        self._check_id(node_id, "node_id")
        key = f"{execution_id}:{node_id}"
        return TokenStreamingError(
            f"no open token stream {key!r}: call "
            f"`await initialize_token_stream(execution_id={execution_id!r}, "
            f"node_id={node_id!r}, config=...)` first (or the stream was already closed)",
            code="stream_not_found",
            context={"stream_key": key, "execution_id": execution_id, "node_id": node_id},
        )

    def _bad_token(self, stream: _Stream, token: object) -> StreamingError:
        if not isinstance(token, str):
            return TokenStreamingError(
                f"a token must be a str, got {type(token).__name__} for stream "
                f"{stream.stream_key!r}; pass the chunk's text (e.g. chunk.content)",
                code="invalid_token",
                context={"stream_key": stream.stream_key, "type": type(token).__name__},
            )
        return TokenStreamingError(
            f"a token of {len(token)} characters for stream {stream.stream_key!r} exceeds "
            f"max_token_length ({self._max_token_length}); split it or raise "
            "StreamingModuleOptions.max_token_length",
            code="token_too_long",
            context={
                "stream_key": stream.stream_key,
                "length": len(token),
                "max_token_length": self._max_token_length,
            },
        )

    @staticmethod
    def _metadata_dict(stream: _Stream, metadata: object) -> dict[str, Any]:
        if isinstance(metadata, dict):
            return metadata.copy()
        if isinstance(metadata, Mapping):
            return dict(metadata)
        raise TokenStreamingService._bad_metadata(stream, metadata)

    @staticmethod
    def _bad_metadata(stream: _Stream, metadata: object) -> StreamingError:
        return TokenStreamingError(
            f"token metadata for stream {stream.stream_key!r} must be a mapping or None, got "
            f"{type(metadata).__name__}",
            code="invalid_metadata",
            context={"stream_key": stream.stream_key},
        )


__all__ = [
    "FLUSH_JITTER",
    "RATE_WINDOW_SECONDS",
    "TokenStatistics",
    "TokenStreamInfo",
    "TokenStreamUpdate",
    "TokenStreamingService",
    "TokenUpdate",
]
