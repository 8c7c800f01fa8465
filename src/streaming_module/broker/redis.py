"""The Redis Streams broker: several processes (several gateways) serve the same executions.

Key layout (``p`` is ``BrokerOptions.key_prefix``, ``E`` an execution id; ``{E}`` is a Redis Cluster
hash tag, so an execution's keys share one slot):

- ``p:exec:{E}`` — a Redis stream, one entry per written call (up to :data:`WRITE_BATCH`
  frames of one execution). The entry id is the call's *last* sequence (``<sequence>-0``), so the
  entries holding the frames after ``N`` are ``XRANGE p:exec:{E} (N +``. Fields: ``n`` how many
  sequences the call used; ``p`` the distinct JSON prefixes of its frames
  (``{"type":...,"executionId":...,"sequence":``, one per frame type, newline-separated);
  ``w`` one byte per frame: which prefix; ``d`` the JSON after each frame's sequence,
  concatenated; ``h`` per frame that length and the kind (replayable, at-most-once, or a hole of
  refused frames). A reader rebuilds every frame's exact bytes — prefix, sequence, tail — without
  decoding any JSON; Redis does no per-frame work at all. Trimmed once per call to the entries
  holding the last ``replay_max_frames`` sequences (``XTRIM MINID``); the oldest entry may hold a
  few older frames, which a replay treats as trimmed (see *No silent skip* for the one exception).
- ``p:exec:{E}:meta`` — a hash: ``seq`` the execution's last sequence, ``ended`` once
  :meth:`~RedisBroker.end_execution` ran, ``final`` once a final status was written,
  ``w:<writer>`` the last script call each broker instance applied (for idempotent retries).
- ``p:exec:{E}:lease`` — the id of the broker running the execution, with a TTL of
  ``producer_lease_ms``, renewed while it runs (see *Producers that die*).
- ``p:exec:{E}:run`` — the execution's :class:`~streaming_module.broker.base.RunRecord` (a hash),
  expiring with the stream.
- ``p:leases`` — a sorted set of the executions holding a lease, scored by when their lease is
  due (a hint for the processes that look for lost producers; the lease key is authoritative).
- ``p:wake:<broker id>`` — a tiny stream this broker writes to interrupt its own blocking read
  when a subscriber needs a new execution read (``MAXLEN 1``, expires after a minute).

Several servers. ``redis_url`` may list several Redis servers: each execution lives on the one
chosen by a jump consistent hash of its id (stable across processes and restarts; every process
must list the same URLs in the same order). Each server gets its own writer, reader and
connection pool in every process.

Sequencing and the write path. :meth:`~RedisBroker.publish` is synchronous and never blocks: it
encodes the frame once (split around its sequence number), puts it in a bounded local FIFO and
returns the :class:`Frame` with ``sequence`` 0. One writer task per server drains the FIFO in
order, up to :data:`WRITE_ROUND` frames per round trip, with **one script call per execution per
batch** of at most :data:`WRITE_BATCH` frames: the frames travel as a few blob arguments (a
packed header per frame, the JSON after each sequence, and once each the distinct JSON before
it, i.e. one per frame type), the script does one ``HINCRBY seq n``, one ``XADD`` of the whole
call, one ``XTRIM`` and the expiries.
Sequence numbers therefore rise by one per execution over every frame, across processes; one
process's frames keep their order (a run's final status stays its last frame); frames of
different processes interleave in the order Redis received them. ``await flush()`` returns
when every frame published before it is in Redis with its sequence (the returned frame's
``sequence`` is filled in then).

Delivery. A local subscriber does not wait for its own process's frames to come back from Redis:
once the writer has Redis's answer, the frames are delivered to this process's subscribers at
once, when they directly follow what those subscribers already have. Everything else (frames of
other processes, or ours when others' frames came in between) comes from one reader task per
server running a blocking ``XREAD`` over every execution with local subscribers:
``COUNT`` :data:`READ_COUNT` entries, or ``COUNT 1`` (a mere wake-up) after a wake that brought
only this process's own frames, so those are not read back a second time; a stream with more
is then drained without blocking. The reader fans out frames without decoding them: a frame's
payload is decoded only if something reads it (the WebSocket path does not).
Timestamps are taken to the millisecond (one clock reading per millisecond of publishing).

No silent skip. A reader that finds its next frames gone from the stream (trimmed by
``replay_max_frames`` before it could read them, refused under load, or lost by a Redis restart)
delivers a ``gap`` ``{"from", "to"}`` and continues; a replay does the same for every hole. A
process's own writes never trim other processes' frames its own subscribers have yet to read:
the script then keeps what they still need, so the log may briefly hold up to twice
``replay_max_frames``.

Full policy. The FIFO holds at most ``max_pending_frames`` frames (each costs its JSON plus
~300 bytes). Past it — Redis slow or unreachable for long — ``publish`` raises
:class:`~streaming_module.errors.BrokerError` (never blocks, never grows without bound), and the
refused frame's place in the numbering is kept: the next accepted frame of that execution is
numbered after it, so every subscriber sees a ``gap`` there instead of silently missing text.
``status`` frames are always accepted (one run's end must never be lost).

Producers that die. A broker that publishes a ``status`` frame that is not final (``started``)
takes a lease on the execution in Redis (in the same script call) and renews it every third of
``producer_lease_ms``; the final status releases it. Every broker periodically looks for leases
that expired without a final status; the first to find one appends the final ``status: failed``
``{"code": "producer_lost"}`` through the same script as any frame (sequenced, replayable, so
every watcher on every process ends and a resume replays it), marks the execution ended and its
:class:`RunRecord` failed. The check and the append are one script on the execution's keys, so
exactly one process announces it.

Replay. ``subscribe(E, last_sequence=N)`` reads the retained frames after ``N`` with ``XRANGE``
(pages of :data:`REPLAY_PAGE`), preceded by a ``gap`` for sequences trimmed away or older than
``replay_max_age_ms``, then catches up to what the reader has delivered and joins it with no
await in between: no gap, no duplicate. At-most-once frames (``replayable=False``) are sequenced
and stored with ``r=0``: live subscribers get them in order, a replay skips them.

Retention. Every write sets the stream's TTL to ``replay_max_age_ms``; :meth:`end_execution`,
queued behind the execution's frames, sets it to ``retention_after_end_ms``. The meta hash lives
``replay_max_age_ms`` longer (a tombstone): an execution published to again continues its
numbering. Numbering also continues after a Redis restart without persistence: the writer tells
the script the last sequence this process knows, and a new counter starts after it (a resume from
before it gets a ``gap``).

Failures. A Redis that cannot be reached raises :class:`BrokerError` from ``subscribe`` and from
``flush`` (after ``flush_timeout`` seconds), naming the URL with its password masked. A dropped
connection is retried by the writer and the reader with exponential backoff (0.05 s to 5 s),
logged once per outage on ``streaming_module.broker.redis``; queued frames are written once
Redis is back, exactly once (the script recognises calls a lost reply already applied).
:meth:`~RedisBroker.health` reports each server's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import math
import random
import struct
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import redis as sync_redis
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
    RunRecord,
    Subscription,
)
from streaming_module.config import BrokerOptions, mask_url
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.errors import BrokerError
from streaming_module.protocol.frames import encode_frame
from streaming_module.protocol.json import dumps, loads
from streaming_module.types import FINAL_STATUSES

logger = logging.getLogger("streaming_module.broker.redis")

WRITE_BATCH = 512
"""Most frames in one script call (one execution's): a call stays short, so other clients of
Redis are not held up for long."""

WRITE_ROUND = 8192
"""Most frames taken from the queue per round trip (a pipeline of script calls): a backlog
drains in few round trips."""

READ_COUNT = 64
"""Stream entries per stream per bulk ``XREAD``: each is one written call, up to
:data:`WRITE_BATCH` frames."""

REPLAY_PAGE = 16
"""Stream entries (written calls, up to :data:`WRITE_BATCH` frames each) per ``XRANGE`` page
during a replay."""

LEASE_SCAN = 100
"""Expired-lease candidates examined per server per look."""

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0

WRITER_WAIT = 1.0
"""Longest the reader waits for the writer's reply before decoding frames the writer is about
to hand over anyway."""

HEALTH_TIMEOUT = 1.0
"""Seconds :meth:`RedisBroker.health` waits for each server's PING."""

PRODUCER_LOST = "producer_lost"

_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

# Per frame in a script call: the length of its JSON after the sequence, and its kind (HOLE:
# sequences given up for refused frames; the length is how many). The JSON before the sequence
# (``{"type":...,"executionId":...,"sequence":``) is the same for every frame of a type, so a call
# carries each distinct one once, and one byte per frame says which.
_HEAD = struct.Struct(">IB")
MAX_PREFIXES = 255
_NOT_REPLAYABLE, _REPLAYABLE, _HOLE = 0, 1, 2

# KEYS: stream, meta, lease, run.
# ARGV: 1 writer, 2 call id, 3 sequences used, 4 items, 5 heads, 6 data (the JSON after each
# sequence), 7 maxlen, 8 idle ttl, 9 ended ttl, 10 tombstone ms, 11 floor (last sequence the
# caller knows), 12 op ('-' none, 'a' take the lease, 'r' final status: release it, 'c' claim a
# lost producer's run), 13 lease ms, 14 run error JSON (claim), 15 timestamp (claim), 16 the last
# sequence this process's subscribers have (-1: none): trimming keeps the frames of others they
# have yet to read (theirs come from the writer), up to twice maxlen, 17 prefix index per item
# (one byte each), 18 the distinct JSON prefixes (before the sequence), joined by newlines.
# The call becomes one stream entry, its id the last sequence used; the frames are not touched
# here (readers put each one's sequence in). Returns the first sequence used; 0 for a claim that
# is no longer needed (a final status was written); -pttl for a claim whose lease is alive.
_APPEND_LUA = """
local op = ARGV[12]
local wf = 'w:' .. ARGV[1]
local m = redis.call('HMGET', KEYS[2], wf, 'ended', 'final')
if op == 'c' then
  if m[3] then return 0 end
  local pttl = redis.call('PTTL', KEYS[3])
  if pttl ~= -2 then
    if pttl < 1 then pttl = 1 end
    return -pttl
  end
elseif m[1] then
  local sep = string.find(m[1], ':', 1, true)
  local done = tonumber(string.sub(m[1], 1, sep - 1))
  if done >= tonumber(ARGV[2]) then
    if done == tonumber(ARGV[2]) then return tonumber(string.sub(m[1], sep + 1)) end
    return 0
  end
end
local count = tonumber(ARGV[3])
local last = redis.call('HINCRBY', KEYS[2], 'seq', count)
if last == count then
  -- A counter starting afresh continues after the stream (a lost meta hash) and after what the
  -- caller knows (a Redis restarted without its data).
  local base = tonumber(ARGV[11])
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if top[1] then
    local s = tonumber(string.match(top[1][1], '^(%d+)'))
    if s > base then base = s end
  end
  if base > 0 then
    last = base + count
    redis.call('HSET', KEYS[2], 'seq', last)
  end
end
local function append()
  return redis.pcall('XADD', KEYS[1], string.format('%d', last), 'n', count, 'h', ARGV[5],
    'd', ARGV[6], 'w', ARGV[17], 'p', ARGV[18])
end
local added = append()
if type(added) == 'table' and added.err then
  -- The counter was behind the stream (a stale meta hash): continue after the stream.
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if not top[1] then return redis.error_reply(added.err) end
  last = tonumber(string.match(top[1][1], '^(%d+)')) + count
  redis.call('HSET', KEYS[2], 'seq', last)
  added = append()
  if type(added) == 'table' and added.err then return redis.error_reply(added.err) end
end
local first = last - count + 1
-- Keep every entry holding one of the last maxlen sequences (readers hide the older frames of
-- the oldest entry); or, up to twice maxlen, what this process's subscribers have yet to read.
local maxlen, keep = tonumber(ARGV[7]), tonumber(ARGV[16])
local minid = last - maxlen + 1
if keep >= 0 and keep < first - 1 and keep + 1 < minid then
  minid = math.max(keep + 1, last - 2 * maxlen + 1)
end
if minid > 1 then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', minid))
end
local ttl = tonumber(ARGV[8])
if m[2] or op == 'c' then ttl = tonumber(ARGV[9]) end
if op == 'a' then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[13])
  redis.call('HDEL', KEYS[2], 'final')
elseif op == 'r' then
  if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
  redis.call('HSET', KEYS[2], 'final', '1')
elseif op == 'c' then
  redis.call('HSET', KEYS[2], 'final', '1', 'ended', '1')
  local st = redis.call('HGET', KEYS[4], 'status')
  if st ~= 'completed' and st ~= 'failed' and st ~= 'cancelled' then
    redis.call('HSET', KEYS[4], 'status', 'failed', 'error', ARGV[14], 'updated', ARGV[15])
  end
end
if op ~= 'c' then
  redis.call('HSET', KEYS[2], wf, ARGV[2] .. ':' .. string.format('%d', first))
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[10]))
redis.call('PEXPIRE', KEYS[4], ttl)
return first
"""

# KEYS: stream, meta, run. ARGV: ended ttl ms, tombstone ms.
_END_LUA = """
redis.call('HSET', KEYS[2], 'ended', '1')
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[1]))
return 1
"""

# KEYS: lease, meta. ARGV: owner, lease ms. 1 when renewed (or taken back after it lapsed,
# while nobody announced the run lost), 0 when no longer ours.
_RENEW_LUA = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] or (not owner and not redis.call('HGET', KEYS[2], 'final')) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: meta. ARGV: floor, ttl ms. Raises the counter to the floor (after a Redis restart).
_FLOOR_LUA = """
local s = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if s < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1])
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return 1
end
return 0
"""

