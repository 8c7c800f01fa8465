"""``StreamingModule.for_root``: options in, a ready container out."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from dependency_injector import providers

from streaming_module.config import StreamingModuleOptions, merge_options, parse_options
from streaming_module.container import StreamingContainer
from streaming_module.errors import StreamingConfigError

logger = logging.getLogger("streaming_module.module")

# Always wired, so DeclarativeWorkflowBase finds its services in the container for_root built
# without the user passing them. (Wiring is global: the latest for_root wins.)
_ALWAYS_WIRED = ("streaming_module.workflow.base",)


class StreamingModule:
    """The Python form of NestJS's ``StreamingModule``."""

    @staticmethod
    def for_root(
        options: StreamingModuleOptions | Mapping[str, Any] | None = None,
        /,
        wire: Iterable[str | ModuleType] | None = None,
        **kwargs: Any,
    ) -> StreamingContainer:
        """Validate ``options`` and build a :class:`StreamingContainer`.

        ``options`` is a :class:`StreamingModuleOptions`, a dict (snake_case or the manual's
        camelCase keys) or ``None``; keyword arguments are merged over it
        (``for_root(websocket={"enabled": False}, default_buffer_size=10)``). ``wire`` lists
        modules or packages (objects or dotted names) whose ``@inject`` functions should receive
        this container's providers.

        Raises :class:`StreamingConfigError` listing every bad field. Nothing is started:
        ``await container.init_resources()`` (or ``async with container:``) starts the server
        when ``websocket.enabled``; ``shutdown_resources()`` stops everything.
        """
        validated = _validate(options, kwargs)
        container = StreamingContainer()
        container.options.set_default(providers.Object(validated))
        container.config.set_default(validated.model_dump())
        modules, packages = _split_wiring(wire)
        container.wire(modules=modules, packages=packages)
        # Built eagerly so every update published from now on reaches the broker (and so any
        # client that resumes), even before the server starts.
        container.bridge()
        logger.debug(
            "streaming container built (websocket=%s, broker=%s)",
            validated.websocket.enabled,
            validated.broker.backend,
        )
        return container

    # The manual's spelling.
    forRoot = for_root


def _validate(
    options: StreamingModuleOptions | Mapping[str, Any] | None, kwargs: Mapping[str, Any]
) -> StreamingModuleOptions:
    if not kwargs:
        return parse_options(StreamingModuleOptions, options, what="streaming module options")
    merged = merge_options(StreamingModuleOptions, options, kwargs, what="streaming module options")
    return parse_options(StreamingModuleOptions, merged, what="streaming module options")


def _split_wiring(
    wire: Iterable[str | ModuleType] | None,
) -> tuple[list[ModuleType], list[ModuleType]]:
    modules: list[ModuleType] = []
    packages: list[ModuleType] = []
    targets: list[str | ModuleType] = [*_ALWAYS_WIRED, *(wire or ())]
    for target in targets:
        if isinstance(target, str):
            try:
                target = importlib.import_module(target)
            except ImportError as exc:
                raise StreamingConfigError(
                    f"cannot wire {target!r}: {exc}. Pass an importable module or package name, "
                    "or the module object itself.",
                    errors=[("wire", str(exc))],
                ) from exc
        if not isinstance(target, ModuleType):
            raise StreamingConfigError(
                f"cannot wire {target!r}: expected a module, a package or a dotted name",
                errors=[("wire", f"not a module: {target!r}")],
            )
        (packages if hasattr(target, "__path__") else modules).append(target)
    return modules, packages


__all__ = ["StreamingModule"]
