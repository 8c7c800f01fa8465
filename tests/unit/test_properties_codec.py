"""Properties of the wire codec, for any input a client could send: decoding gives a message or a
:class:`ProtocolError` (an error value the gateway answers with), never any other exception;
nesting is measured exactly before parsing; ids are matched whole; what the builders write
decodes back to what they were given. Hypothesis generates the inputs."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streaming_module.errors import ProtocolError
from streaming_module.protocol.json import nesting_exceeds
from streaming_module.protocol.messages import (
    ALL_EVENTS,
    CLIENT_MESSAGE_TYPES,
    MAX_MESSAGE_DEPTH,
    Ack,
    Ping,
    SubscribeExecution,
    UnsubscribeExecution,
    decode_client_message,
    encode_ack,
    encode_ping,
    encode_subscribe,
    encode_unsubscribe,
    is_execution_id,
)

CODES = {"too_deep", "invalid_json", "invalid_message", "unknown_type", "invalid_payload"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _nested(depth: int, leaf: Any, kinds: list[bool]) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if kinds[i % len(kinds)] else {"k": value}
    return value


def _decode(data: str | bytes) -> Any:
    """decode_client_message, asserting that only a ProtocolError with a known code escapes."""
    try:
        return decode_client_message(data)
    except ProtocolError as exc:
        assert exc.code in CODES, exc.code
        assert exc.message
        return exc


@SETTINGS
@given(st.binary(max_size=300))
@example(b"\xff\xfe\x00")
@example(b"[" * 100_000)
@example(b'{"type": "ping", "payload": ' + b"[" * 300 + b"]" * 300 + b"}")
def test_any_bytes_decode_to_a_message_or_an_error_value(data: bytes) -> None:
    _decode(data)


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_decodes_to_a_message_or_an_error_value(text: str) -> None:
    _decode(text)


@SETTINGS
@given(json_values)
def test_any_json_value_decodes_to_a_message_or_an_error_value(value: Any) -> None:
    result = _decode(json.dumps(value))
    if not isinstance(value, dict) or value.get("type") not in CLIENT_MESSAGE_TYPES:
        assert isinstance(result, ProtocolError)


message_payloads = st.fixed_dictionaries(
    {
        "type": st.sampled_from(CLIENT_MESSAGE_TYPES),
        "payload": st.fixed_dictionaries(
            {},
            optional={
                "executionId": st.text(max_size=300) | json_scalars,
                "events": st.lists(st.sampled_from([*ALL_EVENTS, "gap", "nope"]), max_size=5)
                | json_scalars,
                "lastSequence": st.integers(min_value=-5, max_value=2**65) | json_scalars,
                "sequence": st.integers(min_value=-5, max_value=2**65) | json_scalars,
                "extra": json_values,
            },
        )
        | json_values,
    }
)


@SETTINGS
@given(message_payloads)
def test_mutated_protocol_messages_decode_or_fail_with_an_error_value(message: Any) -> None:
    result = _decode(json.dumps(message))
    if isinstance(result, (SubscribeExecution, UnsubscribeExecution, Ack)):
        assert is_execution_id(result.payload.execution_id)
        assert 1 <= len(result.payload.execution_id) <= 256
    if isinstance(result, Ack):
        assert isinstance(result.payload.sequence, int) and result.payload.sequence >= 0


@SETTINGS
@given(
    st.integers(min_value=0, max_value=80),
    st.lists(st.booleans(), min_size=1, max_size=5),
    json_scalars,
)
def test_nesting_is_measured_exactly_and_refused_before_parsing(
    depth: int, kinds: list[bool], leaf: Any
) -> None:
    payload = _nested(depth, leaf, kinds)
    text = json.dumps({"type": "ping", "payload": {"p": payload}})
    total = _depth({"type": "ping", "payload": {"p": payload}})
    assert nesting_exceeds(text, MAX_MESSAGE_DEPTH) == (total > MAX_MESSAGE_DEPTH)
    result = _decode(text)
    if total > MAX_MESSAGE_DEPTH:
        assert isinstance(result, ProtocolError) and result.code == "too_deep"
    else:
        assert isinstance(result, Ping)


@SETTINGS
@given(json_values, st.integers(min_value=1, max_value=12))
def test_nesting_exceeds_agrees_with_the_parsed_depth(value: Any, limit: int) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=1)):
        assert nesting_exceeds(text, limit) == (_depth(value) > limit)
        assert nesting_exceeds(text.encode(), limit) == (_depth(value) > limit)


@SETTINGS
@given(st.text(min_size=1, max_size=256))
def test_execution_ids_are_matched_whole(execution_id: str) -> None:
    text = encode_unsubscribe(execution_id)
    result = _decode(text)
    has_control = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in execution_id)
    reserved = execution_id.startswith("@")  # the server's own channels
    if has_control or reserved:
        assert isinstance(result, ProtocolError) and result.code == "invalid_payload"
    else:
        assert isinstance(result, UnsubscribeExecution)
        assert result.payload.execution_id == execution_id


def test_a_trailing_newline_is_not_part_of_a_valid_id() -> None:
    for bad in ("abc\n", "abc\r\n", "\nabc", "a\x00b", "tab\there"):
        result = _decode(encode_subscribe(bad))
        assert isinstance(result, ProtocolError) and result.code == "invalid_payload", bad
        assert not is_execution_id(bad)


@SETTINGS
@given(
    st.text(min_size=1, max_size=64).filter(is_execution_id),
    st.none() | st.lists(st.sampled_from(ALL_EVENTS), max_size=4, unique=True),
    st.none() | st.integers(min_value=0, max_value=2**62),
    st.integers(min_value=0, max_value=2**62),
    st.dictionaries(
        st.text(max_size=8),
        st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
        max_size=4,
    ),
)
def test_what_the_builders_write_decodes_back(
    execution_id: str,
    events: list[str] | None,
    last_sequence: int | None,
    sequence: int,
    ping: dict[str, Any],
) -> None:
    sub = decode_client_message(encode_subscribe(execution_id, events, last_sequence))
    assert isinstance(sub, SubscribeExecution)
    assert sub.payload.execution_id == execution_id
    assert sub.payload.last_sequence == last_sequence
    assert sub.kinds == frozenset(events if events is not None else ALL_EVENTS)
    ack = decode_client_message(encode_ack(execution_id, sequence))
    assert isinstance(ack, Ack) and ack.payload.sequence == sequence
    pong = decode_client_message(encode_ping(ping))
    assert isinstance(pong, Ping) and pong.payload == ping
