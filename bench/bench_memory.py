"""Memory: RSS per idle WebSocket connection, and RSS after many token streams (no leak).

Both run the server side in its own fresh process, so its RSS holds nothing but the library.

``memory_per_connection`` (KB; baseline 40 KB, goal ``<=1.0``)
    A server process (``StreamingModule.for_root(websocket={"enabled": True, "port": 0})``,
    default options: heartbeat on, send queue 4096) is warmed up by a client process opening and
    closing 100 connections. Then a client process opens 1,000 connections, each subscribed to
    one of 100 executions (10 per execution), and holds them idle. The server's RSS delta
    (psutil, read from the parent) divided by 1,000; median of repeats, each on a fresh server.

``memory_token_streams_leak`` (ratio; baseline 1.0, goal ``<=1.10``)
    One process with ``StreamingModule.for_root()`` (bridge and in-memory broker wired) opens
    streams ``initialize_token_stream`` -> 3 tokens -> ``close_token_stream``, each for its own
    execution (so every stream also reaches the broker, which keeps at most ``max_executions``
    = 10,000 executions' replay logs). Start RSS is taken after a warm-up of 12,000 streams (the
    broker full, in its steady state), end RSS after 100,000 more; both after ``gc.collect()``.
    Value = end / start.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _children import Child, child_args, guard_child, report  # noqa: E402

CONNECTIONS = 1000
EXECUTIONS = 100
WARMUP_CONNECTIONS = 100
WARMUP_STREAMS = 12_000
_SCRIPT = str(Path(__file__).resolve())


# ------------------------------------------------------------------------------ child processes


async def _server(status: str) -> None:
    from streaming_module import StreamingModule

    container = StreamingModule.for_root(websocket={"enabled": True, "port": 0})
    async with container:
        report(status, f"port {container.gateway().port}")
        while True:  # until the parent stops this process
            await asyncio.sleep(0.5)
            gc.collect()


async def _clients(url: str, count: int, status: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        for i in range(count):
            ws = await session.ws_connect(url)
            execution_id = f"mem-{i % EXECUTIONS}"
            await ws.send_str(
                f'{{"type":"subscribe_execution","payload":{{"executionId":"{execution_id}"}}}}'
            )
            reply = await ws.receive(timeout=30)
            if '"subscribed"' not in reply.data:
                raise RuntimeError(f"not subscribed: {reply.data}")
            sockets.append(ws)
        report(status, "ready")
        await asyncio.Event().wait()  # idle until the parent stops this process


async def _streams(warmup: int, count: int, status: str) -> None:
    import psutil

    from streaming_module import StreamingModule

    process = psutil.Process()
    container = StreamingModule.for_root()
    container.bridge()  # forward to the broker as a started container does (no server here)
    tokens = container.token_streaming()

    async def cycle(start: int, n: int) -> None:
        for i in range(start, start + n):
            execution_id = f"exec-{i}"
            await tokens.initialize_token_stream(execution_id=execution_id, node_id="llm")
            tokens.stream_token(execution_id, "llm", "Hello")
            tokens.stream_token(execution_id, "llm", " ")
            tokens.stream_token(execution_id, "llm", "world")
            tokens.close_token_stream(execution_id, "llm")
            if i % 1000 == 999:
                await asyncio.sleep(0)

    await cycle(0, warmup)
    gc.collect()
    start_rss = process.memory_info().rss
    began = time.perf_counter()
    await cycle(warmup, count)
    elapsed = time.perf_counter() - began
    gc.collect()
    end_rss = process.memory_info().rss
    open_streams = len(tokens.get_active_token_streams())
    report(status, f"rss {start_rss} {end_rss} {elapsed!r} {open_streams}")
    await tokens.aclose()


def _child_main(argv: list[str]) -> None:
    args, status, parent = child_args(argv)
    guard_child(parent, deadline=300)
    mode = args[0]
    if mode == "server":
        asyncio.run(_server(status))
    elif mode == "clients":
        asyncio.run(_clients(args[1], int(args[2]), status))
    else:
        asyncio.run(_streams(int(args[1]), int(args[2]), status))


# ------------------------------------------------------------------------------ parent side


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def _settled_rss(pid: int, seconds: float = 1.5) -> int:
    """The server's RSS once it has settled (after its periodic ``gc.collect``)."""
    time.sleep(seconds)
    return _rss(pid)


def _per_connection() -> float:
    """KB of server RSS per idle connection, on a fresh server process."""
    server = Child(_SCRIPT, ["--child", "server"], deadline=240)
    try:
        port = server.wait_for("port ", 60)
        url = f"ws://127.0.0.1:{port}/ws"
        warm = Child(_SCRIPT, ["--child", "clients", url, str(WARMUP_CONNECTIONS)], deadline=120)
        try:
            warm.wait_for("ready", 60)
        finally:
            warm.stop()
        before = _settled_rss(server.pid)
        clients = Child(_SCRIPT, ["--child", "clients", url, str(CONNECTIONS)], deadline=180)
        try:
            clients.wait_for("ready", 120)
            after = _settled_rss(server.pid)
        finally:
            clients.stop()
        return (after - before) / CONNECTIONS / 1024
    finally:
        server.stop()


def _leak(count: int) -> tuple[float, int, int, float]:
    child = Child(_SCRIPT, ["--child", "streams", str(WARMUP_STREAMS), str(count)], deadline=240)
    try:
        start, end, elapsed, open_streams = child.wait_for("rss ", 200).split()
    finally:
        child.stop()
    if int(open_streams):
        raise RuntimeError(f"{open_streams} token streams still open after closing them all")
    return int(end) / int(start), int(start), int(end), float(elapsed)


def run(quick: bool = False) -> list[Any]:
    from common import row

    repeats = 1 if quick else 3
    streams = 20_000 if quick else 100_000
    per_connection = statistics.median(_per_connection() for _ in range(repeats))
    ratio, start, end, elapsed = _leak(streams)
    return [
        row(
            "memory_per_connection",
            per_connection,
            "KB",
            "goal_40KB",
            40.0,
            "<=1.0",
            note=(
                f"server RSS delta / {CONNECTIONS} idle connections (each subscribed, "
                f"{CONNECTIONS // EXECUTIONS} per execution), fresh server process, "
                f"median of {repeats}"
            ),
        ),
        row(
            "memory_token_streams_leak",
            ratio,
            "ratio",
            "start_rss",
            1.0,
            "<=1.10",
            note=(
                f"RSS {start / 2**20:.1f} MiB after {WARMUP_STREAMS} warm-up streams -> "
                f"{end / 2**20:.1f} MiB after {streams} more (open, 3 tokens, close; "
                f"{streams / elapsed:.0f} streams/s)"
            ),
        ),
    ]


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child_main(sys.argv[sys.argv.index("--child") + 1 :])
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r.to_dict())
