"""The soak: the demo server as a real process under thousands of short runs, watched for growth.

Usage: ``python bench/soak.py [--duration 10m] [--concurrency 8] [--sample-every 5]
[--warmup DURATION] [--token-delay-ms 2] [--seed 1] [--json PATH]`` (``make soak DURATION=2m``).

What it does
    Starts ``python -m streaming_module demo --port 0`` in its own session (output to files,
    stopped with ``killpg``), reads the port from its first line, then runs ``--concurrency``
    client loops until ``--duration`` is over. Each loop starts one short run after another
    (``POST /executions`` with 3-40 ``words``) and watches it over WebSockets in one of these
    ways, chosen at random (seeded):

    ``steady``      subscribe, start the run, read to its final status;
    ``two``         two clients on the same run, both read it all;
    ``drop``        read a few frames, drop the connection without a close frame (transport
                    abort), reconnect and resume with ``lastSequence``; up to three times;
    ``late``        start the run first, join a little later with ``lastSequence: 0``;
    ``stall``       subscribe, start the run, stop reading for 0.3-2.5 s, then read it all
                    (closed with 4008 meanwhile: resume with ``lastSequence``);
    ``abandon``     read a few frames and leave for good; the run must complete anyway.

    Every run watched to the end is verified: its token frames' text equals the ``content`` of
    ``GET /executions/{id}``'s result, sequence numbers rise with no duplicate, and no ``gap``
    is announced (the runs are far smaller than the replay log). A failure is counted and
    described; any failure makes the soak fail.

What it samples (every ``--sample-every`` seconds)
    From outside the process: RSS and threads (``/proc/PID/status``) and open file descriptors
    (``/proc/PID/fd``). From ``GET /health``: open connections, subscriptions, broker executions
    and asyncio tasks.

When it fails (exit status 1)
    * any run failed its verification, or the load could not run at all;
    * after the warm-up (``--warmup``; default a fifth of the duration, at least 60 s, so the
      broker's 60 s retention of ended runs has reached its steady state), a metric grows: the
      median of the last third of the samples exceeds the median of the first third by more
      than its bound (see ``BOUNDS``);
    * once the load stops, the clients are gone and the broker's retention has passed (up to
      90 s), connections and subscriptions are not back to 0, broker executions not back to 0
      but the runs API's cancel channel, or descriptors and tasks not back within a few of their
      idle values before the load.
The table it prints shows, per metric: idle before the load, the two medians, the largest
sample, the idle value after, the bound and the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,::1")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost,::1")

START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 90.0
"""Seconds to wait after the load for the server to forget every run (retention is 60 s)."""
RUN_TIMEOUT = 60.0
"""Seconds a run may take end to end before it counts as failed (they take well under 1 s)."""
SCENARIOS = {"steady": 4, "two": 2, "drop": 3, "late": 2, "stall": 2, "abandon": 1}
"""Relative weights of the ways a run is watched."""


@dataclass(frozen=True)
class Bound:
    """How much a metric may grow from the first to the last third of the measured samples
    (``absolute + relative * first``), and how far from its idle value it may be once the
    load is gone (``idle_slack``; ``None``: not checked)."""

    absolute: float
    relative: float
    idle_slack: float | None


BOUNDS: dict[str, Bound] = {
    # The demo keeps its last 1,000 runs' records (a few KB each) and the broker the runs of
    # the last 60 s: once both are full, memory must stay flat.
    "rss_mb": Bound(absolute=24.0, relative=0.10, idle_slack=None),
    "threads": Bound(absolute=4, relative=0.0, idle_slack=None),
    "fds": Bound(absolute=16, relative=0.0, idle_slack=4),
    "tasks": Bound(absolute=20, relative=0.25, idle_slack=5),
    "connections": Bound(absolute=8, relative=0.5, idle_slack=0),
    "subscriptions": Bound(absolute=8, relative=0.5, idle_slack=0),
    # idle_slack 1: the runs API's cancel channel (an execution named "@runs/control"), opened
    # by the first run and kept, empty, for the server's life.
    "executions": Bound(absolute=50, relative=0.5, idle_slack=1),
}


def parse_duration(text: str) -> float:
    """``"10m"``, ``"90s"``, ``"1h"`` or seconds → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10m, 90s, 600)")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


