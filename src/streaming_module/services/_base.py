"""What the three services share: options, clock, hub, the closed state and the id checks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from streaming_module.config import StreamingModuleOptions, parse_options
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.errors import INVALID_ID, SERVICE_CLOSED, StreamingError
from streaming_module.services.hub import Hub
from streaming_module.types import (
    RESERVED_METADATA_KEYS,
    StreamEventType,
    StreamMetadata,
    StreamUpdate,
)

D = TypeVar("D")


def require_id(value: object, what: str, error: type[StreamingError]) -> str:
    """``value`` if it is a non-blank string, else ``error`` (code :data:`INVALID_ID`) saying
    what was wrong with ``what``."""
    if not isinstance(value, str):
        raise error(
            f"{what} must be a str, got {type(value).__name__} ({value!r})",
            code=INVALID_ID,
            context={what: repr(value)},
        )
    if not value.strip():
        raise error(
            f"{what} must be a non-empty string, got {value!r}",
            code=INVALID_ID,
            context={what: value},
        )
    return value


def split_metadata(
    metadata: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], Any, Any]:
    """A caller's metadata as ``(extras, node_id, agent_type)``: every key outside
    :data:`~streaming_module.types.RESERVED_METADATA_KEYS` becomes an extra (keys as ``str``);
    ``node_id`` and ``agent_type`` are handed back (``None`` when absent) for the service to use
    as it documents; ``timestamp``, ``sequence_number`` and ``execution_id`` are dropped."""
    extras: dict[str, Any] = {}
    if not metadata:
        return extras, None, None
    for key, value in metadata.items():
        if key not in RESERVED_METADATA_KEYS:
            extras[str(key)] = value
    return extras, metadata.get("node_id"), metadata.get("agent_type")


class ServiceBase(Generic[D]):
    """Base of the three services, whose updates carry ``D`` data.

    ``options`` (a :class:`StreamingModuleOptions`, a dict with the same keys, or ``None`` for
    the defaults) is validated once (a bad one raises ``StreamingConfigError`` naming each bad
    key); ``clock`` (default :class:`SystemClock`) gives every timestamp and timer. Updates go
    through ``self._hub`` (:class:`~streaming_module.services.hub.Hub`), whose streams are
    named after ``_hub_name`` and whose raising subscribers are logged on ``_logger``. Errors are
    raised as ``error_type``: :data:`SERVICE_CLOSED` once ``aclose()`` ran,
    :data:`INVALID_ID` for a bad id.
    """

    error_type: ClassVar[type[StreamingError]] = StreamingError
    _hub_name: ClassVar[str] = "stream"
    _logger: ClassVar[logging.Logger] = logging.getLogger("streaming_module")

    def __init__(
        self,
        options: StreamingModuleOptions | Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.options: StreamingModuleOptions = parse_options(
            StreamingModuleOptions, options, what="streaming module options"
        )
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._hub: Hub[StreamUpdate[D]] = Hub(self._hub_name, self._logger)
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` ran."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            name = type(self).__name__
            raise self.error_type(
                f"cannot {what}: this {name} was closed (aclose); build a new one, or restart "
                "the container",
                code=SERVICE_CLOSED,
                context={"service": name},
            )

    def _check_id(self, value: object, what: str) -> str:
        return require_id(value, what, self.error_type)

    def _publish_new(
        self,
        kind: StreamEventType,
        data: D,
        execution_id: str,
        node_id: str | None,
        agent_type: str | None,
        extras: dict[str, Any],
    ) -> StreamUpdate[D]:
        """A new update of ``execution_id``, stamped now and numbered next, published."""
        update = StreamUpdate(
            kind,
            data,
            StreamMetadata(
                self.clock.now(),
                self._hub.next_sequence(execution_id),
                execution_id,
                node_id,
                agent_type,
                **extras,
            ),
        )
        self._hub.publish(execution_id, node_id, update)
        return update


__all__ = ["ServiceBase", "require_id", "split_metadata"]
