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
from streaming_module.services import registry

logger = logging.getLogger("streaming_module.module")


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
        this container's providers; workflow classes defined there take their services from it
        too. Nothing else is wired: several containers can live in one process.

        Raises :class:`StreamingConfigError` listing every bad field. Nothing runs yet, so a
        test overrides providers here with no reset (``container.token_streaming.override(fake)``):
        ``await container.init_resources()`` (or ``async with container:``) builds the bridge
        that forwards the services' updates to the broker, and starts the server when
        ``websocket.enabled``; ``shutdown_resources()`` stops everything. A
        :class:`~streaming_module.workflow.DeclarativeWorkflowBase` created without services
        takes this container's when its module is in ``wire``, when it is created while this
        container runs in the current context, or when this is the only live container (see
        :mod:`streaming_module.services.registry`).
        """
        validated = _validate(options, kwargs)
        container = StreamingContainer()
        container.options.set_default(providers.Object(validated))
        container.config.set_default(validated.model_dump())
        modules, packages = _split_wiring(wire)
        if modules or packages:
            container.wire(modules=modules, packages=packages)
        registry.register(container)
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
    for target in wire or ():
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
