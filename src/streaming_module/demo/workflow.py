"""The manual's "AI content generation" workflow, as the demo runs it.

Three nodes, in order:

- ``generateContent`` (``llm``): asks the chat model for the text. Its tokens stream through
  ``@stream_token`` (buffered, flushed every 100 ms, whitespace-only tokens filtered: the demo
  model never emits one, so the token frames carry exactly the final ``content``), and its
  progress — tokens received out of the words requested — through ``@stream_progress`` with ETA.
- ``processTokens`` (``tool``): splits the content into words and normalises them, publishing
  ``tool_start``, ``tool_complete`` and ``progress`` events (the manual's ``@stream_event``).
- ``qualityCheck`` (``condition``): scores the text (deterministically: lexical variety and
  sentence length, not the manual's ``Math.random()`` placeholder) and publishes its ``values``
  and ``updates``.

The chat model is given to the constructor (``AIContentGenerationWorkflow(llm=model)``); the
streaming services come from the container ``StreamingModule.for_root`` built.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, TypedDict

from langchain_core.language_models.chat_models import BaseChatModel

from streaming_module.types import StreamEventType
from streaming_module.workflow import (
    DeclarativeWorkflowBase,
    node,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)

QUALITY_THRESHOLD = 0.7
# Progress reports per node are cheap but not free: report every this many words at most.
_REPORTS = 200
# A long text is processed in steps of about this many characters, handing the event loop back
# in between, so a 1,000,000-word run never holds up the server's other requests (each step is
# a few milliseconds).
_STEP_CHARS = 16 * 1024
_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE_END = re.compile(r"[.!?]+")


class AIWritingState(TypedDict, total=False):
    """The manual's ``AIWritingState``, plus the requested length and the quality score."""

    prompt: str
    words: int
    content: str
    tokens: Sequence[str]
    progress: float
    completed: bool
    qualityScore: float  # the manual's key, as clients read it


def _enrich(event: Any) -> Any:
    """The manual's transformer: ``(event) => ({ ...event, enriched: true })``."""
    return {**event, "enriched": True}


_MAX_EVENT_TEXT = 4000
_MAX_EVENT_ITEMS = 50


def _compact(event: Any) -> Any:
    """Keep ``values``/``updates`` events small on the wire: a long text or list in the state
    is replaced by a short summary (the full state is what ``run()`` returns)."""

    def shrink(value: Any) -> Any:
        if isinstance(value, str) and len(value) > _MAX_EVENT_TEXT:
            return value[:200] + f"… ({len(value):,} characters)"
        if isinstance(value, list | tuple) and len(value) > _MAX_EVENT_ITEMS:
            return [*value[:10], f"… ({len(value):,} items)"]
        if isinstance(value, dict):
            return {k: shrink(v) for k, v in value.items()}
        return value

    data = event.get("data") if hasattr(event, "get") else None
    if not isinstance(data, dict):
        return event
    return {**event, "data": shrink(data)}


class QualityTally:
    """What :func:`assess_quality` counts, added up over consecutive pieces of a text."""

    __slots__ = ("sentences", "unique", "words")

    def __init__(self) -> None:
        self.words = 0
        self.sentences = 0
        self.unique: set[str] = set()

    def add(self, text: str) -> None:
        words = _WORD.findall(text.lower())
        self.words += len(words)
        self.unique.update(words)
        self.sentences += sum(1 for s in _SENTENCE_END.split(text) if s.strip())

    def score(self) -> float:
        if not self.words:
            return 0.0
        variety = len(self.unique) / self.words
        average = self.words / max(1, self.sentences)
        shape = 1.0 if 10 <= average <= 20 else max(0.0, 1 - abs(average - 15) / 30)
        return round(min(1.0, 0.55 + 0.25 * shape + 0.4 * variety), 3)


def assess_quality(content: str) -> float:
    """A deterministic score in [0, 1]: lexical variety blended with how close the average
    sentence is to a comfortable 10-20 words."""
    tally = QualityTally()
    tally.add(content)
    return tally.score()


def sentence_pieces(content: str, size: int = _STEP_CHARS) -> Iterator[str]:
    """``content`` in consecutive pieces of about ``size`` characters, each cut right after a
    run of ``.``, ``!`` or ``?``: no word and no sentence straddles two pieces, so counting them
    piece by piece gives the counts of the whole text."""
    start, end = 0, len(content)
    while start < end:
        found = _SENTENCE_END.search(content, start + size) if start + size < end else None
        cut = found.end() if found is not None else end
        yield content[start:cut]
        start = cut


async def assess_quality_stepwise(content: str) -> float:
    """:func:`assess_quality`, the same score, computed a piece at a time with the event loop
    handed back in between (scoring 6 MB at once is ~0.3 s of regex work that holds the GIL, so
    even a worker thread would stall the server)."""
    tally = QualityTally()
    for piece in sentence_pieces(content):
        tally.add(piece)
        await asyncio.sleep(0)
    return tally.score()


