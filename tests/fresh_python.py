"""Run a snippet in a fresh interpreter: for what one test process cannot show any more (what an
import loads, a process with no other container alive)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def run_fresh(code: str, *, timeout: float = 120) -> str:
    """Run ``code`` (dedented) with this interpreter and ``sys.path``; return its stdout.
    Fails the test with the child's stderr when it exits non-zero."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout
