"""Acceptance: SPEC.md "The demo, the CLI and the HTTP side", as a user meets it: the demo
server on a free port (in-process for most checks, ``python -m streaming_module demo`` for the
command line itself), the third-party ``websockets`` client and plain HTTP. Loops bounded."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from acceptance_support import FINAL, TIMEOUT, assert_contiguous, is_final, text_of

from streaming_module.demo.app import DemoServer

SECRET = "demo-acceptance-secret-" + "q" * 40
RUN_TIMEOUT = 30.0


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with DemoServer(port=0, token_delay_ms=0) as server:
        yield server


@pytest.fixture
async def secured() -> AsyncIterator[DemoServer]:
    async with DemoServer(port=0, token_delay_ms=0, jwt_secret=SECRET) as server:
        yield server


def _jwt(**claims: Any) -> str:
    return jwt.encode({"sub": "t", "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


async def _http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers or {}) as response,
    ):
        text = await response.text()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        return response.status, data, response.content_type


async def _watch(
    ws_url: str, base_url: str, *, words: int, token: str | None = None, prompt: str = "Tides"
) -> tuple[str, list[dict[str, Any]]]:
    """The SPEC's usual order: choose an id, subscribe, then POST /executions with it; collect
    frames up to the final status."""
    execution_id = f"acc-{uuid.uuid4().hex[:10]}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = ws_url + (f"?token={token}" if token else "")
    frames: list[dict[str, Any]] = []
    async with websockets.connect(url, proxy=None, open_timeout=10, max_size=None) as ws:
        await ws.send(
            json.dumps({"type": "subscribe_execution", "payload": {"executionId": execution_id}})
        )
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "subscribed"
        status, body, _ = await _http(
            "POST",
            base_url + "/executions",
            {"prompt": prompt, "executionId": execution_id, "words": words},
            headers,
        )
        assert (status, body) == (202, {"executionId": execution_id})
        deadline = time.monotonic() + RUN_TIMEOUT
        for _ in range(50_000):
            frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            frames.append(frame)
            if is_final(frame):
                break
        else:
            pytest.fail("no final status")
    return execution_id, frames


# --------------------------------------------------------------------------- HTTP side


async def test_root_and_demo_serve_the_page_and_health_is_json(demo: DemoServer) -> None:
    """SPEC: "`GET /` from a browser (no Upgrade header) and `GET /demo`: the demo page ...
    Its parts carry `data-testid`: `prompt`, `start`, `output`, `progress` (with
    `aria-valuenow` 0-100), `eta`, `status` ..., `event-log`"; "`GET /health` → 200 JSON"."""
    for path in ("/", "/demo"):
        status, _, content_type = await _http("GET", demo.url + path)
        assert status == 200 and content_type == "text/html"
        async with aiohttp.ClientSession() as session, session.get(demo.url + path) as response:
            page = await response.text()
        for part in ("prompt", "start", "output", "progress", "eta", "status", "event-log"):
            assert f'data-testid="{part}"' in page, part
        assert re.search(r'data-testid="progress"[^>]*aria-valuenow="0"', page) or re.search(
            r'aria-valuenow="0"[^>]*data-testid="progress"', page
        )
    status, body, content_type = await _http("GET", demo.url + "/health")
    assert status == 200 and content_type == "application/json" and isinstance(body, dict)


async def test_a_run_streams_and_get_executions_result_content_is_the_token_text(
    demo: DemoServer,
) -> None:
    """SPEC: "`POST /executions` with `{"prompt", "executionId": "optional", "words": N}` → `202
    {"executionId"}`"; "`GET /executions/{id}` → `{"executionId", "status", "result"}` where
    `result` is the final state once completed (its `content` is the generated text, exactly what
    the token frames carried)" — read right after the final `status` frame arrives."""
    for words in (1, 57, 400):
        execution_id, frames = await _watch(
            demo.url.replace("http", "ws") + "/", demo.url, words=words
        )
        assert frames[0]["sequence"] == 1 and frames[0]["payload"] == {"status": "started"}
        assert_contiguous(frames)
        assert frames[-1]["payload"]["status"] == "completed"
        assert sum(map(is_final, frames)) == 1
        text = text_of(frames)
        assert len(text.split()) == words
        # Right after the final frame, without polling: the HTTP side agrees.
        status, body, _ = await _http("GET", f"{demo.url}/executions/{execution_id}")
        assert status == 200
        assert set(body) >= {"executionId", "status", "result"}
        assert body["executionId"] == execution_id
        assert body["status"] == "completed", body
        assert body["result"]["content"] == text