def split_windows(content: str, size: int = _STEP_CHARS) -> Iterator[list[str]]:
    """``content.split(" ")`` a window of about ``size`` characters at a time: the lists, joined,
    are exactly ``content.split(" ")``."""
    start, end = 0, len(content)
    while True:
        cut = content.find(" ", start + size) if start + size < end else -1
        if cut < 0:
            yield content[start:].split(" ")
            return
        yield content[start:cut].split(" ")
        start = cut + 1


@workflow(
    name="ai-content-generation",
    streaming=True,
    channels={
        "prompt": None,
        "content": None,
        "tokens": None,
        "progress": None,
        "completed": None,
    },
)
class AIContentGenerationWorkflow(DeclarativeWorkflowBase[AIWritingState]):
    """Generate text from a prompt, post-process it and check its quality, streaming all of it."""

    def __init__(self, *, llm: BaseChatModel, **services: Any) -> None:
        super().__init__(**services)
        self.llm = llm

    @node(type="llm")
    @stream_token(
        enabled=True,
        buffer_size=50,
        format="text",
        filter={"min_length": 1, "exclude_whitespace": True},
        flush_interval=100,
    )
    @stream_progress(enabled=True, interval=500, granularity="fine", include_eta=True)
    async def generateContent(self, state: AIWritingState) -> AIWritingState:
        expected = int(state.get("words") or getattr(self.llm, "words", 0) or 1)
        every = max(1, expected // _REPORTS)
        parts: list[str] = []
        received = 0
        await self.progress.update(0, expected)
        # Streaming the model inside the node: @stream_token's capture picks up every token and
        # sends it on; counting them here drives the progress bar.
        async for chunk in self.llm.astream(state["prompt"], words=expected):
            text = chunk.text if isinstance(chunk.text, str) else str(chunk.content)
            if not text:
                continue
            parts.append(text)
            # One word per chunk, or several for a long answer (DemoChatModel.words_per_chunk);
            # no word contains whitespace, so this counts words either way.
            before = received
            received += len(text.split())
            if received // every != before // every:
                await self.progress.update(min(received, expected), expected)
        await self.progress.update(expected, expected)
        self.logger.debug("generated %d tokens for %s", received, self.execution_id)
        return {"content": "".join(parts), "completed": True}

    @node(type="tool")
    @stream_event(
        events=[
            StreamEventType.TOOL_START,
            StreamEventType.TOOL_COMPLETE,
            StreamEventType.PROGRESS,
        ],
        buffer_size=100,
        delivery="at-least-once",
        transformer=_enrich,
    )
    async def processTokens(self, state: AIWritingState) -> AIWritingState:
        content = state.get("content")
        if not content:
            return {}
        total = 1  # the length of content.split(" "), counted in steps: ~10 ms for 6 MB
        for start in range(0, len(content), _STEP_CHARS * 16):
            total += content.count(" ", start, start + _STEP_CHARS * 16)
            await asyncio.sleep(0)
        every = max(1, total // 20)
        pieces: list[tuple[str, ...]] = []
        done = 0
        processed: dict[str, str] = {}

        def process(token: str) -> str:
            # One string per distinct word: a million-word text repeats its words, and a tuple
            # of a few hundred shared strings is cheap for the garbage collector to look at
            # (and ~50 MB smaller) where a million distinct ones take ~20 ms to look at.
            out = processed.get(token)
            if out is None:
                out = processed[token] = self._process_token(token)
            return out

        # A window at a time, handing the loop back in between: a long text never starves the
        # server. Tuples, not one growing list: the garbage collector stops visiting a tuple of
        # strings after one look, where it walks a list of a million words on every pass.
        for window in split_windows(content):
            pieces.append(tuple(map(process, window)))
            before, done = done, done + len(window)
            for mark in range(before // every + 1, done // every + 1):
                await self.progress.update(mark * every, total)
            if done == total and total % every:
                await self.progress.update(total, total)
            await asyncio.sleep(0)
        return {"tokens": tuple(chain.from_iterable(pieces)), "progress": 100.0}

    @node(type="condition")
    @stream_event(
        events=[StreamEventType.VALUES, StreamEventType.UPDATES],
        filter={"include_debug": False, "min_priority": "medium"},
        transformer=_compact,
    )
    async def qualityCheck(self, state: AIWritingState) -> AIWritingState:
        content = state.get("content")
        if not content:
            return {}
        # Piece by piece: scoring a 1,000,000-word text at once would stall every other request
        # and connection of the server for ~0.3 s.
        score = await assess_quality_stepwise(content)
        return {"completed": score > QUALITY_THRESHOLD, "qualityScore": score}

    @staticmethod
    def _process_token(token: str) -> str:
        return token.lower().strip()


__all__ = [
    "AIContentGenerationWorkflow",
    "AIWritingState",
    "QualityTally",
    "assess_quality",
    "assess_quality_stepwise",
    "sentence_pieces",
    "split_windows",
]