# ------------------------------------------------------------------------------ the server


class DemoServer:
    """``python -m streaming_module demo`` in its own session, output to files, with a watchdog
    that kills its process group after ``deadline`` seconds whatever happens."""

    def __init__(self, args: list[str], deadline: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="soak_"))
        self.stdout = self.dir / "server.out"
        self.stderr = self.dir / "server.err"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streaming_module", "demo", "--port", "0", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env=env,
            )
        self._watchdog = threading.Timer(deadline, self._kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        self.url = self._wait_for_url()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.stdout.read_text(errors="replace")
            if "\n" in text:
                line = text.splitlines()[0]
                if not line.startswith("listening on http://"):
                    raise RuntimeError(f"unexpected first line from the demo: {line!r}")
                return line.removeprefix("listening on ").strip()
            if self.proc.poll() is not None:
                raise RuntimeError(f"the demo exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"the demo did not start in {START_TIMEOUT:g} s:\n{self.log()}")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM the group, SIGKILL after 10 s; returns the exit code."""
        self._watchdog.cancel()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._kill()
                self.proc.wait(5)
        return self.proc.returncode


# ------------------------------------------------------------------------------ sampling


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict (``VmRSS`` -> ``"123456 kB"``, ``Threads`` -> ``"3"``)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def sample(session: aiohttp.ClientSession, base: str, pid: int) -> dict[str, float]:
    async with session.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=10)) as reply:
        health = await reply.json()
    status = proc_status(pid)
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
        "fds": open_fds(pid),
        "tasks": health["tasks"],
        "connections": health["connections"],
        "subscriptions": health["subscriptions"],
        "executions": health["executions"],
    }


# ------------------------------------------------------------------------------ the load


@dataclass
class Tally:
    runs: Counter[str] = field(default_factory=Counter)
    verified: int = 0
    frames: int = 0
    drops: int = 0
    resumes: int = 0
    slow_closes: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        if len(self.failures) <= 20:
            print(f"FAILED: {what}", file=sys.stderr, flush=True)


