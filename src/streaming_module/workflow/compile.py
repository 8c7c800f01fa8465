"""Compiling a workflow class to a real LangGraph ``StateGraph`` — the one place it happens,
once per class.

:func:`compile_workflow` reads what the decorators recorded (:mod:`streaming_module.workflow.spec`)
and goes through its steps in order: the workflow's options, its state schema, its nodes (ids,
options, what each streams), the graph (nodes, edges, ``compile()``), and the stream plan (which
LangGraph stream modes a run needs). The :class:`CompiledWorkflow` is cached on the class.

The compiled graph is shared by every instance and every run: node functions find the workflow
instance and the run through the ``configurable`` section of the LangGraph config
(:data:`RUN_KEY`, :data:`SELF_KEY`), never through a closure over an instance.

Routing
    - Default: nodes run in definition order, ``START → first → … → last → END``.
    - ``@workflow(edges=[...])`` replaces that chain with explicit ``(source, target)`` edges
      (``START``/``END``, node ids, lists for fan-out and join). When no edge leaves ``START``,
      one goes to the first node.
    - A ``@node(type="condition")`` node never gets a static out-edge: it routes by what it
      returns — a node id or ``END`` (no state change), a ``Command(goto=..., update=...)``, or
      a state update dict / ``None`` (then it goes on to the next node in definition order, or
      ``END`` after the last).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Annotated, Any, TypedDict, cast

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from streaming_module.config import StreamEventOptions, StreamProgressOptions, StreamTokenOptions
from streaming_module.core.events import EventFilter
from streaming_module.errors import WorkflowError
from streaming_module.types import StreamEventType
from streaming_module.workflow.capture import with_handlers
from streaming_module.workflow.signals import (
    NodeEnded,
    NodeFailed,
    NodeScope,
    NodeStarted,
    current_scope,
)
from streaming_module.workflow.spec import (
    SPEC_ATTR,
    STATE_BASE_ATTR,
    WORKFLOW_ATTR,
    NodeOptions,
    NodeSpec,
    SubgraphNode,
    WorkflowOptions,
)

RUN_KEY = "__streaming_module_run__"
SELF_KEY = "__streaming_module_self__"
COMPILED_ATTR = "__streaming_compiled__"

DEFAULT_NODE_EVENTS: frozenset[StreamEventType] = frozenset(
    {StreamEventType.NODE_START, StreamEventType.NODE_COMPLETE, StreamEventType.ERROR}
)
_TOOL_EVENTS = frozenset({StreamEventType.TOOL_START, StreamEventType.TOOL_COMPLETE})


@dataclass(slots=True)
class EventPlan:
    """What one node publishes as events, compiled from its ``@stream_event`` options."""

    kinds: frozenset[StreamEventType]
    filter: EventFilter | None = None
    transformer: Callable[[Any], Any] | None = None
    delivery: str = "at-least-once"
    batch_size: int = 1


@dataclass(slots=True)
class NodeDef:
    """One node of a compiled workflow."""

    node_id: str
    attr: str
    target: Any
    options: NodeOptions
    token: StreamTokenOptions | None
    events: EventPlan
    progress: StreamProgressOptions | None
    default_next: str
    pass_config: bool = False
    captures_tools: bool = False
    """Its events include ``tool_start``/``tool_complete``: LangChain tool runs inside it are
    captured."""

    @property
    def is_condition(self) -> bool:
        return self.options.type == "condition"


@dataclass(slots=True)
class CompiledWorkflow:
    """A workflow class compiled: the LangGraph graph and what each node streams."""

    name: str
    options: WorkflowOptions
    state_schema: Any
    graph: Any
    """The compiled LangGraph graph (``CompiledStateGraph``)."""
    nodes: dict[str, NodeDef]
    order: list[str]
    token_nodes: dict[str, StreamTokenOptions] = field(default_factory=dict)
    token_metadata_nodes: frozenset[str] = frozenset()
    """Token nodes whose options use token metadata (``processor``, ``include_metadata``,
    ``format='structured'``): their chat model tokens carry the chunk's metadata."""
    stream_modes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- node functions


def _instance(config: RunnableConfig, node_id: str) -> tuple[Any, Any]:
    configurable = config.get("configurable") or {}
    run = configurable.get(RUN_KEY)
    owner = configurable.get(SELF_KEY)
    if run is None or owner is None:
        raise WorkflowError(
            f"node {node_id!r} ran outside a workflow run; start it with `await wf.run(input)` "
            "or `wf.stream(input)` instead of invoking the graph directly",
            code="no_run",
        )
    return run, owner


