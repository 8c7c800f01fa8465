"""Helpers for the gateway's integration tests: a real server on 127.0.0.1 (random port) and
bounded-time receive helpers for real clients."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import StreamingModuleOptions
from streaming_module.core.clock import Clock
from streaming_module.gateway.gateway import StreamingWebSocketGateway

# Re-exported for the tests of this folder.
from ws_support import TIMEOUT as TIMEOUT
from ws_support import recv as recv
from ws_support import recv_until as _recv_until
from ws_support import subscribe as subscribe
from ws_support import wait_for as wait_for

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@dataclass
class Running:
    gateway: StreamingWebSocketGateway
    broker: InMemoryBroker
    options: StreamingModuleOptions

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


def make_options(**sections: Any) -> StreamingModuleOptions:
    websocket = {"enabled": True, "port": 0, "host": "127.0.0.1", **sections.pop("websocket", {})}
    gateway = {"heartbeat": {"enabled": False}, **sections.pop("gateway", {})}
    return StreamingModuleOptions.model_validate(
        {"websocket": websocket, "gateway": gateway, **sections}
    )


@contextlib.asynccontextmanager
async def running_gateway(
    clock: Clock | None = None, broker_clock: Clock | None = None, **sections: Any
) -> AsyncIterator[Running]:
    options = make_options(**sections)
    broker = InMemoryBroker(options.broker, broker_clock)
    gateway = StreamingWebSocketGateway(options, broker, clock)
    await gateway.start(port=0)
    try:
        yield Running(gateway, broker, options)
    finally:
        await gateway.stop()
        await broker.aclose()


recv_until = functools.partial(_recv_until, limit=100_000, within=10.0)
"""Messages up to and including the first one ``stop`` accepts (at most 100,000, 10 s)."""


def publish_run(broker: InMemoryBroker, execution_id: str, words: list[str]) -> None:
    """A run as the bridge would publish it: started, tokens, progress, completed."""
    broker.publish(execution_id, "status", {"status": "started"})
    for i, word in enumerate(words):
        broker.publish(execution_id, "token", {"content": word, "nodeId": "llm", "index": i})
        if i % 10 == 9:
            broker.publish(
                execution_id, "progress", {"progress": 100 * (i + 1) / len(words), "nodeId": "llm"}
            )
    broker.publish(execution_id, "status", {"status": "completed"})
    broker.end_execution(execution_id)
