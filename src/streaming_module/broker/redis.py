"""The Redis Streams broker: several processes (several gateways) serve the same executions.

Key layout (``p`` is ``BrokerOptions.key_prefix``, ``E`` an execution id):

- ``p:exec:E`` — a Redis stream, one entry per frame. The entry id *is* the sequence
  (``<sequence>-0``), so a resume after ``N`` is ``XRANGE p:exec:E (N-0 +``. Fields: ``f`` the
  encoded JSON frame (sequence included, exactly the bytes clients are sent), ``t`` the publish
  time in epoch milliseconds (for the replay age bound), ``r`` = ``0`` on non-replayable frames.
  Trimmed *exactly* to ``replay_max_frames`` on every append (``XADD MAXLEN n``, not ``~``: a
  little more work in Redis, but the log never holds more than the option says, as in memory).
- ``p:exec:E:meta`` — a hash: ``seq`` the execution's last sequence, ``ended`` once
  :meth:`~RedisBroker.end_execution` ran, ``w:<writer>`` the last frame each broker instance
  wrote (``<local id>:<sequence>``, for idempotent retries).
- ``p:wake:<broker id>`` — a tiny stream this broker writes to interrupt its own blocking read
  when a subscriber needs a new execution read (``MAXLEN 1``, expires after a minute).

Sequencing. Sequence numbers rise by one per execution over every frame, across processes: a Lua
script does ``HINCRBY seq`` and ``XADD`` atomically inside Redis. :meth:`~RedisBroker.publish`
is synchronous and never blocks, so it cannot wait for Redis: it encodes the frame, puts it in a
bounded local FIFO and returns the :class:`Frame` with ``sequence`` 0. One writer task per broker
drains the FIFO in order, pipelining up to :data:`WRITE_BATCH` scripts per round trip, and fills
in ``frame.sequence`` once Redis assigned it; ``await flush()`` returns when every frame published
before the call is in Redis with its sequence. Because one writer writes in FIFO order, one
process's frames keep their order (a run's final status stays its last frame), and frames of
different processes interleave in the order Redis received them. The trade-off: the returned
``Frame.sequence`` is known only after ``flush()`` (in the rare case of a retry after a lost reply
it stays 0 — subscribers are unaffected), and a frame reaches subscribers — *local ones too* —
only after a round trip to Redis, from the same read path as everyone else, so every process
sees the same numbering.

Full policy: the FIFO holds at most ``max_pending`` frames (default 100,000; each costs its
encoded JSON plus ~250 bytes). When it is full — Redis slow or unreachable for long —
``publish`` raises :class:`~streaming_module.errors.BrokerError` instead of dropping a frame
silently or blocking the event loop.

Live delivery and replay. One reader task per broker runs a blocking ``XREAD`` over every
execution that has local subscribers, from the last sequence it delivered, and fans each frame out
to the listeners synchronously (one Frame object, decoded once, shared). ``subscribe(E,
last_sequence=N)`` reads the retained frames after ``N`` with ``XRANGE`` (pages of
:data:`REPLAY_PAGE`), preceded by a ``gap`` frame for sequences trimmed away or older than
``replay_max_age_ms``, then catches up to what the reader has delivered and joins it with no
await in between: no gap, no duplicate.

At-most-once frames (``replayable=False``) are sequenced and stored in the same stream with
``r=0``: live subscribers get them in order with everything else, a replay skips them. They
occupy slots of ``replay_max_frames``.

Retention. Every append sets the stream's TTL to ``replay_max_age_ms`` (an idle execution
disappears once all its frames are too old to be replayed anyway); :meth:`end_execution`, queued
behind the execution's frames, sets it to ``retention_after_end_ms``. The meta hash lives
``replay_max_age_ms`` longer than the stream, as a tombstone: an execution published to again
continues its numbering, and a resume from an earlier point gets a ``gap``, never a restart.

Failures. A Redis that cannot be reached raises :class:`BrokerError` from ``subscribe`` and from
``flush`` (after ``flush_timeout`` seconds of failed attempts), naming the URL with its password
masked. A connection dropped mid-run is retried by the writer and the reader with exponential
backoff (0.05 s to 5 s) and logged on ``streaming_module.broker.redis``; queued frames wait and
are written once Redis is back, exactly once (the script skips frames a lost reply already wrote).
A Redis restarted *without persistence* loses logs and numbering: use persistence or a replica
if resumes must survive that. Not Redis Cluster aware (one server, or Sentinel/proxy).

Connections: one bounded pool (``max_connections``, default 16): the reader holds one, the
writer one, replays and wake-ups share the rest (a caller waits when all are busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import uuid
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streaming_module.broker.base import (
    GAP,
    Broker,
    Frame,
    Listener,
    ListenerSubscription,
    Subscription,
)
from streaming_module.config import BrokerOptions
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.errors import BrokerError
from streaming_module.protocol.frames import encode_frame

logger = logging.getLogger("streaming_module.broker.redis")

WRITE_BATCH = 512
"""Frames written per round trip (one pipeline of scripts)."""

READ_COUNT = 1024
"""Entries per stream per ``XREAD``."""

REPLAY_PAGE = 1000
"""Entries per ``XRANGE`` page during a replay."""

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0

_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: stream, meta. ARGV: writer, local id, json before the sequence, json after it,
# replayable ('1'|'0'), maxlen, idle ttl ms, ended ttl ms, tombstone ms, time ms.
_PUBLISH_LUA = """
local wf = 'w:' .. ARGV[1]
local m = redis.call('HMGET', KEYS[2], wf, 'ended')
local lid = tonumber(ARGV[2])
if m[1] then
  local sep = string.find(m[1], ':', 1, true)
  local done = tonumber(string.sub(m[1], 1, sep - 1))
  if done >= lid then
    if done == lid then return tonumber(string.sub(m[1], sep + 1)) end
    return 0
  end
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
if seq == 1 then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if last[1] then
    seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1
    redis.call('HSET', KEYS[2], 'seq', seq)
  end
