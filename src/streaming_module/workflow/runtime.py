"""One run of a workflow: LangGraph's stream parts routed to the streaming services.

:class:`WorkflowRun` runs the class's compiled graph once with
``astream(stream_mode=[("messages"), "custom", "updates", "values", ("debug")], subgraphs=True)``
and, for each part, in the order LangGraph produced them:

- ``messages``: a chat model chunk from a ``@stream_token`` node (or a subgraph inside it) goes to
  ``TokenStreamingService.stream_token(execution_id, node_id, text)`` — two lookups and one call
  per token; the chunk's metadata (node, step, ``ls_*`` model fields, message id) is added only
  for nodes whose ``processor``, ``include_metadata`` or ``structured`` format use it;
- ``custom``: :class:`~streaming_module.workflow.signals.Signal` objects from node functions
  (start, end, error, pushed tokens, progress, tool calls) open and flush token streams, drive
  progress trackers and publish node events;
- ``updates`` / ``values`` / ``debug``: published as events for the nodes that asked for them;
  the last top-level ``values`` part is the run's result.

Lifecycle: ``status: started`` first; at the end every token stream of the run is flushed and
closed and every tracker closed, *then* exactly one final status (``completed``, ``failed`` with
the error, or ``cancelled``) — so it is the run's last update.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig

from streaming_module.config import StreamProgressOptions
from streaming_module.core.events import merge_transformed
from streaming_module.errors import TokenStreamingError
from streaming_module.types import ProgressData, StreamEventType, StreamMetadata, StreamUpdate
from streaming_module.workflow.compile import RUN_KEY, SELF_KEY, CompiledWorkflow, EventPlan
from streaming_module.workflow.signals import (
    LIFECYCLE,
    NodeEnded,
    NodeFailed,
    NodeStarted,
    ProgressReported,
    Signal,
    TokenPushed,
    ToolEnded,
    ToolStarted,
    current_scope,
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
# What of LangGraph's ``messages`` metadata a token carries to its stream's processor and, with
# include_metadata, into its update: where it was produced and by which model.
_TOKEN_METADATA_KEYS = ("langgraph_node", "langgraph_step", "langgraph_checkpoint_ns")
_ET = StreamEventType


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return ""


def _token_metadata(meta: Any, message: AIMessage) -> dict[str, Any]:
    """A token's metadata from a ``messages`` part: node, step, model (``ls_*``), message id."""
    out: dict[str, Any] = {}
    if isinstance(meta, dict):
        for key, value in meta.items():
            if key in _TOKEN_METADATA_KEYS or key.startswith("ls_"):
                out[key] = value
    if message.id is not None:
        out["message_id"] = message.id
    return out


class _ToolCallbacks(BaseCallbackHandler):
    """Turns LangChain tool runs inside a node into ``tool_start``/``tool_complete`` signals.

    It ignores LLM, chat model and chain callbacks, so it costs nothing on the token path (tool
    callbacks are gated by ``ignore_agent``, which therefore stays ``False``). Synchronous and
    ``run_inline``: LangChain then calls it in place, with no task or thread per event.
    """

    run_inline = True

    ignore_llm = True
    ignore_chat_model = True
    ignore_chain = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        scope = current_scope.get()
        if scope is not None:
            name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
            scope.writer(ToolStarted(scope.node_id, name, input_str, str(run_id)))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        scope = current_scope.get()
        if scope is not None:
            content = getattr(output, "content", output)
            scope.writer(ToolEnded(scope.node_id, content, str(run_id)))


