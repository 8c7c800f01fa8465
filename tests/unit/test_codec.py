"""The wire codec: what a client may send, and what it gets back when it sends something wrong."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from enum import Enum

import orjson
import pytest
from pydantic import BaseModel

from streaming_module.core.codec import (
    FILTERABLE_KINDS,
    Ack,
    Ping,
    SubscribeExecution,
    UnsubscribeExecution,
    decode_client_message,
    dumps,
    encode_error,
    encode_frame,
    encode_reply,
    ws_text_frame,
)
from streaming_module.errors import ProtocolError
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


# --------------------------------------------------------------------------- ws_text_frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_ws_text_frame_is_a_valid_unmasked_text_frame_for_every_length_encoding(
    length: int,
) -> None:
    # The websockets package's own frame parser (the client side: frames must be unmasked).
    from websockets.frames import Frame as WsFrame
    from websockets.frames import Opcode
    from websockets.streams import StreamReader

    payload = ("é" * (length // 2) + "x" * (length % 2)).encode()
    assert len(payload) == length
    data = ws_text_frame(payload)
    header = 2 if length < 126 else 4 if length < 65536 else 10
    assert len(data) == header + length
    reader = StreamReader()
    reader.feed_data(data)
    parser = WsFrame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert bytes(frame.data) == payload
    assert not reader.buffer  # the frame ends exactly where its length says
