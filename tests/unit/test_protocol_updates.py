"""What each kind of service update becomes on the wire (``frame_from_update``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streaming_module.protocol.updates import FrameFields, frame_from_update
from streaming_module.types import (
    ProgressData,
    StatusData,
    StreamEventType,
    StreamMetadata,
    StreamUpdate,
    TokenData,
)


def meta(execution_id: str = "run", node_id: str | None = "writer", **extra: Any) -> StreamMetadata:
    return StreamMetadata(datetime(2026, 1, 1, tzinfo=UTC), 1, execution_id, node_id, **extra)


def fields(kind: StreamEventType, data: Any, metadata: StreamMetadata | None = None) -> FrameFields:
    result = frame_from_update(StreamUpdate(kind, data, metadata or meta()))
    assert result is not None
    return result


def test_a_token_batch_becomes_a_token_frame_with_its_node() -> None:
    frame = fields(
        StreamEventType.TOKEN,
        TokenData("Hello world", role="assistant", index=3, total_tokens=5, tokens=["Hello", " "]),
    )
    assert frame == FrameFields(
        "run",
        "token",
        {
            "content": "Hello world",
            "nodeId": "writer",
            "index": 3,
            "totalTokens": 5,
            "tokens": ["Hello", " "],
            "role": "assistant",
        },
        True,
    )
    assert not frame.ends_execution


def test_a_plain_token_batch_leaves_out_what_it_does_not_have() -> None:
    assert fields(StreamEventType.TOKEN, TokenData("Hi")).payload == {
        "content": "Hi",
        "nodeId": "writer",
        "index": None,
        "totalTokens": None,
    }


@pytest.mark.parametrize(
    "data",
    ["Hi", {"content": "Hi", "totalTokens": 2}, {"content": "Hi", "total_tokens": 2}],
    ids=["text", "camelCase-dict", "snake_case-dict"],
)
def test_tokens_given_as_text_or_dicts_become_the_same_frame(data: Any) -> None:
    payload = fields(StreamEventType.TOKEN, data).payload
    assert payload["content"] == "Hi" and payload["nodeId"] == "writer"
    assert payload["totalTokens"] == (None if data == "Hi" else 2)


def test_progress_becomes_a_progress_frame() -> None:
    data = ProgressData(40.0, 4, 10, eta=1.5, rate=2.0, milestone=25, text="40%", metrics={"a": 1})
    frame = fields(StreamEventType.PROGRESS, data)
    assert frame.type == "progress"
    assert frame.payload == {
        "progress": 40.0,
        "current": 4,
        "total": 10,
        "eta": 1.5,
        "rate": 2.0,
        "milestone": 25,
        "text": "40%",
        "nodeId": "writer",
        "metrics": {"a": 1},
    }
    as_dict = fields(StreamEventType.PROGRESS, {"progress": 50, "current": 1, "total": 2})
    assert as_dict.type == "progress" and as_dict.payload["progress"] == 50
    assert "metrics" not in as_dict.payload and as_dict.payload["text"] == ""


def test_progress_data_of_another_shape_is_published_as_an_event() -> None:
    frame = fields(StreamEventType.PROGRESS, 0.5)
    assert frame.type == "event" and frame.payload["eventType"] == "progress"
    assert frame.payload["data"] == 0.5


@pytest.mark.parametrize(
    ("data", "payload", "final"),
    [
        (StatusData("started"), {"status": "started"}, False),
        (StatusData("completed"), {"status": "completed"}, True),
        (StatusData("failed", error="boom"), {"status": "failed", "error": "boom"}, True),
        ({"status": "failed"}, {"status": "failed", "error": None}, True),
        ({"status": "cancelled"}, {"status": "cancelled"}, True),
    ],
)
def test_a_status_becomes_a_status_frame_and_a_final_one_ends_the_execution(
    data: Any, payload: dict[str, Any], final: bool
) -> None:
    frame = fields(StreamEventType.STATUS, data)
    assert frame.type == "status" and frame.payload == payload
    assert frame.ends_execution is final


def test_every_other_update_becomes_an_event_frame() -> None:
    frame = fields(
        StreamEventType.NODE_START, {"input": 1}, meta(node_id="router", priority="high")
    )
    assert frame == FrameFields(
        "run",
        "event",
        {"eventType": "node_start", "data": {"input": 1}, "nodeId": "router", "priority": "high"},
        True,
    )
    assert not frame.ends_execution


def test_at_most_once_updates_are_not_replayable() -> None:
    frame = fields(StreamEventType.TOKEN, "x", meta(delivery="at-most-once"))
    assert frame.replayable is False
    assert fields(StreamEventType.TOKEN, "x", meta(delivery="at-least-once")).replayable


def test_an_update_without_an_execution_cannot_be_routed() -> None:
    assert frame_from_update(StreamUpdate(StreamEventType.TOKEN, TokenData("x"), None)) is None
    unnamed = StreamUpdate(StreamEventType.TOKEN, "x", meta(execution_id=""))
    assert frame_from_update(unnamed) is None
