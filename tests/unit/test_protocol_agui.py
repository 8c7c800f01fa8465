"""protocol/agui.py with plain frames: the mapping, the ids, resume right after an id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ag_ui.core import TextMessageContentEvent
from ag_ui.encoder import EventEncoder
from hypothesis import given
from hypothesis import strategies as st

from interop_support import SseParser
from streaming_module.broker.base import Frame
from streaming_module.protocol import agui
from streaming_module.protocol.sse import ResumeError

TS = "2026-01-01T00:00:00+00:00"


def run_frames(*, status: str = "completed", tool: bool = True) -> list[Frame]:
    """A run as the bridge publishes it: started, a node streaming tokens, a tool node."""
    frames: list[tuple[str, Any]] = [
        ("status", {"status": "started"}),
        ("event", {"eventType": "node_start", "data": {"node": "write"}, "nodeId": "write"}),
        ("token", {"content": "Hello", "nodeId": "write"}),
        ("progress", {"progress": 50.0, "eta": 1.5, "nodeId": "write"}),
        ("token", {"content": " world", "nodeId": "write"}),
        ("event", {"eventType": "node_complete", "data": {"node": "write"}, "nodeId": "write"}),
    ]
    if tool:
        frames += [
            (
                "event",
                {
                    "eventType": "tool_start",
                    "data": {"tool": "count", "node": "count"},
                    "nodeId": "count",
                },
            ),
            (
                "event",
                {
                    "eventType": "tool_complete",
                    "data": {"tool": "count", "node": "count", "duration_ms": 1.0},
                    "nodeId": "count",
                },
            ),
        ]
    error = {"error": "boom"} if status == "failed" else {}
    frames.append(("status", {"status": status, **error}))
    return [Frame("run-1", i + 1, t, TS, p) for i, (t, p) in enumerate(frames)]


def parse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = SseParser().feed(data.decode())
    return [(str(e.id), json.loads(e.data)) for e in events]


def test_a_completed_run_maps_to_the_documented_events_with_ordered_ids() -> None:
    encoder = agui.AguiEncoder("run-1", "thread-1", final_state={"content": "Hello world"})
    events = parse(b"".join(encoder.encode(f) for f in run_frames()))
    types = [e["type"] for _, e in events]
    assert types == [
        "RUN_STARTED",
        "STEP_STARTED",
        "CUSTOM",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "CUSTOM",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "STEP_FINISHED",
        "CUSTOM",
        "STEP_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "CUSTOM",
        "TOOL_CALL_RESULT",
        "STEP_FINISHED",
        "CUSTOM",
        "STATE_SNAPSHOT",
        "RUN_FINISHED",
    ]
    ids = [i for i, _ in events]
    assert ids[:5] == ["1", "2", "2.1", "3", "3.1"]
    keys = [agui.parse_event_id(i) for i in ids]
    assert keys == sorted(set(keys))  # type: ignore[type-var]
    started = events[0][1]
    assert (started["threadId"], started["runId"]) == ("thread-1", "run-1")
    text = "".join(e["delta"] for _, e in events if e["type"] == "TEXT_MESSAGE_CONTENT")
    assert text == "Hello world"
    progress = next(e for _, e in events if e["type"] == "CUSTOM" and e["name"] == "progress")
    assert progress["value"]["progress"] == 50.0 and progress["value"]["eta"] == 1.5
    assert events[-2][1]["snapshot"] == {"content": "Hello world"}


@pytest.mark.parametrize(
    "status, last",
    [
        ("failed", {"type": "RUN_ERROR", "message": "boom", "code": "workflow_failed"}),
        (
            "cancelled",
            {
                "type": "RUN_FINISHED",
                "threadId": "t",
                "runId": "run-1",
                "outcome": {"type": "cancelled"},
            },
        ),
    ],
)
def test_failed_and_cancelled_runs_end_with_their_event(status: str, last: Any) -> None:
    frames = [*run_frames(status=status, tool=False)[:-2], run_frames(status=status)[-1]]
    events = parse(agui.encode_all(frames, "run-1", "t"))
    assert events[-1][1] == last
    # Whatever was open is closed first, as HttpAgent's verifier requires.
    assert [e["type"] for _, e in events[-3:-1]] == ["TEXT_MESSAGE_END", "STEP_FINISHED"]


def test_resuming_right_after_an_id_gives_exactly_the_rest() -> None:
    frames = run_frames()
    whole = parse(agui.encode_all(frames, "run-1", "t"))
    for index, (event_id, _) in enumerate(whole):
        encoder = agui.AguiEncoder("run-1", "t", resume_after=agui.parse_event_id(event_id))
        rest = parse(b"".join(encoder.encode(f) for f in frames))
        assert rest == whole[index + 1 :], event_id


@given(st.text(max_size=40))
def test_the_spliced_content_is_the_packages_own_encoding(delta: str) -> None:
    encoder = agui.AguiEncoder("run-1", "t")
    frames = [
        *run_frames()[:2],
        Frame("run-1", 3, "token", TS, {"content": "x", "nodeId": "write"}),
        Frame("run-1", 4, "token", TS, {"content": delta, "nodeId": "write"}),
    ]
    data = b"".join(encoder.encode(f) for f in frames)
    last = data.rsplit(b"id: 4\n", 1)[1]
    expected = EventEncoder().encode(
        TextMessageContentEvent(message_id="run-1:write:3", delta=delta)
    )
    assert json.loads(last.removeprefix(b"data: ")) == json.loads(expected.removeprefix("data: "))
    if delta.isascii() and delta.isprintable():
        assert last == expected.encode()


@pytest.mark.parametrize("bad", ["x", "4.", ".1", "4.1.2", "-3", "9" * 70])
def test_bad_event_ids_are_refused(bad: str) -> None:
    with pytest.raises(ResumeError):
        agui.parse_event_id(bad)
    assert agui.parse_event_id("42.1") == (42, 1) and agui.parse_event_id(None) is None


def test_the_prompt_is_the_last_user_messages_text() -> None:
    run_input = agui.RunAgentInput.model_validate(
        {
            "threadId": "t",
            "runId": "r",
            "messages": [
                {"id": "1", "role": "user", "content": "first"},
                {"id": "2", "role": "assistant", "content": "reply"},
                {"id": "3", "role": "user", "content": [{"type": "text", "text": "second"}]},
            ],
        }
    )
    assert agui.prompt_of(run_input) == "second"


def test_a_failed_user_callback_does_not_reopen_the_nodes_message() -> None:
    failed = {"code": "callback_failed", "callback": "processor", "node": "write"}
    items: list[tuple[str, Any]] = [
        ("status", {"status": "started"}),
        ("token", {"content": "Hello", "nodeId": "write"}),
        ("event", {"eventType": "error", "data": failed, "nodeId": "write"}),
        ("token", {"content": " world", "nodeId": "write"}),
        ("event", {"eventType": "node_complete", "data": {}, "nodeId": "write"}),
        ("status", {"status": "completed"}),
    ]
    frames = [
        Frame("run-1", i + 1, t, "2026-01-01T00:00:00+00:00", p) for i, (t, p) in enumerate(items)
    ]
    events = [e for _, e in parse(agui.encode_all(frames, "run-1", "thread-1"))]
    types = [e["type"] for e in events]
    assert types.count("TEXT_MESSAGE_START") == 1 and types.count("TEXT_MESSAGE_END") == 1
    text = "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")
    assert text == "Hello world"
    assert types.index("TEXT_MESSAGE_END") > max(
        i for i, t in enumerate(types) if t == "TEXT_MESSAGE_CONTENT"
    )
