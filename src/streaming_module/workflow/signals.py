"""What a running node tells its run: small frozen dataclasses, one per kind of news.

A node function (see :mod:`streaming_module.workflow.compile`) sends :data:`Signal` objects with
LangGraph's stream writer: the node started, ended or failed, pushed a token itself, reported
progress, or ran a LangChain tool. They travel in the same queue as the chat model's ``messages``
chunks, so the run (:mod:`streaming_module.workflow.runtime`) sees a node's start, its tokens and
its end in the order they happened, even for parallel branches and subgraphs. The run dispatches
them with ``match``.

:data:`current_scope` is the running node, context-local (each LangGraph task runs in its own copy
of the context), which is what makes ``self.progress`` and ``self.stream_token`` work per branch.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langgraph.types import StreamWriter


@dataclass(frozen=True, slots=True)
class NodeStarted:
    """The node's function was entered."""

    node_id: str


@dataclass(frozen=True, slots=True)
class NodeEnded:
    """The node returned, after ``duration_ms``."""

    node_id: str
    duration_ms: float


@dataclass(frozen=True, slots=True)
class NodeFailed:
    """The node raised ``error`` (LangGraph's control-flow exceptions are not failures)."""

    node_id: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class TokenPushed:
    """``self.stream_token(text, metadata)`` inside the node."""

    node_id: str
    text: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProgressReported:
    """``self.progress.update(current, total, metadata)`` inside the node."""

    node_id: str
    current: float
    total: float
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToolStarted:
    """A LangChain tool run started inside the node (``run_id`` pairs it with its end)."""

    node_id: str
    tool: str
    input: str
    run_id: str


@dataclass(frozen=True, slots=True)
class ToolEnded:
    """A LangChain tool run ended inside the node with ``output``."""

    node_id: str
    output: Any
    run_id: str


Signal = (
    NodeStarted | NodeEnded | NodeFailed | TokenPushed | ProgressReported | ToolStarted | ToolEnded
)
"""Any one of the node signals."""

LIFECYCLE = (NodeStarted, NodeEnded, NodeFailed)
"""The signals that tell a node's own lifecycle (a subgraph's inner nodes' are not the run's)."""


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
    "LIFECYCLE",
    "NodeEnded",
    "NodeFailed",
    "NodeScope",
    "NodeStarted",
    "ProgressReported",
    "Signal",
    "TokenPushed",
    "ToolEnded",
    "ToolStarted",
    "current_scope",
]
