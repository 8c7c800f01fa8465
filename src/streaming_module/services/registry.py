"""Which container a workflow takes its services from when none are passed to it.

Nothing here is global wiring: a container is *found*, by these rules, in this order
(:func:`container_for`):

1. a live container that wired the workflow class's module (``StreamingModule.for_root(...,
   wire=[...])`` or ``container.wire(...)``) — the latest one, as with dependency-injector's own
   wiring of ``@inject`` functions;
2. the container whose resources run in the current context: ``async with container:`` or
   ``await container.init_resources()`` make it current until shutdown, for the code and the
   tasks started inside (a :class:`~contextvars.ContextVar`);
3. the only live container;
4. otherwise a :class:`~streaming_module.errors.WorkflowError` that says how to choose.

A container is *live* from the moment ``for_root`` builds it (or its resources start) until its
resources are shut down or nothing references it any more: the registry holds weak references
only. When several containers look live, a full garbage collection runs before the choice is
called ambiguous, so containers nobody refers to any more (an earlier test's, say) do not count.
It costs ~50 ms with LangGraph loaded, and only on that path: a workflow created with neither
services, a wired module nor a running container while several containers exist.

This module sits below ``workflow/`` so that the workflow layer never imports the container; the
container registers itself here.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from streaming_module.errors import WorkflowError

if TYPE_CHECKING:
    from streaming_module.services.event_processor import EventStreamProcessorService
    from streaming_module.services.progress_tracking import ProgressTrackingService
    from streaming_module.services.token_streaming import TokenStreamingService

logger = logging.getLogger("streaming_module.services")


class ServiceSource(Protocol):
    """What a workflow needs of a container: one provider per service. A
    :class:`~streaming_module.container.StreamingContainer` is one."""

    @property
    def token_streaming(self) -> Callable[[], TokenStreamingService]: ...

    @property
    def event_processor(self) -> Callable[[], EventStreamProcessorService]: ...

    @property
    def progress_tracking(self) -> Callable[[], ProgressTrackingService]: ...


_Ref = weakref.ReferenceType[ServiceSource]

# id(container) -> weak reference, in registration order (the latest last).
_live: dict[int, _Ref] = {}
_current: contextvars.ContextVar[_Ref | None] = contextvars.ContextVar(
    "streaming_module_current_container", default=None
)
# id(container) -> the ContextVar tokens of its activations, innermost last.
_activations: dict[int, list[contextvars.Token[_Ref | None]]] = {}


def register(source: ServiceSource) -> None:
    """Make ``source`` live (idempotent). ``StreamingModule.for_root`` calls it."""
    key = id(source)
    known = _live.get(key)
    if known is not None and known() is source:
        return

    def gone(ref: _Ref, key: int = key) -> None:
        if _live.get(key) is ref:
            del _live[key]
            _activations.pop(key, None)

    _live[key] = weakref.ref(source, gone)


def unregister(source: ServiceSource) -> None:
    """``source`` is no longer live (its resources were shut down)."""
    key = id(source)
    known = _live.get(key)
    if known is not None and known() is source:
        del _live[key]


def activate(source: ServiceSource) -> None:
    """Make ``source`` live and current in the caller's context (its resources are starting)."""
    register(source)
    token = _current.set(weakref.ref(source))
    _activations.setdefault(id(source), []).append(token)


def deactivate(source: ServiceSource) -> None:
    """Undo :func:`activate` in the caller's context (its resources are shutting down)."""
    tokens = _activations.get(id(source))
    token = tokens.pop() if tokens else None
    if tokens == []:
        del _activations[id(source)]
    if token is not None:
        try:
            _current.reset(token)
            return
        except (ValueError, RuntimeError):
            # Shut down from another context than the one that started it (a test fixture's
            # teardown, a different task): leave that context alone, fix the caller's below.
            pass
    ref = _current.get()
    if ref is not None and ref() is source:
        _current.set(None)


def current() -> ServiceSource | None:
    """The live container whose resources run in this context, if any."""
    ref = _current.get()
    source = ref() if ref is not None else None
    return source if source is not None and _is_live(source) else None


def live() -> list[ServiceSource]:
    """The live containers, oldest first."""
    # A copy first: a container collected meanwhile removes itself from _live.
    sources = (ref() for ref in _live.copy().values())
    return [source for source in sources if source is not None]


def container_for(cls: type, *, missing: Sequence[str] = ()) -> ServiceSource:
    """The container a new instance of workflow class ``cls`` takes its services from (see the
    module docstring for the order). ``missing`` names the services wanted, for the error.

    Raises :class:`WorkflowError` (code ``not_wired`` when no container is live,
    ``ambiguous_container`` when several are and none is wired to ``cls``'s module or current).
    """
    wired = _wired_to(cls)
    if wired is not None:
        return wired
    running = current()
    if running is not None:
        return running
    if len(_live) > 1:
        gc.collect()  # holding no container meanwhile: the unreferenced ones are dropped
    candidates = live()
    if len(candidates) == 1:
        return candidates[0]
    name = cls.__name__
    needs = ", ".join(missing) or "services"
    passing = (
        "pass container=... or the services themselves "
        "(token_streaming=..., event_processor=..., progress_tracking=...)"
    )
    if not candidates:
        raise WorkflowError(
            f"{name} has no {needs}: no streaming container is live. Build one first with "
            f"StreamingModule.for_root(...), or {passing}.",
            code="not_wired",
            context={"missing": list(missing), "live_containers": 0},
        )
    raise WorkflowError(
        f"{name} has no {needs}, and {len(candidates)} streaming containers are live (a "
        "container counts until it is shut down or nothing refers to it): say which one it "
        "belongs to. Create the workflow inside `async with container:` (or after `await "
        "container.init_resources()`) of that container, wire its module with "
        f"StreamingModule.for_root(..., wire=[{cls.__module__!r}]), or {passing}.",
        code="ambiguous_container",
        context={"missing": list(missing), "live_containers": len(candidates)},
    )


def _is_live(source: ServiceSource) -> bool:
    known = _live.get(id(source))
    return known is not None and known() is source


def _wired_to(cls: type) -> ServiceSource | None:
    """The latest live container that wired the module of ``cls`` or of one of its bases."""
    modules = list(dict.fromkeys(klass.__module__ for klass in cls.__mro__))
    sources = live()
    for module in modules:
        for source in reversed(sources):
            if _wires(source, module):
                logger.debug("%s takes its services from the container wired to %s", cls, module)
                return source
    return None


def _wires(source: Any, module_name: str) -> bool:
    # dependency-injector records what a container wired (and forgets it on unwire()).
    for module in getattr(source, "wired_to_modules", ()):
        if getattr(module, "__name__", None) == module_name:
            return True
    for package in getattr(source, "wired_to_packages", ()):
        name = getattr(package, "__name__", None)
        if name is not None and (module_name == name or module_name.startswith(name + ".")):
            return True
    return False


__all__ = [
    "ServiceSource",
    "activate",
    "container_for",
    "current",
    "deactivate",
    "live",
    "register",
    "unregister",
]