async def test_executions_without_an_id_get_one_and_can_be_read(demo: DemoServer) -> None:
    """SPEC: `executionId` is optional in `POST /executions`; `words` optional (default a few
    hundred)."""
    status, body, _ = await _http("POST", demo.url + "/executions", {"prompt": "Owls"})
    assert status == 202 and isinstance(body["executionId"], str) and body["executionId"]
    execution_id = body["executionId"]
    for _ in range(500):
        status, state, _ = await _http("GET", f"{demo.url}/executions/{execution_id}")
        assert status == 200
        if state["status"] in FINAL:
            break
        await asyncio.sleep(0.02)
    assert state["status"] == "completed"
    assert 100 <= len(state["result"]["content"].split()) <= 1000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "words": 0}, "words"),
        ({"prompt": "x", "words": 1_000_001}, "words"),
        ({"prompt": "x", "words": -3}, "words"),
        ({"prompt": "x", "words": 2.5}, "words"),
        ({"prompt": "x", "words": "10"}, "words"),
        ({"prompt": "x", "words": True}, "words"),
        ({"words": 5}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "executionId": 7}, "executionId"),
        ({"prompt": "x", "executionId": ""}, "executionId"),
    ],
)
async def test_bad_start_requests_get_a_clear_400(
    demo: DemoServer, body: dict[str, Any], field: str
) -> None:
    """SPEC: `words` optional, 1-1,000,000: out of bounds is refused with a clear 400."""
    status, answer, content_type = await _http("POST", demo.url + "/executions", body)
    assert status == 400 and content_type == "application/json", answer
    assert field in answer["message"], answer
    assert not demo.app.executions


async def test_the_word_bounds_themselves_are_accepted(demo: DemoServer) -> None:
    """SPEC: `words` 1-1,000,000 inclusive."""
    for words in (1, 1_000_000):
        status, body, _ = await _http(
            "POST", demo.url + "/executions", {"prompt": "bounds", "words": words}
        )
        assert status == 202, body
    # (the 1,000,000-word run is cancelled when the server stops)


async def test_a_client_chosen_execution_id_is_used_and_not_reused(demo: DemoServer) -> None:
    """SPEC: "`POST /executions` accepting a client-chosen `executionId`"."""
    status, body, _ = await _http(
        "POST", demo.url + "/executions", {"prompt": "x", "executionId": "my-run.1", "words": 3}
    )
    assert (status, body) == (202, {"executionId": "my-run.1"})
    status, body, _ = await _http(
        "POST", demo.url + "/executions", {"prompt": "y", "executionId": "my-run.1", "words": 3}
    )
    assert status == 409 and "my-run.1" in body["message"]
    status, body, _ = await _http("GET", demo.url + "/executions/unknown-id")
    assert status == 404