class Watch:
    """One client's view of a run, across reconnects: its frames and where it got to."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.sequences: list[int] = []
        self.final: str | None = None
        self.gaps = 0

    @property
    def last(self) -> int:
        return self.sequences[-1] if self.sequences else 0

    def take(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "gap":
            self.gaps += 1
            return
        if "sequence" not in message or kind in ("subscribed", "unsubscribed", "pong", "error"):
            return
        self.sequences.append(int(message["sequence"]))
        payload = message.get("payload") or {}
        if kind == "token":
            self.text.append(payload.get("content", ""))
        elif kind == "status" and payload.get("status") in ("completed", "failed", "cancelled"):
            self.final = payload["status"]


class Load:
    def __init__(self, base: str, session: aiohttp.ClientSession, rng: random.Random) -> None:
        self.base = base
        self.ws_url = "ws" + base.removeprefix("http") + "/ws"
        self.session = session
        self.rng = rng
        self.tally = Tally()
        self._ids = 0

    def _new_id(self) -> str:
        self._ids += 1
        return f"soak-{self._ids}-{self.rng.randrange(16**6):06x}"

    async def _connect(
        self, execution_id: str, last: int | None
    ) -> aiohttp.ClientWebSocketResponse:
        ws = await self.session.ws_connect(self.ws_url, heartbeat=None, autoping=True)
        payload: dict[str, Any] = {"executionId": execution_id}
        if last is not None:
            payload["lastSequence"] = last
        await ws.send_json({"type": "subscribe_execution", "payload": payload})
        while True:  # `subscribed` comes before any frame of the execution
            message = await ws.receive_json(timeout=RUN_TIMEOUT)
            if message.get("type") == "subscribed":
                return ws
            if message.get("type") == "error":
                raise RuntimeError(f"subscribe refused: {message}")

    async def _start(self, execution_id: str, words: int) -> None:
        body = {"prompt": "soak", "executionId": execution_id, "words": words}
        async with self.session.post(f"{self.base}/executions", json=body) as reply:
            if reply.status != 202:
                text = await reply.text()
                raise RuntimeError(f"POST /executions answered {reply.status}: {text}")

    async def _result(self, execution_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            async with self.session.get(f"{self.base}/executions/{execution_id}") as reply:
                record = await reply.json()
            if record.get("status") in ("completed", "failed", "cancelled"):
                return dict(record)
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {execution_id} still {record.get('status')}")
            await asyncio.sleep(0.02)

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, watch: Watch, frames: int | None = None
    ) -> bool:
        """Read into ``watch`` until the run's final status, or until it holds ``frames``
        frames (True), or until the server closes (False)."""
        while watch.final is None and (frames is None or len(watch.sequences) < frames):
            message = await ws.receive(timeout=RUN_TIMEOUT)
            if message.type is aiohttp.WSMsgType.TEXT:
                watch.take(json.loads(message.data))
                self.tally.frames += 1
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                if ws.close_code == 4008:
                    self.tally.slow_closes += 1
                return False
            elif message.type is aiohttp.WSMsgType.ERROR:
                return False
        return True

    async def _follow(
        self, execution_id: str, watch: Watch, ws: aiohttp.ClientWebSocketResponse
    ) -> None:
        """Read to the final status, resuming with ``lastSequence`` whenever the server closes."""
        for _ in range(10):
            try:
                if await self._read(ws, watch):
                    return
            finally:
                await ws.close()
            self.tally.resumes += 1
            ws = await self._connect(execution_id, watch.last)
        raise RuntimeError(f"run {execution_id}: closed ten times before its end")

    def _verify(self, execution_id: str, watch: Watch, record: dict[str, Any], who: str) -> None:
        result = record.get("result") or {}
        problems = []
        if record.get("status") != "completed" or watch.final != "completed":
            problems.append(f"status {record.get('status')}/{watch.final}")
        if "".join(watch.text) != result.get("content"):
            problems.append(
                f"text differs: streamed {len(''.join(watch.text))} chars, "
                f"result {len(result.get('content') or '')}"
            )
        if watch.sequences != sorted(set(watch.sequences)):
            problems.append("sequences out of order or duplicated")
        if watch.gaps:
            problems.append(f"{watch.gaps} gap(s)")
        if problems:
            self.tally.fail(f"{execution_id} ({who}): {'; '.join(problems)}")
        else:
            self.tally.verified += 1

    async def one_run(self) -> None:
        scenario = self.rng.choices(list(SCENARIOS), weights=list(SCENARIOS.values()))[0]
        execution_id = self._new_id()
        words = self.rng.randint(3, 40)
        self.tally.runs[scenario] += 1
        try:
            await asyncio.wait_for(self._scenario(scenario, execution_id, words), RUN_TIMEOUT * 2)
        except Exception as exc:  # any failure of a run is a finding, not a crash of the soak
            self.tally.fail(f"{execution_id} ({scenario}): {type(exc).__name__}: {exc}")

    async def _scenario(self, scenario: str, execution_id: str, words: int) -> None:
        rng = self.rng
        if scenario == "late":
            await self._start(execution_id, words)
            await asyncio.sleep(rng.uniform(0, 0.2))
            watch = Watch()
            await self._follow(execution_id, watch, await self._connect(execution_id, 0))
            self._verify(execution_id, watch, await self._result(execution_id), scenario)
            return
        if scenario == "two":
            first, second = Watch(), Watch()
            ws1 = await self._connect(execution_id, None)
            ws2 = await self._connect(execution_id, None)
            await self._start(execution_id, words)
            await asyncio.gather(
                self._follow(execution_id, first, ws1), self._follow(execution_id, second, ws2)
            )
            record = await self._result(execution_id)
            self._verify(execution_id, first, record, "two/1")
            self._verify(execution_id, second, record, "two/2")
            return
        watch = Watch()
        ws = await self._connect(execution_id, None)
        await self._start(execution_id, words)
        if scenario == "steady":
            await self._follow(execution_id, watch, ws)
        elif scenario == "stall":
            await asyncio.sleep(rng.uniform(0.3, 2.5))  # not reading
            await self._follow(execution_id, watch, ws)
        elif scenario == "drop":
            for _ in range(rng.randint(1, 3)):
                done = await self._read(ws, watch, len(watch.sequences) + rng.randint(1, 6))
                if not done or watch.final is not None:
                    break
                await _abort(ws)
                self.tally.drops += 1
                self.tally.resumes += 1
                ws = await self._connect(execution_id, watch.last)
            await self._follow(execution_id, watch, ws)
        else:  # abandon: a few frames, then gone for good; the run must finish without us
            await self._read(ws, watch, rng.randint(1, 4))
            if rng.random() < 0.5:
                await _abort(ws)
            else:
                await ws.close()
            self.tally.drops += 1
            record = await self._result(execution_id)
            if record.get("status") != "completed":
                self.tally.fail(f"{execution_id} (abandon): run ended {record.get('status')}")
            return
        self._verify(execution_id, watch, await self._result(execution_id), scenario)

    async def worker(self, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            await self.one_run()


async def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the connection without a close frame, as a vanished client would (aiohttp has no
    public way to: this reaches its connection's transport, and falls back to a clean close)."""
    connection = getattr(ws, "_conn", None)
    transport = getattr(connection, "transport", None)
    if transport is not None:
        transport.abort()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 1.0)


