"""protocol/sse.py with plain values: the bytes of a frame as an SSE event, resume rules."""

from __future__ import annotations

import pytest

from streaming_module.broker.base import Frame
from streaming_module.protocol import sse


def frame(sequence: int, type: str = "token", payload: object = None) -> Frame:
    return Frame("ex-1", sequence, type, "2026-01-01T00:00:00+00:00", payload or {"content": "hi"})


def test_a_frame_is_one_event_with_its_sequence_type_and_websocket_json() -> None:
    f = frame(42)
    assert sse.encode_frame(f) == b"id: 42\nevent: token\ndata: " + f.encoded() + b"\n\n"
    assert sse.encode_frames([f, frame(43)]).count(b"\n\n") == 2


def test_multi_line_data_gets_one_data_field_per_line() -> None:
    assert (
        sse.event(b"a\nb\r\nc", id="7", event="x")
        == b"id: 7\nevent: x\ndata: a\ndata: b\ndata: c\n\n"
    )
    assert sse.event(b"{}") == b"data: {}\n\n"
    assert sse.comment("hello\nworld") == b": hello world\n\n"
    assert sse.retry(1500) == b"retry: 1500\n\n"


def test_the_header_wins_over_the_query_and_neither_means_everything() -> None:
    assert sse.resume_point(None, None) == 0
    assert sse.resume_point("", "5") == 5
    assert sse.resume_point("7", "5") == 7
    assert sse.resume_point(" 9 ", None) == 9


@pytest.mark.parametrize("bad", ["-1", "4.2", "abc", "9" * 65])
def test_anything_but_a_sequence_is_refused(bad: str) -> None:
    with pytest.raises(sse.ResumeError):
        sse.resume_point(bad, None)
    with pytest.raises(sse.ResumeError, match="lastSequence"):
        sse.resume_point(None, bad)


def test_a_stream_is_complete_only_when_the_resume_point_is_the_final_status() -> None:
    final = frame(9, "status", {"status": "completed"})
    assert sse.is_final_status(final)
    assert not sse.is_final_status(frame(1, "status", {"status": "started"}))
    assert sse.stream_is_complete(9, final)
    assert not sse.stream_is_complete(8, final)
    assert not sse.stream_is_complete(0, final)
    assert not sse.stream_is_complete(9, None)
    assert not sse.stream_is_complete(9, frame(9))
