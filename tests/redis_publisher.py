"""Another process publishing to Redis, for the Redis tests.

``python tests/redis_publisher.py URL PREFIX EXECUTION FRAMES [--lease-ms N] [--started] [--hold]``
publishes ``FRAMES`` token frames (``{"i": 0..}``) to ``EXECUTION`` with a :class:`RedisBroker`
(``URL`` may be several, comma-separated), preceded by ``status: started`` with ``--started``
(and a ``started`` run record of workflow ``W`` with ``--record W``),
flushes, prints ``published <last sequence>`` and exits — or with ``--hold`` keeps running (its
lease renewed) until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from streaming_module.broker.base import RunRecord
from streaming_module.broker.redis import RedisBroker
from streaming_module.config import BrokerOptions


async def main(args: argparse.Namespace) -> None:
    urls = args.url.split(",")
    options = BrokerOptions(
        backend="redis",
        redis_url=urls if len(urls) > 1 else urls[0],
        key_prefix=args.prefix,
        producer_lease_ms=args.lease_ms,
        replay_max_frames=args.max_frames,
    )
    broker = RedisBroker(options)
    await broker.ping()
    if args.record:
        await broker.save_run(RunRecord(args.execution, "started", workflow=args.record))
    if args.started:
        broker.publish(args.execution, "status", {"status": "started"})
    last = None
    for i in range(args.frames):
        last = broker.publish(args.execution, "token", {"i": i})
        if i % args.every == args.every - 1:
            await asyncio.sleep(0)  # the writer takes what is queued: calls of ~this many
    await broker.flush()
    print(f"published {last.sequence if last is not None else 0}", flush=True)
    if args.hold:
        await asyncio.Event().wait()
    await broker.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("execution")
    parser.add_argument("frames", type=int)
    parser.add_argument("--lease-ms", type=int, default=10000)
    parser.add_argument("--max-frames", type=int, default=10000)
    parser.add_argument("--started", action="store_true")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--record", default=None)
    parser.add_argument("--every", type=int, default=500)
    asyncio.run(main(parser.parse_args(sys.argv[1:])))
