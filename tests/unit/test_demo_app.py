"""The demo's HTTP side with a stand-in workflow: the runs API it uses, its `words` option, its
page. (The runs API itself: tests/integration/test_runs_api.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streaming_module.demo.app import DemoApp


class GatedWorkflow:
    """Finishes a run only when the test opens its gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.inputs: dict[str, Any] = {}

    async def run(self, state: dict[str, Any], execution_id: str) -> dict[str, Any]:
        self.inputs[execution_id] = state
        await self.gate.wait()
        return {**state, "content": f"text for {state['prompt']}"}


@pytest.fixture
async def client_and_app() -> Any:
    workflow = GatedWorkflow()
    demo = DemoApp(workflow, max_executions=3, max_running=2, default_words=42)
    app = web.Application()
    demo.install(app)
    async with TestClient(TestServer(app)) as client:
        yield client, demo, workflow
    await demo.aclose()


async def test_start_then_read_a_run(client_and_app: Any) -> None:
    client, demo, workflow = client_and_app
    response = await client.post("/executions", json={"prompt": "tides", "executionId": "r1"})
    assert response.status == 202 and await response.json() == {"executionId": "r1"}
    await asyncio.sleep(0)
    body = await (await client.get("/executions/r1")).json()
    assert body == {
        "executionId": "r1",
        "workflow": "ai-content-generation",
        "status": "started",
        "result": None,
    }
    workflow.gate.set()
    await demo.executions["r1"].task
    body = await (await client.get("/executions/r1")).json()
    assert body["status"] == "completed" and body["result"]["content"] == "text for tides"


async def test_words_reach_the_workflow_with_the_default_when_omitted(client_and_app: Any) -> None:
    client, _, workflow = client_and_app
    body = await (await client.post("/executions", json={"prompt": "x"})).json()
    await asyncio.sleep(0)
    assert body["executionId"].startswith("exec-")
    assert workflow.inputs[body["executionId"]] == {"prompt": "x", "words": 42}
    await client.post("/executions", json={"prompt": "y", "words": 7, "executionId": "w"})
    await asyncio.sleep(0)
    assert workflow.inputs["w"] == {"prompt": "y", "words": 7}


@pytest.mark.parametrize(
    "payload, code",
    [
        ("not json", "invalid_json"),
        ([], "invalid_body"),
        ({"prompt": "x", "colour": "red"}, "invalid_body"),
        ({"prompt": "   "}, "invalid_prompt"),
        ({"prompt": "x" * 10_001}, "invalid_prompt"),
        ({"prompt": "x", "words": "ten"}, "invalid_words"),
        ({"prompt": "x", "words": True}, "invalid_words"),
        ({"prompt": "x", "words": 1_000_001}, "invalid_words"),
        ({"prompt": "x", "executionId": "../etc"}, "invalid_execution_id"),
        ({"prompt": "x", "executionId": 7}, "invalid_execution_id"),
    ],
)
async def test_bad_requests_get_a_clear_400(client_and_app: Any, payload: Any, code: str) -> None:
    client, demo, _ = client_and_app
    if isinstance(payload, str):
        response = await client.post("/executions", data=payload)
    else:
        response = await client.post("/executions", json=payload)
    assert response.status == 400
    body = await response.json()
    assert body["code"] == code and body["message"] and set(body) == {"code", "message"}
    assert not demo.executions


async def test_a_taken_id_is_a_conflict_and_bounds_answer_503(client_and_app: Any) -> None:
    client, demo, workflow = client_and_app
    assert (
        await client.post("/executions", json={"prompt": "a", "executionId": "a"})
    ).status == 202
    response = await client.post("/executions", json={"prompt": "b", "executionId": "a"})
    assert response.status == 409 and (await response.json())["code"] == "execution_exists"
    assert (await client.post("/executions", json={"prompt": "b"})).status == 202
    busy = await client.post("/executions", json={"prompt": "c"})
    assert busy.status == 503 and (await busy.json())["code"] == "busy"
    workflow.gate.set()
    await asyncio.gather(*(r.task for r in demo.executions.values()))
    # Finished runs make room; the oldest is forgotten past max_executions.
    for prompt in ("c", "d"):
        assert (await client.post("/executions", json={"prompt": prompt})).status == 202
    assert "a" not in demo.executions and len(demo.executions) == 3


