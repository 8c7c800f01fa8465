"""The declarative decorators: ``@workflow``, ``@node`` and the ``@stream_*`` trio.

They only *record* what they are given: options are validated here, at class definition time (a
bad key raises :class:`~streaming_module.errors.StreamingConfigError` naming it), and stored on the
method in a :class:`NodeSpec`. Nothing is wrapped: the method stays a plain method, callable and
testable on its own. The records themselves are the types of :mod:`streaming_module.workflow.spec`;
:mod:`streaming_module.workflow.compile` reads them when the class compiles to a LangGraph
``StateGraph`` (``@workflow`` compiles it right away, so a malformed graph fails at class
definition).

Every ``@stream_*`` decorator takes its options as a model, a dict (snake_case or the manual's
camelCase keys) or keyword arguments, and works bare (``@stream_token``) or called
(``@stream_token(buffer_size=50)``). Decorator order does not matter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from streaming_module.config import (
    StreamEventOptions,
    StreamProgressOptions,
    StreamTokenOptions,
    merge_options,
    parse_options,
)
from streaming_module.errors import StreamingConfigError, WorkflowError
from streaming_module.workflow.compile import compile_workflow
from streaming_module.workflow.spec import (
    NODE_TYPES,
    WORKFLOW_ATTR,
    Edge,
    NodeOptions,
    NodeSpec,
    NodeType,
    SubgraphNode,
    WorkflowOptions,
    spec_of,
)

T = TypeVar("T")
C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


def _target_name(target: Any) -> str:
    return str(getattr(target, "__name__", None) or type(target).__name__)


def _is_decoratable(value: Any) -> bool:
    return inspect.isfunction(value) or isinstance(value, SubgraphNode)


def _options(model: type[BaseModel], given: Any, kwargs: Mapping[str, Any], what: str) -> Any:
    if kwargs:
        base = given if isinstance(given, BaseModel | Mapping) else None
        return parse_options(model, merge_options(model, base, kwargs, what=what), what=what)
    return parse_options(model, given, what=what)


def _keywords(given: Mapping[str, Any], allowed: Sequence[str], what: str) -> dict[str, Any]:
    """The manual's options object (``@Node({ type: 'llm' })``) as keyword arguments; unknown
    keys raise :class:`StreamingConfigError` naming them."""
    unknown = [key for key in given if key not in allowed]
    if unknown:
        errors = [
            (str(key), f"unknown option {key!r}; use {', '.join(map(repr, allowed))}")
            for key in unknown
        ]
        lines = "\n".join(f"  - {path}: {msg}" for path, msg in errors)
        raise StreamingConfigError(
            f"invalid {what} ({len(errors)} problem{'s' if len(errors) != 1 else ''}):\n{lines}",
            errors=errors,
            context={"fields": [path for path, _ in errors]},
        )
    return dict(given)


def _with_method_name(opts: Any, target: Any) -> Any:
    if getattr(opts, "method_name", None) is None:
        # model_copy keeps fields_set, so defaults the services resolve stay unset.
        return opts.model_copy(update={"method_name": _target_name(target)})
    return opts


# --------------------------------------------------------------------------- @node


@overload
def node(target: Mapping[str, Any], /) -> Callable[[T], T]: ...


@overload
def node(target: T, /) -> T: ...


@overload
def node(
    target: None = None,
    /,
    *,
    type: NodeType = "task",
    name: str | None = None,
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Callable[[T], T]: ...


@overload
def node(
    target: Any,
    /,
    *,
    type: NodeType = "task",
    name: str | None = None,
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Any: ...


def node(
    target: Any = None,
    /,
    *,
    type: NodeType = "task",
    name: str | None = None,
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """Mark an async method as a node of the workflow (the manual's ``@Node``).

    ``type`` is ``"llm"``, ``"tool"``, ``"condition"`` or ``"task"``: a ``condition`` node routes
    (it returns the next node's name, ``END``, or a LangGraph ``Command``); a ``tool`` node also
    publishes ``tool_start``/``tool_complete`` around its body. ``name`` is the node id (default:
    the method's name) used as the LangGraph node name, ``metadata.node_id`` and a token frame's
    ``nodeId``.

    ``node(compiled_graph, name="research")`` (or a workflow instance) makes a subgraph node as a
    class attribute: ``research = node(research_graph)``. The manual's options object works too:
    ``@node({"type": "llm"})``.
    """
    if isinstance(target, Mapping):
        given = _keywords(target, ("type", "name", "description", "metadata"), "@node options")
        return node(
            type=given.get("type", type),
            name=given.get("name", name),
            description=given.get("description", description),
            metadata=given.get("metadata", metadata),
        )
    if type not in NODE_TYPES:
        raise WorkflowError(
            f"unknown node type {type!r}; use one of {', '.join(map(repr, NODE_TYPES))}",
            code="bad_node",
            context={"type": type},
        )
    if name is not None and (not isinstance(name, str) or not name or name.startswith("__")):
        raise WorkflowError(
            f"a node name must be a non-empty string not starting with '__', got {name!r}",
            code="bad_node",
        )
    options = NodeOptions(type, name, description, dict(metadata or {}))

    def apply(fn: Any) -> Any:
        if not _is_decoratable(fn):
            if hasattr(fn, "ainvoke") or hasattr(fn, "run"):
                fn = SubgraphNode(fn)
            else:
                raise WorkflowError(
                    f"@node decorates an async method or wraps a compiled graph, got {fn!r}",
                    code="bad_node",
                )
        spec_of(fn).node = options
        return fn

    if target is not None:
        return apply(target)
    return apply


# --------------------------------------------------------------------------- @stream_*


def _stream_decorator(
    given: Any,
    kwargs: Mapping[str, Any],
    model: type[BaseModel],
    slot: str,
    what: str,
) -> Any:
    if _is_decoratable(given) and not kwargs:
        target = given
        opts = _with_method_name(parse_options(model, None, what=what), target)
        setattr(spec_of(target), slot, opts)
        return target
    opts = _options(model, given, kwargs, what)

    def apply(target: T) -> T:
        if not _is_decoratable(target):
            raise WorkflowError(
                f"{what.split(' ')[0]} decorates an async method, got {target!r}",
                code="bad_node",
            )
        setattr(spec_of(target), slot, _with_method_name(opts, target))
        return target

    return apply


@overload
def stream_token(options: F, /) -> F: ...


@overload
def stream_token(
    options: StreamTokenOptions | Mapping[str, Any] | None = None, /, **kwargs: Any
) -> Callable[[F], F]: ...


def stream_token(
    options: StreamTokenOptions | Mapping[str, Any] | Callable[..., Any] | None = None,
    /,
    **kwargs: Any,
) -> Any:
    """Stream this node's LLM tokens through ``TokenStreamingService`` (the manual's
    ``@StreamToken``).

    Options (:class:`~streaming_module.config.StreamTokenOptions`): ``enabled``, ``buffer_size``,
    ``batch_size``, ``flush_interval`` (ms), ``format`` (``text|json|structured``),
    ``include_metadata``, ``processor(token, metadata)``, ``filter`` (``min_length``,
    ``max_length``, ``exclude_whitespace``, ``pattern``).
    """
    return _stream_decorator(options, kwargs, StreamTokenOptions, "token", "@stream_token options")


@overload
def stream_event(options: F, /) -> F: ...


@overload
def stream_event(
    options: StreamEventOptions | Mapping[str, Any] | None = None, /, **kwargs: Any
) -> Callable[[F], F]: ...


def stream_event(
    options: StreamEventOptions | Mapping[str, Any] | Callable[..., Any] | None = None,
    /,
    **kwargs: Any,
) -> Any:
    """Choose which events this node publishes (the manual's ``@StreamEvent``).

    Options (:class:`~streaming_module.config.StreamEventOptions`): ``events`` (any of
    ``node_start``, ``node_complete``, ``tool_start``, ``tool_complete``, ``values``,
    ``updates``, ``progress``, ``error``, ``debug``), ``filter`` (event filter criteria),
    ``transformer(event)``, ``delivery`` (recorded in each event's metadata), ``batch_size`` and
    ``buffer_size``.
    """
    return _stream_decorator(options, kwargs, StreamEventOptions, "event", "@stream_event options")


@overload
def stream_progress(options: F, /) -> F: ...


@overload
def stream_progress(
    options: StreamProgressOptions | Mapping[str, Any] | None = None, /, **kwargs: Any
) -> Callable[[F], F]: ...


def stream_progress(
    options: StreamProgressOptions | Mapping[str, Any] | Callable[..., Any] | None = None,
    /,
    **kwargs: Any,
) -> Any:
    """Track this node's progress (the manual's ``@StreamProgress``): 0 % when it starts, 100 %
    when it ends, and whatever it reports with ``await self.progress.update(current, total)``.

    Options (:class:`~streaming_module.config.StreamProgressOptions`): ``enabled``, ``interval``
    (ms), ``granularity``, ``include_eta``, ``include_metrics``, ``milestones``, ``calculator``,
    ``format``.
    """
    return _stream_decorator(
        options, kwargs, StreamProgressOptions, "progress", "@stream_progress options"
    )


@overload
def stream_all(target: F, /) -> F: ...


@overload
def stream_all(
    target: None = None,
    /,
    *,
    token: StreamTokenOptions | Mapping[str, Any] | None = None,
    event: StreamEventOptions | Mapping[str, Any] | None = None,
    progress: StreamProgressOptions | Mapping[str, Any] | None = None,
) -> Callable[[F], F]: ...


def stream_all(
    target: Callable[..., Any] | None = None,
    /,
    *,
    token: StreamTokenOptions | Mapping[str, Any] | None = None,
    event: StreamEventOptions | Mapping[str, Any] | None = None,
    progress: StreamProgressOptions | Mapping[str, Any] | None = None,
) -> Any:
    """``@stream_token`` + ``@stream_event`` + ``@stream_progress`` in one, each with the
    options given (defaults otherwise)."""
    token_opts = parse_options(StreamTokenOptions, token, what="@stream_all token options")
    event_opts = parse_options(StreamEventOptions, event, what="@stream_all event options")
    progress_opts = parse_options(
        StreamProgressOptions, progress, what="@stream_all progress options"
    )

    def apply(fn: T) -> T:
        if not _is_decoratable(fn):
            raise WorkflowError(f"@stream_all decorates an async method, got {fn!r}")
        spec = spec_of(fn)
        spec.token = _with_method_name(token_opts, fn)
        spec.event = _with_method_name(event_opts, fn)
        spec.progress = _with_method_name(progress_opts, fn)
        return fn

    if target is not None:
        return apply(target)
    return apply


# --------------------------------------------------------------------------- @workflow


@overload
def workflow(cls: Mapping[str, Any], /) -> Callable[[C], C]: ...


@overload
def workflow(cls: C, /) -> C: ...


@overload
def workflow(
    cls: None = None,
    /,
    *,
    name: str | None = None,
    streaming: bool = True,
    channels: Mapping[str, Any] | None = None,
    edges: Iterable[Edge] | None = None,
    progress: bool = True,
    description: str | None = None,
) -> Callable[[C], C]: ...


def workflow(
    cls: C | Mapping[str, Any] | None = None,
    /,
    *,
    name: str | None = None,
    streaming: bool = True,
    channels: Mapping[str, Any] | None = None,
    edges: Iterable[Edge] | None = None,
    progress: bool = True,
    description: str | None = None,
) -> Any:
    """Declare a workflow class (the manual's ``@Workflow``) and compile it, once, to a LangGraph
    ``StateGraph``.

    - ``name``: the workflow's name (default: the class name), in every event's data.
    - ``streaming``: with ``True`` (default) nodes without ``@stream_event`` publish
      ``node_start``, ``node_complete`` and ``error``, and the run reports overall progress.
    - ``channels``: the state's keys when the class does not give a state type
      (``DeclarativeWorkflowBase[MyState]``); a value is ``None`` (keep the last write), a type,
      or a reducer such as ``operator.add``.
    - ``edges``: explicit ``(source, target)`` pairs replacing the default "definition order"
      chain; sources and targets are node ids, ``START``/``END`` or lists (fan-out, join).
    - ``progress``: report overall progress across nodes (``node_id=None``) when streaming.

    The manual's options object works too: ``@workflow({"name": ..., "streaming": True,
    "channels": {...}})``.

    Raises :class:`~streaming_module.errors.WorkflowError` when the graph is malformed.
    """
    if isinstance(cls, Mapping):
        given = _keywords(
            cls,
            ("name", "streaming", "channels", "edges", "progress", "description"),
            "@workflow options",
        )
        return workflow(
            name=given.get("name", name),
            streaming=given.get("streaming", streaming),
            channels=given.get("channels", channels),
            edges=given.get("edges", edges),
            progress=given.get("progress", progress),
            description=given.get("description", description),
        )
    opts = WorkflowOptions(
        name=name,
        streaming=streaming,
        channels=dict(channels) if channels is not None else None,
        edges=list(edges) if edges is not None else None,
        progress=progress,
        description=description,
    )

    def apply(klass: C) -> C:
        if not isinstance(klass, type):
            raise WorkflowError(f"@workflow decorates a class, got {klass!r}")
        setattr(klass, WORKFLOW_ATTR, opts)
        compile_workflow(klass, force=True)
        return klass

    if cls is not None:
        return apply(cls)
    return apply


# The manual's CamelCase names.
Workflow = workflow
Node = node
StreamToken = stream_token
StreamEvent = stream_event
StreamProgress = stream_progress
StreamAll = stream_all

__all__ = [
    "Node",
    "NodeOptions",
    "NodeSpec",
    "NodeType",
    "StreamAll",
    "StreamEvent",
    "StreamProgress",
    "StreamToken",
    "SubgraphNode",
    "Workflow",
    "WorkflowOptions",
    "node",
    "spec_of",
    "stream_all",
    "stream_event",
    "stream_progress",
    "stream_token",
    "workflow",
]