def _route(result: Any, node: NodeDef, known: frozenset[str]) -> Any:
    """A condition node's return value → what LangGraph should do next."""
    if isinstance(result, str):
        if result not in known:
            raise WorkflowError(
                f"condition node {node.node_id!r} chose {result!r}, which is not a node of this "
                f"workflow; return one of {sorted(known - {END})} or END",
                code="bad_route",
                context={"node_id": node.node_id, "route": result},
            )
        return Command(goto=result)
    if isinstance(result, Command):
        if not result.goto:
            return Command(
                graph=result.graph, update=result.update, resume=result.resume,
                goto=node.default_next,
            )  # fmt: skip
        return result
    return Command(goto=node.default_next, update=result)


def _make_node_function(node: NodeDef, known: frozenset[str]) -> Callable[..., Awaitable[Any]]:
    node_id = node.node_id
    target = node.target
    is_condition = node.is_condition
    pass_config = node.pass_config

    if isinstance(target, SubgraphNode):
        inner = target.target

        async def call(owner: Any, state: Any, config: RunnableConfig) -> Any:
            compiled = getattr(inner, "compiled", None)
            if isinstance(compiled, CompiledWorkflow):
                # Another workflow instance: its nodes run on it, streaming into this run.
                child = dict(config.get("configurable") or {})
                child[SELF_KEY] = inner
                return await compiled.graph.ainvoke(state, {**config, "configurable": child})
            return await inner.ainvoke(state, config)

    else:
        method = cast(Callable[..., Any], target)
        is_async = inspect.iscoroutinefunction(method)

        async def call(owner: Any, state: Any, config: RunnableConfig) -> Any:
            result = method(owner, state, config) if pass_config else method(owner, state)
            if is_async or inspect.isawaitable(result):
                result = await result
            return result

    async def run_node(state: Any, config: RunnableConfig) -> Any:
        run, owner = _instance(config, node_id)
        outer = current_scope.get()
        if outer is not None and outer.run is run:
            # A node of a workflow used as a subgraph of one of this run's nodes: it streams as
            # part of that node, whose handlers it inherits and whose start and end count.
            reset = current_scope.set(NodeScope(node_id, outer.stream_node, run))
            try:
                result = await call(owner, state, config)
                return _route(result, node, known) if is_condition else result
            finally:
                current_scope.reset(reset)

        handlers = run.node_handlers(node)
        if handlers:
            # Everything the node calls — with this config or none — inherits the handlers.
            config = with_handlers(config, handlers)
            config_reset = var_child_runnable_config.set(config)
        reset = current_scope.set(NodeScope(node_id, node_id, run))
        try:
            await run.on_signal(NodeStarted(node_id))
            started = perf_counter()
            try:
                result = await call(owner, state, config)
                if is_condition:
                    result = _route(result, node, known)
            except GraphBubbleUp:
                raise  # LangGraph control flow (interrupts, parent commands), not a failure
            except Exception as exc:
                run.on_signal_nowait(NodeFailed(node_id, exc))
                raise
            await run.on_signal(NodeEnded(node_id, (perf_counter() - started) * 1000.0))
            return result
        finally:
            current_scope.reset(reset)
            if handlers:
                var_child_runnable_config.reset(config_reset)

    run_node.__name__ = node_id
    return run_node


# --------------------------------------------------------------------------- compiling


def compile_workflow(cls: type, *, force: bool = False) -> CompiledWorkflow:
    """The class's :class:`CompiledWorkflow`, building it on first use (or when ``force``).

    Cost: building and compiling the ``StateGraph`` — milliseconds, once per class.
    Raises :class:`WorkflowError` for a class without nodes or state, duplicate node ids, or
    edges naming unknown nodes.
    """
    if not force:
        cached = cls.__dict__.get(COMPILED_ATTR)
        if cached is not None:
            return cast(CompiledWorkflow, cached)
    options = _workflow_options(cls)
    name = options.name or cls.__name__
    state_schema = _state_schema(cls, options)
    collected = _collect_nodes(cls)
    order = _node_ids(cls, collected)
    nodes = _node_defs(collected, order, options)
    graph = _build_graph(cls, name, state_schema, nodes, order, options)
    token_nodes = {nid: n.token for nid, n in nodes.items() if n.token is not None}
    kinds: set[StreamEventType] = set().union(*(n.events.kinds for n in nodes.values()))
    compiled = CompiledWorkflow(
        name=name,
        options=options,
        state_schema=state_schema,
        graph=graph,
        nodes=nodes,
        order=order,
        token_nodes=token_nodes,
        token_metadata_nodes=frozenset(
            nid
            for nid, t in token_nodes.items()
            if t.processor is not None or t.include_metadata or t.format == "structured"
        ),
        stream_modes=_stream_modes(kinds),
    )
    setattr(cls, COMPILED_ATTR, compiled)
    return compiled


