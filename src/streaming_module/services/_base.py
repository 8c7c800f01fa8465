"""What the three services share: options, clock, hub, the closed state, the id checks, and what
a stream does when a user callback of it fails.

A user callback — a token stream's ``processor``, an event ``transformer``, a progress
``calculator`` — runs on one item at a time (a token, an event, a progress report). When it raises
(or returns something unusable), the service drops that item's output and carries on: the stream
stays open, the caller is not interrupted, and every later item is offered to the callback again
(one that fails once and works afterwards loses only what it failed on). The first failure of a
callback for a node of an execution is published on that stream as one ``error`` update
(:data:`CALLBACK_FAILED`, see :func:`callback_error_data`) and logged once, with its traceback;
later failures of the same callback for the same node and execution are only counted (tokens:
``tokens_dropped``) and logged at debug level. :meth:`ServiceBase._callback_failed` is that one
code path for the three services.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar

from streaming_module.config import StreamingModuleOptions, parse_options
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.errors import CALLBACK_FAILED, INVALID_ID, SERVICE_CLOSED, StreamingError
from streaming_module.services.hub import Hub
from streaming_module.types import (
    RESERVED_METADATA_KEYS,
    StreamEventType,
    StreamMetadata,
    StreamUpdate,
)

D = TypeVar("D")
X = TypeVar("X")


CallbackKind = Literal["processor", "transformer", "calculator"]
"""The user callbacks a stream runs: a token stream's ``processor``, an event ``transformer``, a
progress tracker's ``calculator``."""

CallbackErrorUpdate = StreamUpdate[dict[str, Any]]
"""The ``error`` update (type :attr:`StreamEventType.ERROR`, data :func:`callback_error_data`) a
stream carries, besides its own kind of updates, when a user callback of it fails."""

_CALLBACKS: dict[str, tuple[str, str]] = {
    "processor": ("token processor", "the tokens it fails on are dropped"),
    "transformer": ("event transformer", "the events it fails on are dropped"),
    "calculator": ("progress calculator", "the progress reports it fails on are dropped"),
}

# (node_id, callback) pairs that have reported a failure, per execution.
_Failures = dict[str, set[tuple[str | None, str]]]


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


def callback_error_data(
    callback: CallbackKind, node_id: str | None, error: BaseException
) -> dict[str, Any]:
    """The ``data`` of the ``error`` update for a failed user callback::

        {"code": "callback_failed", "message": "the token processor of node 'write' failed
         (RuntimeError: boom); the tokens it fails on are dropped", "callback": "processor",
         "node": "write", "error": "boom", "error_type": "RuntimeError"}

    ``node``, ``error`` and ``error_type`` are named as in a failed node's ``error`` event;
    ``node`` is ``None`` for an execution-level progress tracker."""
    what, dropped = _CALLBACKS[callback]
    where = f"node {node_id!r}" if node_id is not None else "the execution"
    kind = type(error).__name__
    text = str(error) or kind
    return {
        "code": CALLBACK_FAILED,
        "message": f"the {what} of {where} failed ({kind}: {text}); {dropped}",
        "callback": callback,
        "node": node_id,
        "error": text,
        "error_type": kind,
    }


class ServiceBase(Generic[D]):
    """Base of the three services, whose updates carry ``D`` data.

    ``options`` (a :class:`StreamingModuleOptions`, a dict with the same keys, or ``None`` for
    the defaults) is validated once (a bad one raises ``StreamingConfigError`` naming each bad
    key); ``clock`` (default :class:`SystemClock`) gives every timestamp and timer. Updates go
    through ``self._hub`` (:class:`~streaming_module.services.hub.Hub`), whose streams are
    named after ``_hub_name`` and whose raising subscribers are logged on ``_logger``. Errors are
    raised as ``error_type``: :data:`SERVICE_CLOSED` once ``aclose()`` ran,
    :data:`INVALID_ID` for a bad id. A user callback that fails is reported with
    :meth:`_callback_failed` (see the module docstring).
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
        self._hub: Hub[StreamUpdate[D] | CallbackErrorUpdate] = Hub(self._hub_name, self._logger)
        self._closed = False
        self._callback_failures: _Failures = {}

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
        update = self._new_update(kind, data, execution_id, node_id, agent_type, extras)
        self._hub.publish(execution_id, node_id, update)
        return update

    def _new_update(
        self,
        kind: StreamEventType,
        data: X,
        execution_id: str,
        node_id: str | None,
        agent_type: str | None,
        extras: dict[str, Any],
    ) -> StreamUpdate[X]:
        return StreamUpdate(
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

    # ------------------------------------------------------------------ failing user callbacks

    def _callback_failed(
        self,
        callback: CallbackKind,
        execution_id: str,
        node_id: str | None,
        error: BaseException,
        *,
        before: Callable[[], None] | None = None,
    ) -> None:
        """A user callback of the stream ``(execution_id, node_id)`` failed with ``error`` on one
        item, whose output the caller drops. The first time for this callback, node and
        execution: log it (with the traceback), call ``before`` (the token service flushes what
        came before the failure, so it reaches subscribers ahead of the error), then publish one
        ``error`` update (priority ``high``, data :func:`callback_error_data`) on the stream.
        Later times: a debug log line only. What is remembered (a pair per failed callback and
        node) is forgotten with the execution: :meth:`_forget_callback_failures`."""
        data = self._first_failure(self._callback_failures, callback, execution_id, node_id, error)
        if data is None:
            return
        if before is not None:
            before()
        update = self._new_update(
            StreamEventType.ERROR, data, execution_id, node_id, None, {"priority": "high"}
        )
        self._hub.publish(execution_id, node_id, update)

    def _first_failure(
        self,
        seen: _Failures,
        callback: CallbackKind,
        execution_id: str | None,
        node_id: str | None,
        error: BaseException,
    ) -> dict[str, Any] | None:
        """The error data to report when this is the first failure of ``callback`` for
        ``(execution_id, node_id)`` in ``seen`` (logged once, at error level), else ``None``
        (logged at debug level)."""
        key = (node_id, callback)
        failed = seen.setdefault(execution_id or "", set())
        stream = f"{execution_id}:{node_id}" if node_id is not None else str(execution_id)
        if key in failed:
            if self._logger.isEnabledFor(logging.DEBUG):
                self._logger.debug(
                    "the %s of %s failed again (%s: %s)",
                    _CALLBACKS[callback][0],
                    stream,
                    type(error).__name__,
                    error,
                )
            return None
        failed.add(key)
        data = callback_error_data(callback, node_id, error)
        self._logger.error(
            "%s (stream %s; an error event says so on it; further failures of this %s there "
            "are logged at debug level)",
            data["message"],
            stream,
            callback,
            exc_info=error,
        )
        return data

    def _forget_callback_failures(self, execution_id: str | None = None) -> None:
        """Forget which callbacks failed in ``execution_id`` (every execution when ``None``):
        a later run with the same id reports afresh."""
        if execution_id is None:
            self._callback_failures.clear()
        else:
            self._callback_failures.pop(execution_id, None)


__all__ = [
    "CALLBACK_FAILED",
    "CallbackErrorUpdate",
    "CallbackKind",
    "ServiceBase",
    "callback_error_data",
    "require_id",
    "split_metadata",
]
