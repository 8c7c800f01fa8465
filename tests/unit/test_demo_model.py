"""The demo's chat model: offline, deterministic, prompt-dependent, a real LangChain model."""

from __future__ import annotations

import asyncio
import time

import pytest

from streaming_module.demo.model import (
    MAX_CHUNKS,
    DemoChatModel,
    generate_text,
    iter_chunks,
    iter_tokens,
    words_per_chunk,
)


def test_same_prompt_same_text_and_different_prompt_different_text() -> None:
    a = generate_text("Write about tides and the moon", 120)
    assert a == generate_text("Write about tides and the moon", 120)
    assert a != generate_text("Write about volcanoes", 120)
    assert "tides" in a or "moon" in a  # the answer is about the prompt


@pytest.mark.parametrize("words", [1, 2, 7, 300, 1001])
def test_one_token_per_word_none_only_whitespace_and_ends_with_a_full_stop(words: int) -> None:
    tokens = list(iter_tokens("a prompt about gardens", words))
    assert len(tokens) == words
    assert all(t.strip() for t in tokens)
    assert tokens[0] == tokens[0].lstrip()
    assert tokens[-1].endswith(".")
    assert len("".join(tokens).split()) == words


async def test_astream_tokens_join_to_exactly_what_ainvoke_returns() -> None:
    model = DemoChatModel(words=80)
    chunks = [chunk.content async for chunk in model.astream("Write about bread")]
    reply = await model.ainvoke("Write about bread")
    assert "".join(str(c) for c in chunks) == reply.content
    assert len([c for c in chunks if c]) == 80


async def test_words_can_be_set_per_call() -> None:
    model = DemoChatModel()
    reply = await model.ainvoke("Write about bread", words=5)
    assert len(str(reply.content).split()) == 5
    with pytest.raises(ValueError, match="words"):
        await model.ainvoke("x", words=0)


async def test_token_delay_paces_the_stream() -> None:
    model = DemoChatModel(words=10, token_delay_ms=10)
    started = time.perf_counter()
    async for _ in model.astream("pace"):
        pass
    assert time.perf_counter() - started >= 0.09


async def test_zero_delay_still_lets_other_tasks_run() -> None:
    model = DemoChatModel(words=5000, token_delay_ms=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    async for _ in model.astream("fast"):
        pass
    task.cancel()
    assert ticks >= 10


@pytest.mark.parametrize("words", [1, 1_999, 2_000, 2_001, 25_000, 1_000_000])
def test_long_answers_stream_several_words_per_chunk_and_the_same_text(words: int) -> None:
    # LangChain's astream keeps every chunk of a call (and merges them when it ends): a
    # 1,000,000-word answer in one-word chunks held ~2 GB. Up to MAX_CHUNKS words it is still
    # one word per chunk.
    size = words_per_chunk(words)
    assert size == (1 if words <= MAX_CHUNKS else -(-words // MAX_CHUNKS))
    if words > 30_000:  # the text itself is checked on the smaller cases
        assert size == 500
        return
    chunks = list(iter_chunks("a prompt about gardens", words))
    assert "".join(chunks) == generate_text("a prompt about gardens", words)
    assert len(chunks) == -(-words // size) <= MAX_CHUNKS
    assert all(len(c.split()) == size for c in chunks[:-1])
    assert sum(len(c.split()) for c in chunks) == words


async def test_a_long_streamed_answer_equals_the_invoked_one() -> None:
    model = DemoChatModel(words=20_001)
    chunks = [str(c.content) async for c in model.astream("Write about bread") if c.content]
    assert len(chunks) == 1819  # 11 words per chunk
    assert "".join(chunks) == (await model.ainvoke("Write about bread")).content
