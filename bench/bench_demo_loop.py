"""The demo stays responsive during a 1,000,000-word run: ``GET /health`` latency while it runs.

The demo (``streaming-module demo --port 0 --token-delay-ms 0``, the CLI itself, with its
``gc.freeze()`` after start-up) runs in a child process. This process subscribes to the
execution's ``status`` frames over the WebSocket, starts the run with ``POST /executions
{"words": 1000000}`` and, until the final status arrives, sends ``GET /health`` on a keep-alive
connection every ~20 ms, timing each answer. A stall of the demo's event loop shows up as a slow
answer: the worst one is the row's value (median over repeated runs on the same server).

Row ``demo_loop_lag`` (ms; baseline the issue's bound, 50 ms; goal ``<=1.0``). Before our own
token capture, LangGraph's ``messages`` mode walked the 6.2 MB generated text character by
character when the generating node ended: ~360 ms without an answer.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _children import Child, child_args, guard_child  # noqa: E402

WORDS = 1_000_000
BOUND_MS = 50.0
SAMPLE_EVERY = 0.02  # seconds between /health requests
_SCRIPT = str(Path(__file__).resolve())
_LISTENING = re.compile(r"listening on (http://\S+)")


def _demo_main(argv: list[str]) -> None:
    """The child: the CLI's ``demo`` command, exactly as a user runs it."""
    _, _, parent = child_args(argv)
    guard_child(parent, deadline=240)
    from streaming_module.cli import main

    sys.exit(main(["demo", "--port", "0", "--token-delay-ms", "0", "--log-level", "warning"]))


async def _url(child: Child, within: float) -> str:
    end = time.monotonic() + within
    while time.monotonic() < end:
        found = _LISTENING.search(child.tail())
        if found:
            return found.group(1)
        if child.proc.poll() is not None:
            raise RuntimeError(f"the demo exited:\n{child.tail()}")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the demo did not start:\n{child.tail()}")


async def _sample(session: Any, url: str, stop: asyncio.Event, into: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        async with session.get(f"{url}/health") as response:
            await response.read()
        into.append((time.perf_counter() - start) * 1000)
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
        except TimeoutError:
            pass


async def _one_run(session: Any, url: str, execution_id: str) -> dict[str, float]:
    import aiohttp

    ws_url = url.replace("http://", "ws://") + "/ws"
    async with session.ws_connect(ws_url) as ws:
        await ws.send_json(
            {
                "type": "subscribe_execution",
                "payload": {"executionId": execution_id, "events": ["status"]},
            }
        )
        reply = await ws.receive_json(timeout=30)
        if reply["type"] != "subscribed":
            raise RuntimeError(f"not subscribed: {reply}")
        idle: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(session, url, stop, idle))
        await asyncio.sleep(1.0)
        stop.set()
        await sampler
        during: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(session, url, stop, during))
        start = time.monotonic()
        body = {"prompt": "Write about tides", "executionId": execution_id, "words": WORDS}
        async with session.post(f"{url}/executions", json=body) as response:
            if response.status != 202:
                raise RuntimeError(f"POST /executions: {response.status} {await response.text()}")
        while True:
            msg = await ws.receive(timeout=180)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"connection closed: {msg.type}")
            frame = msg.json()
            if frame["type"] == "status" and frame["payload"]["status"] != "started":
                if frame["payload"]["status"] != "completed":
                    raise RuntimeError(f"the run ended {frame['payload']}")
                break
        elapsed = time.monotonic() - start
        stop.set()
        await sampler
    return {
        "worst": max(during),
        "p50": statistics.median(during),
        "samples": len(during),
        "idle_worst": max(idle),
        "seconds": elapsed,
    }


async def _measure(repeats: int) -> list[dict[str, float]]:
    import aiohttp

    child = Child(_SCRIPT, ["--demo"], deadline=240)
    try:
        url = await _url(child, 90)
        async with aiohttp.ClientSession() as session:
            return [await _one_run(session, url, f"loop-{r}") for r in range(repeats)]
    finally:
        child.stop()


def run(quick: bool = False) -> list[Any]:
    from common import row

    runs = asyncio.run(_measure(1 if quick else 3))
    worst = statistics.median(r["worst"] for r in runs)
    return [
        row(
            "demo_loop_lag",
            worst,
            "ms",
            "goal_50ms",
            BOUND_MS,
            "<=1.0",
            note=f"worst GET /health latency during a {WORDS:,}-word demo run (token delay 0), "
            f"median of {len(runs)} runs: "
            + "; ".join(
                f"{r['worst']:.1f} ms worst, {r['p50']:.1f} ms median of {r['samples']:.0f} "
                f"requests, run {r['seconds']:.2f} s, idle worst {r['idle_worst']:.1f} ms"
                for r in runs
            ),
        )
    ]


if __name__ == "__main__":
    if "--demo" in sys.argv:
        _demo_main(sys.argv[sys.argv.index("--demo") + 1 :])
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r.to_dict())
