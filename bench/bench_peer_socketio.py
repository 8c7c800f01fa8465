"""Peer comparison: the fan-out of ``bench_fanout`` through python-socketio rooms.

``peer_socketio``: 100 clients in a second process, one execution (one room), N small messages.

- ours: ``StreamingModule.for_root(websocket={"enabled": True, "port": 0})``, clients subscribe
  with ``subscribe_execution``, the server calls ``gateway.broadcast_to_execution`` N times
  (sequenced, replay-logged frames, per-client queues and writer tasks). The clients are aiohttp
  WebSocket clients that decode each frame with the stdlib ``json`` module.
- socketio: ``socketio.AsyncServer(async_mode="aiohttp")``; each ``socketio.AsyncClient``
  (WebSocket transport only) calls a ``join`` event that puts it in the room; the server calls
  ``await sio.emit("workflow_update", frame, room="bench")`` N times with a frame of the same
  shape and size as ours (socketio decodes it with ``json`` on the client).

Frames/s = N x 100 / (time from the first send until the last client has every frame), with both
ends read from the machine's monotonic clock (``time.monotonic()`` is CLOCK_MONOTONIC, shared by
every process). Ratio = ours / socketio; goal ``>=5``. The client process's CPU time is reported
in the note, so a client-bound run shows itself.

``peer_socketio_servers``: the same two servers and load, but the clients on both sides are raw
aiohttp WebSockets that only count frames (speaking Engine.IO 4 / Socket.IO 5 by hand for
socketio), so the client library's cost (``AsyncClient`` dispatches every event through its own
machinery) does not cap the figure: it compares the servers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _children import Child, child_args, guard_child, report  # noqa: E402

CLIENTS = 100
EXECUTION = "bench"
STAMP = "2026-01-01T00:00:00.000000+00:00"
_SCRIPT = str(Path(__file__).resolve())
_SERVER_BUSY: dict[str, list[float]] = {}


# ------------------------------------------------------------------------------ client process


async def _ours_clients(url: str, clients: int, expected: int, status: str) -> None:
    import aiohttp

    remaining = clients
    finished = asyncio.Event()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        for _ in range(clients):
            ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
            await ws.send_str(
                json.dumps({"type": "subscribe_execution", "payload": {"executionId": EXECUTION}})
            )
            reply = json.loads((await ws.receive(timeout=30)).data)
            assert reply["type"] == "subscribed", reply
            sockets.append(ws)

        async def count(ws: Any) -> None:
            nonlocal remaining
            got = 0
            while got < expected:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"client closed early: {msg.type} {msg.data}")
                if json.loads(msg.data)["type"] == "workflow_update":
                    got += 1
            remaining -= 1
            if remaining == 0:
                finished.set()

        tasks = [asyncio.create_task(count(ws)) for ws in sockets]
        report(status, "ready")
        await _wait_done(finished, tasks, status)
        for ws in sockets:
            await ws.close()


async def _socketio_clients(url: str, clients: int, expected: int, status: str) -> None:
    import socketio

    remaining = clients
    finished = asyncio.Event()
    sios = []

    for _ in range(clients):
        sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)

        def make_handler() -> Any:
            got = 0

            async def on_update(data: Any) -> None:
                nonlocal got, remaining
                got += 1
                if got == expected:
                    remaining -= 1
                    if remaining == 0:
                        finished.set()

            return on_update

        sio.on("workflow_update", make_handler())
        await sio.connect(url, transports=["websocket"], wait_timeout=30)
        joined = await sio.call("join", EXECUTION, timeout=30)
        assert joined == "ok", joined
        sios.append(sio)
    report(status, "ready")
    await _wait_done(finished, [], status)
    for sio in sios:
        await sio.disconnect()


async def _raw_clients(url: str, clients: int, expected: int, status: str, engineio: bool) -> None:
    """Clients that only count frames: aiohttp WebSockets, for our protocol or (``engineio``)
    speaking Engine.IO 4 / Socket.IO 5 by hand (open, connect ``40``, ``join`` event, answer
    pings). They measure the servers, not a client library."""
    import aiohttp

    remaining = clients
    finished = asyncio.Event()
    prefix = '42["workflow_update"' if engineio else '{"type":"workflow_update"'

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        for _ in range(clients):
            if engineio:
                ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
                opened = (await ws.receive(timeout=30)).data
                assert opened.startswith("0{"), opened
                await ws.send_str("40")
                connected = (await ws.receive(timeout=30)).data
                assert connected.startswith("40"), connected
                await ws.send_str(f'420["join","{EXECUTION}"]')
                joined = (await ws.receive(timeout=30)).data
                assert joined == '430["ok"]', joined
            else:
                ws = await session.ws_connect(url, max_msg_size=0)
                await ws.send_str(
                    f'{{"type":"subscribe_execution","payload":{{"executionId":"{EXECUTION}"}}}}'
                )
                reply = (await ws.receive(timeout=30)).data
                assert '"subscribed"' in reply, reply
            sockets.append(ws)

        async def count(ws: Any) -> None:
            nonlocal remaining
            got = 0
            while got < expected:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"client closed early: {msg.type} {msg.data}")
                data = msg.data
                if data.startswith(prefix):
                    got += 1
                elif engineio and data == "2":
                    await ws.send_str("3")  # Engine.IO ping -> pong
            remaining -= 1
            if remaining == 0:
                finished.set()

        tasks = [asyncio.create_task(count(ws)) for ws in sockets]
        report(status, "ready")
        await _wait_done(finished, tasks, status)
        for ws in sockets:
            await ws.close()


async def _wait_done(finished: asyncio.Event, tasks: list[asyncio.Task[None]], status: str) -> None:
    waiter = asyncio.create_task(finished.wait())
    pending = {waiter, *tasks}
    while not finished.is_set():
        done, pending = await asyncio.wait(pending, timeout=120, return_when="FIRST_COMPLETED")
        if not done:
            raise TimeoutError("clients did not receive every frame within 120 s")
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    done_at = time.monotonic()
    cpu = time.process_time()
    report(status, f"done {done_at!r} {cpu!r}")
    for task in tasks:
        task.cancel()


def _client_main(argv: list[str]) -> None:
    args, status, parent = child_args(argv)
    guard_child(parent, deadline=300)
    kind, url, clients, expected = args[0], args[1], int(args[2]), int(args[3])
    if kind in ("ours-raw", "socketio-raw"):
        asyncio.run(_raw_clients(url, clients, expected, status, kind == "socketio-raw"))
        return
    main = _ours_clients if kind == "ours" else _socketio_clients
    asyncio.run(main(url, clients, expected, status))


# ------------------------------------------------------------------------------ parent side


async def _measure(kind: str, url: str, messages: int, send: Any) -> tuple[float, float]:
    """Start the client process, run ``send()`` once it is ready; returns (frames/s, share of
    the wall time the client process spent on CPU while receiving)."""
    child = Child(_SCRIPT, ["--clients", kind, url, str(CLIENTS), str(messages)], deadline=240)
    try:
        await child.await_for("ready", 120)
        cpu_ready = _cpu_of(child.pid)
        start = time.monotonic()
        server_cpu = time.process_time()
        await send()
        done = await child.await_for("done ", 180)
        server_cpu = time.process_time() - server_cpu
        done_at, cpu_done = (float(x) for x in done.split())
        elapsed = done_at - start
        _SERVER_BUSY.setdefault(kind, []).append(server_cpu / elapsed)
        return messages * CLIENTS / elapsed, (cpu_done - cpu_ready) / elapsed
    finally:
        child.stop()


def _cpu_of(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _frame(i: int) -> dict[str, Any]:
    return {
        "type": "workflow_update",
        "executionId": EXECUTION,
        "sequence": i + 1,
        "timestamp": STAMP,
        "payload": {"i": i},
    }


async def _ours(messages: int, clients: str = "ours") -> tuple[float, float]:
    from streaming_module import StreamingModule

    container = StreamingModule.for_root(websocket={"enabled": True, "port": 0})
    async with container:
        gateway = container.gateway()

        async def send() -> None:
            for i in range(messages):
                await gateway.broadcast_to_execution(
                    EXECUTION, {"type": "workflow_update", "payload": {"i": i}}
                )
                if i % 256 == 255:
                    await asyncio.sleep(0)  # let the writers run; queues stay below their bound

        return await _measure(clients, gateway.ws_url or "", messages, send)


async def _socketio(messages: int, clients: str = "socketio") -> tuple[float, float]:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    sio.on("join", join)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def send() -> None:
        for i in range(messages):
            await sio.emit("workflow_update", _frame(i), room=EXECUTION)
            if i % 256 == 255:
                await asyncio.sleep(0)

    try:
        return await _measure(clients, f"http://127.0.0.1:{port}", messages, send)
    finally:
        await sio.shutdown()
        await runner.cleanup()


def run(quick: bool = False) -> list[Any]:
    from common import interleaved_medians, row

    messages = 300 if quick else 1500
    repeats = 1 if quick else 3
    client_cpu: dict[str, list[float]] = {}

    def measure(kind: str, factory: Any) -> Any:
        def once() -> float:
            rate, cpu = asyncio.run(factory(messages, kind))
            client_cpu.setdefault(kind, []).append(cpu)
            return float(rate)

        return once

    def busy(kind: str) -> str:
        server = statistics.median(_SERVER_BUSY[kind])
        return f"{statistics.median(client_cpu[kind]):.0%} client / {server:.0%} server"

    ours, base = interleaved_medians(
        repeats, measure("ours", _ours), measure("socketio", _socketio)
    )
    ours_raw, base_raw = interleaved_medians(
        repeats, measure("ours-raw", _ours), measure("socketio-raw", _socketio)
    )
    common = (
        f"{CLIENTS} clients in a second process, one room/execution, {messages} messages, "
        f"median of {repeats}"
    )
    return [
        row(
            "peer_socketio",
            ours,
            "frames/s",
            "python-socketio_room_emit",
            base,
            ">=5",
            note=(
                f"{common}; clients: aiohttp + json.loads (ours) vs socketio.AsyncClient; CPU busy "
                f"(share of wall time): ours {busy('ours')}, socketio {busy('socketio')}"
            ),
        ),
        row(
            "peer_socketio_servers",
            ours_raw,
            "frames/s",
            "python-socketio_room_emit",
            base_raw,
            ">=5",
            note=(
                f"{common}; both sides' clients are raw aiohttp WebSockets that only count "
                f"frames (Engine.IO spoken by hand for socketio); CPU busy (share of "
                f"wall time): ours {busy('ours-raw')}, socketio {busy('socketio-raw')}"
            ),
        ),
    ]


if __name__ == "__main__":
    if "--clients" in sys.argv:
        _client_main(sys.argv[sys.argv.index("--clients") + 1 :])
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r.to_dict())