def _workflow_options(cls: type) -> WorkflowOptions:
    """The class's ``@workflow`` options; inherited ones keep everything but the name (a
    subclass is its own workflow)."""
    options: WorkflowOptions = getattr(cls, WORKFLOW_ATTR, None) or WorkflowOptions()
    if WORKFLOW_ATTR in cls.__dict__:
        return options
    return WorkflowOptions(
        name=None,
        streaming=options.streaming,
        channels=options.channels,
        edges=options.edges,
        progress=options.progress,
        description=options.description,
    )


def _state_schema(cls: type, options: WorkflowOptions) -> Any:
    """``State`` of ``DeclarativeWorkflowBase[State]`` in the class's bases, else a
    ``TypedDict`` built from ``@workflow(channels=...)``."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            # Only the class that carries the marker itself: a user's generic subclass of it
            # inherits the attribute but its type arguments are not the state.
            if vars(typing.get_origin(base) or object).get(STATE_BASE_ATTR, False):
                args = typing.get_args(base)
                if args and not isinstance(args[0], typing.TypeVar) and args[0] is not Any:
                    return args[0]
    if options.channels:
        fields: dict[str, Any] = {}
        for key, value in options.channels.items():
            if value is None:
                fields[key] = Any
            elif isinstance(value, type) or typing.get_origin(value) is not None:
                fields[key] = value
            elif callable(value):
                fields[key] = Annotated[Any, value]
            else:
                raise WorkflowError(
                    f"channel {key!r} of {cls.__name__}: give None, a type or a reducer "
                    f"function, got {value!r}",
                    code="bad_channels",
                )
        return TypedDict(f"{cls.__name__}State", fields, total=False)  # type: ignore[operator]
    raise WorkflowError(
        f"{cls.__name__} has no state type: derive from DeclarativeWorkflowBase[YourState] "
        "(a TypedDict) or pass @workflow(channels={...})",
        code="no_state",
    )


def _collect_nodes(cls: type) -> list[tuple[str, Any, NodeSpec]]:
    """``(attribute, target, spec)`` of every node of the class, base classes first, in
    definition order. Raises when there is none, or when a method has ``@stream_*`` but no
    ``@node``."""
    seen: dict[str, tuple[str, Any, NodeSpec]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            spec = getattr(value, SPEC_ATTR, None) if not isinstance(value, type) else None
            if isinstance(spec, NodeSpec):
                seen[attr] = (attr, value, spec)
            elif attr in seen:
                del seen[attr]  # overridden without decorators: no longer a node
    collected = list(seen.values())
    bare = [attr for attr, _, spec in collected if spec.node is None]
    if bare:
        raise WorkflowError(
            f"{cls.__name__}: {', '.join(bare)} {'has' if len(bare) == 1 else 'have'} streaming "
            "decorators but no @node; add @node(type=...) to make it a node",
            code="bad_node",
        )
    if not collected:
        raise WorkflowError(
            f"{cls.__name__} has no nodes; decorate its async methods with @node(type=...)",
            code="no_nodes",
        )
    return collected


def _node_ids(cls: type, collected: list[tuple[str, Any, NodeSpec]]) -> list[str]:
    """Node ids in definition order (``@node(name=...)`` or the attribute name), unique."""
    order: list[str] = []
    for attr, _, spec in collected:
        node_id = (spec.node.name if spec.node is not None else None) or attr
        if node_id in order:
            raise WorkflowError(
                f"{cls.__name__}: two nodes are named {node_id!r}; give one @node(name=...)",
                code="duplicate_node",
            )
        order.append(node_id)
    return order


def _node_defs(
    collected: list[tuple[str, Any, NodeSpec]], order: list[str], options: WorkflowOptions
) -> dict[str, NodeDef]:
    """Each node's :class:`NodeDef`: what it runs, streams and where it goes by default."""
    nodes: dict[str, NodeDef] = {}
    for index, (attr, target, spec) in enumerate(collected):
        assert spec.node is not None  # _collect_nodes refused nodes without @node
        node_id = order[index]
        token = spec.token if spec.token is not None and spec.token.enabled else None
        progress = spec.progress if spec.progress is not None and spec.progress.enabled else None
        events = _event_plan(spec, options)
        nodes[node_id] = NodeDef(
            node_id=node_id,
            attr=attr,
            target=target,
            options=spec.node,
            token=token,
            events=events,
            progress=progress,
            default_next=order[index + 1] if index + 1 < len(order) else END,
            pass_config=not isinstance(target, SubgraphNode) and _accepts_config(target),
            captures_tools=not _TOOL_EVENTS.isdisjoint(events.kinds),
        )
    return nodes


