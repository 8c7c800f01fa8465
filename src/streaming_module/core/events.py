"""Pure event logic: event types and priorities, filter criteria, grouping, batching, merging a
transformer's result back into an update.

No asyncio, no reactivex, no clock: everything here takes plain values and returns plain values,
so :class:`~streaming_module.services.event_processor.EventStreamProcessorService` is a thin
adapter around it and the rules are tested without any I/O.

Priorities
    An event's priority is its metadata extra ``priority`` when present, else the default for its
    type: ``error`` → ``high``, ``debug`` → ``low``, anything else → ``medium``
    (:func:`default_priority`). ``min_priority`` keeps events at or above that level, in the
    order ``low < medium < high < critical``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from streaming_module.config import EventFilterCriteria
from streaming_module.errors import EventStreamingError
from streaming_module.types import (
    PRIORITY_ORDER,
    EventPriority,
    StreamEventType,
    StreamMetadata,
    StreamUpdate,
)

T = TypeVar("T")

_DEFAULT_PRIORITY: dict[StreamEventType, EventPriority] = {
    StreamEventType.ERROR: "high",
    StreamEventType.DEBUG: "low",
}

_TYPES_BY_NAME: dict[str, StreamEventType] = {}
for _member in StreamEventType:
    _TYPES_BY_NAME[_member.value] = _member
    _TYPES_BY_NAME[_member.name.lower()] = _member

_UPDATE_FIELDS = ("type", "data", "metadata")


# --------------------------------------------------------------------------- types, priorities


def coerce_event_type(value: StreamEventType | str) -> StreamEventType:
    """``StreamEventType.TOOL_START``, ``"tool_start"`` or ``"TOOL_START"`` → the enum member.

    Raises :class:`EventStreamingError` naming the valid values for anything else.
    """
    if isinstance(value, StreamEventType):
        return value
    if isinstance(value, str):
        member = _TYPES_BY_NAME.get(value) or _TYPES_BY_NAME.get(value.strip().lower())
        if member is not None:
            return member
    valid = ", ".join(repr(m.value) for m in StreamEventType)
    raise EventStreamingError(
        f"unknown event type {value!r}; use a StreamEventType or one of {valid}",
        code="unknown_event_type",
        context={"event_type": value},
    )


def coerce_event_types(values: Iterable[StreamEventType | str]) -> frozenset[StreamEventType]:
    """A set of event types from members or their string values (see :func:`coerce_event_type`)."""
    if isinstance(values, (str, StreamEventType)):
        return frozenset({coerce_event_type(values)})
    return frozenset(coerce_event_type(v) for v in values)


def default_priority(event_type: StreamEventType) -> EventPriority:
    """The priority an event of this type gets when none is given: ``error`` → ``high``,
    ``debug`` → ``low``, else ``medium``."""
    return _DEFAULT_PRIORITY.get(event_type, "medium")


def check_priority(value: Any) -> EventPriority:
    """``value`` if it is a priority level, else :class:`EventStreamingError`."""
    if isinstance(value, str) and value in PRIORITY_ORDER:
        return cast(EventPriority, value)
    raise EventStreamingError(
        f"unknown priority {value!r}; use one of {', '.join(map(repr, PRIORITY_ORDER))}",
        code="unknown_priority",
        context={"priority": value},
    )


def event_priority(update: StreamUpdate[Any]) -> EventPriority:
    """The update's priority: its metadata extra ``priority`` if valid, else the type default."""
    if update.metadata is not None:
        value = update.metadata.extra.get("priority")
        if isinstance(value, str) and value in PRIORITY_ORDER:
            return cast(EventPriority, value)
    return default_priority(update.type)


# --------------------------------------------------------------------------- filtering


class EventFilter:
    """Compiled :class:`EventFilterCriteria`: ``matches(update)`` says whether an update passes.

    Every rule given must hold:

    - ``event_types``: the type is one of them; ``exclude_types``: it is none of them;
    - ``include_debug=False``: drops ``debug`` events (even if ``event_types`` names ``debug``);
    - ``min_priority``: :func:`event_priority` is at or above it;
    - ``node_ids`` / ``execution_ids``: the metadata's id is one of them (an update without
      metadata, or without a node id, fails these rules);
    - ``start_time`` / ``end_time``: the metadata timestamp lies in the closed range (an update
      without metadata fails a time rule; a naive timestamp is taken as UTC, like the criteria).

    Building one costs a few small sets; ``matches`` is a handful of set lookups per update.
    """

    __slots__ = (
        "_end",
        "_exclude",
        "_execution_ids",
        "_include_debug",
        "_min_rank",
        "_node_ids",
        "_start",
        "_types",
        "criteria",
    )

    def __init__(self, criteria: EventFilterCriteria) -> None:
        self.criteria = criteria
        self._types = frozenset(criteria.event_types) if criteria.event_types is not None else None
        self._exclude = frozenset(criteria.exclude_types or ())
        self._include_debug = criteria.include_debug
        self._min_rank = (
            PRIORITY_ORDER[criteria.min_priority] if criteria.min_priority is not None else None
        )
        self._node_ids = frozenset(criteria.node_ids) if criteria.node_ids is not None else None
        self._execution_ids = (
            frozenset(criteria.execution_ids) if criteria.execution_ids is not None else None
        )
        self._start: datetime | None = criteria.start_time
        self._end: datetime | None = criteria.end_time

    def matches(self, update: StreamUpdate[Any]) -> bool:
        kind = update.type
        if self._types is not None and kind not in self._types:
            return False
        if kind in self._exclude:
            return False
        if not self._include_debug and kind is StreamEventType.DEBUG:
            return False
        if self._min_rank is not None and PRIORITY_ORDER[event_priority(update)] < self._min_rank:
            return False
        meta = update.metadata
        if self._node_ids is not None and (meta is None or meta.node_id not in self._node_ids):
            return False
        if self._execution_ids is not None and (
            meta is None or meta.execution_id not in self._execution_ids
        ):
            return False
        if self._start is not None or self._end is not None:
            if meta is None:
                return False
            when = meta.timestamp
            if when.tzinfo is None:  # naive means UTC, as it does for the criteria
                when = when.replace(tzinfo=UTC)
            if self._start is not None and when < self._start:
                return False
            if self._end is not None and when > self._end:
                return False
        return True

    def __call__(self, update: StreamUpdate[Any]) -> bool:
        return self.matches(update)


