"""What a running node tells the run, through LangGraph's own ``custom`` stream.

A node function (see :mod:`streaming_module.workflow.graph`) writes :class:`Signal` objects with
LangGraph's stream writer: node start and end, errors, tokens it pushes itself, progress it reports
and LangChain tool calls. They travel in the same queue as the chat model's ``messages`` chunks, so
the run (:mod:`streaming_module.workflow.runtime`) sees a node's start, its tokens and its end in
the order they happened, even for parallel branches and subgraphs.

:data:`current_scope` is the running node, context-local (each LangGraph task runs in its own copy
of the context), which is what makes ``self.progress`` and ``self.stream_token`` work per branch.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from langgraph.types import StreamWriter

NODE_START = 1
NODE_END = 2
ERROR = 3
TOKEN = 4
PROGRESS = 5
TOOL_START = 6
TOOL_END = 7


class Signal:
    """One message from a running node to its run. ``payload`` depends on ``kind``."""

    __slots__ = ("kind", "node_id", "payload")

    def __init__(self, kind: int, node_id: str, payload: Any) -> None:
        self.kind = kind
        self.node_id = node_id
        self.payload = payload

    def __repr__(self) -> str:
        return f"Signal({self.kind}, {self.node_id!r}, {self.payload!r})"


class NodeScope:
    """The node running in this context: its id, LangGraph's stream writer and the run."""

    __slots__ = ("node_id", "run", "writer")

    def __init__(self, node_id: str, writer: StreamWriter, run: Any) -> None:
        self.node_id = node_id
        self.writer = writer
        self.run = run


current_scope: ContextVar[NodeScope | None] = ContextVar(
    "streaming_module_current_node", default=None
)

__all__ = [
    "ERROR",
    "NODE_END",
    "NODE_START",
    "PROGRESS",
    "TOKEN",
    "TOOL_END",
    "TOOL_START",
    "NodeScope",
    "Signal",
    "current_scope",
]
