"""`python -m streaming_module demo` end to end: a real process, a real socket, a third-party
WebSocket client (the `websockets` package) and plain HTTP.

The server's output goes to a file (an unread pipe would block it after 64 KiB of logs); it runs
in its own session and is stopped with killpg, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"

START_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0
MAX_FRAMES = 20_000


@dataclass
class DemoProcess:
    process: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


@contextmanager
def demo_process(tmp_path: Path, *extra: str) -> Iterator[DemoProcess]:
    """Start the demo on a free port and read the port back from the first line it prints."""
    with server_process(
        tmp_path, "demo", "--port", "0", "--token-delay-ms", "0", *extra
    ) as process:
        yield process


@contextmanager
def server_process(
    tmp_path: Path, *args: str, pythonpath: Path | None = None
) -> Iterator[DemoProcess]:
    """Run `python -m streaming_module ARGS`, output to files, in its own session; yield once
    it has printed `listening on URL`; stop it with killpg."""
    name = f"server-{uuid.uuid4().hex[:6]}"
    stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "streaming_module", *args],
            stdout=out,
            stderr=err,
            start_new_session=True,
            env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        first_line = ""
        while time.monotonic() < deadline:
            text = stdout.read_text(errors="replace")
            if "\n" in text:
                first_line = text.splitlines()[0]
                break
            if process.poll() is not None:
                pytest.fail(f"the demo exited with {process.returncode}:\n{stderr.read_text()}")
            time.sleep(0.05)
        else:
            pytest.fail(f"the demo did not start in {START_TIMEOUT} s:\n{stderr.read_text()}")
        assert first_line.startswith("listening on http://127.0.0.1:"), first_line
        url = first_line.removeprefix("listening on ").strip()
        assert not url.endswith(":0"), first_line
        yield DemoProcess(process, url, stdout, stderr)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def http(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def get_page(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def issue_token(secret: str) -> str:
    """A JWT from the CLI's own `token` command."""
    return subprocess.run(
        [sys.executable, "-m", "streaming_module", "token", "--jwt-secret", secret],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


async def http_async(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(http, method, url, body, token)


async def watch_run(
    demo: DemoProcess, prompt: str, *, words: int = 300, token: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Subscribe first, then POST /executions, then collect frames until the final status."""
    execution_id = f"e2e-{uuid.uuid4().hex[:12]}"
    url = demo.ws_url + (f"?token={token}" if token else "")
    frames: list[dict[str, Any]] = []
    async with websockets.connect(url, open_timeout=10, max_size=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "subscribe_execution",
                    "payload": {
                        "executionId": execution_id,
                        "events": ["token", "event", "progress", "status"],
                    },
                }
            )
        )
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "subscribed", reply
        status, body = await http_async(
            "POST",
            demo.url + "/executions",
            {"prompt": prompt, "executionId": execution_id, "words": words},
            token,
        )
        assert (status, body) == (202, {"executionId": execution_id})
        deadline = time.monotonic() + RUN_TIMEOUT
        for _ in range(MAX_FRAMES):
            left = deadline - time.monotonic()
            assert left > 0, f"no final status in {RUN_TIMEOUT} s; got {len(frames)} frames"
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
            frames.append(frame)
            if frame["type"] == "status" and frame["payload"]["status"] in (
                "completed",
                "failed",
                "cancelled",
            ):
                break
        else:
            pytest.fail(f"more than {MAX_FRAMES} frames without a final status")
    return execution_id, frames


async def final_state(demo: DemoProcess, execution_id: str, token: str | None = None) -> Any:
    """GET /executions/{id} until it reports completed (the run has just ended)."""
    for _ in range(100):
        status, body = await http_async("GET", f"{demo.url}/executions/{execution_id}", token=token)
        assert status == 200, body
        assert body["executionId"] == execution_id
        if body["status"] == "completed":
            return body["result"]
        await asyncio.sleep(0.05)
    pytest.fail(f"execution {execution_id} never reported completed: {body}")


def check_frames(frames: list[dict[str, Any]], execution_id: str) -> str:
    sequences = [f["sequence"] for f in frames]
    assert sequences == list(range(sequences[0], sequences[0] + len(frames))), sequences
    assert all(f["executionId"] == execution_id for f in frames)
    statuses = [f["payload"]["status"] for f in frames if f["type"] == "status"]
    assert statuses[0] == "started" and statuses[-1] == "completed", statuses
    assert frames[-1]["type"] == "status" and statuses.count("completed") == 1
    kinds = {f["type"] for f in frames}
    assert {"token", "progress", "event", "status"} <= kinds, kinds
    return "".join(f["payload"]["content"] for f in frames if f["type"] == "token")


async def test_a_run_streams_end_to_end_and_the_tokens_are_the_result(tmp_path: Path) -> None:
    with demo_process(tmp_path) as demo:
        status, health = await http_async("GET", demo.url + "/health")
        assert status == 200 and isinstance(health, dict)

        execution_id, frames = await watch_run(demo, "Write about lighthouses and the sea")
        text = check_frames(frames, execution_id)
        result = await final_state(demo, execution_id)
        assert result["content"] == text
        assert len(text.split()) == 300
        assert result["prompt"] == "Write about lighthouses and the sea"
        assert frames[0]["sequence"] == 1  # subscribed before the run: nothing missed

        # Another prompt streams another text; the first run is still readable.
        other_id, other_frames = await watch_run(demo, "Write about volcanoes", words=40)
        other = check_frames(other_frames, other_id)
        assert other != text and len(other.split()) == 40
        assert (await final_state(demo, execution_id))["content"] == text

        # The page is served to browsers at / and /demo.
        for path in ("/", "/demo"):
            status, page = await asyncio.to_thread(get_page, demo.url + path)
            assert status == 200
            assert 'data-testid="output"' in page and 'data-testid="progress"' in page

    assert "Traceback" not in demo.output(), demo.output()


async def test_http_errors_are_clear(tmp_path: Path) -> None:
    with demo_process(tmp_path) as demo:
        url = demo.url + "/executions"
        status, body = await http_async("POST", url, {"words": 10})
        assert status == 400 and body["code"] == "invalid_prompt"
        status, body = await http_async("POST", url, {"prompt": "x", "words": 0})
        assert status == 400 and "words" in body["message"]
        status, body = await http_async("POST", url, {"prompt": "x", "words": 1_000_001})
        assert status == 400
        status, body = await http_async("POST", url, {"prompt": "x", "executionId": "a b"})
        assert status == 400 and body["code"] == "invalid_execution_id"
        status, body = await http_async("POST", url, {"prompt": "x", "executionId": "dup-1"})
        assert status == 202
        status, body = await http_async("POST", url, {"prompt": "y", "executionId": "dup-1"})
        assert status == 409 and "dup-1" in body["message"]
        status, body = await http_async("GET", demo.url + "/executions/nope")
        assert status == 404


async def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    with demo_process(tmp_path) as demo:
        await http_async("POST", demo.url + "/executions", {"prompt": "long", "words": 100_000})
        os.killpg(demo.process.pid, signal.SIGTERM)
        assert demo.process.wait(15) == 0
    assert demo.stdout.read_text().splitlines() == [f"listening on {demo.url}"]
    output = demo.output()
    assert "cancelled" in output  # the long run was cancelled, not abandoned
    assert "Traceback" not in output and "Task was destroyed" not in output, output


async def test_with_a_jwt_secret_clients_need_the_token(tmp_path: Path) -> None:
    secret = "e2e-secret-" + "x" * 40
    token = await asyncio.to_thread(issue_token, secret)
    assert token.count(".") == 2
    with demo_process(tmp_path, "--jwt-secret", secret) as demo:
        # Without a token: the WebSocket upgrade and the API are refused...
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(demo.ws_url, open_timeout=10):
                pass
        assert refused.value.response.status_code == 401
        status, body = await http_async("POST", demo.url + "/executions", {"prompt": "x"})
        assert status == 401 and body["code"] == "unauthorized"
        status, _ = await http_async("GET", demo.url + "/executions/whatever")
        assert status == 401
        # ... a forged one too ...
        status, _ = await http_async("POST", demo.url + "/executions", {"prompt": "x"}, "a.b.c")
        assert status == 401
        # ... while the page and /health stay open.
        assert (await http_async("GET", demo.url + "/health"))[0] == 200
        assert (await asyncio.to_thread(get_page, demo.url + "/demo"))[0] == 200

        # With the token, a run streams as usual.
        execution_id, frames = await watch_run(demo, "Write about owls", words=50, token=token)
        text = check_frames(frames, execution_id)
        assert (await final_state(demo, execution_id, token))["content"] == text
    assert token not in demo.output()


FACTORIES = """
from streaming_module.module import StreamingModule


def container():
    return StreamingModule.for_root(websocket={"enabled": True, "port": 1})


def options():
    return {"websocket": {"port": 1}, "defaultBufferSize": 10}


async def async_container():
    return container()


def nothing():
    return 42
"""


@pytest.mark.parametrize("factory", ["container", "options", "async_container"])
async def test_serve_runs_a_users_factory(tmp_path: Path, factory: str) -> None:
    (tmp_path / "userapp.py").write_text(FACTORIES)
    with server_process(
        tmp_path, "serve", "--app", f"userapp:{factory}", "--port", "0", pythonpath=tmp_path
    ) as server:
        status, health = await http_async("GET", server.url + "/health")
        assert status == 200 and health["status"] == "ok"
        # The gateway answers the protocol: a run published by the user's code would stream.
        async with websockets.connect(server.ws_url, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(15) == 0
    assert "Traceback" not in server.output()


def test_serve_explains_a_bad_factory(tmp_path: Path) -> None:
    (tmp_path / "userapp.py").write_text(FACTORIES)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for reference, message in [
        ("userapp:nothing", "returned int"),
        ("userapp:missing", "no attribute"),
        ("no_such_userapp:create", "cannot import"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "streaming_module", "serve", "--app", reference],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