class WorkflowRun:
    """One execution of a compiled workflow. Build one per call; not reusable.

    ``note_error`` is called by node functions (in their own tasks) so that an error event is
    published even if LangGraph raises before delivering the node's error signal.
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
        self._pending_errors: dict[str, BaseException] = {}
        self._held: dict[str, list[tuple[StreamEventType, Any]]] = {}
        self._tool_names: dict[str, str] = {}
        self._tool_callbacks = _ToolCallbacks() if compiled.wants_tool_callbacks else None

    # ------------------------------------------------------------------ called from nodes

    def note_error(self, node_id: str, exc: BaseException) -> None:
        self._pending_errors[node_id] = exc

    # ------------------------------------------------------------------ the run

    async def execute(self, graph_input: Any, config: RunnableConfig | None = None) -> Any:
        """Run the graph once and return its final state. Exceptions from nodes propagate
        unchanged (after ``status: failed``); cancellation propagates after ``cancelled``."""
        eid = self.execution_id
        compiled = self.compiled
        self.events.emit_status(eid, "started")
        status = "failed"
        error: BaseException | None = None
        try:
            if compiled.options.streaming and compiled.options.progress:
                self._overall = self.progress.create_tracker(eid, None, _OVERALL_PROGRESS)
                await self._overall.start(total=len(compiled.order))
            run_config = self._config(config)
            stream = compiled.graph.astream(
                graph_input,
                run_config,
                stream_mode=list(compiled.stream_modes),
                subgraphs=True,
            )
            async with aclosing(stream) as parts:
                await self._consume(parts)
            for node_id, exc in list(self._pending_errors.items()):
                self._publish_error(node_id, exc)
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
            for node_id, pending in list(self._pending_errors.items()):
                self._publish_error(node_id, pending)
            raise
        finally:
            self._finish(status, error)

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        base: dict[str, Any] = dict(config or {})
        configurable = dict(base.get("configurable") or {})
        configurable[RUN_KEY] = self
        configurable[SELF_KEY] = self.workflow
        base["configurable"] = configurable
        if self._tool_callbacks is not None:
            callbacks = base.get("callbacks")
            if callbacks is None:
                base["callbacks"] = [self._tool_callbacks]
            elif isinstance(callbacks, list):
                base["callbacks"] = [*callbacks, self._tool_callbacks]
            else:
                callbacks.add_handler(self._tool_callbacks)
        metadata = dict(base.get("metadata") or {})
        metadata.setdefault("execution_id", self.execution_id)
        base["metadata"] = metadata
        return base  # type: ignore[return-value]

    async def _consume(self, parts: Any) -> None:
        # The per-token path is the first branch: keep it to a lookup, a check and a call.
        eid = self.execution_id
        token_nodes = self.compiled.token_nodes
        metadata_nodes = self.compiled.token_metadata_nodes
        stream_token = self.tokens.stream_token
        async for namespace, mode, chunk in parts:
            if mode == "messages":
                message, meta = chunk
                node_id = namespace[0].split(":", 1)[0] if namespace else meta["langgraph_node"]
                if node_id in token_nodes and isinstance(message, AIMessage):
                    content = message.content
                    text = content if isinstance(content, str) else _text_of(content)
                    if text:
                        try:
                            if node_id in metadata_nodes:
                                stream_token(eid, node_id, text, _token_metadata(meta, message))
                            else:
                                stream_token(eid, node_id, text)
                        except TokenStreamingError as exc:
                            logger.warning("token of %s:%s dropped: %s", eid, node_id, exc)
            elif mode == "custom":
                if isinstance(chunk, Signal):
                    await self._on_signal(namespace, chunk)
            elif mode == "updates":
                if not namespace:
                    self._on_updates(chunk)
            elif mode == "values":
                if not namespace:
                    self.state = chunk
                    self._on_values(chunk)
            elif mode == "debug" and not namespace:
                self._on_debug(chunk)

    # ------------------------------------------------------------------ signals

    async def _on_signal(self, namespace: tuple[str, ...], signal: Signal) -> None:
        if namespace:
            # From inside a subgraph: it belongs to the top-level node running that subgraph,
            # whose own start/end/error signals tell its lifecycle.
            if isinstance(signal, LIFECYCLE):
                return
            node_id = namespace[0].split(":", 1)[0]
        else:
            node_id = signal.node_id
        if node_id not in self.compiled.nodes:
            return
        match signal:
            case TokenPushed(text=text, metadata=metadata):
                await self._on_pushed_token(node_id, text, metadata)
            case NodeStarted():
                await self._on_node_started(node_id)
            case NodeEnded(duration_ms=duration_ms):
                await self._on_node_ended(node_id, duration_ms)
            case NodeFailed(error=error):
                self._pending_errors.pop(node_id, None)
                self._publish_error(node_id, error)
            case ProgressReported(current=current, total=total, metadata=metadata):
                await self._on_progress(node_id, current, total, metadata)
            case ToolStarted(tool=tool, input=tool_input, run_id=run_id):
                self._tool_names[run_id] = tool
                data = {**self._node_data(node_id), "tool": tool, "input": tool_input}
                self._event(node_id, _ET.TOOL_START, {**data, "run_id": run_id})
            case ToolEnded(output=output, run_id=run_id):
                tool = self._tool_names.pop(run_id, "tool")
                data = {**self._node_data(node_id), "tool": tool, "output": output}
                self._event(node_id, _ET.TOOL_COMPLETE, {**data, "run_id": run_id})

    async def _on_pushed_token(
        self, node_id: str, text: str, metadata: dict[str, Any] | None
    ) -> None:
        if node_id in self.compiled.token_nodes:
            if node_id not in self._open_tokens:
                await self._open_token_stream(node_id)
            self.tokens.stream_token(self.execution_id, node_id, text, metadata)

    async def _on_node_started(self, node_id: str) -> None:
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

    async def _on_node_ended(self, node_id: str, duration_ms: float) -> None:
        node = self.compiled.nodes[node_id]
        if node_id in self._open_tokens:
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

    async def _on_progress(
        self, node_id: str, current: float, total: float, metadata: dict[str, Any] | None
    ) -> None:
        tracker = self._trackers.get(node_id)
        if tracker is not None and not tracker.closed:
            await tracker.update(current, total, metadata)
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
        if node_id not in self.compiled.nodes:
            return
        self._pending_errors.pop(node_id, None)
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
        agent_type: str | None = None
        if plan.filter is not None or plan.transformer is not None:
            candidate: StreamUpdate[Any] = StreamUpdate(
                kind,
                data,
                StreamMetadata(
                    self.events.clock.now(), 0, self.execution_id, node_id, None, **extras
                ),
            )
            if plan.filter is not None and not plan.filter.matches(candidate):
                return
            if plan.transformer is not None:
                result = plan.transformer(candidate)
                if result is None:
                    return
                candidate = merge_transformed(candidate, result)
                kind, data = candidate.type, candidate.data
                if candidate.metadata is not None:
                    extras = dict(candidate.metadata.extra)
                    agent_type = candidate.metadata.agent_type
        if agent_type is not None:
            extras["agent_type"] = agent_type
        self.events.emit_event(self.execution_id, kind, data, node_id=node_id, metadata=extras)

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
