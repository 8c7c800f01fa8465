"""The vocabulary: what flows through streams.

Everything a subscriber receives is a :class:`StreamUpdate` whose ``metadata`` is a
:class:`StreamMetadata` (always carrying ``execution_id``, and ``node_id`` when it comes from a
node) and whose ``data`` is a :class:`TokenData` (tokens), a :class:`ProgressData` (progress), a
:class:`StatusData` (run status) or a plain ``dict`` (other workflow events).

These classes are plain slotted objects, cheap to build on the per-token path. Their fields can be
read as attributes or, for code ported from the manual's TypeScript, by key (``data["content"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar


class StreamEventType(StrEnum):
    """Kinds of stream updates: the manual's members and values, plus ``STATUS`` for run status."""

    TOKEN = "token"
    VALUES = "values"
    UPDATES = "updates"
    EVENTS = "events"
    PROGRESS = "progress"
    NODE_START = "node_start"
    NODE_COMPLETE = "node_complete"
    TOOL_START = "tool_start"
    TOOL_COMPLETE = "tool_complete"
    ERROR = "error"
    DEBUG = "debug"
    STATUS = "status"


EventPriority = Literal["low", "medium", "high", "critical"]
"""Priority levels used by event filter criteria (``min_priority``)."""

PRIORITY_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}

DeliveryMode = Literal["at-most-once", "at-least-once", "exactly-once"]
TokenFormat = Literal["text", "json", "structured"]
Granularity = Literal["coarse", "fine", "detailed"]
RunStatus = Literal["started", "completed", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class _KeyAccess:
    """Lets slotted dataclasses be read like the manual's plain objects: ``obj["field"]``."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def keys(self) -> list[str]:
        """Field names, so ``{**update, "enriched": True}`` works as the manual's spread does."""
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Fields as a plain dict (``None`` values kept)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(slots=True)
class TokenData(_KeyAccess):
    """A token update's payload: the text of one batch of tokens."""

    content: str
    role: str | None = None
    index: int | None = None
    total_tokens: int | None = None
    tokens: list[str] | None = None
    """The individual tokens of the batch, for ``format='structured'``."""


@dataclass(slots=True)
class ProgressData(_KeyAccess):
    """A progress update's payload.

    ``progress`` is a percentage 0-100, ``eta`` seconds left (``None`` until it can be estimated),
    ``rate`` items per second, ``milestone`` the milestone just crossed (else ``None``), ``text``
    the human-readable line built from the ``format`` options, ``metrics`` extra figures when
    ``include_metrics`` is on.
    """

    progress: float
    current: float
    total: float
    eta: float | None = None
    rate: float | None = None
    milestone: float | None = None
    text: str = ""
    metrics: dict[str, Any] | None = None


@dataclass(slots=True)
class StatusData(_KeyAccess):
    """A run status update's payload: ``started``, then one final status."""

    status: str
    error: str | None = None
    result: Any = None


RESERVED_METADATA_KEYS: frozenset[str] = frozenset(
    {"timestamp", "sequence_number", "execution_id", "node_id", "agent_type"}
)
""":class:`StreamMetadata`'s own fields. The services set them; a key of a caller's metadata
(``stream_token``'s, ``emit_event``'s, a progress ``update``'s) that names one never becomes an
extra. ``timestamp``, ``sequence_number`` and ``execution_id`` given that way are ignored; where a
service takes ``agent_type`` (events, progress) or ``node_id`` (events, when the argument is not
given) from a caller's metadata, its documentation says so."""


class StreamMetadata:
    """Where and when an update comes from.

    ``timestamp`` is an aware UTC datetime. ``sequence_number`` is the update's position, from 1,
    among the updates its service has published for its execution: the token service numbers an
    execution's token updates (all its nodes together), the event service its events, the
    progress service its progress reports. So a subscriber of an execution's stream
    (``get_token_stream(execution_id)``, ``get_event_stream(execution_id)``,
    ``get_progress_stream(execution_id)``) sees 1, 2, 3, ... with no gap and no repeat; a node's
    stream, a filtered stream or the global stream sees each execution's numbers rising, with
    gaps where the updates went elsewhere. Numbering starts again from 1 once the service has
    released the execution (``close_execution_token_streams``; ``complete_execution`` or a final
    status; ``close_execution``; or, for tokens, no open stream of the execution for
    ``stream_idle_timeout_ms``). An update published ready-made with ``emit_update`` keeps its
    number, and later events continue after it. ``sequence_number`` is not the wire frame's
    ``sequence``, which the broker assigns across all the kinds of an execution.

    Any extra keyword becomes an extra field, readable as an attribute or by key; the names in
    :data:`RESERVED_METADATA_KEYS` are the fields above.
    """

    __slots__ = ("agent_type", "execution_id", "extra", "node_id", "sequence_number", "timestamp")

    def __init__(
        self,
        timestamp: datetime,
        sequence_number: int,
        execution_id: str,
        node_id: str | None = None,
        agent_type: str | None = None,
        **extra: Any,
    ) -> None:
        self.timestamp = timestamp
        self.sequence_number = sequence_number
        self.execution_id = execution_id
        self.node_id = node_id
        self.agent_type = agent_type
        self.extra: dict[str, Any] = extra

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: extra fields.
        try:
            return self.extra[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        if key in RESERVED_METADATA_KEYS:
            return getattr(self, key)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "timestamp": self.timestamp,
            "sequence_number": self.sequence_number,
            "execution_id": self.execution_id,
            "node_id": self.node_id,
            "agent_type": self.agent_type,
        }
        out.update(self.extra)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StreamMetadata) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if v is not None)
        return f"StreamMetadata({parts})"


T = TypeVar("T")


@dataclass(slots=True)
class StreamUpdate(Generic[T], _KeyAccess):
    """One update on a stream: its ``type``, its ``data`` and where it comes from."""

    type: StreamEventType
    data: T
    metadata: StreamMetadata | None = field(default=None)

    @property
    def execution_id(self) -> str | None:
        return self.metadata.execution_id if self.metadata is not None else None

    @property
    def node_id(self) -> str | None:
        return self.metadata.node_id if self.metadata is not None else None


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


__all__ = [
    "FINAL_STATUSES",
    "PRIORITY_ORDER",
    "RESERVED_METADATA_KEYS",
    "DeliveryMode",
    "EventPriority",
    "Granularity",
    "ProgressData",
    "RunStatus",
    "StatusData",
    "StreamEventType",
    "StreamMetadata",
    "StreamUpdate",
    "TokenData",
    "TokenFormat",
    "utc_now",
]
