"""Token pipeline throughput: ``TokenStreamingService.stream_token`` vs a plain reactivex chain.

Both sides take the same token list (words and the spaces between them as separate chunks, the
way LangChain chat models stream), drop whitespace-only tokens (``exclude_whitespace``,
``min_length=1``), group the rest by 50 and hand each group to one subscriber as a
``StreamUpdate[TokenData]`` with ``StreamMetadata``. Ours is the real service (size flush, flush
timer armed and cancelled on the running asyncio loop, stats and fan-out); the baseline is
``subject.pipe(ops.filter(...), ops.map(...), ops.buffer_with_count(50))`` with the update built
in the subscriber. Measured alternately in one process; the medians are compared.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from datetime import UTC, datetime

import reactivex.operators as ops
from reactivex.subject import Subject

from common import Row, interleaved_medians, row
from streaming_module.config import StreamingModuleOptions
from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.types import StreamEventType, StreamMetadata, StreamUpdate, TokenData

WORDS = "the quick brown fox jumps over a lazy dog while streaming tokens to every browser".split()


def make_tokens(count: int) -> list[str]:
    """``count`` chunks alternating word and space, like a chat model's token stream."""
    words = itertools.cycle(WORDS)
    return [next(words) if i % 2 == 0 else " " for i in range(count)]


def measure_ours(tokens: list[str]) -> float:
    """Tokens per second through the service (must run inside an event loop)."""
    service = TokenStreamingService(StreamingModuleOptions(websocket={"enabled": False}))
    received: list[StreamUpdate[TokenData]] = []
    config = {"buffer_size": 50, "filter": {"exclude_whitespace": True, "min_length": 1}}
    init = service.initialize_token_stream(execution_id="bench", node_id="llm", config=config)
    # initialize_token_stream awaits nothing: drive the coroutine without yielding to the loop.
    try:
        init.send(None)
    except StopIteration:
        pass
    service.get_token_stream("bench", "llm").subscribe(received.append)
    stream_token = service.stream_token
    start = time.perf_counter()
    for token in tokens:
        stream_token("bench", "llm", token)
    service.close_token_stream("bench", "llm")
    elapsed = time.perf_counter() - start
    assert sum(len(u.data.content) for u in received) == sum(len(t.strip()) for t in tokens)
    return len(tokens) / elapsed


def measure_baseline(tokens: list[str]) -> float:
    """Tokens per second through a reactivex operator chain doing the same work."""
    subject: Subject[str] = Subject()
    received: list[StreamUpdate[TokenData]] = []
    sequence = itertools.count(1)
    emitted = [0]

    def deliver(batch: list[str]) -> None:
        index = emitted[0]
        emitted[0] += len(batch)
        metadata = StreamMetadata(datetime.now(UTC), next(sequence), "bench", "llm")
        data = TokenData("".join(batch), None, index, emitted[0])
        received.append(StreamUpdate(StreamEventType.TOKEN, data, metadata))

    subject.pipe(
        ops.filter(lambda t: len(t) >= 1 and not t.isspace()),
        ops.map(lambda t: t),
        ops.buffer_with_count(50),
    ).subscribe(deliver)
    on_next = subject.on_next
    start = time.perf_counter()
    for token in tokens:
        on_next(token)
    subject.on_completed()
    elapsed = time.perf_counter() - start
    assert sum(len(u.data.content) for u in received) == sum(len(t.strip()) for t in tokens)
    return len(tokens) / elapsed


def run(quick: bool = False) -> list[Row]:
    """One row, ``token_pipeline``: our tokens/s over the reactivex chain's, goal >= 1.5."""
    tokens = make_tokens(20_000 if quick else 200_000)
    repeats = 5 if quick else 11

    async def both() -> tuple[float, float]:
        # Inside a running loop, so the service arms and cancels its real flush timers.
        return interleaved_medians(
            repeats, lambda: measure_ours(tokens), lambda: measure_baseline(tokens)
        )

    ours, baseline = asyncio.run(both())
    return [
        row(
            "token_pipeline",
            ours,
            "tokens/s",
            "reactivex filter+map+buffer_with_count(50)",
            baseline,
            ">=1.5",
            note=f"{len(tokens)} tokens (half whitespace), buffer 50, one subscriber, "
            f"median of {repeats}",
        )
    ]


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(json.dumps([r.to_dict() for r in run(quick=quick)], indent=2))
