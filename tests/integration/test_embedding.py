"""docs/embedding.md's recipes, run as written: the runs API in a user's own aiohttp app and in a
FastAPI app, each serving a workflow of the user's own (start, read, watch, resume, cancel)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from interop_support import SseParser, read_sse, text_of_frames

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def recipe(name: str, tmp_path: Path) -> ModuleType:
    """The python block after ``<!-- recipe: name -->`` in the doc, imported as a module."""
    text = DOC.read_text()
    match = re.search(rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"no recipe {name!r} in {DOC}"
    path = tmp_path / f"recipe_{name}.py"
    path.write_text(match.group(1))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(path.stem, None)
        raise
    return module


async def test_the_aiohttp_recipe_serves_the_users_workflow(tmp_path: Path) -> None:
    module = recipe("aiohttp", tmp_path)
    async with TestClient(TestServer(module.create_app())) as client:
        response = await client.post("/executions", json={"prompt": "Summarise the tides"})
        assert response.status == 202
        execution_id = (await response.json())["executionId"]
        events = await client.get(f"/executions/{execution_id}/events")
        got, _ = await read_sse(events)  # type: ignore[arg-type]
        frames = [e.json() for e in got]
        assert frames[-1]["payload"]["status"] == "completed"
        body = await (await client.get(f"/executions/{execution_id}")).json()
        assert body["status"] == "completed"
        assert body["result"]["summary"] == text_of_frames(frames)
        assert len(body["result"]["summary"].split()) == 30
        # Resume after the third frame: exactly the rest.
        again = await client.get(
            f"/executions/{execution_id}/events", headers={"Last-Event-ID": "3"}
        )
        rest, _ = await read_sse(again)  # type: ignore[arg-type]
        assert [e.json() for e in rest] == frames[3:]
        missing = await client.get("/executions/nope")
        assert missing.status == 404 and set(await missing.json()) == {"code", "message"}
    sys.modules.pop("recipe_aiohttp", None)


def test_the_fastapi_recipe_serves_the_users_workflow(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the FastAPI recipe needs the dev extra's fastapi")
    from fastapi.testclient import TestClient as AsgiClient

    module = recipe("fastapi", tmp_path)
    try:
        with AsgiClient(module.app) as client:
            response = client.post("/executions", json={"prompt": "Summarise the rivers"})
            assert response.status_code == 202
            execution_id = response.json()["executionId"]
            frames = sse_frames(client, f"/executions/{execution_id}/events")
            assert frames[-1]["payload"]["status"] == "completed"
            body = client.get(f"/executions/{execution_id}").json()
            assert body["status"] == "completed"
            assert body["result"]["summary"] == text_of_frames(frames)
            rest = sse_frames(client, f"/executions/{execution_id}/events", {"Last-Event-ID": "2"})
            assert rest == frames[2:]
            done = client.get(
                f"/executions/{execution_id}/events",
                headers={"Last-Event-ID": str(frames[-1]["sequence"])},
            )
            assert done.status_code == 204
            bad = client.get(f"/executions/{execution_id}/events", headers={"Last-Event-ID": "x"})
            assert bad.status_code == 400 and bad.json()["code"] == "invalid_resume_point"
            assert client.get("/executions/nope").json()["code"] == "not_found"
            again = client.post(f"/executions/{execution_id}/cancel")
            assert again.status_code == 409 and again.json()["code"] == "not_running"
    finally:
        sys.modules.pop("recipe_fastapi", None)


def sse_frames(client: Any, url: str, headers: dict[str, str] | None = None) -> list[Any]:
    parser = SseParser()
    events = []
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for text in response.iter_text():
            events.extend(parser.feed(text))
    return [e.json() for e in events if e.data]
