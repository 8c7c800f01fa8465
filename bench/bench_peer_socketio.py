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
"""

from __future__ import annotations

import asyncio
import json
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
        await send()
        done = await child.await_for("done ", 180)
        done_at, cpu_done = (float(x) for x in done.split())
        elapsed = done_at - start
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


async def _ours(messages: int) -> tuple[float, float]:
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

        return await _measure("ours", gateway.ws_url or "", messages, send)


async def _socketio(messages: int) -> tuple[float, float]:
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
        return await _measure("socketio", f"http://127.0.0.1:{port}", messages, send)
    finally:
        await sio.shutdown()
        await runner.cleanup()


def run(quick: bool = False) -> list[Any]:
    from common import interleaved_medians, row

    messages = 300 if quick else 1500
    repeats = 1 if quick else 3
    client_cpu: dict[str, list[float]] = {"ours": [], "socketio": []}

    def measure(kind: str, factory: Any) -> Any:
        def once() -> float:
            rate, cpu = asyncio.run(factory(messages))
            client_cpu[kind].append(cpu)
            return float(rate)

        return once

    ours, base = interleaved_medians(
        repeats, measure("ours", _ours), measure("socketio", _socketio)
    )
    cpu_ours = sorted(client_cpu["ours"])[len(client_cpu["ours"]) // 2]
    cpu_sio = sorted(client_cpu["socketio"])[len(client_cpu["socketio"]) // 2]
    note = (
        f"{CLIENTS} clients in a second process, one room/execution, {messages} messages, "
        f"median of {repeats}; client process CPU busy {cpu_ours:.0%} (ours) / "
        f"{cpu_sio:.0%} (socketio) of the wall time"
    )
    return [
        row(
            "peer_socketio",
            ours,
            "frames/s",
            "python-socketio_room_emit",
            base,
            ">=5",
            note=note,
        )
    ]


if __name__ == "__main__":
    if "--clients" in sys.argv:
        _client_main(sys.argv[sys.argv.index("--clients") + 1 :])
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r.to_dict())
