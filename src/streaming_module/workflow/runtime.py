"""One run of a workflow: what its nodes tell it, and LangGraph's stream parts, routed to the
streaming services.

:class:`WorkflowRun` runs the class's compiled graph once with ``astream(stream_mode=[("updates"),
"values", ("debug")])``. Two sources feed it, each in the order things happen:

- **the nodes themselves**, from their own tasks. A node function
  (:mod:`streaming_module.workflow.compile`) awaits :meth:`WorkflowRun.on_signal` with
  :class:`~streaming_module.workflow.signals.NodeStarted` before its body (the token stream opens,
  the tracker starts, ``node_start`` is published) and
  :class:`~streaming_module.workflow.signals.NodeEnded` after it (tokens flushed, tracker at
  100 %, ``node_complete``); pushed tokens, progress, tool runs and failures come synchronously
  through :meth:`WorkflowRun.on_signal_nowait`. A chat model's tokens do not come through here
  at all: the node's :class:`~streaming_module.workflow.capture.TokenCapture` (made by
  :meth:`WorkflowRun.node_handlers`) hands them straight to ``TokenStreamingService``, in between
  the node's start and end;
- **LangGraph's stream**: ``updates`` / ``values`` / ``debug`` parts are published as events for
  the nodes that asked for them; the last ``values`` part is the run's result.

A node of another workflow used as a subgraph streams as part of the run's node that runs that
subgraph (its scope says so, see :class:`~streaming_module.workflow.signals.NodeScope`).

Lifecycle: ``status: started`` first; at the end every token stream of the run is flushed and
closed and every tracker closed, *then* exactly one final status (``completed``, ``failed`` with
the error, or ``cancelled``) — so it is the run's last update.

A user callback of a node's streams that fails — its ``@stream_token`` processor, its
``@stream_event`` transformer, its ``@stream_progress`` calculator — is not the node's failure:
the service running it drops what it failed on and publishes one ``error`` event (code
``callback_failed``) for the node on that stream, and the node and the run go on (see
:mod:`streaming_module.services._base`). Nothing here handles it: the same code path serves a
workflow and a direct user of the services.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing
from threading import get_ident
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig

from streaming_module.config import StreamProgressOptions
from streaming_module.errors import WorkflowError
from streaming_module.types import (
    RESERVED_METADATA_KEYS,
    ProgressData,
    StreamEventType,
    StreamMetadata,
    StreamUpdate,
)
from streaming_module.workflow.capture import TokenCapture, ToolCapture
from streaming_module.workflow.compile import (
    RUN_KEY,
    SELF_KEY,
    CompiledWorkflow,
    EventPlan,
    NodeDef,
)
from streaming_module.workflow.signals import (
    NodeEnded,
    NodeFailed,
    NodeStarted,
    ProgressReported,
    Signal,
    TokenPushed,
    ToolEnded,
    ToolStarted,
)

if TYPE_CHECKING:
    from streaming_module.services.event_processor import EventStreamProcessorService
    from streaming_module.services.progress_tracking import (
        ProgressTracker,
        ProgressTrackingService,
    )
    from streaming_module.services.token_streaming import TokenStreamingService

logger = logging.getLogger("streaming_module.workflow")

_OVERALL_PROGRESS = StreamProgressOptions(interval=0)
_ET = StreamEventType


class WorkflowRun:
    """One execution of a compiled workflow. Build one per call; not reusable.

    Node functions call :meth:`node_handlers`, :meth:`on_signal` and :meth:`on_signal_nowait`;
    everything else is the run's own business.
    """

    def __init__(
        self,
        workflow: Any,
        compiled: CompiledWorkflow,
        execution_id: str,
        token_streaming: TokenStreamingService,
        event_processor: EventStreamProcessorService,
        progress_tracking: ProgressTrackingService,
    ) -> None:
        self.workflow = workflow
        self.compiled = compiled
        self.execution_id = execution_id
        self.tokens = token_streaming
        self.events = event_processor
        self.progress = progress_tracking
        self.state: Any = None
        self._trackers: dict[str, ProgressTracker] = {}
        self._overall: ProgressTracker | None = None
        self._nodes_done = 0
        self._open_tokens: set[str] = set()
        self._pending_values: list[str] = []
        self._held: dict[str, list[tuple[StreamEventType, Any]]] = {}
        self._tool_names: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = get_ident()

    # ------------------------------------------------------------------ called from nodes

    def node_handlers(self, node: NodeDef) -> list[BaseCallbackHandler]:
        """The LangChain callback handlers to attach to one run of ``node``: token capture for
        a ``@stream_token`` node, tool capture for a node publishing tool events."""
        handlers: list[BaseCallbackHandler] = []
        token = node.token
        if token is not None:
            handlers.append(
                TokenCapture(
                    self.tokens,
                    self.execution_id,
                    node.node_id,
                    with_metadata=node.node_id in self.compiled.token_metadata_nodes,
                    isolate_tool_chunks=token.include_metadata and token.format != "structured",
                    loop=self._loop,
                )
            )
        if node.captures_tools:
            handlers.append(ToolCapture(node.node_id, self.on_signal_nowait))
        return handlers

    async def on_signal(self, signal: Signal) -> None:
        """Handle a signal from a node's own task, waiting on the services where they ask for
        it (a node's start and end); the others go to :meth:`on_signal_nowait`."""
        match signal:
            case NodeStarted(node_id=node_id):
                await self._node_started(node_id)
            case NodeEnded(node_id=node_id, duration_ms=duration_ms):
                await self._node_ended(node_id, duration_ms)
            case _:
                self.on_signal_nowait(signal)

    def on_signal_nowait(self, signal: Signal) -> None:
        """Handle a signal synchronously: a token pushed with ``self.stream_token``, progress, a
        tool run, a failure. From another thread (a callback in a worker thread) it is handed to
        the run's event loop. Errors of the services (a bad token, bad progress figures) raise
        to the caller."""
        if get_ident() != self._thread and self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_signal_nowait, signal)
            return
        node_id = signal.node_id
        if node_id not in self.compiled.nodes:
            return
        match signal:
            case TokenPushed(text=text, metadata=metadata):
                if node_id in self._open_tokens:  # nodes without @stream_token stream none
                    self.tokens.stream_token(self.execution_id, node_id, text, metadata)
            case ProgressReported(current=current, total=total, metadata=metadata):
                self._on_progress(node_id, current, total, metadata)
            case NodeFailed(error=error):
                self._publish_error(node_id, error)
            case ToolStarted(tool=tool, input=tool_input, run_id=run_id):
                self._tool_names[run_id] = tool
                data = {**self._node_data(node_id), "tool": tool, "input": tool_input}
                self._event(node_id, _ET.TOOL_START, {**data, "run_id": run_id})
            case ToolEnded(output=output, run_id=run_id):
                tool = self._tool_names.pop(run_id, "tool")
                data = {**self._node_data(node_id), "tool": tool, "output": output}
                self._event(node_id, _ET.TOOL_COMPLETE, {**data, "run_id": run_id})
            case NodeStarted() | NodeEnded():
                raise WorkflowError(f"{signal!r} needs the run's services: await on_signal()")

    # ------------------------------------------------------------------ the run

    async def execute(self, graph_input: Any, config: RunnableConfig | None = None) -> Any:
        """Run the graph once and return its final state. Exceptions from nodes propagate
        unchanged (after ``status: failed``); cancellation propagates after ``cancelled``."""
        eid = self.execution_id
        compiled = self.compiled
        self._loop = asyncio.get_running_loop()
        self._thread = get_ident()
        self.events.emit_status(eid, "started")
        status = "failed"
        error: BaseException | None = None
        try:
            if compiled.options.streaming and compiled.options.progress:
                self._overall = self.progress.create_tracker(eid, None, _OVERALL_PROGRESS)
                await self._overall.start(total=len(compiled.order))
            stream = compiled.graph.astream(
                graph_input, self._config(config), stream_mode=list(compiled.stream_modes)
            )
            async with aclosing(stream) as parts:
                await self._consume(parts)
            overall = self._overall
            if overall is not None and (overall.last is None or overall.last.progress < 100):
                await overall.complete()
            status = "completed"
            return self.state
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(status, error)

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        base: dict[str, Any] = dict(config or {})
        configurable = dict(base.get("configurable") or {})
        configurable[RUN_KEY] = self
        configurable[SELF_KEY] = self.workflow
        base["configurable"] = configurable
        metadata = dict(base.get("metadata") or {})
        metadata.setdefault("execution_id", self.execution_id)
        base["metadata"] = metadata
        return base  # type: ignore[return-value]

    async def _consume(self, parts: Any) -> None:
        async for mode, chunk in parts:
            if mode == "values":
                self.state = chunk
                self._on_values(chunk)
            elif mode == "updates":
                self._on_updates(chunk)
            elif mode == "debug":
                self._on_debug(chunk)

    # ------------------------------------------------------------------ a node's life

    async def _node_started(self, node_id: str) -> None:
        node = self.compiled.nodes[node_id]
        if node.token is not None:
            await self._open_token_stream(node_id)
        if node.progress is not None:
            tracker = self._trackers.get(node_id)
            if tracker is None or tracker.closed:
                tracker = self.progress.create_tracker(self.execution_id, node_id, node.progress)
                self._trackers[node_id] = tracker
            await tracker.start(total=100)
        data = self._node_data(node_id)
        self._event(node_id, _ET.NODE_START, data)
        if node.options.type == "tool":
            self._event(node_id, _ET.TOOL_START, {**data, "tool": node_id})

    async def _node_ended(self, node_id: str, duration_ms: float) -> None:
        node = self.compiled.nodes[node_id]
        if node_id in self._open_tokens and self.tokens.has_token_stream(
            self.execution_id, node_id
        ):  # (a stream idle past stream_idle_timeout_ms was flushed and closed by the sweep)
            await self.tokens.flush_tokens(self.execution_id, node_id)
        tracker = self._trackers.pop(node_id, None)
        if tracker is not None and not tracker.closed:
            await tracker.complete()
            tracker.close()
        data = {**self._node_data(node_id), "duration_ms": round(duration_ms, 3)}
        if node.options.type == "tool":
            self._event(node_id, _ET.TOOL_COMPLETE, {**data, "tool": node_id})
        self._event(node_id, _ET.NODE_COMPLETE, data)
        self._release(node_id)
        if self._overall is not None:
            self._nodes_done += 1
            total = max(len(self.compiled.order), self._nodes_done)
            await self._overall.update(self._nodes_done, total, {"completed_node": node_id})

    def _on_progress(
        self, node_id: str, current: float, total: float, metadata: dict[str, Any] | None
    ) -> None:
        tracker = self._trackers.get(node_id)
        if tracker is not None and not tracker.closed:
            tracker.update_nowait(current, total, metadata)
        elif _ET.PROGRESS in self.compiled.nodes[node_id].events.kinds:
            percent = 100.0 * current / total if total else 0.0
            self._event(
                node_id,
                _ET.PROGRESS,
                ProgressData(progress=min(max(percent, 0.0), 100.0), current=current,
                             total=total, text=f"{percent:.1f}%"),
                metadata,
            )  # fmt: skip

    async def _open_token_stream(self, node_id: str) -> None:
        if node_id in self._open_tokens:
            return
        await self.tokens.initialize_token_stream(
            execution_id=self.execution_id,
            node_id=node_id,
            config=self.compiled.token_nodes[node_id],
        )
        self._open_tokens.add(node_id)

    def _node_data(self, node_id: str) -> dict[str, Any]:
        return {
            "node": node_id,
            "node_type": self.compiled.nodes[node_id].options.type,
            "workflow": self.compiled.name,
        }

    # ------------------------------------------------------------------ LangGraph parts

    def _on_updates(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        nodes = self.compiled.nodes
        for node_id, update in chunk.items():
            node = nodes.get(node_id)
            if node is None:
                continue
            kinds = node.events.kinds
            if _ET.UPDATES in kinds:
                self._event(node_id, _ET.UPDATES, {"node": node_id, "update": update})
            if _ET.VALUES in kinds:
                self._pending_values.append(node_id)

    def _on_values(self, chunk: Any) -> None:
        if self._pending_values:
            pending, self._pending_values = self._pending_values, []
            for node_id in pending:
                self._event(node_id, _ET.VALUES, {"node": node_id, "values": chunk})

    def _on_debug(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        payload = chunk.get("payload")
        node_id = payload.get("name") if isinstance(payload, dict) else None
        if (
            node_id in self.compiled.nodes
            and _ET.DEBUG in self.compiled.nodes[node_id].events.kinds
        ):
            self._event(
                node_id,
                _ET.DEBUG,
                {"node": node_id, "debug_type": chunk.get("type"), "step": chunk.get("step"),
                 "task_id": payload.get("id") if isinstance(payload, dict) else None},
            )  # fmt: skip

    # ------------------------------------------------------------------ events

    def _publish_error(self, node_id: str, exc: BaseException) -> None:
        if node_id in self._open_tokens:
            self.tokens.close_token_stream(self.execution_id, node_id)
            self._open_tokens.discard(node_id)
        tracker = self._trackers.pop(node_id, None)
        if tracker is not None:
            tracker.close()
        self._event(
            node_id,
            _ET.ERROR,
            {**self._node_data(node_id), "error": str(exc) or type(exc).__name__,
             "error_type": type(exc).__name__},
        )  # fmt: skip
        self._release(node_id)

    def _event(
        self,
        node_id: str,
        kind: StreamEventType,
        data: Any,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        plan = self.compiled.nodes[node_id].events
        if kind not in plan.kinds:
            return
        if plan.batch_size > 1:
            held = self._held.setdefault(node_id, [])
            held.append((kind, data))
            if len(held) >= plan.batch_size:
                self._release(node_id)
            return
        self._publish(node_id, plan, kind, data, metadata)

    def _release(self, node_id: str) -> None:
        held = self._held.pop(node_id, None)
        if held:
            plan = self.compiled.nodes[node_id].events
            for index, (kind, data) in enumerate(held):
                self._publish(node_id, plan, kind, data, {"batch_index": index,
                                                          "batch_length": len(held)})  # fmt: skip

    def _publish(
        self,
        node_id: str,
        plan: EventPlan,
        kind: StreamEventType,
        data: Any,
        metadata: dict[str, Any] | None,
    ) -> None:
        extras: dict[str, Any] = {"delivery": plan.delivery, "workflow": self.compiled.name}
        if metadata:
            extras.update(metadata)
        if plan.filter is not None:
            fields = {k: v for k, v in extras.items() if k not in RESERVED_METADATA_KEYS}
            candidate: StreamUpdate[Any] = StreamUpdate(
                kind,
                data,
                StreamMetadata(
                    self.events.clock.now(),
                    0,
                    self.execution_id,
                    node_id,
                    extras.get("agent_type"),
                    **fields,
                ),
            )
            if not plan.filter.matches(candidate):
                return
        # The service runs the transformer: one that fails drops this event and reports itself
        # by an `error` event for the node, once per run; the node and the run go on.
        self.events.emit_event(
            self.execution_id,
            kind,
            data,
            node_id=node_id,
            metadata=extras,
            transformer=plan.transformer,
        )

    # ------------------------------------------------------------------ the end

    def _release_all(self) -> None:
        for node_id in list(self._held):
            self._release(node_id)

    def _close_trackers(self) -> None:
        for tracker in self._trackers.values():
            tracker.close()
        if self._overall is not None:
            self._overall.close()

    def _finish(self, status: str, error: BaseException | None) -> None:
        """Close everything of the run, then publish its one final status. Synchronous, so it
        completes even while the run's task is being cancelled."""
        eid = self.execution_id
        steps: list[Callable[[], None]] = [
            self._release_all,
            lambda: self.tokens.close_execution_token_streams(eid),
            self._close_trackers,
            lambda: self.progress.close_execution(eid),
        ]
        for step in steps:
            try:
                step()
            except Exception:
                logger.exception("closing the streams of execution %s failed", eid)
        self._trackers.clear()
        self._open_tokens.clear()
        if status == "completed":
            self.events.emit_status(eid, "completed", result=self.state)
        elif status == "cancelled":
            self.events.emit_status(eid, "cancelled")
        else:
            message = (str(error) or type(error).__name__) if error is not None else "failed"
            self.events.emit_status(eid, "failed", error=message)
        logger.debug("execution %s of %s: %s", eid, self.compiled.name, status)


__all__ = ["WorkflowRun"]