# ------------------------------------------------------------------------------ the soak


async def soak(options: argparse.Namespace) -> int:
    duration: float = options.duration
    warmup: float = options.warmup if options.warmup is not None else max(60.0, duration / 5)
    if warmup >= duration:
        print(f"--warmup ({warmup:g} s) must be shorter than --duration", file=sys.stderr)
        return 2
    server = DemoServer(
        # One address opens thousands of connections a minute here: lift the demo's limits.
        [
            "--token-delay-ms",
            str(options.token_delay_ms),
            "--log-level",
            "warning",
            "--no-rate-limit",
        ],
        deadline=duration + 300,
    )
    print(
        f"soak: demo pid {server.pid} at {server.url}; {duration:g} s, warm-up {warmup:g} s, "
        f"{options.concurrency} client loops",
        flush=True,
    )
    samples: list[tuple[float, dict[str, float]]] = []
    connector = aiohttp.TCPConnector(limit=0)
    exit_code: int | None = None
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.sleep(1.0)
            idle_before = await sample(session, server.url, server.pid)
            load = Load(server.url, session, random.Random(options.seed))
            started = time.monotonic()
            stop_at = started + duration
            workers = [
                asyncio.create_task(load.worker(stop_at)) for _ in range(options.concurrency)
            ]
            next_report = started + 30
            while time.monotonic() < stop_at:
                await asyncio.sleep(min(options.sample_every, max(0.0, stop_at - time.monotonic())))
                now = time.monotonic()
                samples.append((now - started, await sample(session, server.url, server.pid)))
                if now >= next_report:
                    next_report += 30
                    latest = samples[-1][1]
                    print(
                        f"  t={now - started:5.0f} s  runs {sum(load.tally.runs.values()):6d}  "
                        f"verified {load.tally.verified:6d}  failures {len(load.tally.failures)}  "
                        f"rss {latest['rss_mb']:.1f} MB  fds {latest['fds']:.0f}  "
                        f"tasks {latest['tasks']:.0f}",
                        flush=True,
                    )
            await asyncio.wait_for(asyncio.gather(*workers), RUN_TIMEOUT * 3)
            idle_after = await _settle(session, server.url, server.pid, idle_before)
    finally:
        exit_code = server.stop()
    return report(
        load.tally, samples, warmup, idle_before, idle_after, duration, exit_code, options
    )


