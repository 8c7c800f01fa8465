"""The other protocols against our native path, measured in the same run.

- ``sse_fanout``: native SSE (``GET /executions/{id}/events``) to 100 clients in a second
  process, frames/s delivered, against the WebSocket path (``bench_fanout``'s clients) carrying
  the same frames from the same broker. Goal ``>=0.5``: SSE writes through aiohttp's response
  writer per client (no pre-framed transport writes), and is for the clients that cannot use the
  WebSocket.
- ``agui_token_encoding`` / ``aisdk_token_encoding``: the CPU cost, per client, of turning one
  token frame into an AG-UI ``TEXT_MESSAGE_CONTENT`` SSE event / an AI SDK ``text-delta`` part,
  against turning it into our native SSE event (whose JSON the frame already holds, encoded once
  for every subscriber: the strict comparison; the note gives the native cost with that JSON
  encoded too). Microseconds per frame; a token frame carries one flush of tokens, so the ratio
  is the same per token. Goal ``<=1.5``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

CLIENTS = 100
_SCRIPT = str(Path(__file__).resolve())
_STAMP = "2026-01-01T00:00:00.000000+00:00"


# ------------------------------------------------------------------------------ SSE clients


async def _sse_clients_main(url: str, clients: int, expected: int) -> None:
    import aiohttp

    done = 0
    finished = asyncio.Event()

    async def read(response: aiohttp.ClientResponse) -> None:
        nonlocal done
        got = 0
        tail = b""  # a marker may straddle two chunks; 7 bytes cannot hold a whole one
        async for chunk in response.content.iter_any():
            data = tail + chunk
            got += data.count(b"\nevent: ")
            tail = data[-7:]
            if got >= expected:
                break
        done += 1
        if done == clients:
            finished.set()

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        responses = [await session.get(url) for _ in range(clients)]
        for response in responses:  # the retry: prelude says each stream is open
            assert (await response.content.readuntil(b"\n\n")).startswith(b"retry:")
        tasks = [asyncio.create_task(read(r)) for r in responses]
        print("ready", flush=True)
        await asyncio.wait_for(finished.wait(), 300)
        print("done", flush=True)
        for task in tasks:
            task.cancel()
        for response in responses:
            response.close()


async def _fanout(messages: int, mode: str) -> float:
    """Frames/s to CLIENTS clients over ``mode`` ("sse" or "ws"), one gateway and broker."""
    from bench_fanout import _options, _run_clients
    from streaming_module.broker.memory import InMemoryBroker
    from streaming_module.gateway.gateway import StreamingWebSocketGateway

    options = _options()
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    gateway.runs.options.sse_max_queue = messages + 16  # measure throughput, not the policy
    await gateway.start(port=0)
    execution_id = f"bench-{mode}"

    async def send() -> None:
        for i in range(messages):
            broker.publish(execution_id, "workflow_update", {"i": i})
            if i % 256 == 255:
                await asyncio.sleep(0)

    try:
        if mode == "sse":
            url = f"{gateway.url}/executions/{execution_id}/events"
            elapsed = await _run_clients(url, messages, "sse", send, script=_SCRIPT)
        else:
            # bench_fanout's clients subscribe to "bench": publish there for them.
            execution_id = "bench"
            elapsed = await _run_clients(gateway.ws_url or "", messages, "ours", send)
    finally:
        await gateway.stop()
        await broker.aclose()
    return messages * CLIENTS / elapsed


# ------------------------------------------------------------------------------ encoding


def _token_frames(count: int, tokens_per_frame: int) -> list[Any]:
    from streaming_module.broker.base import Frame

    content = " word" * tokens_per_frame
    return [
        Frame(
            "bench",
            i + 10,
            "token",
            _STAMP,
            {
                "content": content,
                "nodeId": "write",
                "index": i * tokens_per_frame,
                "totalTokens": (i + 1) * tokens_per_frame,
            },
        )
        for i in range(count)
    ]


def _encoding_costs(frames_per_round: int, tokens_per_frame: int) -> dict[str, float]:
    """Microseconds per token frame for each encoder, each on fresh frames, steady state."""
    from streaming_module.broker.base import Frame
    from streaming_module.protocol import agui, aisdk, sse

    opening = [
        Frame("bench", 1, "status", _STAMP, {"status": "started"}),
        Frame("bench", 2, "token", _STAMP, {"content": "Hi", "nodeId": "write"}),
    ]
    results: dict[str, float] = {}

    def native() -> float:
        # Per client: the frame's JSON is encoded once and shared by every subscriber.
        frames = _token_frames(frames_per_round, tokens_per_frame)
        for frame in frames:
            frame.encoded()
        start = time.perf_counter()
        for frame in frames:
            sse.encode_frame(frame)
        return (time.perf_counter() - start) / len(frames) * 1e6

    def native_fresh() -> float:
        frames = _token_frames(frames_per_round, tokens_per_frame)
        start = time.perf_counter()
        for frame in frames:
            sse.encode_frame(frame)
        return (time.perf_counter() - start) / len(frames) * 1e6

    def steady(encoder: Any) -> float:
        for frame in opening:
            encoder.encode(frame)
        frames = _token_frames(frames_per_round, tokens_per_frame)
        start = time.perf_counter()
        for frame in frames:
            encoder.encode(frame)
        return (time.perf_counter() - start) / len(frames) * 1e6

    import statistics

    samples: dict[str, list[float]] = {"native": [], "fresh": [], "agui": [], "aisdk": []}
    for _ in range(15):  # interleaved, so drifts in machine load hit all alike
        samples["native"].append(native())
        samples["fresh"].append(native_fresh())
        samples["agui"].append(steady(agui.AguiEncoder("bench", "thread")))
        samples["aisdk"].append(steady(aisdk.UIMessageStreamEncoder("bench")))
    for name, values in samples.items():
        results[name] = statistics.median(values)
    return results


def run(quick: bool = False) -> list[Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import interleaved_medians, row

    messages = 1000 if quick else 5000
    repeats = 1 if quick else 3
    sse_rate, ws_rate = interleaved_medians(
        repeats,
        lambda: asyncio.run(_fanout(messages, "sse")),
        lambda: asyncio.run(_fanout(messages, "ws")),
    )
    tokens_per_frame = 5
    costs = _encoding_costs(2000 if quick else 20000, tokens_per_frame)
    note = (
        f"{CLIENTS} clients in a second process; {messages} frames from one broker, published "
        "in bursts of 256; SSE writes every frame a client has queued in one write, the "
        "WebSocket path one frame per write"
    )
    encoding_note = (
        f"per client: token frames of {tokens_per_frame} tokens, encoders in steady state "
        "(message open); native = the SSE event around the frame's shared JSON "
        f"(with the JSON encoded too: {costs['fresh']:.2f} us/frame)"
    )
    return [
        row("sse_fanout", sse_rate, "frames/s", "websocket_fanout", ws_rate, ">=0.5", note=note),
        row(
            "agui_token_encoding",
            costs["agui"],
            "us/frame",
            "native_sse_encoding",
            costs["native"],
            "<=1.5",
            note=encoding_note,
        ),
        row(
            "aisdk_token_encoding",
            costs["aisdk"],
            "us/frame",
            "native_sse_encoding",
            costs["native"],
            "<=1.5",
            note=encoding_note,
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--clients":  # bench_fanout._run_clients' argv
        _, _, url, clients, expected, _mode = sys.argv
        asyncio.run(_sse_clients_main(url, int(clients), int(expected)))
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r)
