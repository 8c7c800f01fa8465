"""What the decorators record on a workflow class, and nothing else.

``@node`` and the ``@stream_*`` decorators store a :class:`NodeSpec` on the method (or on a
:class:`SubgraphNode`), ``@workflow`` stores :class:`WorkflowOptions` on the class;
:mod:`streaming_module.workflow.compile` reads them. This module is the bottom of the package:
it imports no other module of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from streaming_module.config import StreamEventOptions, StreamProgressOptions, StreamTokenOptions
from streaming_module.errors import WorkflowError

NodeType = Literal["llm", "tool", "condition", "task"]
NODE_TYPES: tuple[str, ...] = ("llm", "tool", "condition", "task")

SPEC_ATTR = "__streaming_node__"
WORKFLOW_ATTR = "__streaming_workflow__"
STATE_BASE_ATTR = "__streaming_state_base__"
"""Set on :class:`~streaming_module.workflow.base.DeclarativeWorkflowBase`: the compiler finds a
class's state type as the argument of ``DeclarativeWorkflowBase[State]`` without importing it."""

Edge = tuple[str | Sequence[str], str | Sequence[str]]
"""``(source, target)``: node names, ``START``/``END``, or lists of names (fan-out / join)."""


@dataclass(slots=True)
class NodeOptions:
    """What ``@node`` was given."""

    type: NodeType = "task"
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class NodeSpec:
    """Everything the decorators recorded on one method (or subgraph attribute)."""

    node: NodeOptions | None = None
    token: StreamTokenOptions | None = None
    event: StreamEventOptions | None = None
    progress: StreamProgressOptions | None = None


@dataclass(slots=True)
class WorkflowOptions:
    """What ``@workflow`` was given."""

    name: str | None = None
    streaming: bool = True
    channels: dict[str, Any] | None = None
    edges: list[Edge] | None = None
    progress: bool = True
    description: str | None = None


class SubgraphNode:
    """A compiled LangGraph graph (or another workflow instance) used as a node of a workflow.

    Made by ``node(compiled_graph, name=...)``; it receives the workflow's state and its output
    is the node's update. Tokens and events from inside it are attributed to this node.
    """

    __slots__ = ("__streaming_node__", "target")

    def __init__(self, target: Any) -> None:
        self.target = target
        self.__streaming_node__ = NodeSpec()

    def __repr__(self) -> str:
        return f"SubgraphNode({self.target!r})"


def spec_of(target: Any) -> NodeSpec:
    """The :class:`NodeSpec` recorded on ``target``, created on first use."""
    spec = getattr(target, SPEC_ATTR, None)
    if spec is None:
        spec = NodeSpec()
        try:
            setattr(target, SPEC_ATTR, spec)
        except (AttributeError, TypeError):
            raise WorkflowError(
                f"cannot decorate {target!r}: decorate an async method of a "
                "DeclarativeWorkflowBase subclass, or wrap a compiled graph with node(graph)",
                code="bad_node",
            ) from None
    if not isinstance(spec, NodeSpec):
        raise WorkflowError(f"{target!r} has a foreign {SPEC_ATTR} attribute", code="bad_node")
    return spec


__all__ = [
    "NODE_TYPES",
    "SPEC_ATTR",
    "STATE_BASE_ATTR",
    "WORKFLOW_ATTR",
    "Edge",
    "NodeOptions",
    "NodeSpec",
    "NodeType",
    "SubgraphNode",
    "WorkflowOptions",
    "spec_of",
]
