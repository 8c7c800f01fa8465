"""What a running node tells its run: small frozen dataclasses, one per kind of news.

A node function (see :mod:`streaming_module.workflow.compile`) awaits
``run.on_signal(NodeStarted(...))`` before its body and ``run.on_signal(NodeEnded(...))`` after
it; inside, ``self.stream_token``, ``self.progress`` and the node's tool capture send
:class:`TokenPushed`, :class:`ProgressReported`, :class:`ToolStarted` and :class:`ToolEnded`
with ``run.on_signal_nowait(...)``, and a failing node :class:`NodeFailed`. All of them are
handled in the node's own task, as they happen, so a node's start, its tokens and its end reach
subscribers in that order, for parallel branches too. The run
(:mod:`streaming_module.workflow.runtime`) dispatches them with ``match``.

:data:`current_scope` is the running node, context-local (each LangGraph task runs in its own copy
of the context), which is what makes ``self.progress`` and ``self.stream_token`` work per branch.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


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


class NodeScope:
    """The node running in this context.

    ``node_id`` is the node's own id (``self.node_id``); ``stream_node`` is the node of the run it
    streams as: itself, or, for a node of another workflow used as a subgraph, the run's node
    running that subgraph. ``run`` is the
    :class:`~streaming_module.workflow.runtime.WorkflowRun`.
    """

    __slots__ = ("node_id", "run", "stream_node")

    def __init__(self, node_id: str, stream_node: str, run: Any) -> None:
        self.node_id = node_id
        self.stream_node = stream_node
        self.run = run


current_scope: ContextVar[NodeScope | None] = ContextVar(
    "streaming_module_current_node", default=None
)

__all__ = [
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