end
local id = string.format('%d-0', seq)
local f = ARGV[3] .. string.format('%d', seq) .. ARGV[4]
if ARGV[5] == '1' then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], id, 'f', f, 't', ARGV[10])
else
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], id, 'f', f, 't', ARGV[10], 'r', '0')
end
redis.call('HSET', KEYS[2], wf, ARGV[2] .. ':' .. string.format('%d', seq))
local ttl = tonumber(ARGV[7])
if m[2] then ttl = tonumber(ARGV[8]) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[9]))
return seq
"""

# KEYS: stream, meta. ARGV: ended ttl ms, tombstone ms.
_END_LUA = """
redis.call('HSET', KEYS[2], 'ended', '1')
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, safe to log and show."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _sequence(entry_id: bytes) -> int:
    """The sequence of a stream entry id ``b"<sequence>-0"``."""
    return int(entry_id.partition(b"-")[0])


class _Write:
    """One queued write: a frame (``frame`` set) or the end of an execution."""

    __slots__ = ("after", "before", "execution_id", "frame", "local_id", "millis")

    def __init__(
        self,
        execution_id: str,
        local_id: int,
        frame: Frame | None,
        before: bytes = b"",
        after: bytes = b"",
        millis: int = 0,
    ) -> None:
        self.execution_id = execution_id
        self.local_id = local_id
        self.frame = frame
        self.before = before
        self.after = after
        self.millis = millis


class _RedisSubscription(ListenerSubscription):
    __slots__ = ("after",)

    def __init__(self, broker: RedisBroker, execution_id: str, listener: Listener) -> None:
        super().__init__(execution_id, listener, broker._remove)
        self.after = 0
        """Frames up to this sequence were delivered by the replay; the reader skips them."""


