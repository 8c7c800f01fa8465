"""The one Frame: encoded by a broker, fanned out as stored bytes, decoded by a client; close codes;
token coalescing. Plain values, no I/O."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streaming_module.broker.base import Frame as BrokerFrame
from streaming_module.client import Frame as ClientFrame
from streaming_module.protocol import close_codes
from streaming_module.protocol.close_codes import RESUMABLE, CloseCode
from streaming_module.protocol.coalesce import (
    COALESCE_MAX_CHARS,
    CoalescedTokens,
    merge,
    mergeable,
)
from streaming_module.protocol.frames import Frame
from streaming_module.protocol.json import JSONDecodeError, loads

WHEN = "2026-01-01T00:00:00+00:00"


def token(sequence: int, content: str, node: str = "writer", execution: str = "run") -> Frame:
    return Frame(execution, sequence, "token", WHEN, {"content": content, "nodeId": node})


# --------------------------------------------------------------------------- one type


def test_the_broker_and_the_client_share_one_frame_type() -> None:
    assert BrokerFrame is Frame and ClientFrame is Frame


# --------------------------------------------------------------------------- round trips


def test_a_frame_encodes_to_the_wire_shape_and_decodes_back_to_the_same_fields() -> None:
    frame = Frame("run", 42, "token", WHEN, {"content": "Hi", "nodeId": "writer"})
    data = frame.encoded()
    assert orjson.loads(data) == {
        "type": "token",
        "executionId": "run",
        "sequence": 42,
        "timestamp": WHEN,
        "payload": {"content": "Hi", "nodeId": "writer"},
    }
    assert frame.encoded() is data  # encoded once, shared by every subscriber
    assert frame.to_dict() == orjson.loads(data)

    decoded = Frame.from_message(loads(data))
    assert decoded.to_dict() == frame.to_dict()
    assert decoded.encoded() == data

    stored = Frame.from_encoded(data)
    assert stored.to_dict() == frame.to_dict()
    assert stored.encoded() is data


def test_a_frame_made_from_stored_bytes_sends_them_without_decoding() -> None:
    """A broker fans out what it stored: the bytes go out as they are, and fields it passed
    along never need them decoded. (Bytes that are not even JSON prove nothing decoded them.)"""
    stored = b"stored by another process"
    frame = Frame.from_encoded(
        stored, execution_id="run", sequence=7, type="token", timestamp=WHEN, replayable=False
    )
    assert frame.encoded() is stored
    assert (frame.execution_id, frame.sequence, frame.type, frame.timestamp) == (
        "run",
        7,
        "token",
        WHEN,
    )
    assert frame.replayable is False
    with pytest.raises(JSONDecodeError):
        _ = frame.payload  # the payload is decoded only when read


def test_fields_not_given_to_from_encoded_are_decoded_once_on_first_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = Frame("run", 3, "status", WHEN, {"status": "completed"}).encoded()
    decodes = 0
    real_loads = orjson.loads

    def counting_loads(value: bytes) -> object:
        nonlocal decodes
        decodes += 1
        return real_loads(value)

    monkeypatch.setattr("streaming_module.protocol.frames.loads", counting_loads)
    frame = Frame.from_encoded(data, sequence=3)
    assert frame.sequence == 3 and decodes == 0
    assert frame.type == "status" and decodes == 1
    assert frame.payload == {"status": "completed"}
    assert frame.execution_id == "run" and frame.timestamp == WHEN
    assert frame.is_final and decodes == 1


def test_a_lazy_frame_still_reports_unknown_attributes() -> None:
    frame = Frame.from_encoded(b"{}", execution_id="e")
    with pytest.raises(AttributeError):
        _ = frame.nonexistent  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- reading a frame


def test_a_decoded_frame_reads_like_the_wire_message() -> None:
    message = {
        "type": "token",
        "executionId": "run",
        "sequence": 5,
        "timestamp": WHEN,
        "payload": {"content": "Hello", "nodeId": "writer"},
    }
    frame = Frame.from_message(message)
    assert frame["type"] == "token" and frame["executionId"] == "run"
    assert frame["sequence"] == 5 and frame["payload"] == message["payload"]
    assert frame.get("timestamp") == WHEN and frame.get("nope", "default") == "default"
    with pytest.raises(KeyError):
        frame["nope"]
    assert frame.content == "Hello" and frame.status is None and not frame.is_final


def test_a_reply_without_sequence_or_execution_id_decodes_with_empty_fields() -> None:
    subscribed = Frame.from_message({"type": "subscribed", "payload": {"executionId": "run"}})
    assert subscribed.execution_id == "run"  # the payload's id stands in
    assert subscribed.sequence == 0 and subscribed.timestamp == ""
    pong = Frame.from_message({"type": "pong"})
    assert (pong.execution_id, pong.sequence, pong.payload) == ("", 0, {})
    odd = Frame.from_message({"type": "token", "sequence": True, "payload": ["not", "a dict"]})
    assert odd.sequence == 0 and odd.content == "" and odd.payload == ["not", "a dict"]


@pytest.mark.parametrize(
    ("status", "final"),
    [("started", False), ("completed", True), ("failed", True), ("cancelled", True)],
)
def test_only_a_final_status_ends_a_run(status: str, final: bool) -> None:
    frame = Frame("run", 9, "status", WHEN, {"status": status})
    assert frame.status == status and frame.is_final is final and frame.content == ""


def test_a_token_frame_content_is_always_text() -> None:
    assert Frame("r", 1, "token", WHEN, {"content": 42}).content == "42"
    assert Frame("r", 1, "event", WHEN, {"content": "x"}).content == ""


# --------------------------------------------------------------------------- close codes


def test_close_codes_are_the_documented_numbers() -> None:
    assert {code.name: int(code) for code in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "INVALID_PAYLOAD": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "SLOW_CONSUMER": 4008,
        "UNAUTHORIZED": 4401,
        "FORBIDDEN": 4403,
        "HEARTBEAT_TIMEOUT": 4408,
        "RATE_LIMITED": 4429,
    }
    assert CloseCode.SLOW_CONSUMER == 4008  # compares with what a WebSocket library reports
    docs = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for code in CloseCode:
        assert f"{int(code)} {code.name}" in (close_codes.__doc__ or ""), code
        assert f"| {int(code)} |" in docs, f"docs/protocol.md does not list {code!r}"


def test_resumable_codes_are_those_after_which_lastsequence_recovers_everything() -> None:
    assert RESUMABLE == {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SLOW_CONSUMER,
        CloseCode.HEARTBEAT_TIMEOUT,
    }
    assert 4008 in RESUMABLE and 4401 not in RESUMABLE


# --------------------------------------------------------------------------- coalescing


def test_consecutive_tokens_of_one_node_merge_into_the_last_sequence() -> None:
    first, second, third = token(1, "Hel"), token(2, "lo "), token(3, "world")
    merged = merge(merge(first, second), third)
    assert isinstance(merged, CoalescedTokens)
    wire = orjson.loads(merged.encoded())
    assert wire["sequence"] == 3 and wire["payload"]["content"] == "Hello world"
    assert wire["payload"]["coalesced"] == 3 and wire["payload"]["nodeId"] == "writer"
    assert merged.replayable is False
    assert first.payload == {"content": "Hel", "nodeId": "writer"}  # originals untouched
    assert first.encoded() == token(1, "Hel").encoded()


def test_merging_more_in_replaces_what_was_encoded() -> None:
    merged = merge(token(1, "a"), token(2, "b"))
    assert orjson.loads(merged.encoded())["payload"]["content"] == "ab"
    merged.transport_cache = b"stale"
    merge(merged, token(3, "c"))
    assert orjson.loads(merged.encoded())["payload"]["content"] == "abc"
    assert merged.transport_cache is None


def test_merged_structured_tokens_keep_every_token() -> None:
    a = Frame("run", 1, "token", WHEN, {"content": "ab", "nodeId": "n", "tokens": ["a", "b"]})
    b = Frame("run", 2, "token", WHEN, {"content": "c", "nodeId": "n", "tokens": ["c"]})
    wire = orjson.loads(merge(a, b).encoded())
    assert wire["payload"]["tokens"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (token(1, "a", node="one"), token(2, "b", node="two")),
        (token(1, "a", execution="x"), token(2, "b", execution="y")),
        (token(1, "a"), Frame("run", 2, "status", WHEN, {"status": "completed"})),
        (token(1, "a"), Frame("run", 2, "token", WHEN, {"content": 5, "nodeId": "writer"})),
        (token(1, "a" * COALESCE_MAX_CHARS), token(2, "b")),
    ],
    ids=["other-node", "other-execution", "not-a-token", "content-not-text", "too-long"],
)
def test_frames_that_must_stay_apart_are_not_mergeable(a: Frame, b: Frame) -> None:
    assert not mergeable(a, b)


def test_tokens_up_to_the_limit_are_mergeable() -> None:
    assert mergeable(token(1, "a" * (COALESCE_MAX_CHARS - 1)), token(2, "b"))
    assert mergeable(merge(token(1, "a"), token(2, "b")), token(3, "c"))
