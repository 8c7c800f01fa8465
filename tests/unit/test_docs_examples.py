"""Every ```python block of README.md and docs/*.md runs as written, offline.

How a block runs, as a newcomer would run it: as the ``__main__`` module of a process of its own
(nothing left over from other blocks or tests; forked from one runner process that imported the
dependencies once, which makes eleven blocks take seconds, not a minute), from the repository
root. Top-level ``await`` is allowed, as in ``python -m asyncio`` (the harness gives those blocks
their event loop). An audit hook refuses every connection and name lookup that is not the
loopback, so a block that needs the network fails. The output must be clean: no traceback, no
unclosed session, no task destroyed while pending, no coroutine never awaited.

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
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NO_RUN = "no-run"
# An application recipe (docs/embedding.md) is a module a server imports: it is imported and
# served by tests/integration/test_embedding.py, which must name every recipe.
RECIPE = re.compile(r"<!-- recipe: ([\w-]+) -->\s*")
EMBEDDING_TESTS = ROOT / "tests" / "integration" / "test_embedding.py"
MAX_NO_RUN = 1
MIN_PYTHON_BLOCKS = 10  # what the docs hold today: the extraction must not silently find none
BLOCK_TIMEOUT = 90.0
JWT_SECRET = "docs-examples-secret-" + "k" * 43  # the environment's $JWT_SECRET for every block
DIRTY_OUTPUT = ("Traceback", "Unclosed", "Task was destroyed", "was never awaited")

RUNNER = r"""
# One process imports what the blocks import (~2 s), then forks a child per block: each block
# runs in a process of its own with nothing left over from the others, without paying the
# imports eleven times. Requests and answers are JSON lines on stdin/stdout.
import ast, asyncio, gc, inspect, json, os, sys, traceback, types

import aiohttp, langchain_core.language_models, langgraph.graph, streaming_module

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


def run(job):
    sys.addaudithook(offline)
    sys.argv = [job["path"]]
    main = types.ModuleType("__main__")  # the block is the __main__ module, as a script is
    sys.modules["__main__"] = main
    # Blank lines first, so a traceback names the Markdown file and its line.
    source = "\n" * (job["line"] - 1) + job["code"]
    code = compile(source, job["path"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(code, main.__dict__)
    if inspect.iscoroutine(outcome):  # the block awaits at top level
        asyncio.run(outcome)
    call = job["call"]
    if call:
        value = main.__dict__[call["function"]](*call["args"])
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
        with open(job["result"], "w") as out:
            json.dump(value, out)
    # What the block left behind is collected now, so its warnings (an unclosed session, a
    # task destroyed while pending) are printed as they would be at exit.
    main.__dict__.clear()
    gc.collect()
    return 1 if violations else 0


for request in sys.stdin:
    job = json.loads(request)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(err, 2)
            status = run(job)
            if violations:
                print("network used: " + "; ".join(violations), file=sys.stderr)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    print(json.dumps({"pid": pid}), flush=True)
    _, wait_status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}), flush=True)
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the first line of the code, 1-based
    info: tuple[str, ...]
    code: str
    recipe: str | None = None  # ``<!-- recipe: NAME -->`` just above: an embedding recipe

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return NO_RUN not in self.info[1:] and self.recipe is None


def python_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            info = tuple(match.group(1).split())
            if info[:1] == ("python",):
                line = text.count("\n", 0, match.start(2)) + 1
                above = RECIPE.search(text, 0, match.start())
                recipe = above.group(1) if above and above.end() == match.start() else None
                blocks.append(Block(path, line, info, match.group(2), recipe))
    return blocks


BLOCKS = python_blocks()
RUNNABLE = [b for b in BLOCKS if b.runnable]
RECIPES = [b for b in BLOCKS if b.recipe is not None]


def test_every_recipe_is_run_by_the_embedding_tests() -> None:
    served = set(re.findall(r'recipe\("([\w-]+)"', EMBEDDING_TESTS.read_text(encoding="utf-8")))
    assert RECIPES, "docs/embedding.md's recipes were not found"
    missing = [b.name for b in RECIPES if b.recipe not in served]
    assert not missing, f"recipes no test imports and serves: {missing}"


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


@pytest.fixture(scope="module")
def runner() -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "JWT_SECRET": JWT_SECRET, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER],
        cwd=ROOT, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_block(
    runner: subprocess.Popen[str], block: Block, tmp_path: Path, call: dict[str, Any] | None
) -> tuple[str, Any]:
    """Run ``block`` in a process of its own; its stdout and what the called function returned.
    Blocking reads go to a thread: the live server shares this event loop."""
    assert runner.stdin is not None and runner.stdout is not None
    files = {name: tmp_path / f"{name}.txt" for name in ("stdout", "stderr", "result")}
    job = {"path": str(block.path.relative_to(ROOT)), "line": block.line, "code": block.code}
    job |= {"call": call, **{name: str(path) for name, path in files.items()}}
    runner.stdin.write(json.dumps(job) + "\n")
    runner.stdin.flush()
    started = await asyncio.to_thread(runner.stdout.readline)
    assert started, "the runner process died; see the output above"
    reading = asyncio.ensure_future(asyncio.to_thread(runner.stdout.readline))
    try:
        answer = await asyncio.wait_for(asyncio.shield(reading), BLOCK_TIMEOUT)
    except TimeoutError:
        os.kill(json.loads(started)["pid"], signal.SIGKILL)
        await reading
        pytest.fail(f"{block.name} did not finish in {BLOCK_TIMEOUT:g} s")
    status = json.loads(answer)["status"]
    stdout = files["stdout"].read_text(errors="replace")
    stderr = files["stderr"].read_text(errors="replace")
    assert status == 0, f"{block.name} failed:\n{stderr}"
    dirty = [marker for marker in DIRTY_OUTPUT if marker in stdout + stderr]
    assert not dirty, f"{block.name} ran, but printed {dirty}:\n{stdout}\n{stderr}"
    result = json.loads(files["result"].read_text()) if call else None
    return stdout, result


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
async def test_the_block_runs_as_written(
    runner: subprocess.Popen[str], block: Block, tmp_path: Path
) -> None:
    names = defined_calls(block)
    assert len(names) <= 1, f"{block.name} defines several harness calls: {names}"
    if not names:
        await run_block(runner, block, tmp_path, None)
        return
    spec = CALLS[names[0]]
    async with live_server(jwt=spec.jwt) as live:
        call = {"function": names[0], "args": spec.args(live)}
        stdout, result = await run_block(runner, block, tmp_path, call)
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