async def test_shutdown_cancels_running_runs(client_and_app: Any) -> None:
    client, demo, _ = client_and_app
    await client.post("/executions", json={"prompt": "a", "executionId": "long"})
    await asyncio.sleep(0)
    await demo.aclose()
    assert demo.executions["long"].status == "cancelled"
    refused = await client.post("/executions", json={"prompt": "b"})
    assert refused.status == 503 and (await refused.json())["code"] == "shutting_down"


async def test_the_page_and_its_assets_are_served(client_and_app: Any) -> None:
    client, _, _ = client_and_app
    page = await client.get("/demo")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    for part in ("prompt", "start", "output", "progress", "eta", "status", "event-log"):
        assert f'data-testid="{part}"' in html
    for asset in ("/static/demo.js", "/static/demo.css"):
        assert (await client.get(asset)).status == 200
    assert (await client.get("/static/secret.py")).status == 404


async def test_every_http_error_body_is_code_and_message() -> None:
    # The gateway's application with the demo's routes, as `streaming-module demo` serves it.
    from streaming_module.config import StreamingModuleOptions
    from streaming_module.gateway.gateway import StreamingWebSocketGateway

    gateway = StreamingWebSocketGateway(
        StreamingModuleOptions(gateway={"cors": {"origin": ["http://app.example"]}})
    )
    demo = DemoApp(GatedWorkflow())
    demo.install(gateway.app)
    async with TestClient(TestServer(gateway.app)) as client:
        answers = {
            "no such route": await client.get("/no/such/page"),
            "wrong method": await client.delete("/executions"),
            "unknown asset": await client.get("/static/nope.js"),
            "bad body": await client.post("/executions", json={"prompt": ""}),
            "unknown run": await client.get("/executions/nope"),
            "plain GET of /ws": await client.get("/ws"),
            "foreign origin": await client.get(
                "/health", headers={"Origin": "https://evil.example"}
            ),
        }
        statuses = {name: response.status for name, response in answers.items()}
        assert statuses == {
            "no such route": 404,
            "wrong method": 405,
            "unknown asset": 404,
            "bad body": 400,
            "unknown run": 404,
            "plain GET of /ws": 426,
            "foreign origin": 403,
        }
        for name, response in answers.items():
            assert response.content_type == "application/json", name
            body = await response.json()
            assert set(body) == {"code", "message"} and body["code"] and body["message"], name
        assert (await answers["no such route"].json())["code"] == "not_found"
        wrong_method = answers["wrong method"]
        assert (await wrong_method.json())["code"] == "method_not_allowed"
        assert "POST" in wrong_method.headers["Allow"]
        # The CORS middleware still adds its headers to these answers.
        missing = await client.get("/no/such/page", headers={"Origin": "http://app.example"})
        assert missing.status == 404 and (await missing.json())["code"] == "not_found"
        assert missing.headers["Access-Control-Allow-Origin"] == "http://app.example"
    await demo.aclose()


async def test_the_demo_has_rate_limits_on_unless_lifted() -> None:
    from streaming_module.cli import build_parser
    from streaming_module.demo.app import DEMO_RATE_LIMIT, DemoServer

    limited = DemoServer(port=0).container.options().gateway.rate_limit
    assert limited is not None
    assert limited.max_connections == DEMO_RATE_LIMIT["max_connections"] == 600
    assert limited.max_requests_per_connection == 6_000
    assert limited.max_open_connections_per_address == 64
    assert DemoServer(port=0, rate_limit=None).container.options().gateway.rate_limit is None
    assert not build_parser().parse_args(["demo"]).no_rate_limit
    assert build_parser().parse_args(["demo", "--no-rate-limit"]).no_rate_limit


async def test_a_flood_of_upgrades_from_one_address_is_refused_by_the_demo() -> None:
    import aiohttp

    from streaming_module.demo.app import DemoServer

    async with (
        DemoServer(port=0, rate_limit={"window_ms": 60_000, "max_connections": 5}) as server,
        aiohttp.ClientSession() as session,
    ):
        statuses = []
        for _ in range(8):
            try:
                ws = await session.ws_connect(server.url + "/ws")
            except aiohttp.WSServerHandshakeError as exc:
                statuses.append(exc.status)
            else:
                statuses.append(101)
                await ws.close()
        assert statuses[:5] == [101] * 5 and set(statuses[5:]) == {429}
