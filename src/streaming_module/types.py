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


class StreamMetadata:
    """Where and when an update comes from.

    ``timestamp`` is an aware UTC datetime; ``sequence_number`` counts updates per source stream;
    any extra keyword becomes an extra field, readable as an attribute or by key.
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
        if key in self.__slots__ and key != "extra":
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
