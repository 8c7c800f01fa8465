"""protocol/aisdk.py with plain frames: the UI message stream parts of a run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streaming_module.broker.base import Frame
from streaming_module.protocol import aisdk

TS = "2026-01-01T00:00:00+00:00"


def frames(status: str = "completed") -> list[Frame]:
    items: list[tuple[str, Any]] = [
        ("status", {"status": "started"}),
        ("token", {"content": "Hi", "nodeId": "a"}),
        ("token", {"content": "Yo", "nodeId": "b"}),
        ("progress", {"progress": 40.0, "eta": 2.0, "nodeId": "a"}),
        ("token", {"content": " there", "nodeId": "a"}),
        ("event", {"eventType": "node_complete", "data": {}, "nodeId": "a"}),
        ("gap", {"from": 7, "to": 8}),
        ("status", {"status": status, **({"error": "boom"} if status == "failed" else {})}),
    ]
    return [Frame("ex-9", i + 1, t, TS, p) for i, (t, p) in enumerate(items)]


def parts(data: bytes) -> list[Any]:
    out: list[Any] = []
    for block in data.decode().split("\n\n"):
        if block:
            assert block.startswith("data: ") and "\n" not in block
            body = block[6:]
            out.append(body if body == "[DONE]" else json.loads(body))
    return out


def test_a_run_is_one_message_with_a_text_part_per_node() -> None:
    got = parts(aisdk.encode_all(frames(), "ex-9"))
    assert got == [
        {"type": "start", "messageId": "ex-9"},
        {"type": "start-step"},
        {"type": "text-start", "id": "a-2"},
        {"type": "text-delta", "id": "a-2", "delta": "Hi"},
        {"type": "text-start", "id": "b-3"},
        {"type": "text-delta", "id": "b-3", "delta": "Yo"},
        {
            "type": "data-progress",
            "id": "progress-a",
            "data": {"progress": 40.0, "eta": 2.0, "nodeId": "a"},
        },
        {"type": "text-delta", "id": "a-2", "delta": " there"},
        {"type": "text-end", "id": "a-2"},
        {"type": "data-event", "data": {"eventType": "node_complete", "data": {}, "nodeId": "a"}},
        {"type": "data-gap", "data": {"from": 7, "to": 8}},
        {"type": "text-end", "id": "b-3"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]


@pytest.mark.parametrize(
    "status, tail",
    [
        (
            "failed",
            [
                {"type": "error", "errorText": "boom"},
                {"type": "finish", "finishReason": "error"},
                "[DONE]",
            ],
        ),
        ("cancelled", [{"type": "abort", "reason": "cancelled"}, "[DONE]"]),
    ],
)
def test_failed_and_cancelled_runs(status: str, tail: list[Any]) -> None:
    got = parts(aisdk.encode_all(frames(status), "ex-9"))
    assert got[-len(tail) :] == tail


def test_nothing_after_the_final_part_and_the_header_is_set() -> None:
    encoder = aisdk.UIMessageStreamEncoder("ex-9")
    for frame in frames():
        encoder.encode(frame)
    assert encoder.encode(Frame("ex-9", 99, "token", TS, {"content": "late"})) == b""
    assert aisdk.HEADERS["x-vercel-ai-ui-message-stream"] == "v1"


def test_the_prompt_is_the_last_user_messages_text_parts() -> None:
    messages = [
        {"id": "1", "role": "user", "parts": [{"type": "text", "text": "old"}]},
        {"id": "2", "role": "assistant", "parts": [{"type": "text", "text": "reply"}]},
        {
            "id": "3",
            "role": "user",
            "parts": [
                {"type": "text", "text": "new "},
                {"type": "file", "url": "x"},
                {"type": "text", "text": "one"},
            ],
        },
    ]
    assert aisdk.prompt_of(messages) == "new one"
    assert aisdk.prompt_of([{"role": "user", "content": "plain"}]) == "plain"
    assert aisdk.prompt_of("nope") == ""


def test_a_failed_user_callback_does_not_end_the_nodes_text_part() -> None:
    failed = {"code": "callback_failed", "callback": "processor", "node": "a"}
    items: list[tuple[str, Any]] = [
        ("status", {"status": "started"}),
        ("token", {"content": "Hi", "nodeId": "a"}),
        ("event", {"eventType": "error", "data": failed, "nodeId": "a"}),
        ("token", {"content": " there", "nodeId": "a"}),
        ("event", {"eventType": "node_complete", "data": {}, "nodeId": "a"}),
        ("status", {"status": "completed"}),
    ]
    got = parts(
        aisdk.encode_all([Frame("ex-9", i + 1, t, TS, p) for i, (t, p) in enumerate(items)], "ex-9")
    )
    kinds = [p["type"] for p in got if isinstance(p, dict)]
    assert kinds.count("text-start") == 1 and kinds.count("text-end") == 1
    deltas = "".join(p["delta"] for p in got if isinstance(p, dict) and p["type"] == "text-delta")
    assert deltas == "Hi there"
