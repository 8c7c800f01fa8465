"""Properties of token-frame coalescing (``slow_client_policy='coalesce'``), for any run of frames:
a slow client receives exactly the text it was owed, per execution and node, in order, under
rising sequences, in fewer frames; the frames merged from are never changed. Checked on the pure
merge functions and through a real :class:`ClientConnection` whose writer is held back."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_ws import FakeWebSocket
from streaming_module.core.clock import FakeClock
from streaming_module.gateway.connection import ClientConnection
from streaming_module.protocol.coalesce import COALESCE_MAX_CHARS, merge, mergeable
from streaming_module.protocol.frames import Frame

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frame_specs = st.lists(
    st.tuples(
        st.sampled_from(["e1", "e2"]),  # execution
        st.sampled_from(["llm", "tool"]),  # node
        st.sampled_from(["token", "token", "token", "progress"]),
        st.text(max_size=12) | st.just("x" * 40_000),  # content, sometimes large
    ),
    max_size=60,
)


def _frames(specs: list[tuple[str, str, str, str]]) -> list[Frame]:
    sequence: dict[str, int] = defaultdict(int)
    frames = []
    for execution_id, node, kind, content in specs:
        sequence[execution_id] += 1
        payload: dict[str, Any] = {"nodeId": node}
        if kind == "token":
            payload["content"] = content
        else:
            payload["progress"] = len(content)
        frames.append(Frame(execution_id, sequence[execution_id], kind, "t", payload))
    return frames


def _texts(messages: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = defaultdict(str)
    for m in messages:
        if m["type"] == "token":
            out[(m["executionId"], m["payload"]["nodeId"])] += m["payload"]["content"]
    return dict(out)


@SETTINGS
@given(frame_specs)
def test_merging_into_the_tail_preserves_every_text_and_the_order(
    specs: list[tuple[str, str, str, str]],
) -> None:
    frames = _frames(specs)
    before = [f.encoded() for f in frames]
    queue: list[Frame] = []
    for frame in frames:
        if queue and mergeable(queue[-1], frame):
            queue[-1] = merge(queue[-1], frame)
        else:
            queue.append(frame)
    sent = [json.loads(f.encoded()) for f in queue]
    original = [json.loads(b) for b in before]
    assert _texts(sent) == _texts(original)
    assert sum(m["payload"].get("coalesced", 1) for m in sent) == len(frames)
    for execution_id in ("e1", "e2"):
        sequences = [m["sequence"] for m in sent if m["executionId"] == execution_id]
        assert sequences == sorted(set(sequences))
        last = [m["sequence"] for m in original if m["executionId"] == execution_id]
        assert sequences[-1:] == last[-1:]  # the last frame's sequence is kept
    for m in sent:
        if m["payload"].get("coalesced", 1) > 1:
            assert len(m["payload"]["content"]) <= COALESCE_MAX_CHARS
    assert [f.encoded() for f in frames] == before  # merging never changed a frame it got


@SETTINGS
@given(frame_specs, st.integers(min_value=16, max_value=24))
def test_a_held_back_coalescing_client_receives_exactly_its_text(
    specs: list[tuple[str, str, str, str]], queue_size: int
) -> None:
    frames = _frames(specs)
    expected = _texts([json.loads(f.encoded()) for f in frames])

    async def scenario() -> tuple[list[dict[str, Any]], int | None]:
        ws = FakeWebSocket(compress=15)  # the queue and writer task only
        ws.hold = asyncio.Event()
        conn = ClientConnection(
            "c",
            ws,  # type: ignore[arg-type]
            clock=FakeClock(),
            send_queue_size=queue_size,
            send_queue_bytes=64 * 1024 * 1024,
            slow_client_policy="coalesce",
        )
        conn.start()
        for frame in frames:
            conn.deliver(frame)
        ws.hold.set()
        await conn.drained(5.0)
        code = conn.close_code
        await conn.aclose()
        return [json.loads(data) for _, data in ws.out], code

    received, code = asyncio.run(scenario())
    if code is None:  # not closed: the whole text arrived, merged or not
        assert _texts(received) == expected
    else:  # nothing left to merge: closed to resume; what it got is a prefix of each text
        for key, text in _texts(received).items():
            assert expected[key].startswith(text)
