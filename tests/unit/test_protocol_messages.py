"""The wire protocol's client messages: what a client may send, what it gets back when it sends
something wrong, and the JSON every frame and reply is written with."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from enum import Enum

import orjson
import pytest
from pydantic import BaseModel

from streaming_module.errors import ProtocolError
from streaming_module.protocol.frames import (
    FILTERABLE_KINDS,
    encode_error,
    encode_frame,
    encode_reply,
)
from streaming_module.protocol.json import dumps
from streaming_module.protocol.messages import (
    ALL_EVENTS,
    Ack,
    Ping,
    SubscribeExecution,
    UnsubscribeExecution,
    decode_client_message,
    encode_ack,
    encode_ping,
    encode_subscribe,
    encode_unsubscribe,
)
from streaming_module.types import StreamMetadata, TokenData


def test_manuals_subscribe_message_decodes() -> None:
    msg = decode_client_message(
        '{"type":"subscribe_execution","payload":{"executionId":"execution-123",'
        '"events":["token","event","progress","status"]}}'
    )
    assert isinstance(msg, SubscribeExecution)
    assert msg.payload.execution_id == "execution-123"
    assert msg.payload.last_sequence is None
    assert msg.kinds == FILTERABLE_KINDS


def test_subscribe_defaults_to_all_kinds_and_takes_last_sequence() -> None:
    msg = decode_client_message(
        b'{"type":"subscribe_execution","payload":{"executionId":"e","lastSequence":41,'
        b'"events":["token"]}}'
    )
    assert isinstance(msg, SubscribeExecution)
    assert msg.payload.last_sequence == 41
    assert msg.kinds == {"token"}
    bare = decode_client_message('{"type":"subscribe_execution","payload":{"executionId":"e"}}')
    assert isinstance(bare, SubscribeExecution) and bare.kinds == FILTERABLE_KINDS


def test_other_client_messages_decode() -> None:
    assert isinstance(
        decode_client_message('{"type":"unsubscribe_execution","payload":{"executionId":"e"}}'),
        UnsubscribeExecution,
    )
    ping = decode_client_message('{"type":"ping","payload":{"t":1}}')
    assert isinstance(ping, Ping) and ping.payload == {"t": 1}
    assert isinstance(decode_client_message('{"type":"ping"}'), Ping)
    ack = decode_client_message('{"type":"ack","payload":{"executionId":"e","sequence":7}}')
    assert isinstance(ack, Ack) and ack.payload.sequence == 7


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("{not json", "invalid_json", "not valid JSON"),
        ("", "invalid_json", "not valid JSON"),
        ("[1,2]", "invalid_message", "array"),
        ('"hello"', "invalid_message", "string"),
        ("42", "invalid_message", "number"),
        ("null", "invalid_message", "null"),
        ("{}", "invalid_message", "type"),
        ('{"type": 3}', "invalid_message", "type"),
        ('{"type":"subscribe"}', "unknown_type", "subscribe_execution"),
        ('{"type":"subscribe_execution"}', "invalid_payload", "payload"),
        ('{"type":"subscribe_execution","payload":{}}', "invalid_payload", "executionId"),
        (
            '{"type":"subscribe_execution","payload":{"executionId":5}}',
            "invalid_payload",
            "executionId",
        ),
        (
            '{"type":"subscribe_execution","payload":{"executionId":""}}',
            "invalid_payload",
            "executionId",
        ),
        (
            '{"type":"subscribe_execution","payload":{"executionId":"e","events":["tokens"]}}',
            "invalid_payload",
            "events",
        ),
        (
            '{"type":"subscribe_execution","payload":{"executionId":"e","lastSequence":-1}}',
            "invalid_payload",
            "lastSequence",
        ),
        (
            '{"type":"subscribe_execution","payload":{"executionId":"e","lastSequence":"4"}}',
            "invalid_payload",
            "lastSequence",
        ),
        ('{"type":"ack","payload":{"executionId":"e"}}', "invalid_payload", "sequence"),
        ('{"type":"ack","payload":{"executionId":"e","sequence":true}}', "invalid_payload", ""),
    ],
)
def test_bad_frames_get_a_clear_error(frame: str, code: str, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_message(frame)
    assert info.value.code == code
    assert words in info.value.message


def test_frames_encode_to_the_wire_shape() -> None:
    data = encode_frame("token", "e1", 3, "2026-01-01T00:00:00+00:00", {"content": "Hi"})
    assert orjson.loads(data) == {
        "type": "token",
        "executionId": "e1",
        "sequence": 3,
        "timestamp": "2026-01-01T00:00:00+00:00",
        "payload": {"content": "Hi"},
    }
    assert orjson.loads(encode_error("bad_request", "nope")) == {
        "type": "error",
        "payload": {"code": "bad_request", "message": "nope"},
    }
    assert orjson.loads(encode_reply("subscribed", {"a": 1}, execution_id="e")) == {
        "type": "subscribed",
        "executionId": "e",
        "payload": {"a": 1},
    }


class _Color(Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int


class _Message(BaseModel):
    content: str


class _Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_values_json_cannot_hold_still_encode() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    meta = StreamMetadata(timestamp=when, sequence_number=1, execution_id="e", extra_key=1)
    value = {
        "msg": _Message(content="hi"),
        "point": _Point(1),
        "when": when,
        "set": {1},
        "bytes": b"ab",
        "color": _Color.RED,
        "token": TokenData(content="x"),
        "meta": meta,
        "opaque": _Opaque(),
        1: "non-str key",
    }
    out = orjson.loads(dumps(value))
    assert out["msg"] == {"content": "hi"}
    assert out["point"] == {"x": 1}
    assert out["when"].startswith("2026-01-02")
    assert out["set"] == [1]
    assert out["bytes"] == "ab"
    assert out["color"] == "red"
    assert out["token"]["content"] == "x"
    assert out["meta"]["execution_id"] == "e" and out["meta"]["extra_key"] == 1
    assert out["opaque"] == "opaque!"
    assert out["1"] == "non-str key"


def test_langchain_messages_encode() -> None:
    messages = pytest.importorskip("langchain_core.messages")
    out = orjson.loads(dumps({"m": messages.AIMessage(content="hello")}))
    assert out["m"]["content"] == "hello"


# --------------------------------------------------------------------------- builders


def test_what_the_python_client_sends_decodes_as_the_server_expects() -> None:
    subscribe = decode_client_message(encode_subscribe("run", ["token", "status"], 41))
    assert isinstance(subscribe, SubscribeExecution)
    assert subscribe.payload.execution_id == "run" and subscribe.payload.last_sequence == 41
    assert subscribe.kinds == {"token", "status"}
    every = decode_client_message(encode_subscribe("run"))
    assert isinstance(every, SubscribeExecution) and every.payload.last_sequence is None
    assert every.payload.events == list(ALL_EVENTS) and every.kinds == FILTERABLE_KINDS
    unsubscribe = decode_client_message(encode_unsubscribe("run"))
    assert isinstance(unsubscribe, UnsubscribeExecution)
    assert unsubscribe.payload.execution_id == "run"
    ping = decode_client_message(encode_ping({"t": 1}))
    assert isinstance(ping, Ping) and ping.payload == {"t": 1}
    ack = decode_client_message(encode_ack("run", 7))
    assert isinstance(ack, Ack) and ack.payload.sequence == 7


def test_builders_write_the_manuals_json_shape() -> None:
    assert orjson.loads(encode_subscribe("execution-123")) == {
        "type": "subscribe_execution",
        "payload": {
            "executionId": "execution-123",
            "events": ["token", "event", "progress", "status"],
        },
    }
    assert orjson.loads(encode_ping()) == {"type": "ping", "payload": {}}


def test_a_bad_message_names_at_most_five_problems_without_echoing_input() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_message(
            '{"type":"subscribe_execution","payload":{"executionId":"e",'
            '"events":["a","b","c","d","e","f","g"]}}'
        )
    message = info.value.message
    assert message.startswith("invalid 'subscribe_execution' message: payload.events.0: ")
    assert message.count("payload.events.") == 5
    assert "got" not in message