class _Reading:
    """An execution this process reads live: its stream key, the last sequence the reader
    delivered, and the local listeners."""

    __slots__ = ("cursor", "execution_id", "key", "listeners", "pending", "ready")

    def __init__(self, execution_id: str, key: str) -> None:
        self.execution_id = execution_id
        self.key = key
        self.cursor = 0
        self.listeners: tuple[_RedisSubscription, ...] = ()
        self.pending = 0
        """Subscribes in progress (replaying) that will join ``listeners``."""
        self.ready: asyncio.Future[None] | None = None


class RedisBroker(Broker):
    """A :class:`Broker` over Redis Streams, shared by every process using the same Redis and
    ``key_prefix``. See the module docstring for the design, guarantees and bounds."""

    def __init__(
        self,
        options: BrokerOptions,
        clock: Clock | None = None,
        *,
        max_pending: int = 100_000,
        max_connections: int = 16,
        flush_timeout: float = 10.0,
        block_ms: int = 2000,
    ) -> None:
        if not options.redis_url:
            raise BrokerError(
                "the redis broker needs broker.redis_url, e.g. 'redis://127.0.0.1:6379/0'",
                context={"backend": "redis"},
            )
        if max_pending < 1 or max_connections < 3:
            raise ValueError("max_pending must be >= 1 and max_connections >= 3")
        self.options = options
        self.url = mask_url(options.redis_url)
        self._clock: Clock = clock or SystemClock()
        self._max_pending = max_pending
        self._flush_timeout = flush_timeout
        self._block_ms = block_ms
        self._id = uuid.uuid4().hex[:16]
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                options.redis_url,
                max_connections=max_connections,
                timeout=max(flush_timeout, 1.0),
                socket_connect_timeout=min(5.0, max(flush_timeout, 0.5)),
                socket_timeout=block_ms / 1000 + 10.0,
                socket_keepalive=True,
                client_name=f"streaming_module:{self._id}",
            )
        except ValueError as exc:
            raise BrokerError(
                f"invalid broker.redis_url {self.url!r} ({exc}); expected "
                "redis://[[user]:password@]host[:port][/db] or rediss:// or unix://",
                context={"url": self.url},
            ) from None
        self._redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._prefix = options.key_prefix
        self._wake_key = f"{self._prefix}:wake:{self._id}"
        self._publish_sha = ""
        self._end_sha = ""
        # ---- writer state
        self._queue: deque[_Write] = deque()
        self._inflight: list[_Write] = []
        self._local_ids = itertools.count(1)
        self._enqueued = 0
        self._written = 0
        self._work = asyncio.Event()
        self._progress = asyncio.Event()
        self._last_error: BaseException | None = None
        self._writer: asyncio.Task[None] | None = None
        # ---- reader state
        self._reading: dict[str, _Reading] = {}
        self._by_key: dict[bytes, _Reading] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_idle = asyncio.Event()
        self._reader_blocked = False
        self._wake_cursor = "0-0"
        # ---- last sequences known here (bounded like the executions of the memory broker)
        self._known: OrderedDict[str, int] = OrderedDict()
        self._closed = False

    # ------------------------------------------------------------------ keys
    def stream_key(self, execution_id: str) -> str:
        return f"{self._prefix}:exec:{execution_id}"

    def meta_key(self, execution_id: str) -> str:
        return f"{self._prefix}:exec:{execution_id}:meta"

    # ------------------------------------------------------------------ contract
    def publish(
        self, execution_id: str, type: str, payload: Any, *, replayable: bool = True
    ) -> Frame:
        """Queue the frame for Redis and return it with ``sequence`` 0 (filled in once Redis
        assigned it; ``await flush()`` waits for that). Raises :class:`BrokerError` when the
        broker is closed or ``max_pending`` frames already wait for Redis."""
        if self._closed:
            raise BrokerError("the redis broker is closed", context={"url": self.url})
        if len(self._queue) + len(self._inflight) >= self._max_pending:
            raise BrokerError(
                f"{self._max_pending} frames are waiting for Redis at {self.url}: it is too slow "
                "or unreachable; check the server, or raise max_pending",
                context={"url": self.url, "execution_id": execution_id},
            )
        now = self._clock.now()
        frame = Frame(execution_id, 0, type, now.isoformat(), payload, replayable)
        before, _, after = encode_frame(type, execution_id, 0, frame.timestamp, payload).partition(
            b'"sequence":0'
        )
        # The first '"sequence":0' is ours: type and executionId precede it, and inside a JSON
        # string every '"' is escaped.
        write = _Write(
            execution_id,
            next(self._local_ids),
            frame,
            before + b'"sequence":',
            after,
            int(now.timestamp() * 1000),
        )
        self._enqueue(write)
        return frame

    async def subscribe(
        self, execution_id: str, listener: Listener, *, last_sequence: int | None = None
    ) -> Subscription:
        """See :meth:`Broker.subscribe`. Raises :class:`BrokerError` when Redis cannot be
        reached."""
        if self._closed:
            raise BrokerError("the redis broker is closed", context={"url": self.url})
        self._start_writer()
        sub = _RedisSubscription(self, execution_id, listener)
        try:
            reading = await self._reading_for(execution_id)
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(exc) from None
        try:
            if last_sequence is None:
                sub.after = reading.cursor
            else:
                await self._replay(reading, sub, last_sequence)
        except BaseException as exc:
            reading.pending -= 1
            self._release_if_unused(execution_id)
            if isinstance(exc, _NETWORK_ERRORS):
                raise self._unreachable(exc) from None
            raise
        reading.pending -= 1
        if sub.closed or self._closed or self._reading.get(execution_id) is not reading:
            sub._closed = True
            self._release_if_unused(execution_id)
            return sub
        # No await since the last catch-up: the reader delivers what comes after sub.after.
        reading.listeners = (*reading.listeners, sub)
        return sub

    def end_execution(self, execution_id: str) -> None:
        """Queued behind the execution's frames: its stream expires ``retention_after_end_ms``
        after they are all in Redis."""
        if self._closed:
            return
        self._enqueue(_Write(execution_id, next(self._local_ids), None))

    def last_sequence(self, execution_id: str) -> int:
        """The latest sequence *this process* knows for the execution: written by its writer or
        delivered by its reader (0 when none). :meth:`fetch_last_sequence` asks Redis."""
        return self._known.get(execution_id, 0)

    async def fetch_last_sequence(self, execution_id: str) -> int:
        """The execution's latest sequence according to Redis (0 when none)."""
        try:
            value = await self._redis.hget(self.meta_key(execution_id), "seq")
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(exc) from None
        return int(value) if value is not None else 0

    async def ping(self) -> None:
        """Check that Redis answers; raises :class:`BrokerError` saying what to check."""
        try:
            await self._redis.ping()
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(exc) from None
        except RedisError as exc:
            raise BrokerError(
                f"Redis at {self.url} refused PING ({exc}); check the password and ACL user in "
                "broker.redis_url",
                context={"url": self.url},
            ) from None

    async def flush(self) -> None:
        """Return once every frame published before the call is in Redis with its sequence.
        Raises :class:`BrokerError` after ``flush_timeout`` seconds of failing to reach Redis."""
        target = self._enqueued
        if self._written >= target:
            return
        self._start_writer()
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        while self._written < target:
            if self._closed:
                raise BrokerError(
                    "the redis broker closed before its frames reached Redis",
                    context={"url": self.url},
                )
            if self._last_error is not None:
                failing_since = failing_since if failing_since is not None else loop.time()
                if loop.time() - failing_since >= self._flush_timeout:
                    raise self._unreachable(self._last_error)
            else:
                failing_since = None
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 0.25)

    async def aclose(self) -> None:
        """Write what is queued (for at most ``flush_timeout`` seconds), then cancel and await
        the writer and reader, drop subscriptions and close the connection pool."""
        if self._closed:
            return
        if self._written < self._enqueued:
            try:
                await asyncio.wait_for(self.flush(), self._flush_timeout)
            except (BrokerError, TimeoutError):
                logger.warning(
                    "closing the redis broker with %d frames not written to %s",
                    self._enqueued - self._written,
                    self.url,
                )
        self._closed = True
        tasks = [t for t in (self._writer, self._reader) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            # redis-py can swallow a cancellation that lands while a connection is being set
            # up; cancel again until the task is really done.
            while not task.done():
                await asyncio.wait([task], timeout=0.1)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._writer = self._reader = None
        for reading in self._reading.values():
            for sub in reading.listeners:
                sub._closed = True
            reading.listeners = ()
            if reading.ready is not None and not reading.ready.done():
                reading.ready.cancel()
        self._reading.clear()
        self._by_key.clear()
        self._queue.clear()
        self._inflight.clear()
        self._known.clear()
        self._progress.set()
        await self._redis.aclose(close_connection_pool=True)

    # ------------------------------------------------------------------ writer
    def _enqueue(self, write: _Write) -> None:
        self._queue.append(write)
        self._enqueued += 1
        self._work.set()
        self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # published outside a loop: written once a loop runs flush/subscribe/publish
        self._writer = loop.create_task(self._write_loop(), name="redis-broker-writer")

    async def _write_loop(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            if not self._inflight:
                if not self._queue:
                    self._work.clear()
                    await self._work.wait()
                    continue
                take = min(WRITE_BATCH, len(self._queue))
                self._inflight = [self._queue.popleft() for _ in range(take)]
            try:
                results = await self._write(self._inflight)
            except _NETWORK_ERRORS as exc:
                if self._last_error is None:
                    logger.warning(
                        "lost Redis at %s while writing (%s); retrying with backoff, "
                        "%d frames waiting",
                        self.url,
                        exc,
                        len(self._queue) + len(self._inflight),
                    )
                self._last_error = exc
                self._signal_progress()
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except NoScriptError:
                self._publish_sha = ""  # Redis restarted or SCRIPT FLUSH: load and retry
                continue
            except RedisError as exc:
                logger.error("Redis at %s rejected a write (%s); retrying", self.url, exc)
                self._last_error = exc
                self._signal_progress()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self._last_error is not None:
                logger.info("Redis at %s is back; writing queued frames", self.url)
            self._last_error = None
            backoff = BACKOFF_MIN
            for write, result in zip(self._inflight, results, strict=True):
                if write.frame is None:
                    continue
                if isinstance(result, Exception):
                    logger.error("Redis at %s rejected frame %r: %s", self.url, write.frame, result)
                    continue
                sequence = int(result)
                if sequence:
                    write.frame.sequence = sequence
                    self._remember(write.execution_id, sequence)
            self._written += len(self._inflight)
            self._inflight = []
            self._signal_progress()

    async def _write(self, batch: list[_Write]) -> list[Any]:
        if not self._publish_sha:
            self._publish_sha = await self._redis.script_load(_PUBLISH_LUA)
            self._end_sha = await self._redis.script_load(_END_LUA)
        options = self.options
        maxlen = options.replay_max_frames
        idle = options.replay_max_age_ms
        ended = options.retention_after_end_ms
        tomb = options.replay_max_age_ms
        pipe = self._redis.pipeline(transaction=False)
        for write in batch:
            stream, meta = self.stream_key(write.execution_id), self.meta_key(write.execution_id)
            frame = write.frame
            if frame is None:
                pipe.evalsha(self._end_sha, 2, stream, meta, ended, tomb)
            else:
                pipe.evalsha(
                    self._publish_sha,
                    2,
                    stream,
                    meta,
                    self._id,
                    write.local_id,
                    write.before,
                    write.after,
                    "1" if frame.replayable else "0",
                    maxlen,
                    idle,
                    ended,
                    tomb,
                    write.millis,
                )
        results: list[Any] = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, NoScriptError):
                raise result
            if isinstance(result, _NETWORK_ERRORS):
                raise result
        return results

    def _signal_progress(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _remember(self, execution_id: str, sequence: int) -> None:
        known = self._known
        if sequence > known.get(execution_id, 0):
            known[execution_id] = sequence
            known.move_to_end(execution_id)
            if len(known) > self.options.max_executions:
                known.popitem(last=False)

    # ------------------------------------------------------------------ reader
    async def _reading_for(self, execution_id: str) -> _Reading:
        """The execution's live read (``pending`` counts the caller in), started from its
        current last sequence if new."""
        reading = self._reading.get(execution_id)
        if reading is not None:
            reading.pending += 1
            if reading.ready is not None:
                try:
                    await asyncio.shield(reading.ready)
                except BaseException:
                    reading.pending -= 1
                    raise
            return reading
        reading = _Reading(execution_id, self.stream_key(execution_id))
        reading.pending = 1
        ready = reading.ready = asyncio.get_running_loop().create_future()
        self._reading[execution_id] = reading
        try:
            value = await self._redis.hget(self.meta_key(execution_id), "seq")
        except BaseException as exc:
            if self._reading.get(execution_id) is reading:
                del self._reading[execution_id]
            if isinstance(exc, Exception):
                ready.set_exception(exc)
                ready.exception()  # retrieved: only concurrent subscribers care
            else:
                ready.cancel()
            raise
        reading.cursor = int(value) if value is not None else 0
        reading.ready = None
        ready.set_result(None)
        self._by_key[reading.key.encode()] = reading
        await self._wake_reader()
        return reading

    async def _wake_reader(self) -> None:
        if self._reader is None or self._reader.done():
            if not self._closed:
                self._reader = asyncio.get_running_loop().create_task(
                    self._read_loop(), name="redis-broker-reader"
                )
            return
        self._reader_idle.set()
        if self._reader_blocked:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
            pipe.pexpire(self._wake_key, 60_000)
            try:
                await pipe.execute()
            except RedisError as exc:
                # Not fatal: the reader picks the execution up when its XREAD times out.
                logger.debug("could not wake the reader (%s)", exc)

    async def _read_loop(self) -> None:
        backoff = BACKOFF_MIN
        failing = False
        while True:
            if not self._by_key:
                self._reader_idle.clear()
                await self._reader_idle.wait()
                continue
            streams: dict[Any, Any] = {
                key: f"{reading.cursor}-0" for key, reading in self._by_key.items()
            }
            streams[self._wake_key] = self._wake_cursor
            self._reader_blocked = True
            try:
                response: Any = await self._redis.xread(
                    streams, count=READ_COUNT, block=self._block_ms
                )
            except (*_NETWORK_ERRORS, RedisError) as exc:
                if not failing:
                    logger.warning(
                        "lost Redis at %s while reading (%s); retrying with backoff", self.url, exc
                    )
                    failing = True
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            finally:
                self._reader_blocked = False
            if failing:
                logger.info("Redis at %s is back; reading again", self.url)
                failing = False
            backoff = BACKOFF_MIN
            for key, entries in response or ():
                reading = self._by_key.get(key)
                if reading is None:
                    if entries and key == self._wake_key.encode():
                        self._wake_cursor = entries[-1][0].decode()
                    continue
                self._deliver(reading, entries)

    def _deliver(self, reading: _Reading, entries: list[Any]) -> None:
        execution_id = reading.execution_id
        for entry_id, fields in entries:
            sequence = _sequence(entry_id)
            if sequence <= reading.cursor:
                continue
            reading.cursor = sequence
            frame = self._frame(execution_id, sequence, fields)
            for sub in reading.listeners:
                if sequence <= sub.after:
                    continue
                try:
                    sub.listener(frame)
                except Exception:
                    logger.exception(
                        "a subscriber of execution %r failed on %r", execution_id, frame
                    )
        if reading.cursor:
            self._remember(execution_id, reading.cursor)

    @staticmethod
    def _frame(execution_id: str, sequence: int, fields: dict[bytes, bytes]) -> Frame:
        data = fields[b"f"]
        decoded = orjson.loads(data)
        frame = Frame(
            execution_id,
            sequence,
            decoded["type"],
            decoded["timestamp"],
            decoded["payload"],
            fields.get(b"r") != b"0",
        )
        frame._encoded = data  # the exact bytes every process sends
        return frame

    # ------------------------------------------------------------------ replay
    async def _replay(self, reading: _Reading, sub: _RedisSubscription, after: int) -> None:
        """Deliver the retained frames after ``after`` (gap first), then catch up with the
        reader; returns with ``sub.after`` at or past ``reading.cursor``."""
        execution_id = reading.execution_id
        key = reading.key
        cutoff = self._clock.now().timestamp() * 1000 - self.options.replay_max_age_ms
        listener = sub.listener
        position = after
        missing = 0  # the highest sequence the log no longer holds (trimmed or too old)
        gap_sent = False

        def send_gap() -> None:
            nonlocal gap_sent
            gap_sent = True
            if missing > after:
                gap = {"from": after + 1, "to": missing}
                now = self._clock.now().isoformat()
                listener(Frame(execution_id, missing, GAP, now, gap, replayable=False))

        while True:
            entries: Any = await self._redis.xrange(key, f"({position}-0", "+", count=REPLAY_PAGE)
            if position == after:  # first page
                if entries:
                    missing = _sequence(entries[0][0]) - 1
                else:  # nothing retained: the numbering tells what was lost
                    value = await self._redis.hget(self.meta_key(execution_id), "seq")
                    missing = int(value) if value is not None else 0
            for entry_id, fields in entries:
                sequence = position = _sequence(entry_id)
                if not gap_sent:
                    if int(fields.get(b"t", b"0")) < cutoff:
                        missing = sequence
                        continue
                    send_gap()
                if fields.get(b"r") == b"0" or sub.closed:
                    continue
                listener(self._frame(execution_id, sequence, fields))
            if len(entries) < REPLAY_PAGE:
                break
        if not gap_sent:
            send_gap()
        sub.after = max(position, after)
        # Catch up with what the reader delivered meanwhile (live frames, non-replayable too).
        while sub.after < reading.cursor and not sub.closed:
            live: Any = await self._redis.xrange(
                key, f"({sub.after}-0", f"{reading.cursor}-0", count=REPLAY_PAGE
            )
            if not live:
                sub.after = reading.cursor
                break
            for entry_id, fields in live:
                sequence = sub.after = _sequence(entry_id)
                listener(self._frame(execution_id, sequence, fields))

    # ------------------------------------------------------------------ bookkeeping
    def _remove(self, sub: _RedisSubscription) -> None:
        reading = self._reading.get(sub.execution_id)
        if reading is not None and sub in reading.listeners:
            reading.listeners = tuple(s for s in reading.listeners if s is not sub)
            self._release_if_unused(sub.execution_id)

    def _release_if_unused(self, execution_id: str) -> None:
        reading = self._reading.get(execution_id)
        if reading is not None and not reading.listeners and not reading.pending:
            del self._reading[execution_id]
            self._by_key.pop(reading.key.encode(), None)

    def _unreachable(self, exc: BaseException) -> BrokerError:
        return BrokerError(
            f"cannot reach Redis at {self.url} ({type(exc).__name__}: {exc}); check that "
            "redis-server is running and reachable from this host (host, port, firewall, TLS "
            "for rediss://) and that broker.redis_url has the right password and db",
            context={"url": self.url},
        )


__all__ = ["RedisBroker", "mask_url"]