# KEYS: run, stream. ARGV: fallback ttl ms, then field/value pairs. Replaces the record and gives
# it the stream's TTL (the fallback when the stream has none yet).
_SAVE_RUN_LUA = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local ttl = redis.call('PTTL', KEYS[2])
if ttl < 1 then ttl = tonumber(ARGV[1]) end
if ttl < 1 then ttl = 1 end
redis.call('PEXPIRE', KEYS[1], ttl)
return ttl
"""

_SCRIPTS = {
    "append": _APPEND_LUA,
    "end": _END_LUA,
    "renew": _RENEW_LUA,
    "floor": _FLOOR_LUA,
    "save_run": _SAVE_RUN_LUA,
}
_SHA = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in _SCRIPTS.items()}


@functools.lru_cache(maxsize=8192)
def shard_index(execution_id: str, servers: int) -> int:
    """The server (0 .. ``servers``-1) holding ``execution_id``: a jump consistent hash
    (Lamping & Veach) of a 64-bit BLAKE2b digest of the id — stable across processes, Python
    versions and restarts; growing from n to n+1 servers moves about 1/(n+1) of executions."""
    if servers <= 1:
        return 0
    key = int.from_bytes(hashlib.blake2b(execution_id.encode(), digest_size=8).digest(), "big")
    bucket, jump = -1, 0
    while jump < servers:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def _sequence(entry_id: bytes) -> int:
    """The sequence of a stream entry id ``b"<sequence>-0"``."""
    return int(entry_id.partition(b"-")[0])


_TIMESTAMP_KEY = b'"timestamp":"'


def _published_ms(data: bytes) -> float:
    """When an encoded frame was published (epoch ms), from its ``timestamp``; +inf (never too
    old) when it cannot be read."""
    start = data.find(_TIMESTAMP_KEY)
    if start < 0:
        return math.inf
    start += len(_TIMESTAMP_KEY)
    try:
        text = data[start : data.index(b'"', start)].decode()
        return datetime.fromisoformat(text).timestamp() * 1000
    except ValueError:
        return math.inf


def _entry_frames(
    entry_id: bytes, fields: list[Any], after: int
) -> Iterator[tuple[int, bytes, bool]]:
    """The frames of a stream entry (one written call) numbered above ``after``, as
    ``(sequence, exact JSON bytes, replayable)``: each frame's JSON is its type's prefix, its
    sequence and its tail. Holes (refused frames) only advance the numbering."""
    # Fields, in the order the script writes them: n, h, d, w, p.
    last = _sequence(entry_id)
    sequence = last - int(fields[1])
    heads, data, which = fields[3], fields[5], fields[7]
    prefixes = fields[9].split(b"\n")
    offset = 0
    for index, (length, kind) in zip(which, _HEAD.iter_unpack(heads), strict=True):
        if kind == _HOLE:
            sequence += length
            continue
        sequence += 1
        if sequence > after:
            prefix = prefixes[index - 1]
            yield (
                sequence,
                b"%s%d%s" % (prefix, sequence, data[offset : offset + length]),
                bool(kind),
            )
        offset += length


def _streams(response: Any) -> Iterable[tuple[bytes, list[Any]]]:
    """``XREAD``'s raw reply as ``(key, entries)``: a map under RESP3, a list of pairs under
    RESP2."""
    if not response:
        return ()
    if isinstance(response, dict):
        return response.items()
    return ((pair[0], pair[1]) for pair in response)


async def _command(client: aioredis.Redis, *args: Any) -> Any:
    """A command whose reply is returned as parsed (no response callback for stream reads)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