def _event_plan(spec: NodeSpec, options: WorkflowOptions) -> EventPlan:
    opts: StreamEventOptions | None = spec.event
    if opts is None:
        return EventPlan(DEFAULT_NODE_EVENTS if options.streaming else frozenset())
    if not opts.enabled:
        return EventPlan(frozenset())
    kinds = set(opts.events)
    if options.streaming:
        kinds.add(StreamEventType.ERROR)  # a failing node is never silent while streaming
    batch = opts.batch_size or 1
    if opts.buffer_size is not None:
        batch = min(batch, opts.buffer_size)
    return EventPlan(
        frozenset(kinds),
        EventFilter(opts.filter) if opts.filter is not None else None,
        opts.transformer,
        opts.delivery,
        batch,
    )


def _accepts_config(fn: Any) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) >= 3 or any(p.name == "config" for p in params[2:])


def _build_graph(
    cls: type,
    name: str,
    state_schema: Any,
    nodes: dict[str, NodeDef],
    order: list[str],
    options: WorkflowOptions,
) -> Any:
    """The compiled ``StateGraph``: one node function per node, then the edges."""
    known = frozenset(order) | {END}
    builder: StateGraph[Any] = StateGraph(state_schema)
    for node_id, node_def in nodes.items():
        fn = _make_node_function(node_def, known)
        if node_def.is_condition:
            builder.add_node(node_id, fn, destinations=tuple(sorted(known - {node_id})))
        else:
            builder.add_node(node_id, fn)
    if options.edges is not None:
        _add_explicit_edges(cls, builder, options.edges, nodes, order)
    else:
        builder.add_edge(START, order[0])
        for node_id in order:
            if not nodes[node_id].is_condition:
                builder.add_edge(node_id, nodes[node_id].default_next)
    try:
        return builder.compile(name=name)
    except ValueError as exc:
        raise WorkflowError(f"{cls.__name__} does not compile: {exc}", code="bad_graph") from exc


def _add_explicit_edges(
    cls: type,
    builder: StateGraph[Any],
    edges: Sequence[Any],
    nodes: dict[str, NodeDef],
    order: list[str],
) -> None:
    """``@workflow(edges=[...])``: each ``(source, target)`` pair, checked; an edge from
    ``START`` to the first node when none leaves ``START``."""

    def check(ids: list[str], edge: Any) -> None:
        for node_id in ids:
            if node_id not in nodes and node_id not in (START, END):
                raise WorkflowError(
                    f"{cls.__name__}: edge {edge!r} names unknown node {node_id!r}; nodes are "
                    f"{order}",
                    code="bad_edge",
                    context={"node_id": node_id},
                )

    has_entry = False
    for edge in edges:
        try:
            source, dest = edge
        except (TypeError, ValueError):
            raise WorkflowError(
                f"{cls.__name__}: an edge is a (source, target) pair, got {edge!r}",
                code="bad_edge",
            ) from None
        sources, dests = _as_list(source), _as_list(dest)
        check(sources, edge)
        check(dests, edge)
        routed = [s for s in sources if s in nodes and nodes[s].is_condition]
        if routed:
            raise WorkflowError(
                f"{cls.__name__}: {routed[0]!r} is a condition node; it routes by its "
                "return value, so give it no outgoing edge",
                code="bad_edge",
            )
        if START in sources:
            has_entry = True
        for target_id in dests:
            builder.add_edge(sources if len(sources) > 1 else sources[0], target_id)
    if not has_entry:
        builder.add_edge(START, order[0])


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _stream_modes(kinds: set[StreamEventType]) -> tuple[str, ...]:
    """The LangGraph stream modes a run needs: ``values`` for the final state, ``updates`` and
    ``debug`` only when a node publishes them. Tokens and node signals never travel through
    LangGraph's stream (see :mod:`streaming_module.workflow.capture`)."""
    modes = ["values"]
    if kinds & {StreamEventType.UPDATES, StreamEventType.VALUES}:
        modes.insert(0, "updates")
    if StreamEventType.DEBUG in kinds:
        modes.append("debug")
    return tuple(modes)


__all__ = [
    "COMPILED_ATTR",
    "RUN_KEY",
    "SELF_KEY",
    "CompiledWorkflow",
    "EventPlan",
    "NodeDef",
    "compile_workflow",
]
