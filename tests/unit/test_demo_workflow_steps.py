"""The demo workflow processes a long text in steps: the same results as all at once.

``processTokens`` splits the text a window at a time and ``qualityCheck`` scores it a piece at a
time, handing the event loop back in between (a 1,000,000-word run must not hold up the server);
these tests pin that the pieces add up to exactly what the whole-text computation gives, and that
the node still reports its progress at every twentieth of the words.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_module.demo.model import DemoChatModel, generate_text
from streaming_module.demo.workflow import (
    AIContentGenerationWorkflow,
    assess_quality,
    assess_quality_stepwise,
    sentence_pieces,
    split_windows,
)
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.types import StreamEventType

texts = st.text(alphabet="ab .!?'\n", max_size=200)


@settings(max_examples=300, deadline=None)
@given(texts, st.integers(min_value=1, max_value=20))
def test_split_windows_give_exactly_str_split(content: str, size: int) -> None:
    assert list(chain.from_iterable(split_windows(content, size))) == content.split(" ")


@settings(max_examples=300, deadline=None)
@given(texts, st.integers(min_value=1, max_value=20))
def test_sentence_pieces_cover_the_text_and_cut_after_sentence_ends(
    content: str, size: int
) -> None:
    pieces = list(sentence_pieces(content, size))
    assert "".join(pieces) == content
    for piece in pieces[:-1]:
        assert piece[-1] in ".!?"


@settings(max_examples=200, deadline=None)
@given(texts)
async def test_the_stepwise_score_is_the_whole_text_score(content: str) -> None:
    assert await assess_quality_stepwise(content) == assess_quality(content)


async def test_a_long_generated_text_scores_the_same_in_steps() -> None:
    content = generate_text("Write about tides", 40_000)  # ~250 KB: several pieces
    assert len(list(sentence_pieces(content))) > 2
    assert await assess_quality_stepwise(content) == assess_quality(content)
    assert len(list(split_windows(content))) > 2
    assert list(chain.from_iterable(split_windows(content))) == content.split(" ")


async def test_process_tokens_reports_every_twentieth_and_returns_every_word() -> None:
    events = EventStreamProcessorService()
    wf = AIContentGenerationWorkflow(
        llm=DemoChatModel(),
        token_streaming=TokenStreamingService(),
        event_processor=events,
        progress_tracking=ProgressTrackingService(),
    )
    seen: list[Any] = []
    events.get_event_stream().subscribe(on_next=seen.append)
    words = 12_345  # several windows; not a multiple of 20
    state = await wf.run({"prompt": "Write about tides", "words": words})
    content = state["content"]
    assert list(state["tokens"]) == [w.lower().strip() for w in content.split(" ")]
    reported = [
        u.data.current
        for u in seen
        if u.type is StreamEventType.PROGRESS and u.node_id == "processTokens"
    ]
    total = content.count(" ") + 1
    every = total // 20
    assert reported == [every * k for k in range(1, 21)] + [total]