_TYPE_START = len(b'{"type":"')


def _stored_frame(execution_id: str, sequence: int, data: bytes, replayable: bool) -> Frame:
    """A frame as Redis holds it: the exact JSON bytes every process sends. Its ``type`` is read
    from the bytes' prefix (the gateway filters on it for every frame); ``timestamp`` and
    ``payload`` are decoded only when something reads them (:meth:`Frame.from_encoded`)."""
    end = data.find(b'"', _TYPE_START)
    raw = data[_TYPE_START:end]
    # Our encoder writes "type" first; anything unusual (an escape) is left to the lazy decode.
    if end < 0 or b"\\" in raw or not data.startswith(b'{"type":"'):
        return Frame.from_encoded(
            data, execution_id=execution_id, sequence=sequence, replayable=replayable
        )
    return Frame.from_encoded(
        data,
        execution_id=execution_id,
        sequence=sequence,
        type=raw.decode(),
        replayable=replayable,
    )


class _OutgoingFrame(Frame):
    """A frame published here: its JSON split around the sequence (``_before`` / ``_after``)
    and its packed header, queued as is; :meth:`encoded` joins the parts around the sequence
    only if something asks for the bytes."""

    __slots__ = ("_after", "_before", "_head", "_op")
    _after: bytes
    _before: bytes
    _head: bytes
    _op: str
    """'-' nothing, 'a' take the lease, 'r' release it (a final status)."""

    def encoded(self) -> bytes:
        data = self._encoded
        if data is None:
            if self.sequence:
                data = self._encoded = b"%s%d%s" % (self._before, self.sequence, self._after)
            else:  # not numbered yet: the JSON as it stands (sequence 0), not cached
                return self._before + b"0" + self._after
        return data


class _Marker:
    """A queued write that is not a frame: the end of an execution, or a hole (refused
    frames)."""

    __slots__ = ("_head", "_op", "execution_id")

    def __init__(self, execution_id: str, op: str, head: bytes = b"") -> None:
        self.execution_id = execution_id
        self._op = op
        """'end' or 'hole' (``_head`` says how many sequences)."""
        self._head = head


_Write = _OutgoingFrame | _Marker


class _Call:
    """One script call of a batch: an execution's frames (and holes), or its end."""

    __slots__ = (
        "call_id",
        "count",
        "data",
        "execution_id",
        "heads",
        "is_end",
        "op",
        "prefixes",
        "which",
        "writes",
    )

    def __init__(self, execution_id: str, call_id: int, is_end: bool = False) -> None:
        self.execution_id = execution_id
        self.call_id = call_id
        self.is_end = is_end
        self.writes: list[_Write] = []
        self.prefixes: dict[bytes, int] = {}
        self.op = "-"
        self.count = 0
        self.heads = b""
        self.data = b""
        self.which = b""

    def add(self, write: _Write) -> bool:
        """Take the write, unless it would need a prefix beyond :data:`MAX_PREFIXES`."""
        if type(write) is _OutgoingFrame:
            prefixes = self.prefixes
            if write._before not in prefixes:
                if len(prefixes) >= MAX_PREFIXES:
                    return False
                prefixes[write._before] = len(prefixes) + 1
        self.writes.append(write)
        return True

    def seal(self) -> None:
        heads: list[bytes] = []
        data: list[bytes] = []
        which = bytearray()
        prefixes = self.prefixes
        count = 0
        op = "-"
        for write in self.writes:
            heads.append(write._head)
            if type(write) is _OutgoingFrame:
                count += 1
                data.append(write._after)
                which.append(prefixes[write._before])
                if write._op != "-":
                    op = write._op
            else:  # a hole
                count += _HEAD.unpack(write._head)[0]
                which.append(0)
        self.heads = b"".join(heads)
        self.data = b"".join(data)
        self.which = bytes(which)
        self.count = count
        self.op = op


class _RedisSubscription(ListenerSubscription):
    __slots__ = ("after",)

    def __init__(self, broker: RedisBroker, execution_id: str, listener: Listener) -> None:
        super().__init__(execution_id, listener, broker._remove)
        self.after = 0
        """Frames up to this sequence were delivered by the replay; the reader skips them."""


class _Reading:
    """An execution this process reads live: its stream key, the last sequence delivered to its
    listeners, and the local listeners."""

    __slots__ = ("cursor", "execution_id", "key", "listeners", "pending", "ready", "shard")

    def __init__(self, execution_id: str, shard: _Shard) -> None:
        self.execution_id = execution_id
        self.shard = shard
        self.key = shard.stream_key(execution_id).encode()
        self.cursor = 0
        self.listeners: tuple[_RedisSubscription, ...] = ()
        self.pending = 0
        """Subscribes in progress (replaying) that will join ``listeners``."""
        self.ready: asyncio.Future[None] | None = None