async def test_with_a_jwt_secret_only_the_executions_endpoints_need_the_token(
    secured: DemoServer,
) -> None:
    """SPEC: "With `--jwt-secret`, `POST /executions` and `GET /executions/{id}` require the JWT
    (Bearer header or `?token=`); `/health`, `GET /` and `/demo` do not" — the WebSocket does."""
    base = secured.url
    token = _jwt()
    for path in ("/health", "/", "/demo"):
        assert (await _http("GET", base + path))[0] == 200, path
    status, body, _ = await _http("POST", base + "/executions", {"prompt": "x", "words": 2})
    assert status == 401 and body["code"] == "unauthorized" and body["message"]
    assert (await _http("GET", base + "/executions/x"))[0] == 401
    forged = jwt.encode({"sub": "t", "exp": int(time.time()) + 60}, "x" * 40, "HS256")
    assert (await _http("GET", base + f"/executions/x?token={forged}"))[0] == 401
    status, body, _ = await _http(
        "POST",
        base + "/executions",
        {"prompt": "x", "executionId": "jwt-1", "words": 2},
        {"Authorization": f"Bearer {token}"},
    )
    assert (status, body) == (202, {"executionId": "jwt-1"})
    status, body, _ = await _http(
        "POST", base + f"/executions?token={token}", {"prompt": "x", "words": 2}
    )
    assert status == 202
    assert (await _http("GET", base + f"/executions/jwt-1?token={token}"))[0] == 200
    status, _, _ = await _http(
        "GET", base + "/executions/jwt-1", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(base.replace("http", "ws") + "/", proxy=None):
            pass
    assert refused.value.response.status_code == 401
    ws_url = base.replace("http", "ws") + "/ws"
    execution_id, frames = await _watch(ws_url, base, words=20, token=token)
    status, body, _ = await _http(
        "GET", f"{base}/executions/{execution_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert body["result"]["content"] == text_of(frames)


async def test_the_python_client_resumes_across_a_forced_disconnect_with_the_exact_text(
    demo: DemoServer,
) -> None:
    """Issue 5: "the client resumes across a forced disconnect with the exact text"."""
    from streaming_module import StreamingClient

    execution_id = "client-cut"
    async with StreamingClient(demo.url + "/ws", backoff_initial=0.01, backoff_max=0.05) as client:
        sub = await client.subscribe(execution_id)
        await demo.app.start("Write about rivers", execution_id=execution_id, words=500)
        parts: list[str] = []
        sequences: list[int] = []
        cut = 0
        async with asyncio.timeout(RUN_TIMEOUT):
            async for frame in sub:
                sequences.append(frame.sequence)
                if frame.type == "token":
                    parts.append(frame["payload"]["content"])
                    if len(parts) in (2, 5) and cut < 2:
                        cut += 1
                        for info in demo.gateway.get_connections():
                            connection = demo.gateway.get_connection(info["clientId"])
                            assert connection is not None
                            await connection.close(1011, "cut", drain_timeout=0)
        assert client.reconnects >= 1
    assert sequences == sorted(set(sequences))
    record = demo.app.executions[execution_id]
    await asyncio.wait_for(asyncio.shield(record.task), 5) if record.task else None
    assert "".join(parts) == record.result["content"]


# --------------------------------------------------------------------------- the command


@contextmanager
def _demo_process(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with _cli_process(tmp_path, [sys.executable, "-m", "streaming_module", "demo", *args]) as p:
        yield p


@contextmanager
def _cli_process(
    tmp_path: Path, command: list[str], pythonpath: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``command`` with output to files, in its own session; yield it and the first line
    it prints; stop it with killpg."""
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    with out.open("wb") as o, err.open("wb") as e:
        process = subprocess.Popen(
            command,
            stdout=o,
            stderr=e,
            start_new_session=True,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = out.read_text()
            if "\n" in text:
                break
            assert process.poll() is None, err.read_text()
            time.sleep(0.05)
        else:
            pytest.fail("the demo printed nothing in 30 s: " + err.read_text())
        yield process, text.splitlines()[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


async def test_python_m_streaming_module_demo_prints_where_it_listens_and_serves(
    tmp_path: Path,
) -> None:
    """SPEC: "`--port 0` binds a free port; the first line printed is `listening on
    http://HOST:PORT` with the real port. `--token-delay-ms 0` streams as fast as it can";
    a WebSocket at `/`; SIGTERM stops it cleanly."""
    with _demo_process(tmp_path, "--port", "0", "--token-delay-ms", "0") as (process, line):
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        assert port != 0
        base = f"http://127.0.0.1:{port}"
        assert (await _http("GET", base + "/health"))[0] == 200
        start = time.monotonic()
        execution_id, frames = await _watch(f"ws://127.0.0.1:{port}", base, words=2000)
        assert time.monotonic() - start < 20  # no 20 ms per token: 2000 tokens would take 40 s
        _, body, _ = await _http("GET", f"{base}/executions/{execution_id}")
        assert body["result"]["content"] == text_of(frames)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(15) == 0
    errors = (tmp_path / "demo.err").read_text()
    assert "Traceback" not in errors, errors


def test_help_reads_well() -> None:
    """SPEC/issue 5: "`--help` that reads well": every option explained, nothing wider than
    a terminal."""
    for args in ([], ["demo"], ["serve"]):
        result = subprocess.run(
            [sys.executable, "-m", "streaming_module", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        too_wide = [line for line in lines if len(line) > 100]
        assert not too_wide, too_wide
        if args == ["demo"]:
            for option in ("--host", "--port", "--token-delay-ms", "--jwt-secret", "--redis-url"):
                assert option in result.stdout


async def test_stopping_the_demo_mid_run_ends_the_run_then_closes_clients_with_1001() -> None:
    """Issue 4/5: "Graceful shutdown: buffered tokens flushed, clients closed with 1001, no task
    left running"; a run cut short by the shutdown ends with a final `status` (`cancelled`),
    which is its last frame."""
    before = set(asyncio.all_tasks())
    server = DemoServer(port=0, token_delay_ms=1)
    await server.start()
    frames: list[dict[str, Any]] = []
    try:
        async with websockets.connect(server.url.replace("http", "ws") + "/ws", proxy=None) as ws:
            await ws.send(
                json.dumps({"type": "subscribe_execution", "payload": {"executionId": "cut"}})
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "subscribed"
            await server.app.start("A long one", execution_id="cut", words=100_000)
            for _ in range(10_000):
                frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                frames.append(frame)
                if frame["type"] == "token":
                    break
            stopping = asyncio.create_task(server.stop())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                for _ in range(100_000):
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
            await asyncio.wait_for(stopping, 15)
    finally:
        await server.stop()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert_contiguous(frames)
    assert frames[-1]["type"] == "status", frames[-3:]
    assert frames[-1]["payload"]["status"] == "cancelled"
    assert server.app.executions["cut"].status == "cancelled"
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
    assert not left, left


USER_APP = """
from aiohttp import web

from streaming_module import StreamingModule


def create():
    container = StreamingModule.for_root(websocket={"enabled": True, "port": 1})
    gateway = container.gateway()  # a user adding routes of their own, as the demo does

    async def hello(request):
        return web.json_response({"hello": "user"})

    gateway.app.router.add_get("/hello", hello)
    return container
"""


async def test_serve_runs_a_users_container_on_the_port_asked_for(tmp_path: Path) -> None:
    """SPEC: "`streaming-module serve --app package.module:factory` serves a user's own container
    the same way" — with `--port 0` honoured even when the factory already built the gateway to
    add its own routes; the first line is `listening on http://HOST:PORT`."""
    (tmp_path / "acc_userapp.py").write_text(USER_APP)
    script = Path(sys.executable).with_name("streaming-module")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "streaming_module"]
    command += ["serve", "--app", "acc_userapp:create", "--port", "0"]
    with _cli_process(tmp_path, command, pythonpath=tmp_path) as (process, line):
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        assert port not in (0, 1), line
        base = f"http://127.0.0.1:{port}"
        assert (await _http("GET", base + "/hello"))[:2] == (200, {"hello": "user"})
        assert (await _http("GET", base + "/health"))[0] == 200
        async with websockets.connect(f"ws://127.0.0.1:{port}/", proxy=None) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "pong"
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(15) == 0
    assert "Traceback" not in (tmp_path / "demo.err").read_text()
