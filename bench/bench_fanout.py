"""Fan-out to 100 WebSocket clients in a second process: our gateway against a plain aiohttp
broadcast loop, measured in the same run.

- ``fanout_broadcast``: ``gateway.broadcast_to_execution`` of N small messages (sequenced,
  replay-logged, per-client queues and writer tasks) vs a plain aiohttp server looping
  ``await ws.send_str(msg)`` over the 100 clients. Frames/s delivered (N x 100 / time until the
  client process has counted every frame). Goal ``>=0.8``.
- ``fanout_tokens``: tokens through ``TokenStreamingService`` (buffer 50) -> bridge -> broker ->
  gateway, counted in tokens/s at the clients, vs the same baseline's frames/s. Goal ``>=3``
  (tokens travel batched).

The clients run in a separate process (``python bench_fanout.py --clients ...``) whose stdout the
parent reads line by line (``ready``, then ``done``); its stderr goes to a file.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLIENTS = 100
_SCRIPT = str(Path(__file__).resolve())


def _tail(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read()[-2000:]


# ------------------------------------------------------------------------------ client process


async def _client_main(url: str, clients: int, expected: int, mode: str) -> None:
    import aiohttp
    import orjson

    done = 0
    finished = asyncio.Event()
    connected: list[Any] = []

    async with aiohttp.ClientSession() as session:
        for _ in range(clients):
            ws = await session.ws_connect(url, max_msg_size=0)
            if mode != "baseline":
                await ws.send_str(
                    '{"type":"subscribe_execution","payload":{"executionId":"bench"}}'
                )
                reply = await ws.receive(timeout=30)
                assert b"subscribed" in reply.data.encode(), reply.data
            connected.append(ws)

        async def count(ws: Any) -> None:
            nonlocal done
            got = 0
            while got < expected:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    print(f"client closed early: {msg.type} {msg.data}", file=sys.stderr)
                    break
                if mode == "tokens":
                    got += orjson.loads(msg.data)["payload"]["content"].count(" ")
                else:
                    got += 1
            done += 1
            if done == clients:
                finished.set()

        tasks = [asyncio.create_task(count(ws)) for ws in connected]
        print("ready", flush=True)
        await asyncio.wait_for(finished.wait(), 300)
        print("done", flush=True)
        for task in tasks:
            task.cancel()
        for ws in connected:
            await ws.close()


# ------------------------------------------------------------------------------ parent side


async def _run_clients(
    url: str, expected: int, mode: str, send: Any, script: str = _SCRIPT
) -> float:
    """Start the client process (``script --clients URL N EXPECTED MODE``), wait until it is
    ready, run ``send()``, return the seconds from the start of ``send`` until every client
    counted ``expected``."""
    errors = tempfile.NamedTemporaryFile(prefix="bench_fanout_", suffix=".err", delete=False)
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        script,
        "--clients",
        url,
        str(CLIENTS),
        str(expected),
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=errors,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"client process failed: {_tail(errors.name)}")
        start = time.perf_counter()
        await send()
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        elapsed = time.perf_counter() - start
        if line.strip() != b"done":
            raise RuntimeError(f"client process failed: {_tail(errors.name)}")
        await asyncio.wait_for(proc.wait(), 30)
        return elapsed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        errors.close()
        os.unlink(errors.name)


async def _baseline(messages: int) -> float:
    """A plain aiohttp server: ``await ws.send_str(msg)`` to every client, message by
    message. Returns frames/s."""
    import orjson
    from aiohttp import web

    clients: list[web.WebSocketResponse] = []
    closed = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        clients.append(ws)
        async for _ in ws:
            pass
        closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stamp = "2026-01-01T00:00:00.000000+00:00"

    async def send() -> None:
        for i in range(messages):
            msg = orjson.dumps(
                {
                    "type": "workflow_update",
                    "executionId": "bench",
                    "sequence": i + 1,
                    "timestamp": stamp,
                    "payload": {"i": i},
                }
            ).decode()
            for ws in clients:
                await ws.send_str(msg)

    try:
        elapsed = await _run_clients(f"ws://127.0.0.1:{port}/ws", messages, "baseline", send)
    finally:
        await runner.cleanup()
    return messages * CLIENTS / elapsed


def _options() -> Any:
    from streaming_module.config import StreamingModuleOptions

    return StreamingModuleOptions.model_validate(
        {
            "websocket": {"enabled": True, "port": 0, "host": "127.0.0.1"},
            "gateway": {"heartbeat": {"enabled": False}},
        }
    )


async def _ours_broadcast(messages: int) -> float:
    from streaming_module.broker.memory import InMemoryBroker
    from streaming_module.gateway.gateway import StreamingWebSocketGateway

    options = _options()
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    await gateway.start(port=0)

    async def send() -> None:
        for i in range(messages):
            await gateway.broadcast_to_execution(
                "bench", {"type": "workflow_update", "payload": {"i": i}}
            )
            if i % 256 == 255:
                await asyncio.sleep(0)  # let the writers run; queues stay far below bound

    try:
        elapsed = await _run_clients(gateway.ws_url or "", messages, "ours", send)
    finally:
        await gateway.stop()
        await broker.aclose()
    return messages * CLIENTS / elapsed


async def _ours_tokens(tokens: int, buffer_size: int = 50) -> float:
    from streaming_module.broker.memory import InMemoryBroker
    from streaming_module.gateway.gateway import StreamingWebSocketGateway
    from streaming_module.services.bridge import WebSocketBridgeService
    from streaming_module.services.token_streaming import TokenStreamingService

    options = _options()
    broker = InMemoryBroker(options.broker)
    gateway = StreamingWebSocketGateway(options, broker)
    service = TokenStreamingService(options)
    bridge = WebSocketBridgeService(service, None, None, broker)
    await gateway.start(port=0)
    await service.initialize_token_stream(
        execution_id="bench",
        node_id="llm",
        config={"bufferSize": buffer_size, "flushInterval": 0},
    )

    async def send() -> None:
        for i in range(tokens):
            service.stream_token("bench", "llm", "x ")
            if i % (buffer_size * 8) == 0:
                await asyncio.sleep(0)
        await service.flush_tokens("bench", "llm")

    try:
        elapsed = await _run_clients(gateway.ws_url or "", tokens, "tokens", send)
    finally:
        await service.aclose()
        bridge.close()
        await gateway.stop()
        await broker.aclose()
    return tokens * CLIENTS / elapsed


def run(quick: bool = False) -> list[Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import interleaved_medians, row

    messages = 1000 if quick else 5000
    tokens = 20000 if quick else 100000
    repeats = 1 if quick else 3

    def measure(coro_factory: Any) -> Any:
        return lambda: asyncio.run(coro_factory())

    ours, base = interleaved_medians(
        repeats, measure(lambda: _ours_broadcast(messages)), measure(lambda: _baseline(messages))
    )
    tok, base2 = interleaved_medians(
        repeats, measure(lambda: _ours_tokens(tokens)), measure(lambda: _baseline(messages))
    )
    note = f"{CLIENTS} clients in a second process; {messages} messages; {tokens} tokens"
    return [
        row(
            "fanout_broadcast",
            ours,
            "frames/s",
            "aiohttp_send_str_loop",
            base,
            ">=0.8",
            note=note,
        ),
        row(
            "fanout_tokens",
            tok,
            "tokens/s",
            "aiohttp_send_str_loop",
            base2,
            ">=3",
            note=note + "; TokenStreamingService buffer 50",
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--clients":
        _, _, url, clients, expected, mode = sys.argv
        asyncio.run(_client_main(url, int(clients), int(expected), mode))
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r.to_dict())