class _Shard:
    """One Redis server: its connection pool, writer queue and reader."""

    def __init__(
        self,
        index: int,
        url: str,
        prefix: str,
        broker_id: str,
        *,
        max_connections: int,
        flush_timeout: float,
        block_ms: int,
    ) -> None:
        self.index = index
        self.raw_url = url
        self.url = mask_url(url)
        self.prefix = prefix
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=max(flush_timeout, 1.0),
                socket_connect_timeout=min(5.0, max(flush_timeout, 0.5)),
                socket_timeout=block_ms / 1000 + 10.0,
                socket_keepalive=True,
                client_name=f"streaming_module:{broker_id}",
            )
        except ValueError as exc:
            raise BrokerError(
                f"invalid broker.redis_url {self.url!r} ({exc}); expected "
                "redis://[[user]:password@]host[:port][/db] or rediss:// or unix://",
                context={"url": self.url},
            ) from None
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        # Stream replies are read raw (hiredis parses them in C; no dict per entry).
        for command in ("XREAD", "XRANGE"):
            if command in self.client.response_callbacks:
                del self.client.response_callbacks[command]
        self.sync_client: sync_redis.Redis | None = None
        self.wake_key = f"{prefix}:wake:{broker_id}"
        self.leases_key = f"{prefix}:leases"
        self.scripts_loaded = False
        # ---- writer
        self.queue: deque[_Write] = deque()
        self.inflight: list[_Call] | None = None
        self.inflight_writes = 0
        self.enqueued = 0
        self.written = 0
        self.work = asyncio.Event()
        self.idle = False
        """The writer waits for ``work`` (set it when queueing)."""
        self.progress = asyncio.Event()
        self.last_error: BaseException | None = None
        self.writer: asyncio.Task[None] | None = None
        # ---- reader
        self.by_key: dict[bytes, _Reading] = {}
        self.reader: asyncio.Task[None] | None = None
        self.reader_idle = asyncio.Event()
        self.reader_blocked = False
        self.reader_progress = asyncio.Event()
        self.reader_error: BaseException | None = None
        self.wake_cursor = "0-0"

    # keys
    def stream_key(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{{{execution_id}}}"

    def meta_key(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{{{execution_id}}}:meta"

    def lease_key(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{{{execution_id}}}:lease"

    def run_key(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{{{execution_id}}}:run"

    def signal_progress(self) -> None:
        progress, self.progress = self.progress, asyncio.Event()
        progress.set()

    def signal_reader_progress(self) -> None:
        progress, self.reader_progress = self.reader_progress, asyncio.Event()
        progress.set()

    async def load_scripts(self) -> None:
        for name, body in _SCRIPTS.items():
            sha = await self.client.script_load(body)
            if sha != _SHA[name]:  # pragma: no cover - Redis computes SHA1 like we do
                raise BrokerError(f"Redis at {self.url} returned an unexpected script id")
        self.scripts_loaded = True

    async def evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self.scripts_loaded:
            await self.load_scripts()
        try:
            return await self.client.evalsha(_SHA[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load_scripts()
            return await self.client.evalsha(_SHA[name], len(keys), *keys, *args)


class RedisBroker(Broker):
    """A :class:`Broker` over Redis Streams, shared by every process using the same Redis
    server(s) and ``key_prefix``. See the module docstring for the design, guarantees and
    bounds."""

    def __init__(
        self,
        options: BrokerOptions,
        clock: Clock | None = None,
        *,
        max_pending: int | None = None,
        max_connections: int = 16,
        flush_timeout: float = 10.0,
        block_ms: int = 2000,
    ) -> None:
        urls = options.redis_urls
        if not urls:
            raise BrokerError(
                "the redis broker needs broker.redis_url, e.g. 'redis://127.0.0.1:6379/0'",
                context={"backend": "redis"},
            )
        max_pending = max_pending if max_pending is not None else options.max_pending_frames
        if max_pending < 1 or max_connections < 3:
            raise ValueError("max_pending must be >= 1 and max_connections >= 3")
        self.options = options
        self._clock: Clock = clock or SystemClock()
        self._max_pending = max_pending
        self._flush_timeout = flush_timeout
        self._block_ms = block_ms
        self._id = uuid.uuid4().hex[:16]
        self._prefix = options.key_prefix
        self._shards = [
            _Shard(
                i,
                url,
                self._prefix,
                self._id,
                max_connections=max_connections,
                flush_timeout=flush_timeout,
                block_ms=block_ms,
            )
            for i, url in enumerate(urls)
        ]
        self._only = self._shards[0] if len(self._shards) == 1 else None
        self.url = ", ".join(shard.url for shard in self._shards)
        """The server URL(s), passwords masked."""
        self._call_ids = itertools.count(1)
        self._stamp = ""
        self._stamped_at = -1.0
        self._pending = 0
        self._holes: dict[str, int] = {}
        self._refused = 0
        # ---- reader state
        self._reading: dict[str, _Reading] = {}
        # ---- leases held by this broker (execution id -> shard) and the task keeping them
        self._leases: dict[str, _Shard] = {}
        self._lease_ms = options.producer_lease_ms
        self._lease_task: asyncio.Task[None] | None = None
        self.producers_lost = 0
        """Lost producers this broker announced."""
        # ---- last sequences known here (bounded like the executions of the memory broker)
        self._known: OrderedDict[str, int] = OrderedDict()
        self._closed = False

    # ------------------------------------------------------------------ keys
    def shard_for(self, execution_id: str) -> int:
        """Index (in ``redis_url``) of the server holding the execution."""
        return shard_index(execution_id, len(self._shards))

    def _shard(self, execution_id: str) -> _Shard:
        shards = self._shards
        if len(shards) == 1:
            return shards[0]
        return shards[shard_index(execution_id, len(shards))]

    def stream_key(self, execution_id: str) -> str:
        return self._shard(execution_id).stream_key(execution_id)

    def meta_key(self, execution_id: str) -> str:
        return self._shard(execution_id).meta_key(execution_id)

    def lease_key(self, execution_id: str) -> str:
        return self._shard(execution_id).lease_key(execution_id)

    def run_key(self, execution_id: str) -> str:
        return self._shard(execution_id).run_key(execution_id)

    @property
    def pending(self) -> int:
        """Frames published here and not yet in Redis."""
        return self._pending

    # ------------------------------------------------------------------ contract
    def publish(
        self, execution_id: str, type: str, payload: Any, *, replayable: bool = True
    ) -> Frame:
        """Queue the frame for Redis and return it with ``sequence`` 0 (filled in once Redis
        assigned it; ``await flush()`` waits for that). Raises :class:`BrokerError` when the
        broker is closed, or when ``max_pending_frames`` frames already wait for Redis (the
        frame's place then becomes a gap; ``status`` frames are always accepted)."""
        if self._closed:
            raise BrokerError("the redis broker is closed", context={"url": self.url})
        op = "-"
        if type == "status":
            status = payload.get("status") if isinstance(payload, dict) else None
            op = "r" if status in FINAL_STATUSES else "a"
        elif self._pending >= self._max_pending:
            self._refuse(execution_id)
        shard = self._only or self._shard(execution_id)
        clock = self._clock
        now = clock.monotonic()
        if not 0 <= now - self._stamped_at < 0.001:  # timestamps to the millisecond
            wall = clock.now()
            self._stamp = wall.isoformat()
            self._stamped_at = now
        timestamp = self._stamp
        frame = _OutgoingFrame.__new__(_OutgoingFrame)
        frame.execution_id = execution_id
        frame.sequence = 0
        frame.type = type
        frame.timestamp = timestamp
        frame.payload = payload
        frame.replayable = replayable
        frame._encoded = None
        frame.transport_cache = None
        encoded = encode_frame(type, execution_id, 0, timestamp, payload)
        # The first '"sequence":0' is ours: type and executionId precede it, and inside a JSON
        # string every '"' is escaped.
        cut = encoded.index(b'"sequence":0') + 11
        frame._before = encoded[:cut]
        after = frame._after = encoded[cut + 1 :]
        frame._op = op
        if self._holes:
            holes = self._holes.pop(execution_id, 0)
            if holes:
                hole = _HEAD.pack(holes, _HOLE)
                self._enqueue(shard, _Marker(execution_id, "hole", hole))
        frame._head = _HEAD.pack(len(after), _REPLAYABLE if replayable else _NOT_REPLAYABLE)
        shard.queue.append(frame)  # what _enqueue does, inlined on the hot path
        shard.enqueued += 1
        self._pending += 1
        if shard.idle:
            shard.idle = False
            shard.work.set()
        elif shard.writer is None:
            self._activate(shard)
        return frame

    def _refuse(self, execution_id: str) -> None:
        holes = self._holes
        if execution_id in holes or len(holes) < self.options.max_executions:
            holes[execution_id] = holes.get(execution_id, 0) + 1
        self._refused += 1
        if self._refused == 1 or self._refused % 10_000 == 0:
            logger.warning(
                "%d frames wait for Redis at %s (max_pending_frames): refusing frames "
                "(%d so far); subscribers will see a gap",
                self._pending,
                self.url,
                self._refused,
            )
        raise BrokerError(
            f"{self._max_pending} frames are waiting for Redis at {self.url}: it is too slow "
            "or unreachable; check the server, or raise broker.max_pending_frames",
            context={"url": self.url, "execution_id": execution_id},
        )

    async def subscribe(
        self, execution_id: str, listener: Listener, *, last_sequence: int | None = None
    ) -> Subscription:
        """See :meth:`Broker.subscribe`. Raises :class:`BrokerError` when Redis cannot be
        reached."""
        if self._closed:
            raise BrokerError("the redis broker is closed", context={"url": self.url})
        shard = self._shard(execution_id)
        self._activate(shard)
        sub = _RedisSubscription(self, execution_id, listener)
        try:
            reading = await self._reading_for(execution_id, shard)
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(shard, exc) from None
        try:
            if last_sequence is None:
                sub.after = reading.cursor
            else:
                await self._replay(reading, sub, last_sequence)
        except BaseException as exc:
            reading.pending -= 1
            self._release_if_unused(execution_id)
            if isinstance(exc, _NETWORK_ERRORS):
                raise self._unreachable(shard, exc) from None
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
        self._enqueue(self._shard(execution_id), _Marker(execution_id, "end"))

    def last_sequence(self, execution_id: str) -> int:
        """The execution's latest sequence: what this process wrote or read, else (an execution
        this process has not seen) Redis's counter, asked synchronously — one round trip that
        blocks the calling thread; async code should ``await fetch_last_sequence()``."""
        known = self._known.get(execution_id)
        if known is not None:
            return known
        shard = self._shard(execution_id)
        if shard.sync_client is None:
            shard.sync_client = sync_redis.Redis.from_url(
                shard.raw_url, socket_timeout=2.0, socket_connect_timeout=2.0
            )
        try:
            value = shard.sync_client.hget(shard.meta_key(execution_id), "seq")
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(shard, exc) from None
        return int(value) if value is not None else 0

    async def fetch_last_sequence(self, execution_id: str) -> int:
        """The execution's latest sequence according to Redis (0 when none)."""
        shard = self._shard(execution_id)
        try:
            value = await shard.client.hget(shard.meta_key(execution_id), "seq")
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(shard, exc) from None
        return int(value) if value is not None else 0

    # ------------------------------------------------------------------ run records
    async def save_run(self, record: RunRecord) -> None:
        """Keep ``record`` in the execution's ``:run`` hash, expiring with its stream."""
        execution_id = record.execution_id
        shard = self._shard(execution_id)
        fields: list[Any] = ["status", record.status, "updated", record.updated or ""]
        if record.workflow is not None:
            fields += ["workflow", record.workflow]
        if record.result is not None:
            fields += ["result", dumps(record.result)]
        if record.error is not None:
            fields += ["error", dumps(record.error)]
        options = self.options
        fallback = (
            options.retention_after_end_ms
            if record.status in FINAL_STATUSES
            else options.replay_max_age_ms
        )
        try:
            await shard.evalsha(
                "save_run",
                [shard.run_key(execution_id), shard.stream_key(execution_id)],
                [fallback, *fields],
            )
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(shard, exc) from None

    async def load_run(self, execution_id: str) -> RunRecord | None:
        """The execution's :class:`RunRecord` from Redis, or None."""
        shard = self._shard(execution_id)
        try:
            raw: dict[Any, Any] = await shard.client.hgetall(shard.run_key(execution_id))
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(shard, exc) from None
        if not raw:
            return None
        workflow = raw.get(b"workflow")
        result = raw.get(b"result")
        error = raw.get(b"error")
        return RunRecord(
            execution_id=execution_id,
            status=raw.get(b"status", b"").decode(),
            workflow=workflow.decode() if workflow is not None else None,
            result=loads(result) if result is not None else None,
            error=loads(error) if error is not None else None,
            updated=raw.get(b"updated", b"").decode(),
        )

    # ------------------------------------------------------------------ health
    async def ping(self) -> None:
        """Check that every Redis server answers; raises :class:`BrokerError` saying what to
        check."""
        for shard in self._shards:
            try:
                await shard.client.ping()
            except _NETWORK_ERRORS as exc:
                raise self._unreachable(shard, exc) from None
            except RedisError as exc:
                raise BrokerError(
                    f"Redis at {shard.url} refused PING ({exc}); check the password and ACL user "
                    "in broker.redis_url",
                    context={"url": shard.url},
                ) from None
        for shard in self._shards:
            self._activate(shard)

    async def health(self) -> dict[str, Any]:
        """The broker's state for ``GET /health``: ``backend``, ``status`` (``ok``, or
        ``degraded`` when a server does not answer its PING within :data:`HEALTH_TIMEOUT`
        seconds — its executions then wait or fail, the others are unaffected), ``pending``,
        ``maxPending``, ``producersLost`` and per server ``url`` (masked), ``status``,
        ``latencyMs`` or ``error``, and ``pending``."""

        async def one(shard: _Shard) -> dict[str, Any]:
            out: dict[str, Any] = {
                "url": shard.url,
                "pending": len(shard.queue) + shard.inflight_writes,
            }
            started = time.perf_counter()
            try:
                await asyncio.wait_for(shard.client.ping(), HEALTH_TIMEOUT)
            except (TimeoutError, *_NETWORK_ERRORS, RedisError) as exc:
                out["status"] = "unreachable"
                out["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                return out
            out["status"] = "ok"
            out["latencyMs"] = round((time.perf_counter() - started) * 1000, 2)
            if shard.last_error is not None:
                out["status"] = "recovering"
            return out

        servers = await asyncio.gather(*(one(shard) for shard in self._shards))
        ok = all(server["status"] == "ok" for server in servers)
        return {
            "backend": "redis",
            "status": "ok" if ok else "degraded",
            "pending": self._pending,
            "maxPending": self._max_pending,
            "producersLost": self.producers_lost,
            "servers": servers,
        }

    async def flush(self) -> None:
        """Return once every frame published before the call is in Redis with its sequence.
        Raises :class:`BrokerError` after ``flush_timeout`` seconds of failing to reach Redis."""
        targets = [(s, s.enqueued) for s in self._shards if s.written < s.enqueued]
        if not targets:
            return
        loop = asyncio.get_running_loop()
        for shard, target in targets:
            self._activate(shard)
            failing_since: float | None = None
            while shard.written < target:
                if self._closed:
                    raise BrokerError(
                        "the redis broker closed before its frames reached Redis",
                        context={"url": shard.url},
                    )
                if shard.last_error is not None:
                    failing_since = failing_since if failing_since is not None else loop.time()
                    if loop.time() - failing_since >= self._flush_timeout:
                        raise self._unreachable(shard, shard.last_error)
                else:
                    failing_since = None
                progress = shard.progress
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(progress.wait(), 0.25)

    async def aclose(self) -> None:
        """Write what is queued (for at most ``flush_timeout`` seconds), then cancel and await
        the writers, readers and the lease task, drop subscriptions and close the connection
        pools. Leases still held are left to expire (the runs stop with this process)."""
        if self._closed:
            return
        if self._pending:
            try:
                await asyncio.wait_for(self.flush(), self._flush_timeout)
            except (BrokerError, TimeoutError):
                logger.warning(
                    "closing the redis broker with %d frames not written to %s",
                    self._pending,
                    self.url,
                )
        self._closed = True
        tasks = [self._lease_task] if self._lease_task is not None else []
        for shard in self._shards:
            tasks += [t for t in (shard.writer, shard.reader) if t is not None]
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
        self._lease_task = None
        for reading in self._reading.values():
            for sub in reading.listeners:
                sub._closed = True
            reading.listeners = ()
            if reading.ready is not None and not reading.ready.done():
                reading.ready.cancel()
        self._reading.clear()
        self._known.clear()
        self._leases.clear()
        self._holes.clear()
        self._pending = 0
        for shard in self._shards:
            shard.writer = shard.reader = None
            shard.by_key.clear()
            shard.queue.clear()
            shard.inflight = None
            shard.signal_progress()
            await shard.client.aclose(close_connection_pool=True)
            if shard.sync_client is not None:
                shard.sync_client.close()

    # ------------------------------------------------------------------ writer
    def _enqueue(self, shard: _Shard, write: _Write) -> None:
        shard.queue.append(write)
        shard.enqueued += 1
        if type(write) is _OutgoingFrame:
            self._pending += 1
        if shard.idle:
            shard.idle = False
            shard.work.set()
        elif shard.writer is None:
            self._activate(shard)

    def _activate(self, shard: _Shard) -> None:
        """Start the shard's writer and the lease task (once a loop runs)."""
        if self._closed or (shard.writer is not None and self._lease_task is not None):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # published outside a loop: written once a loop runs flush/subscribe/publish
        if shard.writer is None:
            shard.writer = loop.create_task(
                self._write_loop(shard), name=f"redis-broker-writer-{shard.index}"
            )
            shard.writer.add_done_callback(self._task_ended)
        if self._lease_task is None:
            self._lease_task = loop.create_task(self._lease_loop(), name="redis-broker-leases")
            self._lease_task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A writer or the lease task stopped: log why unless the broker closed, and let the
        next publish or subscribe start it again."""
        if self._closed or task.cancelled():
            return
        logger.error("%s stopped: %r; restarting it", task.get_name(), task.exception())
        if task is self._lease_task:
            self._lease_task = None
            self._activate(self._shards[0])
        for shard in self._shards:
            if task is shard.writer:
                shard.writer = None
                shard.idle = False
                self._activate(shard)

    def _prepare(self, shard: _Shard) -> list[_Call]:
        """Take up to :data:`WRITE_ROUND` writes off the queue as script calls: one per
        execution and :data:`WRITE_BATCH` frames (split at an end, or past
        :data:`MAX_PREFIXES` frame types), in queue order per execution."""
        queue = shard.queue
        take = min(WRITE_ROUND, len(queue))
        calls: list[_Call] = []
        open_calls: dict[str, _Call] = {}
        frames = 0
        for _ in range(take):
            write = queue.popleft()
            execution_id = write.execution_id
            if write._op == "end":
                call = open_calls.pop(execution_id, None)
                if call is not None:
                    calls.append(call)
                calls.append(_Call(execution_id, next(self._call_ids), is_end=True))
                continue
            call = open_calls.get(execution_id)
            if call is None:
                call = open_calls[execution_id] = _Call(execution_id, next(self._call_ids))
            if len(call.writes) >= WRITE_BATCH or not call.add(write):
                calls.append(call)  # full (or too many frame types): start another
                call = open_calls[execution_id] = _Call(execution_id, next(self._call_ids))
                call.add(write)
            if type(write) is _OutgoingFrame:
                frames += 1
        calls.extend(open_calls.values())
        for call in calls:
            if not call.is_end:
                call.seal()
        shard.inflight_writes = frames
        return calls

    async def _write_loop(self, shard: _Shard) -> None:
        backoff = BACKOFF_MIN
        while True:
            if shard.inflight is None:
                if not shard.queue:
                    shard.work.clear()
                    shard.idle = True
                    await shard.work.wait()
                    shard.idle = False
                    continue
                shard.inflight = self._prepare(shard)
            calls = shard.inflight
            try:
                results = await self._write(shard, calls)
            except _NETWORK_ERRORS as exc:
                if shard.last_error is None:
                    logger.warning(
                        "lost Redis at %s while writing (%s); retrying with backoff, "
                        "%d frames waiting",
                        shard.url,
                        exc,
                        len(shard.queue) + shard.inflight_writes,
                    )
                shard.last_error = exc
                shard.signal_progress()
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except NoScriptError:
                shard.scripts_loaded = False  # Redis restarted or SCRIPT FLUSH: load and retry
                continue
            except RedisError as exc:
                logger.error("Redis at %s rejected a write (%s); retrying", shard.url, exc)
                shard.last_error = exc
                shard.signal_progress()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if shard.last_error is not None:
                logger.info("Redis at %s is back; writing queued frames", shard.url)
            shard.last_error = None
            if self._refused and self._pending < self._max_pending // 2:
                logger.info(
                    "Redis at %s is keeping up again; %d frames were refused meanwhile",
                    shard.url,
                    self._refused,
                )
                self._refused = 0
            backoff = BACKOFF_MIN
            self._complete(shard, calls, results)
            written = sum(len(call.writes) + call.is_end for call in calls)
            self._pending -= shard.inflight_writes
            shard.inflight = None
            shard.inflight_writes = 0
            shard.written += written
            shard.signal_progress()

    async def _write(self, shard: _Shard, calls: list[_Call]) -> list[Any]:
        """One pipeline: the script calls, then the lease registry updates. Returns the calls'
        results."""
        if not shard.scripts_loaded:
            await shard.load_scripts()
        options = self.options
        maxlen = options.replay_max_frames
        idle = options.replay_max_age_ms
        ended = options.retention_after_end_ms
        tomb = options.replay_max_age_ms
        lease = self._lease_ms
        writer = self._id
        known = self._known
        append_sha, end_sha = _SHA["append"], _SHA["end"]
        registry: list[tuple[str, str]] = []
        pipe = shard.client.pipeline(transaction=False)
        for call in calls:
            execution_id = call.execution_id
            stream, meta = shard.stream_key(execution_id), shard.meta_key(execution_id)
            if call.is_end:
                pipe.evalsha(end_sha, 3, stream, meta, shard.run_key(execution_id), ended, tomb)
                continue
            pipe.evalsha(
                append_sha,
                4,
                stream,
                meta,
                shard.lease_key(execution_id),
                shard.run_key(execution_id),
                writer,
                call.call_id,
                call.count,
                len(call.writes),
                call.heads,
                call.data,
                maxlen,
                idle,
                ended,
                tomb,
                known.get(execution_id, 0),
                call.op,
                lease,
                "",
                "",
                self._unread_floor(execution_id),
                call.which,
                b"\n".join(call.prefixes),
            )
            if call.op != "-":
                registry.append((call.op, execution_id))
        if registry:
            due = int(time.time() * 1000) + lease
            for op, execution_id in registry:
                if op == "a":
                    pipe.zadd(shard.leases_key, {execution_id: due})
                else:
                    pipe.zrem(shard.leases_key, execution_id)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, (NoScriptError, *_NETWORK_ERRORS)):
                raise result
        return results[: len(calls)]

    def _complete(self, shard: _Shard, calls: list[_Call], results: list[Any]) -> None:
        """Fill in the sequences Redis assigned, deliver the frames to this process's
        subscribers when they directly follow what those already have, and track leases."""
        for call, result in zip(calls, results, strict=True):
            if call.is_end:
                continue
            execution_id = call.execution_id
            if isinstance(result, Exception):
                logger.error(
                    "Redis at %s rejected %d frames of execution %r: %s",
                    shard.url,
                    len(call.writes),
                    execution_id,
                    result,
                )
                continue
            first = int(result)
            if first <= 0:
                continue
            sequence = first - 1
            for write in call.writes:
                if type(write) is _OutgoingFrame:
                    sequence += 1
                    write.sequence = sequence
                    write._encoded = None
                    write.transport_cache = None
                else:  # a hole
                    sequence += _HEAD.unpack(write._head)[0]
            self._remember(execution_id, sequence)
            if call.op == "a":
                self._leases[execution_id] = shard
            elif call.op == "r":
                self._leases.pop(execution_id, None)
            reading = self._reading.get(execution_id)
            if (
                reading is not None
                and reading.ready is None
                and first - 1 <= reading.cursor < sequence
            ):
                self._deliver_written(reading, call.writes)

    def _deliver_written(self, reading: _Reading, writes: list[_Write]) -> None:
        for write in writes:
            if type(write) is _OutgoingFrame and write.sequence > reading.cursor:
                self._fan_out(reading, write.sequence, write)

    def _unread_floor(self, execution_id: str) -> int:
        """The last sequence this process's subscribers of the execution have, or -1: the write
        must not trim what they have yet to read (up to twice ``replay_max_frames``)."""
        reading = self._reading.get(execution_id)
        if reading is None or reading.ready is not None or not reading.listeners:
            return -1
        return reading.cursor

    def _remember(self, execution_id: str, sequence: int) -> None:
        known = self._known
        if sequence > known.get(execution_id, 0):
            known[execution_id] = sequence
            known.move_to_end(execution_id)
            if len(known) > self.options.max_executions:
                known.popitem(last=False)

    # ------------------------------------------------------------------ reader
    async def _reading_for(self, execution_id: str, shard: _Shard) -> _Reading:
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
        reading = _Reading(execution_id, shard)
        reading.pending = 1
        ready = reading.ready = asyncio.get_running_loop().create_future()
        self._reading[execution_id] = reading
        try:
            value = await shard.client.hget(shard.meta_key(execution_id), "seq")
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
        shard.by_key[reading.key] = reading
        await self._wake_reader(shard)
        return reading

    async def _wake_reader(self, shard: _Shard) -> None:
        if shard.reader is None or shard.reader.done():
            if not self._closed:
                shard.reader = asyncio.get_running_loop().create_task(
                    self._read_loop(shard), name=f"redis-broker-reader-{shard.index}"
                )
            return
        shard.reader_idle.set()
        if shard.reader_blocked:
            pipe = shard.client.pipeline(transaction=False)
            pipe.xadd(shard.wake_key, {"w": "1"}, maxlen=1)
            pipe.pexpire(shard.wake_key, 60_000)
            try:
                await pipe.execute()
            except RedisError as exc:
                # Not fatal: the reader picks the execution up when its XREAD times out.
                logger.debug("could not wake the reader (%s)", exc)

    async def _read_loop(self, shard: _Shard) -> None:
        """Block on ``XREAD`` over the shard's read executions and fan out what comes.

        A process's own frames reach its subscribers from the writer, so reading them back
        would be wasted work. The blocking read therefore asks for a single entry per stream
        (``COUNT 1``, a wake-up) after a wake that brought only this process's frames, and for
        :data:`READ_COUNT` after one that brought others' frames; a stream that yields new
        frames is then read in bulk (:data:`READ_COUNT` entries, without blocking) until it is
        drained. Entries whose frames this process already delivered are skipped unparsed."""
        backoff = BACKOFF_MIN
        wake_key = shard.wake_key.encode()
        count = READ_COUNT
        while True:
            if not shard.by_key:
                shard.reader_idle.clear()
                await shard.reader_idle.wait()
                continue
            keys = list(shard.by_key)
            ids = [b"%d-0" % shard.by_key[key].cursor for key in keys]
            shard.reader_blocked = True
            try:
                response: Any = await _command(
                    shard.client,
                    "XREAD",
                    "COUNT",
                    count,
                    "BLOCK",
                    self._block_ms,
                    "STREAMS",
                    *keys,
                    wake_key,
                    *ids,
                    shard.wake_cursor,
                )
                shard.reader_blocked = False
                if response:
                    count = await self._on_read(shard, list(_streams(response)), count)
            except (*_NETWORK_ERRORS, RedisError) as exc:
                if shard.reader_error is None:
                    logger.warning(
                        "lost Redis at %s while reading (%s); retrying with backoff",
                        shard.url,
                        exc,
                    )
                shard.reader_error = exc
                shard.signal_reader_progress()
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            finally:
                shard.reader_blocked = False
            if shard.reader_error is not None:
                logger.info("Redis at %s is back; reading again", shard.url)
                shard.reader_error = None
                await self._restore_floors(shard)
            backoff = BACKOFF_MIN
            shard.signal_reader_progress()

    async def _on_read(
        self, shard: _Shard, streams: list[tuple[bytes, list[Any]]], count: int
    ) -> int:
        """Deliver one blocking read's entries and drain the streams that have more; returns
        the ``COUNT`` for the next blocking read."""
        wake_key = shard.wake_key.encode()
        # Entries of an execution this process is writing: the writer's reply (which hands our
        # own frames to the subscribers) is on its way; wait for it, briefly, rather than
        # decode frames it delivers anyway.
        if shard.inflight is not None:
            writing = {call.execution_id for call in shard.inflight}
            waiting = [
                r
                for key, _ in streams
                if (r := shard.by_key.get(key)) is not None and r.execution_id in writing
            ]
            if waiting:
                await self._wait_for_writer(shard)
        foreign = False
        more: list[_Reading] = []
        for key, entries in streams:
            reading = shard.by_key.get(key)
            if reading is None:
                if entries and key == wake_key:
                    shard.wake_cursor = entries[-1][0].decode()
                continue
            if entries and _sequence(entries[-1][0]) > reading.cursor:
                foreign = True
                self._deliver(reading, entries)
                if len(entries) >= count:
                    more.append(reading)
        while more:
            keys = [reading.key for reading in more]
            ids = [b"%d-0" % reading.cursor for reading in more]
            response: Any = await _command(
                shard.client, "XREAD", "COUNT", READ_COUNT, "STREAMS", *keys, *ids
            )
            more = []
            for key, entries in _streams(response):
                reading = shard.by_key.get(key)
                if reading is not None and entries:
                    self._deliver(reading, entries)
                    if len(entries) >= READ_COUNT:
                        more.append(reading)
        return READ_COUNT if foreign else 1

    async def _wait_for_writer(self, shard: _Shard) -> None:
        """Until the shard's in-flight write is answered, at most
        :data:`WRITER_WAIT` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITER_WAIT
        inflight = shard.inflight
        while shard.inflight is inflight and inflight is not None:
            remaining = deadline - loop.time()
            if remaining <= 0 or shard.last_error is not None:
                return
            progress = shard.progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)

    async def _restore_floors(self, shard: _Shard) -> None:
        """After an outage: Redis may have restarted without its data. Raise each read
        execution's counter back to what this process delivered, so new frames are numbered
        after it (and never hidden below a subscriber's position)."""
        readings = [r for r in shard.by_key.values() if r.cursor]
        if not readings:
            return
        ttl = self.options.replay_max_age_ms * 2
        try:
            for reading in readings:
                restored = await shard.evalsha(
                    "floor", [shard.meta_key(reading.execution_id)], [reading.cursor, ttl]
                )
                if restored:
                    logger.warning(
                        "Redis at %s had lost execution %r's numbering (restarted without "
                        "persistence?); it continues after %d",
                        shard.url,
                        reading.execution_id,
                        reading.cursor,
                    )
        except (*_NETWORK_ERRORS, RedisError) as exc:
            logger.debug("could not restore numbering floors (%s)", exc)

    def _deliver(self, reading: _Reading, entries: list[Any]) -> None:
        if not entries or _sequence(entries[-1][0]) <= reading.cursor:
            return  # all delivered already (our own frames, handed over by the writer)
        execution_id = reading.execution_id
        for entry_id, fields in entries:
            if _sequence(entry_id) <= reading.cursor:
                continue
            for sequence, data, replayable in _entry_frames(entry_id, fields, reading.cursor):
                self._fan_out(
                    reading, sequence, _stored_frame(execution_id, sequence, data, replayable)
                )
        self._remember(execution_id, reading.cursor)

    def _fan_out(self, reading: _Reading, sequence: int, frame: Frame) -> None:
        """Deliver the frame after ``reading.cursor`` to the listeners — preceded by a ``gap``
        when the sequences in between are gone — and move the cursor."""
        cursor = reading.cursor
        reading.cursor = sequence
        for sub in reading.listeners:
            if sequence <= sub.after:
                continue
            try:
                start = max(cursor, sub.after) + 1
                if start < sequence:
                    sub.listener(self._gap(reading.execution_id, start, sequence - 1))
                sub.listener(frame)
            except Exception:
                logger.exception(
                    "a subscriber of execution %r failed on %r", reading.execution_id, frame
                )

    def _gap(self, execution_id: str, first: int, last: int) -> Frame:
        now = self._clock.now().isoformat()
        return Frame(execution_id, last, GAP, now, {"from": first, "to": last}, replayable=False)

    # ------------------------------------------------------------------ replay
    async def _replay(self, reading: _Reading, sub: _RedisSubscription, after: int) -> None:
        """Deliver the retained frames after ``after`` (a gap for every hole), then catch up
        with the reader; returns with ``sub.after`` at or past ``reading.cursor``.

        Retained: among the execution's last ``replay_max_frames`` sequences (the oldest stream
        entry may hold older frames: they count as trimmed), and not older than
        ``replay_max_age_ms``."""
        execution_id = reading.execution_id
        shard = reading.shard
        key = reading.key
        cutoff = self._clock.now().timestamp() * 1000 - self.options.replay_max_age_ms
        listener = sub.listener
        value = await shard.client.hget(shard.meta_key(execution_id), "seq")
        top = int(value) if value is not None else 0
        trimmed = max(0, top - self.options.replay_max_frames)  # sequences the log has dropped
        position = after  # the last sequence accounted for (delivered, skipped or announced)
        fresh = False  # past the frames too old to replay
        last = after  # the last sequence seen in the stream
        while True:
            entries: Any = await _command(
                shard.client, "XRANGE", key, b"(%d" % position, b"+", "COUNT", REPLAY_PAGE
            )
            for entry_id, fields in entries:
                for sequence, data, replayable in _entry_frames(entry_id, fields, position):
                    last = sequence
                    if not fresh:
                        if sequence <= trimmed or _published_ms(data) < cutoff:
                            continue  # gone: part of the gap announced before the next frame
                        fresh = True
                    if sequence > position + 1:
                        listener(self._gap(execution_id, position + 1, sequence - 1))
                    position = sequence
                    if replayable and not sub.closed:
                        listener(_stored_frame(execution_id, sequence, data, True))
                if not fresh and last > position:  # a whole entry of gone frames
                    listener(self._gap(execution_id, position + 1, last))
                    position = last
            if len(entries) < REPLAY_PAGE:
                break
        if top > position:  # nothing retained up to the counter: the numbering tells the loss
            listener(self._gap(execution_id, position + 1, top))
            position = top
        sub.after = max(position, after)
        # Catch up with what the reader delivered meanwhile (live frames, non-replayable too).
        while sub.after < reading.cursor and not sub.closed:
            live: Any = await _command(
                shard.client,
                "XRANGE",
                key,
                b"(%d" % sub.after,
                b"%d" % reading.cursor,
                "COUNT",
                REPLAY_PAGE,
            )
            if not live:
                if reading.cursor > sub.after:
                    listener(self._gap(execution_id, sub.after + 1, reading.cursor))
                sub.after = reading.cursor
                break
            for entry_id, fields in live:
                for sequence, data, replayable in _entry_frames(entry_id, fields, sub.after):
                    if sequence > sub.after + 1:
                        listener(self._gap(execution_id, sub.after + 1, sequence - 1))
                    sub.after = sequence
                    listener(_stored_frame(execution_id, sequence, data, replayable))

    # ------------------------------------------------------------------ leases
    async def _lease_loop(self) -> None:
        """Every third of the lease: renew the leases held here, and look for runs whose
        producer stopped renewing."""
        interval = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval * (0.8 + random.random() * 0.4))
            for shard in self._shards:
                try:
                    await self._renew(shard)
                    await self._reap(shard)
                except (*_NETWORK_ERRORS, RedisError) as exc:
                    logger.debug("lease upkeep on %s failed (%s)", shard.url, exc)

    async def _renew(self, shard: _Shard) -> None:
        held = [e for e, s in self._leases.items() if s is shard]
        if not held:
            return
        if not shard.scripts_loaded:
            await shard.load_scripts()
        due = int(time.time() * 1000) + self._lease_ms
        pipe = shard.client.pipeline(transaction=False)
        for execution_id in held:
            pipe.evalsha(
                _SHA["renew"],
                2,
                shard.lease_key(execution_id),
                shard.meta_key(execution_id),
                self._id,
                self._lease_ms,
            )
        pipe.zadd(shard.leases_key, dict.fromkeys(held, due))
        results = await pipe.execute(raise_on_error=False)
        for execution_id, result in zip(held, results, strict=False):
            if isinstance(result, NoScriptError):
                shard.scripts_loaded = False
                return
            if result == 0 and self._leases.get(execution_id) is shard:
                del self._leases[execution_id]
                logger.warning(
                    "lost the lease on execution %r (this process stalled or could not reach "
                    "Redis for over %d ms); it may have been announced as producer_lost",
                    execution_id,
                    self._lease_ms,
                )

    async def _reap(self, shard: _Shard) -> None:
        now = int(time.time() * 1000)
        candidates = await shard.client.zrangebyscore(
            shard.leases_key, "-inf", now, start=0, num=LEASE_SCAN
        )
        for raw in candidates:
            execution_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self._leases.get(execution_id) is shard:
                continue  # ours, and renewed
            await self._claim(shard, execution_id)

    async def _claim(self, shard: _Shard, execution_id: str) -> None:
        """Announce the execution's producer as lost, unless its lease is alive or a final
        status was written (the script decides, atomically)."""
        now = self._clock.now()
        timestamp = now.isoformat()
        error = {
            "code": PRODUCER_LOST,
            "message": "the process running this execution stopped (its lease expired "
            "without a final status)",
        }
        payload = {"status": "failed", "error": error}
        encoded = encode_frame("status", execution_id, 0, timestamp, payload)
        cut = encoded.index(b'"sequence":0') + 11
        before, after = encoded[:cut], encoded[cut + 1 :]
        head = _HEAD.pack(len(after), _REPLAYABLE)
        options = self.options
        result = await shard.evalsha(
            "append",
            [
                shard.stream_key(execution_id),
                shard.meta_key(execution_id),
                shard.lease_key(execution_id),
                shard.run_key(execution_id),
            ],
            [
                self._id,
                0,
                1,
                1,
                head,
                after,
                options.replay_max_frames,
                options.replay_max_age_ms,
                options.retention_after_end_ms,
                options.replay_max_age_ms,
                self._known.get(execution_id, 0),
                "c",
                self._lease_ms,
                dumps(error),
                timestamp,
                -1,
                b"\x01",
                before,
            ],
        )
        result = int(result)
        if result < 0:  # still alive: look again when it is due
            await shard.client.zadd(
                shard.leases_key, {execution_id: int(time.time() * 1000) - result}, xx=True
            )
            return
        if result > 0:
            self.producers_lost += 1
            self._remember(execution_id, result)
            logger.warning(
                "execution %r: its producer's lease expired without a final status; "
                "published status failed (producer_lost) as sequence %d",
                execution_id,
                result,
            )
        await shard.client.zrem(shard.leases_key, execution_id)

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
            reading.shard.by_key.pop(reading.key, None)

    def _unreachable(self, shard: _Shard, exc: BaseException) -> BrokerError:
        return BrokerError(
            f"cannot reach Redis at {shard.url} ({type(exc).__name__}: {exc}); check that "
            "redis-server is running and reachable from this host (host, port, firewall, TLS "
            "for rediss://) and that broker.redis_url has the right password and db",
            context={"url": shard.url},
        )


__all__ = ["PRODUCER_LOST", "RedisBroker", "mask_url", "shard_index"]