async def _settle(
    session: aiohttp.ClientSession, base: str, pid: int, idle_before: dict[str, float]
) -> dict[str, float]:
    """The server's figures once the load is gone: clients drained, and the broker's retention
    of ended runs (60 s by default) passed, so every run is forgotten. Waits up to
    ``SETTLE_TIMEOUT`` seconds."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        figures = await sample(session, base, pid)
        settled = (
            figures["connections"] == 0
            and figures["executions"] <= idle_before["executions"] + BOUNDS["executions"].idle_slack
            and figures["tasks"] <= idle_before["tasks"] + 5
        )
        if settled or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(1.0)


def report(
    tally: Tally,
    samples: list[tuple[float, dict[str, float]]],
    warmup: float,
    idle_before: dict[str, float],
    idle_after: dict[str, float],
    duration: float,
    server_exit: int | None,
    options: argparse.Namespace,
) -> int:
    measured = [figures for t, figures in samples if t >= warmup]
    failed = bool(tally.failures)
    rows = []
    if len(measured) < 6:
        print(f"only {len(measured)} samples after the warm-up: run longer", file=sys.stderr)
        failed = True
    third = max(1, len(measured) // 3)
    for metric, bound in BOUNDS.items():
        values = [figures[metric] for figures in measured] or [0.0]
        early = statistics.median(values[:third])
        late = statistics.median(values[-third:])
        allowed = bound.absolute + bound.relative * early
        grew = late - early > allowed
        idle_bad = (
            bound.idle_slack is not None
            and idle_after[metric] > idle_before[metric] + bound.idle_slack
        )
        ok = not grew and not idle_bad
        failed |= not ok
        idle_rule = (
            f"idle <= {idle_before[metric] + bound.idle_slack:g}"
            if bound.idle_slack is not None
            else "-"
        )
        rows.append(
            {
                "metric": metric,
                "idle_before": idle_before[metric],
                "early": early,
                "late": late,
                "max": max(values),
                "idle_after": idle_after[metric],
                "bound": f"+{allowed:.1f}; {idle_rule}",
                "ok": ok,
            }
        )
    runs = sum(tally.runs.values())
    print()
    print(
        f"soak: {duration:g} s, warm-up {warmup:g} s, {len(samples)} samples "
        f"({len(measured)} measured), server exit code {server_exit}"
    )
    print(
        f"runs {runs} ({', '.join(f'{k} {v}' for k, v in sorted(tally.runs.items()))}); "
        f"watchers verified {tally.verified}; frames read {tally.frames}; drops {tally.drops}; "
        f"resumes {tally.resumes}; 4008 closes {tally.slow_closes}; failures {len(tally.failures)}"
    )
    header = ("metric", "idle before", "early med", "late med", "max", "idle after", "bound", "")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print(
            f"| {row['metric']} | {row['idle_before']:.1f} | {row['early']:.1f} | "
            f"{row['late']:.1f} | {row['max']:.1f} | {row['idle_after']:.1f} | {row['bound']} | "
            f"{'ok' if row['ok'] else 'GREW'} |"
        )
    for failure in tally.failures[:20]:
        print(f"  failure: {failure}")
    if options.json:
        Path(options.json).write_text(
            json.dumps(
                {
                    "duration": duration,
                    "warmup": warmup,
                    "runs": dict(tally.runs),
                    "verified": tally.verified,
                    "frames": tally.frames,
                    "drops": tally.drops,
                    "resumes": tally.resumes,
                    "slow_closes": tally.slow_closes,
                    "failures": tally.failures,
                    "rows": rows,
                    "samples": samples,
                },
                indent=1,
            )
        )
    print("soak: FAILED" if failed else "soak: passed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=parse_duration, default=600.0, help="default: 10m")
    parser.add_argument("--warmup", type=parse_duration, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample-every", type=parse_duration, default=5.0)
    parser.add_argument("--token-delay-ms", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    options = parser.parse_args(argv)
    return asyncio.run(soak(options))


if __name__ == "__main__":
    sys.exit(main())