def filter_updates(
    events: Iterable[StreamUpdate[Any]], criteria: EventFilterCriteria
) -> list[StreamUpdate[Any]]:
    """The updates that pass ``criteria``, in their original order."""
    match = EventFilter(criteria).matches
    return [e for e in events if match(e)]


# --------------------------------------------------------------------------- grouping


def group_by_type(
    events: Iterable[StreamUpdate[Any]],
) -> dict[StreamEventType, list[StreamUpdate[Any]]]:
    """Updates grouped by type; keys in first-seen order, each list in arrival order."""
    groups: dict[StreamEventType, list[StreamUpdate[Any]]] = {}
    for event in events:
        groups.setdefault(event.type, []).append(event)
    return groups


def aggregate_for_execution(
    execution_id: str, events: Iterable[StreamUpdate[Any]]
) -> dict[StreamEventType, list[StreamUpdate[Any]]]:
    """The updates of one execution (by ``metadata.execution_id``), grouped by type as in
    :func:`group_by_type`. Updates of other executions, or without metadata, are left out."""
    return group_by_type(e for e in events if e.execution_id == execution_id)


# --------------------------------------------------------------------------- batching


def chunk(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items, every item exactly once, in order."""
    if size < 1:
        raise ValueError("size must be at least 1")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Batcher:
    """Collects items into batches of at most ``size``.

    ``add`` returns a full batch when one is ready (else ``None``); ``drain`` returns what is held
    (else ``None``). Holds at most ``size - 1`` items between calls.
    """

    __slots__ = ("_items", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._items: list[Any] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Any) -> list[Any] | None:
        self._items.append(item)
        if len(self._items) >= self.size:
            return self.drain()
        return None

    def drain(self) -> list[Any] | None:
        if not self._items:
            return None
        batch, self._items = self._items, []
        return batch


# --------------------------------------------------------------------------- transforming


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise EventStreamingError(
        f"a transformer returned timestamp {value!r}; give a datetime or an ISO-8601 string",
        code="bad_transform",
    )


def merge_transformed(original: StreamUpdate[Any], result: Any) -> StreamUpdate[Any]:
    """Turn what a transformer returned into an update.

    - a :class:`StreamUpdate` is used as is;
    - a mapping (the manual's ``{...event, enriched: True}``, in Python
      ``{**event, "enriched": True}``) is merged over ``original`` into a **new** update:
      ``type`` (member or string), ``data`` and ``metadata`` (a :class:`StreamMetadata` or a
      mapping merged over the original metadata) replace those fields; keys naming a metadata
      field (``timestamp`` — datetime or ISO string —, ``sequence_number``, ``execution_id``,
      ``node_id``, ``agent_type``) set it; **any other key becomes a metadata extra**
      (``update.metadata.enriched``). ``original`` is never modified.

    Anything else raises :class:`EventStreamingError`.
    """
    if isinstance(result, StreamUpdate):
        return result
    if not isinstance(result, Mapping):
        raise EventStreamingError(
            f"an event transformer must return a StreamUpdate or a dict, got "
            f"{type(result).__name__}",
            code="bad_transform",
        )
    base = original.metadata.to_dict() if original.metadata is not None else {}
    meta_value = result.get("metadata", original.metadata)
    if isinstance(meta_value, StreamMetadata):
        base = meta_value.to_dict()
    elif isinstance(meta_value, Mapping):
        base.update(meta_value)
    elif meta_value is not None:
        raise EventStreamingError(
            f"a transformer returned metadata of type {type(meta_value).__name__}; give a "
            "StreamMetadata or a dict",
            code="bad_transform",
        )
    for key, value in result.items():
        if key not in _UPDATE_FIELDS:
            base[key] = value
    kind = coerce_event_type(result.get("type", original.type))
    data = result.get("data", original.data)
    if not base:
        return StreamUpdate(kind, data, None)
    if base.get("execution_id") is None or base.get("timestamp") is None:
        raise EventStreamingError(
            "a transformed event needs metadata with execution_id and timestamp; keep the "
            "original's metadata (e.g. return {**event, ...})",
            code="bad_transform",
        )
    metadata = StreamMetadata(
        timestamp=_as_datetime(base.pop("timestamp")),
        sequence_number=int(base.pop("sequence_number", 0) or 0),
        execution_id=str(base.pop("execution_id")),
        node_id=base.pop("node_id", None),
        agent_type=base.pop("agent_type", None),
        **{str(k): v for k, v in base.items()},
    )
    return StreamUpdate(kind, data, metadata)


__all__ = [
    "Batcher",
    "EventFilter",
    "aggregate_for_execution",
    "check_priority",
    "chunk",
    "coerce_event_type",
    "coerce_event_types",
    "default_priority",
    "event_priority",
    "filter_updates",
    "group_by_type",
    "merge_transformed",
]
