"""Helpers for the acceptance tests: a server built the way a user builds one
(``StreamingModule.for_root(websocket={'enabled': True, 'port': 0}, ...)`` + ``async with
container:``), runs published through the services, and bounded receive loops for real clients."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from streaming_module import StreamingModule
from streaming_module.gateway.gateway import StreamingWebSocketGateway

# Re-exported for the tests of this folder.
from ws_support import FINAL as FINAL
from ws_support import TIMEOUT as TIMEOUT
from ws_support import is_final as is_final
from ws_support import no_message as no_message
from ws_support import recv as recv
from ws_support import recv_until as _recv_until
from ws_support import subscribe as subscribe
from ws_support import wait_for as wait_for

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@dataclass
class Server:
    container: Any
    gateway: StreamingWebSocketGateway

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}/ws"

    @property
    def root_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}"


@contextlib.asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[Server]:
    """``for_root(websocket={'enabled': True, 'port': 0, ...}, **options)``, started with
    ``async with container``."""
    websocket = {"enabled": True, "port": 0, "host": "127.0.0.1", **options.pop("websocket", {})}
    container = StreamingModule.for_root(websocket=websocket, **options)
    async with container:
        gateway = container.gateway()
        assert gateway.port, "the server did not start"
        yield Server(container, gateway)


async def app_run(
    container: Any,
    execution_id: str,
    words: Sequence[str],
    *,
    node: str = "writer",
    fail: bool = False,
) -> str:
    """A run as application code publishes it through the container's services: status
    started, tokens (buffered), progress per token, a node event, then the final status.
    Returns the text the tokens carry."""
    events = container.event_processor()
    tokens = container.token_streaming()
    progress = container.progress_tracking()
    events.emit_status(execution_id, "started")
    await tokens.initialize_token_stream(
        execution_id=execution_id, node_id=node, config={"buffer_size": 3, "flush_interval": 50}
    )
    tracker = progress.create_tracker(execution_id, node, {"interval": 0})
    events.emit_event(execution_id, "node_start", {"node": node}, node_id=node)
    for i, word in enumerate(words):
        tokens.stream_token(execution_id, node, word)
        await tracker.update(i + 1, len(words))
    await tokens.flush_tokens(execution_id, node)
    tokens.close_token_stream(execution_id, node)
    events.emit_event(execution_id, "node_complete", {"node": node}, node_id=node)
    if fail:
        events.emit_status(execution_id, "failed", error="boom: the model went away")
    else:
        events.emit_status(execution_id, "completed")
    return "".join(words)


recv_until = functools.partial(_recv_until, limit=20_000, within=15.0)
"""Messages up to and including the first ``stop`` (default: the final status) accepts (at most
20,000, 15 s)."""


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m["payload"]["content"] for m in messages if m["type"] == "token")


def assert_contiguous(messages: list[dict[str, Any]], first: int = 1) -> None:
    sequences = [m["sequence"] for m in messages if "sequence" in m]
    assert sequences == list(range(first, first + len(sequences))), sequences
