"""Bad input, on the WebSocket and over HTTP, while a healthy client streams: random and mutated
frames, binary, invalid UTF-8, deep nesting, huge numbers, ids with control characters, frames at
and over the size limit, unmasked frames, long paths, deep bodies. Each gets its documented answer
(an ``error`` reply, a close code, a 4xx) — never a 1011 or a 500 — and the healthy client's text
is exact. The server runs in its own process."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from attack_support import (
    AttackServer,
    Snapshot,
    attack_server,
    close_code_of,
    healthy_run,
    masked,
    raw_upgrade,
    read_frame,
    record,
)

from streaming_module.errors import ProtocolError
from streaming_module.protocol.messages import Ack, decode_client_message

# One server for the module: each test measures from its own snapshot.
pytestmark = pytest.mark.asyncio(loop_scope="module")

OPTIONS: dict[str, Any] = {}
SEED = 20261130
REPLIES = {"error", "pong", "subscribed", "unsubscribed"}
VALID = [
    {"type": "subscribe_execution", "payload": {"executionId": "fuzz-a", "lastSequence": 0}},
    {"type": "unsubscribe_execution", "payload": {"executionId": "fuzz-a"}},
    {"type": "ping", "payload": {"n": 1}},
    {"type": "ack", "payload": {"executionId": "fuzz-a", "sequence": 1}},
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> Any:
    async with attack_server(OPTIONS) as running:
        yield running


def _scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            rng.randint(-(2**70), 2**70),
            rng.random() * 10 ** rng.randint(-300, 300),
            "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 12))),
            "abc\n",
            "x" * rng.randint(200, 9000),
        ]
    )


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.5:
        return _scalar(rng)
    if roll < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {str(_scalar(rng))[:10]: _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(chars) + 1)
        action = rng.random()
        if action < 0.4 and chars:
            del chars[min(at, len(chars) - 1)]
        elif action < 0.8:
            chars.insert(at, rng.choice('{}[]",:0123456789 eE-+.\\ntrue'))
        elif chars:
            chars[min(at, len(chars) - 1)] = chr(rng.randint(1, 0x10FF))
    return "".join(chars)


def fuzz_frames(rng: random.Random, count: int) -> list[str | bytes]:
    """``count`` frames a hostile client might send: every kind, in a random order."""
    frames: list[str | bytes] = []
    for _ in range(count):
        kind = rng.randrange(10)
        if kind == 0:  # random text
            frames.append("".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(0, 80))))
        elif kind == 1:  # random JSON values
            frames.append(json.dumps(_value(rng)))
        elif kind in (2, 3, 4):  # valid messages, mutated
            frames.append(_mutate(rng, json.dumps(rng.choice(VALID))))
        elif kind == 5:  # valid messages with hostile values in their fields
            message = json.loads(json.dumps(rng.choice(VALID)))
            field = rng.choice(["executionId", "lastSequence", "sequence", "events", "n"])
            message["payload"][field] = _value(rng)
            frames.append(json.dumps(message))
        elif kind == 6:  # binary
            frames.append(rng.randbytes(rng.randint(0, 200)))
        elif kind == 7:  # deep nesting, in a ping's payload or bare
            depth = rng.choice([33, 40, 300, 5000, 30000])
            inner = "[" * depth + "]" * depth
            frames.append(rng.choice([inner, '{"type":"ping","payload":{"p":' + inner + "}}"]))
        elif kind == 8:  # huge numbers
            number = rng.choice(["1e400", "-1e400", "9" * 400, "1" + "0" * 30, "1e-400"])
            frames.append(
                '{"type":"ack","payload":{"executionId":"fuzz-a","sequence":' + number + "}}"
            )
        else:  # ids with control characters, or too long
            execution_id = rng.choice(["abc\n", "a\x00b", "\t", "x" * 257, "", "ok\r\n"])
            frames.append(json.dumps({"type": "subscribe_execution",
                                      "payload": {"executionId": execution_id}}))  # fmt: skip
    return frames


def _is_ack(frame: str) -> bool:
    """Whether ``frame`` is a valid ``ack`` (answered with nothing when subscribed)."""
    try:
        return isinstance(decode_client_message(frame), Ack)
    except ProtocolError:
        return False


async def test_thousands_of_fuzzed_frames_get_replies_and_a_healthy_run_stays_exact(
    server: AttackServer,
) -> None:
    rng = random.Random(SEED)
    before = await Snapshot.take(server)
    healthy = asyncio.create_task(healthy_run(server, "beside-fuzz", words=600))
    answers: Counter[str] = Counter()
    sent = acks = 0
    async with aiohttp.ClientSession() as session:
        for client in range(3):
            async with session.ws_connect(server.ws_url, max_msg_size=0) as ws:
                for batch_number in range(15):  # send 100 frames, then read their answers
                    batch = fuzz_frames(rng, 100)
                    for frame in batch:
                        if isinstance(frame, bytes):
                            await ws.send_bytes(frame)
                        else:
                            await ws.send_str(frame)
                            acks += _is_ack(frame)
                    sent += len(batch)
                    marker = f"end-{client}-{batch_number}"
                    await ws.send_json({"type": "ping", "payload": {"marker": marker}})
                    for _ in range(len(batch) + 1):  # every frame answered, but a valid ack
                        msg = await ws.receive(timeout=10)
                        assert msg.type is aiohttp.WSMsgType.TEXT, (client, msg)
                        reply = json.loads(msg.data)
                        if reply["type"] == "pong" and reply["payload"].get("marker") == marker:
                            break
                        assert reply["type"] in REPLIES, reply
                        key = (
                            reply["payload"]["code"] if reply["type"] == "error" else reply["type"]
                        )
                        answers[key] += 1
                    else:
                        raise AssertionError(f"no pong for {marker}")
    result = await healthy
    assert result.text == result.expected
    assert sent - acks <= sum(answers.values()) <= sent
    assert {"too_deep", "invalid_json", "invalid_payload", "binary_not_supported"} <= set(answers)
    await before.assert_back(server)
    record(inputs_fuzzed_frames=sent, **{f"inputs_answer_{k}": v for k, v in answers.items()})


async def test_invalid_utf8_closes_with_1007_and_only_that_client(server: AttackServer) -> None:
    healthy = asyncio.create_task(healthy_run(server, "beside-utf8", words=200))
    closes: Counter[int | None] = Counter()
    for payload in (b"\xff\xfe", b'{"type":"ping","x":"\xc3\x28"}', b"\xed\xa0\x80", b"\x80"):
        reader, writer, head = await raw_upgrade(server.port)
        assert b" 101 " in head
        writer.write(masked(0x1, payload))
        closes[await close_code_of(reader)] += 1
        writer.close()
    assert closes == {1007: 4}
    result = await healthy
    assert result.text == result.expected
    record(inputs_invalid_utf8=4, inputs_closed_1007=closes[1007])


async def test_the_size_limit_is_exactly_as_documented(server: AttackServer) -> None:
    # websocket.max_message_size = 65,536: a frame of exactly that size is read; one byte more
    # closes with 1009.
    head = '{"type":"ping","payload":{"p":"'
    tail = '"}}'
    exact = head + "x" * (65536 - len(head) - len(tail)) + tail
    assert len(exact.encode()) == 65536
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.ws_url, max_msg_size=0) as ws:
            await ws.send_str(exact)
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["type"] == "pong" and len(reply["payload"]["p"]) == 65536 - 34
            await ws.send_str(exact[:-3] + 'x"}}')  # 65,537 bytes
            closing = await ws.receive(timeout=10)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1009
    record(inputs_size_limit_probes=2)


async def test_unmasked_frames_and_oversized_control_frames_are_refused(
    server: AttackServer,
) -> None:
    ping = json.dumps({"type": "ping"}).encode()
    cases = {
        "unmasked text": masked(0x1, ping, mask=False),
        "unmasked after a masked one": masked(0x1, ping) + masked(0x1, ping, mask=False),
        "control frame over 125 bytes": masked(0x9, b"p" * 126),
        "fragmented control frame": masked(0x9, b"p", fin=False),
    }
    for name, data in cases.items():
        reader, writer, _ = await raw_upgrade(server.port)
        writer.write(data)
        codes = []
        for _ in range(3):
            try:
                opcode, payload = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if opcode == 0x8:
                codes.append(int.from_bytes(payload[:2], "big"))
                break
        assert codes == [1002], (name, codes)
        writer.close()
    record(inputs_protocol_violations=len(cases), inputs_closed_1002=len(cases))


async def test_http_bodies_paths_and_origins(server: AttackServer) -> None:
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as session:

        async def post(body: bytes) -> tuple[int, dict[str, Any]]:
            async with session.post(
                server.url + "/executions",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                statuses[response.status] += 1
                return response.status, await response.json()

        assert (await post(b"[" * 100_000))[1]["code"] == "too_deep"
        assert (await post(b'{"prompt": ' + b"[" * 65 + b"]" * 65 + b"}"))[0] == 400
        assert (await post(b'{"prompt": "x", "words": 1e400}'))[0] == 400
        assert (await post(b'{"prompt": "\xff"}'))[0] == 400
        assert (await post(b"not json"))[0] == 400
        long_id = "x" * 8000
        async with session.get(f"{server.url}/executions/{long_id}") as response:
            statuses[response.status] += 1
            assert response.status == 414
            assert long_id[:100] not in await response.text()
        async with session.get(f"{server.url}/executions/{'y' * 300}") as response:
            statuses[response.status] += 1
            assert response.status == 404
        # The origin check compares the scheme: an https page is another origin.
        host = f"127.0.0.1:{server.port}"
        for origin, allowed in ((f"https://{host}", False), (f"http://{host}", True)):
            async with session.get(server.url + "/health", headers={"Origin": origin}) as response:
                statuses[response.status] += 1
                assert (response.status == 200) is allowed, origin
    assert 500 not in statuses
    record(**{f"inputs_http_{status}": count for status, count in statuses.items()})


async def test_subscribing_with_a_control_character_in_the_id_is_refused(
    server: AttackServer,
) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        for bad in ("abc\n", "abc\r", "a\x00", "\x7f"):
            await ws.send_json({"type": "subscribe_execution", "payload": {"executionId": bad}})
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_payload"
    health = await server.health()
    assert health["subscriptions"] == 0
