"""Declarative LangGraph workflows: ``@workflow``, ``@node``, the ``@stream_*`` decorators and
:class:`DeclarativeWorkflowBase`. See ``docs/workflows.md``."""

from langgraph.graph import END, START

from streaming_module.workflow.base import DeclarativeWorkflowBase, NodeProgress
from streaming_module.workflow.compile import CompiledWorkflow, compile_workflow
from streaming_module.workflow.decorators import (
    Node,
    StreamAll,
    StreamEvent,
    StreamProgress,
    StreamToken,
    Workflow,
    node,
    stream_all,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)
from streaming_module.workflow.runtime import WorkflowRun
from streaming_module.workflow.spec import NodeType, SubgraphNode

__all__ = [
    "END",
    "START",
    "CompiledWorkflow",
    "DeclarativeWorkflowBase",
    "Node",
    "NodeProgress",
    "NodeType",
    "StreamAll",
    "StreamEvent",
    "StreamProgress",
    "StreamToken",
    "SubgraphNode",
    "Workflow",
    "WorkflowRun",
    "compile_workflow",
    "node",
    "stream_all",
    "stream_event",
    "stream_progress",
    "stream_token",
    "workflow",
]
