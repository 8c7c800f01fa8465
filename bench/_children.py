"""Child processes for benchmarks, started the way NOTES.md asks.

- Output goes to a log file, never to an unread pipe.
- Each child runs in its own session (``start_new_session=True``) and is stopped with
  ``os.killpg``, so nothing it spawned outlives it.
- A watchdog thread kills the child's process group after ``deadline`` seconds whatever happens,
  and the child itself exits when its parent disappears (:func:`guard_child`).
- Children report progress by appending lines (``ready``, ``port 1234``, ``done ...``) to a status
  file the parent polls; the parent never blocks on a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}


class Child:
    """One child process with a status file, a log file and a watchdog."""

    def __init__(self, script: str, args: list[str], *, deadline: float) -> None:
        fd, status = tempfile.mkstemp(prefix="bench_status_", suffix=".txt")
        os.close(fd)
        self.status = status
        self.log = tempfile.NamedTemporaryFile(prefix="bench_child_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, script, *args, "--status", status, "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )
        self._watchdog = threading.Timer(deadline, self.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[str]:
        return Path(self.status).read_text().splitlines()

    def find(self, prefix: str) -> str | None:
        """The first complete status line starting with ``prefix`` (its rest), else None."""
        text = Path(self.status).read_text()
        for line in text.splitlines(keepends=True):
            if line.startswith(prefix) and line.endswith("\n"):
                return line[len(prefix) :].strip()
        return None

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log.name).read_text(errors="replace")[-3000:]
        return ""

    def _check_alive(self, prefix: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"child exited ({self.proc.returncode}) before {prefix!r}:\n{self.tail()}"
            )

    def wait_for(self, prefix: str, timeout: float) -> str:
        """Block (polling) until the child writes a ``prefix`` line; returns the rest of it."""
        end = time.monotonic() + timeout
        while True:
            got = self.find(prefix)
            if got is not None:
                return got
            self._check_alive(prefix)
            if time.monotonic() > end:
                raise TimeoutError(f"child gave no {prefix!r} within {timeout}s:\n{self.tail()}")
            time.sleep(0.01)

    async def await_for(self, prefix: str, within: float) -> str:
        """:meth:`wait_for` for an event loop (polls with ``asyncio.sleep``)."""
        end = time.monotonic() + within
        while True:
            got = self.find(prefix)
            if got is not None:
                return got
            self._check_alive(prefix)
            if time.monotonic() > end:
                raise TimeoutError(f"child gave no {prefix!r} within {within}s:\n{self.tail()}")
            await asyncio.sleep(0.01)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the child's group, SIGKILL it after ``grace`` s; remove its files."""
        self._watchdog.cancel()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(5)
        self.log.close()
        for path in (self.status, self.log.name):
            with contextlib.suppress(OSError):
                os.unlink(path)


# ------------------------------------------------------------------------------ child side


def child_args(argv: list[str]) -> tuple[list[str], str, int]:
    """Split ``argv`` into the child's own arguments, its status path and its parent pid."""
    args = list(argv)
    status = args[args.index("--status") + 1]
    parent = int(args[args.index("--parent") + 1])
    for flag in ("--status", "--parent"):
        i = args.index(flag)
        del args[i : i + 2]
    return args, status, parent


def report(status: str, line: str) -> None:
    """Append one status line for the parent (written whole, then flushed)."""
    with open(status, "a", encoding="utf-8") as file:
        file.write(line + "\n")


def guard_child(parent: int, deadline: float) -> None:
    """Exit this child when its parent dies or after ``deadline`` seconds (a daemon thread)."""
    start = time.monotonic()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent or time.monotonic() - start > deadline:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
