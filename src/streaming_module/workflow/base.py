"""DeclarativeWorkflowBase: the base class of every declarative workflow.

Its services come from a container :meth:`StreamingModule.for_root
<streaming_module.module.StreamingModule.for_root>` built, found without global wiring (see
:func:`streaming_module.services.registry.container_for`). Services or a container given as
keyword arguments win (tests, or an app with several containers).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from langchain_core.runnables import RunnableConfig

from streaming_module.errors import WorkflowError
from streaming_module.services.registry import ServiceSource, container_for
from streaming_module.types import FINAL_STATUSES, StreamEventType, StreamUpdate
from streaming_module.workflow.compile import CompiledWorkflow, compile_workflow
from streaming_module.workflow.runtime import WorkflowRun
from streaming_module.workflow.signals import (
    ProgressReported,
    Signal,
    TokenPushed,
    current_scope,
)
from streaming_module.workflow.spec import STATE_BASE_ATTR

if TYPE_CHECKING:
    from streaming_module.services.event_processor import EventStreamProcessorService
    from streaming_module.services.progress_tracking import ProgressTrackingService
    from streaming_module.services.token_streaming import TokenStreamingService

StateT = TypeVar("StateT")

logger = logging.getLogger("streaming_module.workflow")

_SERVICES = ("token_streaming", "event_processor", "progress_tracking")


class NodeProgress:
    """``self.progress`` inside a running node: report how far the node is.

    With ``@stream_progress`` the reports go to the node's progress tracker (interval,
    milestones, ETA as configured); with ``@stream_event(events=[..., "progress"])`` and no
    ``@stream_progress`` they are published as ``progress`` events; otherwise they are ignored,
    so a node's code does not depend on its decorators. Reporting never blocks: the report is
    handled right away, in order with the node's tokens and events (from a worker thread, it is
    handed to the run's event loop).
    """

    __slots__ = ("_send", "node_id")

    def __init__(self, node_id: str, send: Callable[[Signal], None]) -> None:
        self.node_id = node_id
        self._send = send

    def update_nowait(
        self, current: float, total: float, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Report ``current`` of ``total`` done (``metadata`` reaches the calculator and the
        update's metadata)."""
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise WorkflowError(f"progress current must be a number, got {current!r}")
        if isinstance(total, bool) or not isinstance(total, (int, float)):
            raise WorkflowError(f"progress total must be a number, got {total!r}")
        self._send(
            ProgressReported(self.node_id, current, total, dict(metadata) if metadata else None)
        )

    async def update(
        self, current: float, total: float, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """:meth:`update_nowait`, awaitable as in the manual (``await self.progress.update``)."""
        self.update_nowait(current, total, metadata)


def _is_marker(value: Any) -> bool:
    return type(value).__module__.startswith("dependency_injector")


class DeclarativeWorkflowBase(Generic[StateT]):
    """Base class of a declarative workflow: ``class MyFlow(DeclarativeWorkflowBase[MyState])``.

    Decorate async methods with ``@node`` (and ``@stream_token`` / ``@stream_event`` /
    ``@stream_progress``), the class with ``@workflow(...)``; run with ``await wf.run(input)`` or
    ``async for update in wf.stream(input)``.

    The services come, in this order, from the keyword arguments; from ``container``; from the
    container that wired the class's module (``StreamingModule.for_root(..., wire=[...])``);
    from the container running in the current context (``async with container:``); from the
    only live container. Otherwise a :class:`WorkflowError` says how to choose. Subclasses
    taking more collaborators (``@inject`` them, and wire their module) call
    ``super().__init__(**kwargs)``.
    """

    logger: logging.Logger = logger

    def __init__(
        self,
        *,
        token_streaming: TokenStreamingService | None = None,
        event_processor: EventStreamProcessorService | None = None,
        progress_tracking: ProgressTrackingService | None = None,
        container: ServiceSource | None = None,
    ) -> None:
        # A subclass's own unwired ``Provide[...]`` default passed through counts as not given.
        given = {
            "token_streaming": token_streaming,
            "event_processor": event_processor,
            "progress_tracking": progress_tracking,
        }
        missing = [name for name, value in given.items() if value is None or _is_marker(value)]
        if missing:
            source = (
                container if container is not None else container_for(type(self), missing=missing)
            )
            if "token_streaming" in missing:
                token_streaming = source.token_streaming()
            if "event_processor" in missing:
                event_processor = source.event_processor()
            if "progress_tracking" in missing:
                progress_tracking = source.progress_tracking()
        # (for the type checker: each one was given or just taken from the container)
        assert token_streaming is not None
        assert event_processor is not None
        assert progress_tracking is not None
        self.token_streaming = token_streaming
        self.event_processor = event_processor
        self.progress_tracking = progress_tracking
        self._compiled = compile_workflow(type(self))

    # ------------------------------------------------------------------ the compiled class

    @property
    def workflow_name(self) -> str:
        """The ``@workflow(name=...)`` (default: the class name)."""
        return self._compiled.name

    @property
    def graph(self) -> Any:
        """The compiled LangGraph graph, shared by every instance of the class."""
        return self._compiled.graph

    @property
    def compiled(self) -> CompiledWorkflow:
        return self._compiled

    # ------------------------------------------------------------------ running

    def new_execution_id(self) -> str:
        """A fresh execution id (override to choose your own scheme)."""
        return f"{self._compiled.name}-{uuid.uuid4().hex[:12]}"

    async def run(
        self,
        input: Any,
        execution_id: str | None = None,
        *,
        config: RunnableConfig | None = None,
    ) -> Any:
        """Run the workflow once and return its final state.

        Publishes ``status: started``, the run's tokens, events and progress, then one final
        status. A node's exception is raised unchanged (after ``status: failed``); cancelling the
        caller cancels the graph (``status: cancelled``). When this returns, every update of the
        run has reached in-process subscribers.
        """
        eid = execution_id or self.new_execution_id()
        return await self._new_run(eid).execute(input, config)

    async def stream(
        self,
        input: Any,
        execution_id: str | None = None,
        *,
        config: RunnableConfig | None = None,
    ) -> AsyncIterator[StreamUpdate[Any]]:
        """Run the workflow once, yielding its :class:`StreamUpdate`\\ s as they happen: status
        ``started``, tokens, events, progress, and last the final status.

        The run happens in a task owned by this iterator: leaving the ``async for`` early
        cancels it (``status: cancelled``) and waits for it. After the final status of a failed
        run, the node's exception is raised. Updates wait in an unbounded queue until consumed
        (a run's updates are bounded by the run itself).
        """
        eid = execution_id or self.new_execution_id()
        run = self._new_run(eid)
        queue: asyncio.Queue[StreamUpdate[Any] | None] = asyncio.Queue()
        put = queue.put_nowait
        subscriptions = [
            self.token_streaming.get_token_stream(eid).subscribe(on_next=put),
            self.event_processor.get_event_stream(eid).subscribe(on_next=put),
            self.progress_tracking.get_progress_stream(eid).subscribe(on_next=put),
        ]
        task = asyncio.create_task(run.execute(input, config), name=f"workflow run {eid}")
        task.add_done_callback(lambda _: put(None))
        try:
            while True:
                update = await queue.get()
                if update is None:
                    break
                yield update
                if update.type is StreamEventType.STATUS and update.data.status in FINAL_STATUSES:
                    break
            if not task.done():
                await asyncio.shield(task)
        finally:
            for subscription in subscriptions:
                subscription.dispose()
            if not task.done():
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except BaseException:
                pass
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            raise exc

    def _new_run(self, execution_id: str) -> WorkflowRun:
        if not isinstance(execution_id, str) or not execution_id:
            raise WorkflowError(f"execution_id must be a non-empty string, got {execution_id!r}")
        return WorkflowRun(
            self,
            self._compiled,
            execution_id,
            self.token_streaming,
            self.event_processor,
            self.progress_tracking,
        )

    # ------------------------------------------------------------------ inside a node

    @property
    def node_id(self) -> str | None:
        """The id of the node running in this context (``None`` outside a node)."""
        scope = current_scope.get()
        return scope.node_id if scope is not None else None

    @property
    def execution_id(self) -> str | None:
        """The execution id of the run this node belongs to (``None`` outside a node)."""
        scope = current_scope.get()
        return cast(str, scope.run.execution_id) if scope is not None else None

    @property
    def progress(self) -> NodeProgress:
        """Progress reporting for the running node: ``await self.progress.update(i, n)``.

        Context-local, so parallel branches each report for their own node. Raises
        :class:`WorkflowError` outside a running node.
        """
        scope = current_scope.get()
        if scope is None:
            raise WorkflowError(
                "self.progress is only available inside a running node (a @node method called "
                "by run() or stream())",
                code="no_node",
            )
        return NodeProgress(scope.stream_node, scope.run.on_signal_nowait)

    @property
    def progress_tracker(self) -> NodeProgress | None:
        """The manual's ``this.progressTracker``: :attr:`progress`, or ``None`` outside a node."""
        scope = current_scope.get()
        if scope is None:
            return None
        return NodeProgress(scope.stream_node, scope.run.on_signal_nowait)

    def stream_token(self, token: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Push a token from the running node — for models that are not LangChain chat models.

        It goes through the node's ``@stream_token`` stream in order with the node's other
        tokens; in a node without ``@stream_token`` it is dropped (nodes without the decorator
        stream no tokens). Raises :class:`WorkflowError` outside a running node.
        """
        scope = current_scope.get()
        if scope is None:
            raise WorkflowError(
                "self.stream_token is only available inside a running node", code="no_node"
            )
        if not isinstance(token, str):
            raise WorkflowError(f"a token is a str, got {type(token).__name__}")
        scope.run.on_signal_nowait(
            TokenPushed(scope.stream_node, token, dict(metadata) if metadata else None)
        )


# How the compiler recognises ``DeclarativeWorkflowBase[State]`` without importing this module.
setattr(DeclarativeWorkflowBase, STATE_BASE_ATTR, True)

__all__ = ["DeclarativeWorkflowBase", "NodeProgress"]
