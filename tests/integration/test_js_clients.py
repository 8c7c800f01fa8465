"""The real front-end clients against the demo: `@ag-ui/client`'s HttpAgent on /agui and `ai`'s
DefaultChatTransport + readUIMessageStream (+ reconnectToStream) on /api/chat, run by Node from
tests/js (installed with `npm ci`, as `make test` does). Each: the text equals the run's final
result exactly, a connection cut mid-run resumes with nothing lost or repeated, a bad JWT is
refused before any event."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from streaming_module.demo.app import DemoServer

JS = Path(__file__).resolve().parents[1] / "js"
SECRET = "js-clients-test-secret-" + "s" * 40
NODE_TIMEOUT = 90


@pytest.fixture(scope="module")
def node_clients() -> Path:
    """tests/js with its packages installed (`npm ci` when `make test` has not run it)."""
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the front-end client tests (node 20+)"
    if not (JS / "node_modules" / "@ag-ui" / "client").exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install tests/js (npm ci)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=600)
    return JS


async def run_client(scenario: str, **options: Any) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(JS / "clients.mjs"),
        scenario,
        json.dumps(options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=JS,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
async def demo(node_clients: Path) -> AsyncIterator[DemoServer]:
    async with DemoServer(port=0, token_delay_ms=2) as server:
        yield server


@pytest.fixture
async def secured(node_clients: Path) -> AsyncIterator[DemoServer]:
    async with DemoServer(port=0, token_delay_ms=1, jwt_secret=SECRET) as server:
        yield server


async def final_content(demo: DemoServer, execution_id: str) -> str:
    run = demo.app.executions[execution_id]
    assert run.task is not None
    await asyncio.wait_for(asyncio.shield(run.task), 30)
    assert run.status == "completed"
    return str(run.result["content"])


def event_key(event_id: str) -> tuple[int, int]:
    head, _, tail = event_id.partition(".")
    return int(head), int(tail or 0)


# --------------------------------------------------------------------------- AG-UI


async def test_agui_http_agent_gets_the_exact_text_and_every_event_validates(
    demo: DemoServer,
) -> None:
    result = await run_client(
        "agui", base=demo.url, prompt="Write about lighthouses", words=150, runId="agui-1"
    )
    assert result["error"] is None and result["warnings"] == []
    assert result["text"] == await final_content(demo, "agui-1")
    types = result["types"]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert types[-2] == "STATE_SNAPSHOT"
    assert result["state"]["content"] == result["text"]
    for kind in ("STEP_STARTED", "TEXT_MESSAGE_START", "TOOL_CALL_START", "TOOL_CALL_RESULT"):
        assert kind in types, kind
    assert {"progress", "event"} <= set(result["customNames"])
    ids = [event_key(i) for i in result["ids"]]
    assert ids == sorted(set(ids))  # unique and ordered


async def test_agui_resumes_after_a_cut_with_last_event_id_without_reopening_the_message(
    demo: DemoServer,
) -> None:
    result = await run_client(
        "agui",
        base=demo.url,
        prompt="Write about harbours",
        words=400,
        runId="agui-cut",
        cutAfter=12,
    )
    assert result["error"] is None and result["warnings"] == []
    assert len(result["resumes"]) == 1 and result["resumeStatus"] == [200]
    # The cut fell inside the streamed message: the resumed part continues it (HttpAgent's
    # verifier rejects a second TEXT_MESSAGE_START for an open message).
    assert result["types"].count("TEXT_MESSAGE_START") == 1
    assert result["text"] == await final_content(demo, "agui-cut")
    ids = [event_key(i) for i in result["ids"]]
    assert ids == sorted(set(ids))


async def test_agui_refuses_a_bad_jwt_before_any_event(secured: DemoServer) -> None:
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "y" * 40, "HS256")
    result = await run_client("agui", base=secured.url, prompt="x", words=5, token=forged)
    assert result["types"] == [] and "401" in result["error"]
    good = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, SECRET, "HS256")
    result = await run_client(
        "agui", base=secured.url, prompt="x", words=5, token=good, runId="agui-ok"
    )
    assert result["error"] is None and result["text"] == await final_content(secured, "agui-ok")


# --------------------------------------------------------------------------- AI SDK


async def test_ai_sdk_transport_streams_the_exact_text_and_answers_204_once_done(
    demo: DemoServer,
) -> None:
    result = await run_client("aisdk", base=demo.url, prompt="Write about kites", words=120)
    assert result["error"] is None and result["warnings"] == []
    assert result["firstTypes"][:2] == ["start", "start-step"]
    assert result["firstTypes"][-2:] == ["finish-step", "finish"]
    assert result["text"] == await final_content(demo, result["messageId"])
    assert "data-progress" in result["dataParts"] and "data-event" in result["dataParts"]
    assert result["afterEnd"] == 204


async def test_ai_sdk_reconnect_to_stream_resumes_a_cut_run_from_its_start(
    demo: DemoServer,
) -> None:
    result = await run_client(
        "aisdk", base=demo.url, prompt="Write about bridges", words=500, cutAfter=8
    )
    assert result["error"] is None and result["resumed"] is True
    assert result["resumeTypes"][0] == "start"  # replayed from its start, as useChat expects
    assert result["resumeTypes"].count("text-start") == 1
    assert result["text"] == await final_content(demo, result["messageId"])
    assert result["afterEnd"] == 204


async def test_ai_sdk_refuses_a_bad_jwt_before_any_part_or_204(secured: DemoServer) -> None:
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "y" * 40, "HS256")
    sent = await run_client("aisdk", base=secured.url, prompt="x", words=5, token=forged)
    assert sent["error"] is not None and "unauthorized" in sent["error"]
    resumed = await run_client("aisdk-resume", base=secured.url, chatId="none", token=forged)
    assert resumed["error"] is not None and "unauthorized" in resumed["error"]
    good = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, SECRET, "HS256")
    resumed = await run_client("aisdk-resume", base=secured.url, chatId="none", token=good)
    assert resumed == {"error": None, "status": 204, "warnings": []}


async def test_ai_sdk_client_resumes_a_run_started_through_agui(demo: DemoServer) -> None:
    """Cross-protocol with the real client: an AG-UI run (thread = chat) watched by useChat's
    reconnectToStream."""
    import aiohttp

    body = {
        "threadId": "thread-js",
        "runId": "agui-js",
        "state": {},
        "tools": [],
        "context": [],
        "forwardedProps": {"words": 600},
        "messages": [{"id": "u", "role": "user", "content": "Write about canals"}],
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(demo.url + "/agui", json=body) as response:
            await response.content.readuntil(b"\n\n")  # RUN_STARTED, then the client leaves
    result = await run_client("aisdk-resume", base=demo.url, chatId="thread-js")
    assert result["error"] is None and result["status"] == 200
    assert result["types"][0] == "start" and result["messageId"] == "agui-js"
    assert result["text"] == await final_content(demo, "agui-js")
