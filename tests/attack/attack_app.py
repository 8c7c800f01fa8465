"""The server every attack test runs in a process of its own, so that its memory, file descriptors
and tasks can be measured from outside: ``streaming-module serve --app attack_app:create``.

It is the demo (its workflow and model, registered on the gateway's runs API) with the options
the test gives as JSON in ``$ATTACK_OPTIONS``, the model paced at ``$ATTACK_TOKEN_DELAY_MS``, and
one route a real deployment would not have: ``POST /_attack/publish`` publishes a run of large
token frames straight to the broker, for the memory tests (see :func:`publish`)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from aiohttp import web

from streaming_module import StreamingModule
from streaming_module.demo.app import DemoApp
from streaming_module.demo.model import DemoChatModel
from streaming_module.demo.workflow import AIContentGenerationWorkflow


def bulk_content(index: int, size: int) -> str:
    """The ``index``-th frame's text of a bulk run (the test computes the same)."""
    return f"{index:08d}".ljust(size, "x")


def create() -> Any:
    options = json.loads(os.environ.get("ATTACK_OPTIONS") or "{}")
    container = StreamingModule.for_root(options)
    model = DemoChatModel(token_delay_ms=float(os.environ.get("ATTACK_TOKEN_DELAY_MS", "2")))
    workflow = AIContentGenerationWorkflow(llm=model, container=container)
    gateway = container.gateway()
    DemoApp(workflow, runs=gateway.runs).install(gateway.app)
    if container.options().gateway.authentication.enabled:
        gateway.enable_token_refresh()

    async def publish(request: web.Request) -> web.Response:
        """``{"executionId", "frames", "size", "window"}``: a started status, ``frames`` token
        frames of ``size`` characters (:func:`bulk_content`), a completed status. Between two
        frames it waits (up to 20 s in all) until some subscriber has acknowledged all but
        ``window`` of them, so that the one client that reads is never outrun while the others
        stall."""
        body = await request.json()
        execution_id, frames, size = body["executionId"], body["frames"], body["size"]
        window = body.get("window", 8)
        broker = container.broker()
        broker.publish(execution_id, "status", {"status": "started"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        for index in range(frames):
            frame = broker.publish(
                execution_id, "token", {"content": bulk_content(index, size), "nodeId": "bulk"}
            )
            while loop.time() < deadline:
                acked = max(
                    (c["acks"].get(execution_id, 0) for c in gateway.get_connections()),
                    default=0,
                )
                if acked >= frame.sequence - window:
                    break
                await asyncio.sleep(0.001)
        broker.publish(execution_id, "status", {"status": "completed"})
        broker.end_execution(execution_id)
        return web.json_response({"published": frames + 2, "timedOut": loop.time() >= deadline})

    gateway.app.router.add_post("/_attack/publish", publish)
    return container
