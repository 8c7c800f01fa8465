"""Every ```python block of README.md and docs/*.md runs as written, offline.

How a block runs, as a newcomer would run it: in a fresh interpreter (nothing left over from
other blocks or tests), as ``__main__``, from the repository root. Top-level ``await`` is allowed,
as in ``python -m asyncio`` (the harness gives those blocks their event loop). An audit hook
refuses every connection and name lookup that is not the loopback, so a block that needs the
network fails. The output must be clean: no traceback, no unclosed session, no task destroyed
while pending, no coroutine never awaited.

A block that needs a running server defines a function (its docs show the call); the harness
serves the demo, starts a run, calls the function with the server's URL and checks what it
gave back (:data:`CALLS`). A block that is deliberately not runnable is marked in its info
string, ```python no-run, and there may be at most :data:`MAX_NO_RUN` of them.

Fix the blocks, not this test.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NO_RUN = "no-run"
MAX_NO_RUN = 1
MIN_PYTHON_BLOCKS = 10  # what the docs hold today: the extraction must not silently find none
BLOCK_TIMEOUT = 90.0
JWT_SECRET = "docs-examples-secret-" + "k" * 43  # the environment's $JWT_SECRET for every block
DIRTY_OUTPUT = ("Traceback", "Unclosed", "Task was destroyed", "was never awaited")

RUNNER = r"""
import ast, asyncio, inspect, json, sys

LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::"}
violations = []


def offline(event, args):
    if event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    else:
        return
    if host is not None and host not in LOOPBACK:
        violations.append(f"{event} {host!r}")
        raise OSError(f"the docs examples run offline: {event} to {host!r} refused")


sys.addaudithook(offline)
path, first_line, call, result_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
# Blank lines first, so a traceback names the Markdown file and its line.
source = "\n" * (first_line - 1) + sys.stdin.read()
code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
outcome = eval(code, namespace)
if inspect.iscoroutine(outcome):  # the block awaits at top level
    asyncio.run(outcome)
if call:
    spec = json.loads(call)
    value = namespace[spec["function"]](*spec["args"])
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    with open(result_file, "w") as out:
        json.dump(value, out)
if violations:
    sys.exit("network used: " + "; ".join(violations))
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the first line of the code, 1-based
    info: tuple[str, ...]
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return NO_RUN not in self.info[1:]


def python_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            info = tuple(match.group(1).split())
            if info[:1] == ("python",):
                line = text.count("\n", 0, match.start(2)) + 1
                blocks.append(Block(path, line, info, match.group(2)))
    return blocks


BLOCKS = python_blocks()
RUNNABLE = [b for b in BLOCKS if b.runnable]


# --------------------------------------------------------------------------- a live server


@dataclass
class Live:
    """A demo server with one completed run, for the blocks that need a server."""

    ws_url: str
    execution_id: str
    content: str
    token: str | None


@dataclass(frozen=True)
class Call:
    """How the harness calls a function a block defines, and what it must give back."""

    args: Callable[[Live], list[Any]]
    check: Callable[[Any, str, Live], None]
    jwt: bool = False


def _prints_the_run(result: Any, stdout: str, live: Live) -> None:
    assert stdout == live.content


def _returns_the_run(result: Any, stdout: str, live: Live) -> None:
    assert result == live.content


def _gets_a_pong(result: Any, stdout: str, live: Live) -> None:
    assert isinstance(result, dict) and result["type"] == "pong", result


CALLS: dict[str, Call] = {
    # README "Stream a run from Python"
    "print_run": Call(lambda live: [live.ws_url, live.execution_id], _prints_the_run),
    # docs/protocol.md "A Python client (aiohttp)"
    "follow": Call(lambda live: [live.execution_id, live.ws_url], _returns_the_run),
    # docs/security.md "Where the token goes"
    "ping_with_token": Call(lambda live: [live.ws_url, live.token], _gets_a_pong, jwt=True),
}


def defined_calls(block: Block) -> list[str]:
    tree = ast.parse(block.code)
    defined = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    return sorted(defined & CALLS.keys())


@contextlib.asynccontextmanager
async def live_server(*, jwt: bool) -> AsyncIterator[Live]:
    """The demo on a free port, with one run started over HTTP and completed."""
    from streaming_module import JwtAuthenticator
    from streaming_module.demo.app import DemoServer

    secret = JWT_SECRET if jwt else None
    async with DemoServer(port=0, token_delay_ms=0, jwt_secret=secret) as server:
        token = None
        headers = {}
        if jwt:
            authenticator = JwtAuthenticator(server.container.options().gateway.authentication)
            token = authenticator.issue_token("docs-examples")
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(
                server.url + "/executions", json={"prompt": "Write about rivers", "words": 40}
            ) as response:
                assert response.status == 202, await response.text()
                execution_id = (await response.json())["executionId"]
            for _ in range(400):
                async with http.get(f"{server.url}/executions/{execution_id}") as response:
                    body = await response.json()
                if body["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the harness's run did not complete: {body}")
        yield Live(
            ws_url="ws" + server.url.removeprefix("http") + "/ws",
            execution_id=execution_id,
            content=body["result"]["content"],
            token=token,
        )


# --------------------------------------------------------------------------- running a block


async def run_block(block: Block, tmp_path: Path, call: dict[str, Any] | None) -> tuple[str, Any]:
    """Run ``block`` in a fresh interpreter; its stdout and what the called function returned."""
    result_file = tmp_path / "result.json"
    env = {**os.environ, "JWT_SECRET": JWT_SECRET, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER,
        str(block.path.relative_to(ROOT)), str(block.line),
        json.dumps(call) if call else "", str(result_file),
        cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(block.code.encode()), BLOCK_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{block.name} did not finish in {BLOCK_TIMEOUT:g} s")
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    assert process.returncode == 0, f"{block.name} failed:\n{stderr}"
    dirty = [marker for marker in DIRTY_OUTPUT if marker in stdout + stderr]
    assert not dirty, f"{block.name} ran, but printed {dirty}:\n{stdout}\n{stderr}"
    result = json.loads(result_file.read_text()) if call else None
    return stdout, result


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
async def test_the_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    names = defined_calls(block)
    assert len(names) <= 1, f"{block.name} defines several harness calls: {names}"
    if not names:
        await run_block(block, tmp_path, None)
        return
    spec = CALLS[names[0]]
    async with live_server(jwt=spec.jwt) as live:
        call = {"function": names[0], "args": spec.args(live)}
        stdout, result = await run_block(block, tmp_path, call)
        spec.check(result, stdout, live)


# --------------------------------------------------------------------------- the set of blocks


def test_the_docs_are_mostly_runnable() -> None:
    assert len(BLOCKS) >= MIN_PYTHON_BLOCKS, [b.name for b in BLOCKS]
    skipped = [b.name for b in BLOCKS if not b.runnable]
    assert len(skipped) <= MAX_NO_RUN, f"too many ```python {NO_RUN} blocks: {skipped}"


def test_info_strings_are_known() -> None:
    # A typo such as ```python no_run would otherwise quietly run (or quietly not).
    unknown = [(b.name, b.info) for b in BLOCKS if set(b.info[1:]) - {NO_RUN}]
    assert not unknown


def test_every_harness_call_has_its_block() -> None:
    used = {name for block in RUNNABLE for name in defined_calls(block)}
    assert used == CALLS.keys()
