"""The Redis Streams broker against the in-memory one, and two publishing processes against one.

- ``redis_vs_memory``: frames/s from ``publish`` until a local subscriber has received every
  frame (token frames, ~80-byte payload, one execution), through :class:`RedisBroker` (one
  script call per execution per batch, frames handed to local subscribers when Redis answers,
  raw ``XREAD`` for other processes' frames) vs :class:`InMemoryBroker`, measured alternately.
  Goal ``>=0.25``: leaving one process must not cost an order of magnitude.
- ``redis_2proc_vs_1proc``: aggregate frames/s written to Redis (``publish`` + ``flush``) by two
  processes, each with its own broker and execution, vs one process alone, measured alternately.
  Goal ``>=1.4``: a second process adds write capacity (Redis runs on the same 2 cores, so ~1.5
  is the ceiling here).

Redis: a private ``redis-server`` (no persistence, on a free port, stopped afterwards) when the
binary is installed, so that other clients of the machine's Redis do not queue ahead of ours;
else ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); without either the rows are skipped
with a message on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from common import Row, interleaved_medians, row

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from redis_support import RedisServer, answers

_SCRIPT = str(Path(__file__).resolve())
URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _options(prefix: str):  # type: ignore[no-untyped-def]
    from streaming_module.config import BrokerOptions

    return BrokerOptions(backend="redis", redis_url=URL, key_prefix=prefix)


async def _cleanup(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _through(broker_kind: str, frames: int) -> float:
    """Frames/s from the first publish until the subscriber has them all."""
    from streaming_module.broker.memory import InMemoryBroker
    from streaming_module.broker.redis import RedisBroker

    prefix = f"smbench:{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(_options(prefix)) if broker_kind == "redis" else InMemoryBroker()
    received = 0
    done = asyncio.Event()

    def listener(frame: object) -> None:
        nonlocal received
        received += 1
        if received == frames:
            done.set()

    try:
        await broker.subscribe("bench", listener)
        payload = {"content": "token " * 10, "nodeId": "generate", "index": None}
        started = time.perf_counter()
        for i in range(frames):
            broker.publish("bench", "token", payload)
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the writer and reader run, as a real loop would
        await asyncio.wait_for(done.wait(), 60)
        return frames / (time.perf_counter() - started)
    finally:
        await broker.aclose()
        if broker_kind == "redis":
            await _cleanup(prefix)


async def _write_only(prefix: str, frames: int, start_at: float) -> float:
    """Seconds for one process to publish ``frames`` and flush them to Redis, starting at the
    wall time ``start_at`` (so processes run together, start-up excluded)."""
    from streaming_module.broker.redis import RedisBroker

    broker = RedisBroker(_options(prefix))
    await broker.ping()  # connected before the clock starts
    await asyncio.sleep(max(0.0, start_at - time.time()))
    payload = {"content": "token " * 10, "nodeId": "generate", "index": None}
    execution = f"bench-{os.getpid()}"
    try:
        started = time.perf_counter()
        for i in range(frames):
            broker.publish(execution, "token", payload)
            if i % 500 == 499:
                await asyncio.sleep(0)
        await broker.flush()
        return time.perf_counter() - started
    finally:
        await broker.aclose()


def _processes(count: int, frames: int) -> float:
    """Aggregate frames/s of ``count`` publishing processes started together."""
    prefix = f"smbench:{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 3.0
    children = [
        subprocess.Popen(
            [sys.executable, _SCRIPT, "--child", prefix, str(frames), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(count)
    ]
    durations = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        if child.returncode != 0:
            raise RuntimeError(f"bench child failed ({child.returncode}): {out[-500:]}")
        durations.append(float(out.strip().splitlines()[-1]))
    asyncio.run(_cleanup(prefix))
    return count * frames / max(durations)


@contextlib.contextmanager
def _private_redis() -> Iterator[str | None]:
    """A private ``redis-server`` for the run (the Redis tests' own helper): its URL, or None
    when none can be started."""
    try:
        server = RedisServer().start()
    except RuntimeError:
        yield None
        return
    try:
        yield server.url
    finally:
        server.close()


def run(quick: bool = False) -> list[Row]:
    global URL
    with _private_redis() as private:
        if private is not None:
            URL = os.environ["REDIS_URL"] = private  # the child processes read it too
        elif not answers(URL):
            print(f"bench_redis: no Redis at {URL}; skipped", file=sys.stderr)
            return []
        return _rows(quick)


def _rows(quick: bool) -> list[Row]:
    frames = 5_000 if quick else 40_000
    repeats = 1 if quick else 5
    redis_rate, memory_rate = interleaved_medians(
        repeats,
        lambda: asyncio.run(_through("redis", frames)),
        lambda: asyncio.run(_through("memory", frames)),
    )
    rows = [
        row(
            "redis_vs_memory",
            round(redis_rate),
            "frames/s",
            "in_memory_broker",
            round(memory_rate),
            ">=0.25",
            note=f"{frames} token frames publish -> local subscriber, one execution",
        )
    ]
    per_process = 5_000 if quick else 100_000
    two, one = interleaved_medians(
        repeats, lambda: _processes(2, per_process), lambda: _processes(1, per_process)
    )
    rows.append(
        row(
            "redis_2proc_vs_1proc",
            round(two),
            "frames/s",
            "redis_1_process",
            round(one),
            ">=1.4",
            note=f"{per_process} frames per process written to Redis (publish + flush), "
            "processes started together, start-up excluded; Redis shares the 2 cores",
        )
    )
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(asyncio.run(_write_only(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r.to_dict())
